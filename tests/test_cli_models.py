"""``asr models``: local checkpoints described from their own metadata, and a server's models over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from client_support import ServerThread, tiny_checkpoint

import asr
from asr.checkpoint import available_models
from client.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    tiny_checkpoint(tmp_path / "small.pt", seed=1)
    tiny_checkpoint(tmp_path / "default.pt")
    return tmp_path


def test_available_models_describe_themselves(models_dir: Path) -> None:
    found = available_models(models_dir)
    assert [m.name for m in found] == ["default", "small"]  # the default first
    m = found[0]
    model = asr.load_model(m.path, device="cpu")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert m.is_default and m.parameters == trainable
    assert (m.vocabulary_kind, m.vocabulary_size) == ("char", model.tokenizer.vocab_size)
    assert m.size_bytes == (models_dir / "default.pt").stat().st_size
    assert not m.streaming


def test_the_bundled_models_say_whether_they_stream() -> None:
    """What ``asr serve`` reads before it loads them, to size oneDNN's primitive cache: kept for a server of
    chunk-streaming models only (segment streaming brings ever new shapes)."""
    from server.app import STREAMING_PRIMITIVE_CACHE, primitive_cache_capacity

    found = {m.name: m.streaming for m in available_models(ROOT / "models")}
    assert found["streaming"] and not found["default"]
    assert primitive_cache_capacity([True]) == STREAMING_PRIMITIVE_CACHE > 0
    assert primitive_cache_capacity([True, False]) == primitive_cache_capacity([False]) == 0


@pytest.mark.parametrize(("command", "capacity"), [("eval", "0"), ("transcribe", "0"), ("models", None)])
def test_local_decoding_runs_without_onednn_primitive_cache(
    command: str, capacity: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recordings of every length would fill oneDNN's cache of compiled shapes (RSS grows, no speed gained):
    the commands that decode here turn it off unless the environment says otherwise."""
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "")  # restored after the test, whatever main sets
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    missing = str(tmp_path / "missing.jsonl")
    args = {"eval": [missing], "transcribe": [missing], "models": ["--dir", str(tmp_path)]}[command]
    main([command, *args])  # (fails or lists nothing: the environment is set before the command runs)
    assert os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == capacity
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    main([command, *args])
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"  # the operator's setting wins


def test_models_json_and_table(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--dir", str(models_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["default"]) for r in rows] == [("default", True), ("small", False)]
    assert main(["models", "--dir", str(models_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "default", "parameters"]
    assert lines[1].split()[:2] == ["default", "*"]


def test_models_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--dir", str(tmp_path)]) == 1
    assert "no models in" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert main(["models", "--dir", str(tmp_path)]) != 0
    assert "broken.pt" in capsys.readouterr().err


def test_models_on_a_server(models_dir: Path) -> None:
    model = asr.load_model(models_dir / "small.pt", device="cpu")
    with ServerThread(model) as srv:
        cmd = [sys.executable, "-m", "client.cli", "models", "--server", srv.target, "--json"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [row] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["default"] and row["sample_rate"] == 16000 and row["vocabulary"].startswith("char")
