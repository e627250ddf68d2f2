"""Generated gRPC stubs for proto/asr/v1/asr.proto (package asr.v1), shared by server/ and client/.

Regenerate with `make proto`; tests/test_server_proto.py fails when they are stale. Use them as
`from asr_grpc import asr_pb2, asr_pb2_grpc`.
"""
