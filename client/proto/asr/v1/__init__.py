"""Deprecated alias of `asr_grpc`: the same module objects under their old names."""

import sys
import warnings

from asr_grpc import asr_pb2, asr_pb2_grpc

warnings.warn(
    "client.proto.asr.v1 is deprecated: import the stubs with `from asr_grpc import asr_pb2, asr_pb2_grpc`",
    DeprecationWarning,
    stacklevel=2,
)
# `import client.proto.asr.v1.asr_pb2` finds these entries instead of looking for files
sys.modules[f"{__name__}.asr_pb2"] = asr_pb2
sys.modules[f"{__name__}.asr_pb2_grpc"] = asr_pb2_grpc

__all__ = ["asr_pb2", "asr_pb2_grpc"]
