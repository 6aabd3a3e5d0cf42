"""The gRPC client of the sandbox API, generated from agent/protocol/proto at build time
(setup.py): agent_pb2, sandbox_pb2 and sandbox_pb2_grpc. Nothing here is written by hand."""
