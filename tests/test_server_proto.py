"""The stubs in client/proto are exactly what `make proto` generates from proto/asr/v1/asr.proto."""

from __future__ import annotations

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
        "-Iclient/proto=proto",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        "proto/asr/v1/asr.proto",
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"protoc failed on proto/asr/v1/asr.proto: {done.stderr}"
    for name in GENERATED:
        fresh = (tmp_path / "client/proto/asr/v1" / name).read_text()
        committed = (ROOT / "client/proto/asr/v1" / name).read_text()
        assert fresh == committed, f"client/proto/asr/v1/{name} is stale: run `make proto`"


def test_stubs_import_and_round_trip() -> None:
    from client.proto.asr.v1 import asr_pb2, asr_pb2_grpc

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
