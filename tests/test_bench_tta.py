"""bench/tta.py end to end on generated speech with the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.tta import main


def test_tta_rows_side_by_side(speech_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(speech_manifest), "--limit", "2", "--beam", "2", "--threads", "1", "--json"]) == 0
    out = capsys.readouterr().out
    plain, tta = json.loads(out.splitlines()[-1])
    assert plain["decoding"] == "plain" and tta["decoding"] == "tta 1.0+0.9,1.1"
    assert plain["utts"] == tta["utts"] == 2 and plain["wer_ratio"] == 1.0
    assert tta["time_ratio"] > 1.0  # three views cost more than one
    assert all(r[k] >= 0.0 for r in (plain, tta) for k in ("wer", "cer", "rtf"))
    assert "WER x" in out


def test_bad_arguments(speech_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--speeds", "1.0"], ["--speeds", "none"], ["--limit", "0"]):
        with pytest.raises(SystemExit):
            main([str(speech_manifest), *bad])
    with pytest.raises(SystemExit):
        main(["/nonexistent.jsonl"])
