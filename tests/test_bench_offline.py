"""bench/offline_speed.py end to end: ours and PocketSphinx on the same generated speech, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.offline_speed import main


def test_rows_side_by_side_with_paired_intervals(
    speech_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is in the bench extra (make test installs it)")
    assert main([str(speech_manifest), "--beam", "2", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.splitlines()[-1])
    ps, greedy, beam = report["rows"]
    assert report["utterances"] == 4 and ps["system"].startswith("pocketsphinx")
    for row in (greedy, beam):  # each of ours against PocketSphinx on the same 4 utterances
        assert row["delta_vs_ps"] == pytest.approx(row["wer"] - ps["wer"])
        assert row["delta_low"] - 1e-9 <= row["delta_vs_ps"] <= row["delta_high"] + 1e-9
        assert 0.0 <= row["p_better_than_ps"] <= 1.0
    assert ps["delta_vs_ps"] == 0.0 and all(r["cpu_rtf"] > 0 for r in report["rows"])
    assert "WER - PS [95 % interval]" in out


def test_several_models_share_one_pocketsphinx_pass(
    speech_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is in the bench extra (make test installs it)")
    default = str(Path(__file__).resolve().parent.parent / "models" / "default.pt")
    assert main([str(speech_manifest), "--beam", "2", "--json", "--model", default, default]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.splitlines()[-1])
    names = [r["system"] for r in report["rows"]]
    assert names[0].startswith("pocketsphinx") and len(names) == 5
    assert names[1:] == [
        "ours 1, greedy CTC", "ours 1, joint beam 2", "ours 2, greedy CTC", "ours 2, joint beam 2"
    ]
    assert report["models"] == [default, default]
    by_name = {r["system"]: r for r in report["rows"]}  # the same checkpoint twice: the same words
    assert by_name["ours 1, joint beam 2"]["wer"] == by_name["ours 2, joint beam 2"]["wer"]
    assert "1: " in out and "2: " in out
