"""Deprecated: the gRPC stubs moved to the top-level package `asr_grpc`.

`client.proto.asr.v1.asr_pb2` and `client.proto.asr.v1.asr_pb2_grpc` still import (they are the very
modules of `asr_grpc`), with a DeprecationWarning; write `from asr_grpc import asr_pb2, asr_pb2_grpc`.
"""
