"""The stubs in asr_grpc/ are exactly what `make proto` generates from proto/asr/v1/asr.proto."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["asr_pb2.py", "asr_pb2_grpc.py", "asr_pb2.pyi"]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools.protoc")
    # run as the Makefile does (from the root, same include mapping): protoc records these paths in the stubs
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-Iasr_grpc=proto/asr/v1",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        "proto/asr/v1/asr.proto",
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"protoc failed on proto/asr/v1/asr.proto: {done.stderr}"
    for name in GENERATED:
        fresh = (tmp_path / "asr_grpc" / name).read_text()
        committed = (ROOT / "asr_grpc" / name).read_text()
        assert fresh == committed, f"asr_grpc/{name} is stale: run `make proto`"


def test_stubs_import_and_round_trip() -> None:
    from asr_grpc import asr_pb2, asr_pb2_grpc

    req = asr_pb2.StreamingRecognizeRequest(
        streaming_config=asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000),
            interim_results=True,
        )
    )
    again = asr_pb2.StreamingRecognizeRequest.FromString(req.SerializeToString())
    assert again.WhichOneof("streaming_request") == "streaming_config"
    assert again.streaming_config.config.sample_rate_hertz == 16000
    assert hasattr(asr_pb2_grpc, "RecognizerServicer") and hasattr(asr_pb2_grpc, "RecognizerStub")


def test_old_client_proto_path_is_an_alias() -> None:
    """client.proto.asr.v1 (deprecated) hands out the very modules of asr_grpc, with a warning."""
    from asr_grpc import asr_pb2, asr_pb2_grpc

    sys.modules.pop("client.proto.asr.v1", None)  # so that the warning fires again
    with pytest.warns(DeprecationWarning, match="asr_grpc"):
        old = importlib.import_module("client.proto.asr.v1")
    assert old.asr_pb2 is asr_pb2 and old.asr_pb2_grpc is asr_pb2_grpc
    assert importlib.import_module("client.proto.asr.v1.asr_pb2") is asr_pb2
