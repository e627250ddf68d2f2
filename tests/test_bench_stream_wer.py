"""bench/stream_wer.py end to end on generated speech: the offline row and one streamed row per setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from client_support import tiny_checkpoint
from test_online import chunked

from asr.checkpoint import load_model, save_checkpoint
from bench.stream_wer import main

ROW = re.compile(r"^(offline|streamed)([^|]*)\| +([\d.]+)% \| +([\d.]+)% \| +([\d.]+) \|", re.M)


def test_stream_wer_prints_offline_and_streamed_rows(
    speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = speech_manifest
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    args = [str(manifest), "--model", str(model), "--tail-ms", "300", "800", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = ROW.findall(out)
    assert [r[0] for r in rows] == ["offline", "streamed", "streamed"], out
    assert "tail 300 ms" in out and "tail 800 ms" in out
    # each recording is one utterance with silence around it: the endpointer gives one segment each
    assert all(float(r[4]) == 1.0 for r in rows), out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no utterances"):
        main([str(empty), "--model", str(model)])
    with pytest.raises(SystemExit):
        main([str(manifest), "--limit", "-1"])
    assert "--limit must be >= 0" in capsys.readouterr().err


def test_stream_wer_rows_of_a_streaming_model_with_a_second_pass(
    speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunk-streaming model: grown finals, then finals decoded again by the final model, after that
    model's own offline row."""
    offline = tiny_checkpoint(tmp_path / "offline.pt", seed=1)
    streaming = tmp_path / "streaming.pt"
    save_checkpoint(chunked(load_model(tiny_checkpoint(tmp_path / "base.pt"), device="cpu")), streaming)
    args = [str(speech_manifest), "--model", str(streaming), "--final-model", str(offline), "--threads", "1"]
    errors = tmp_path / "errors"
    assert main([*args, "--finals", "grown", "second", "--blank-ms", "0", "--errors", str(errors)]) == 0
    out = capsys.readouterr().out
    rows = ROW.findall(out)
    assert [(r[0], r[1].split(",")[-1].strip()) for r in rows] == [
        ("offline", "(whole recordings)"),
        ("offline", f"{offline} (the second pass's model)"),
        ("streamed", "grown"),
        ("streamed", "second"),
    ], out
    kept = sorted(p.name for p in errors.iterdir())
    assert len(kept) == 4 and "offline.errors.jsonl" in kept, kept
    second = next(p for p in errors.iterdir() if p.name.endswith("second.errors.jsonl"))
    assert len(second.read_text().splitlines()) == len(speech_manifest.read_text().splitlines())
    from asr.significance import load_counts

    assert load_counts(second)  # what asr compare reads

