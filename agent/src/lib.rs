//! The guest agent's library: the `vmm-agent` binary's parts, in a library so that tests
//! and fuzz targets reach the agent's request validation (exec plans, paths) without a
//! running agent. The protocol itself is the `vmm-protocol` crate.

// The server modules name this crate `agent::`, as the binary that uses them does.
extern crate self as agent;

pub mod server;

pub use vmm_protocol::{connect, file_kind_name, pb, socket, AGENT_VSOCK_PORT};
