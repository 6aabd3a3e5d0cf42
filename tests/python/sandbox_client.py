"""An orchestrator's calls through the stock Python gRPC client (grpcio), with default
channel options and a `unix:` target, against a sandbox's API socket.

Run by tests/tests/python_client.rs with the stubs it generates from agent/protocol/proto on
PYTHONPATH: python3 sandbox_client.py API_SOCKET
"""

import hashlib
import sys

import grpc

import agent_pb2
import sandbox_pb2
import sandbox_pb2_grpc

TIMEOUT = 60
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: several DATA frames


def exec_sh(stub, script, stdin=b""):
    """Runs `sh -c script`; returns (stdout, stderr, exited)."""

    def requests():
        start = agent_pb2.ExecStart(argv=["sh", "-c", script])
        yield sandbox_pb2.ExecRequest(start=sandbox_pb2.StartExec(process=start))
        if stdin:
            yield sandbox_pb2.ExecRequest(stdin=stdin)
        yield sandbox_pb2.ExecRequest(close_stdin=agent_pb2.CloseStdin())

    out = {"stdout": b"", "stderr": b""}
    exited = None
    for event in stub.Exec(requests(), timeout=TIMEOUT):
        kind = event.WhichOneof("event")
        if kind in out:
            chunk = getattr(event, kind)
            assert chunk.offset == len(out[kind]), (kind, chunk.offset, len(out[kind]))
            out[kind] += chunk.data
        elif kind == "exited":
            exited = event.exited
    assert exited is not None, "the exec ended without an exited event"
    return out["stdout"], out["stderr"], exited


def main(api_socket):
    major, minor = (int(x) for x in grpc.__version__.split(".")[:2])
    # From 1.57 on, grpcio sends the socket path, percent-encoded, as the :authority
    # of a unix: target: the case the server must accept.
    assert (major, minor) >= (1, 57), f"grpcio {grpc.__version__} is too old for this test"

    with grpc.insecure_channel(f"unix:{api_socket}") as channel:
        stub = sandbox_pb2_grpc.SandboxStub(channel)

        status = stub.Status(sandbox_pb2.StatusRequest(), timeout=TIMEOUT)
        assert status.state == sandbox_pb2.StatusResponse.STATE_READY, status

        stdout, stderr, exited = exec_sh(
            stub, "cat; echo to-stderr >&2; exit 7", stdin=b"hello from python\n"
        )
        assert stdout == b"hello from python\n", stdout
        assert stderr == b"to-stderr\n", stderr
        assert exited.WhichOneof("status") == "code" and exited.code == 7, exited

        def upload():
            header = agent_pb2.WriteFileHeader(path="/tmp/from-python", mode=0o640)
            yield agent_pb2.WriteFileRequest(header=header)
            for i in range(0, len(PAYLOAD), 100_000):
                yield agent_pb2.WriteFileRequest(data=PAYLOAD[i : i + 100_000])

        written = stub.WriteFile(upload(), timeout=TIMEOUT)
        assert written.size == len(PAYLOAD), written

        info, data = None, b""
        request = agent_pb2.ReadFileRequest(path="/tmp/from-python")
        for part in stub.ReadFile(request, timeout=TIMEOUT):
            if part.WhichOneof("part") == "info":
                info = part.info
            else:
                data += part.data
        assert info is not None and info.mode & 0o7777 == 0o640, info
        assert data == PAYLOAD, f"read back {len(data)} bytes, not the {len(PAYLOAD)} written"

        stdout, _, exited = exec_sh(stub, "sha256sum /tmp/from-python")
        assert exited.code == 0, exited
        assert stdout.split()[0].decode() == hashlib.sha256(PAYLOAD).hexdigest(), stdout

        # The connection's HPACK tables are warm now: more calls on it still work.
        status = stub.Status(sandbox_pb2.StatusRequest(), timeout=TIMEOUT)
        assert len(status.execs) == 2, status
        assert {e.exited.code for e in status.execs} == {7, 0}, status

    print(f"grpcio {grpc.__version__}: Status, Exec, WriteFile, ReadFile ok")


if __name__ == "__main__":
    main(sys.argv[1])
