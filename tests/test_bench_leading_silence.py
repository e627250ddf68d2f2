"""bench/leading_silence.py end to end on generated speech, with the bundled model and a tiny one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client_support import tiny_checkpoint

from bench.leading_silence import main


def test_leading_silence_rows(
    speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    args = [str(speech_manifest), "--models", "default", tiny, "--limit", "3", "--threads", "1", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = json.loads(out.splitlines()[-1])
    assert [r["model"] for r in rows] == ["default", tiny] and all(r["utts"] == 3 for r in rows)
    assert "first token in padding" in out and "ideal shift 1.50 s" in out
    default = rows[0]
    # the bundled model was trained with the CTC silence penalty: it waits for the speech (the model before
    # it put the first token inside the padding of every utterance, shift 0.00 s)
    assert default["first_token_in_padding"] == 0.0, default
    assert 1.5 - 0.2 <= default["median_shift_s"] <= 1.5 + 0.2, default
    assert all(0.0 <= r[k] <= 2.0 for r in rows for k in ("cer_plain", "cer_padded"))


def test_no_padding_changes_nothing(speech_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(speech_manifest), "--pad", "0", "--limit", "2", "--threads", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["median_shift_s"] == 0.0 and row["cer_plain"] == row["cer_padded"]


def test_bad_arguments(speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([str(speech_manifest), "--limit", "0"])
    assert "--limit must be >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no utterances"):
        main([str(empty)])
