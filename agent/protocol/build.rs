//! Generates the gRPC code for the agent and sandbox APIs from agent/protocol/proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(
            "protoc not found: install it with `apt-get install protobuf-compiler` \
                    (or run `make deps`)"
                .into(),
        );
    }
    tonic_prost_build::configure()
        // Payloads as `bytes::Bytes`: relayed and retained without copying.
        .bytes(".")
        .compile_protos(&["proto/agent.proto", "proto/sandbox.proto"], &["proto"])?;
    Ok(())
}
