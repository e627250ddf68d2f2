"""Bootstrap intervals and paired comparisons (asr.significance) and ``asr compare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asr.evaluate import UtteranceResult
from asr.significance import Counts, bootstrap_interval, load_counts, paired_bootstrap
from client.cli import main


def _rows(errors: list[int], words: int = 10, speakers: int = 0) -> list[Counts]:
    return [
        Counts(f"u{i:05d}", f"s{i % speakers}" if speakers else "", e, words, 2 * e, 5 * words)
        for i, e in enumerate(errors)
    ]


def test_interval_matches_the_binomial_width() -> None:
    # 4,000 independent utterances of 10 words at a 30 % error rate: the WER's standard error is
    # sqrt(p(1-p)/n) over 40,000 words, so the 95 % interval is about +-1.96 of it around the value
    rng = np.random.default_rng(1)
    rows = _rows(rng.binomial(10, 0.3, size=4000).tolist())
    ci = bootstrap_interval(rows, samples=2000)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 40000)
    assert ci.by == "utterance" and ci.blocks == 4000
    assert ci.low < ci.value < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.15)
    assert ci.value == pytest.approx(sum(r.word_errors for r in rows) / 40000)


def test_speakers_are_resampled_as_blocks() -> None:
    # every speaker's utterances share its error rate: the spread between speakers, not between
    # utterances, sets the width, so resampling utterances would understate it
    rates = [0.1, 0.5, 0.2, 0.7, 0.3, 0.6, 0.4, 0.2]
    rows = [Counts(f"{s}-{j}", f"spk{s}", int(10 * rates[s]), 10, 0, 1) for s in range(8) for j in range(25)]
    by_speaker = bootstrap_interval(rows)
    by_utterance = bootstrap_interval(
        [Counts(r.id, "", r.word_errors, r.words, r.char_errors, r.chars) for r in rows]
    )
    assert by_speaker.by == "speaker" and by_speaker.blocks == 8
    assert by_utterance.by == "utterance" and by_utterance.blocks == 200
    assert by_speaker.high - by_speaker.low > 3 * (by_utterance.high - by_utterance.low)
    # one speaker only: every resample is that speaker, so there is no spread to report
    one = bootstrap_interval(rows[:25])
    assert one.low == one.high == one.value == pytest.approx(0.1)


def test_paired_comparison() -> None:
    rng = np.random.default_rng(2)
    a = _rows(rng.binomial(10, 0.4, size=300).tolist(), speakers=30)
    same = paired_bootstrap(a, a)
    assert same.delta == same.low == same.high == 0.0 and not same.significant
    assert same.p_b_better == 0.0 and same.by == "speaker" and same.blocks == 30
    # B fixes one error in every utterance that has one: better in every resample
    better = [Counts(r.id, r.speaker, max(0, r.word_errors - 1), r.words, r.char_errors, r.chars) for r in a]
    c = paired_bootstrap(a, list(reversed(better)))  # rows are matched by id, not by position
    assert c.significant and c.p_b_better == 1.0 and c.high < 0
    assert c.delta == pytest.approx(c.b - c.a) and c.low <= c.delta <= c.high
    # B differs from A only by chance: a small difference whose interval covers 0
    noisy = [Counts(r.id, r.speaker, int(rng.binomial(10, 0.4)), r.words, r.char_errors, r.chars) for r in a]
    n = paired_bootstrap(a, noisy)
    assert n.low < 0 < n.high and not n.significant and 0.02 < n.p_b_better < 0.98
    cer = paired_bootstrap(a, better, "cer")
    assert cer.metric == "cer" and cer.delta == 0.0  # only the word errors changed


def test_comparison_refuses_different_test_sets() -> None:
    a = _rows([1, 2, 3])
    with pytest.raises(ValueError, match="1 only in A"):
        paired_bootstrap(a, a[:2])
    other_ref = [Counts(r.id, r.speaker, r.word_errors, r.words + 1, r.char_errors, r.chars) for r in a]
    with pytest.raises(ValueError, match="different references"):
        paired_bootstrap(a, other_ref)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(a, a, "ser")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(a, confidence=95)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_interval(a, samples=10)
    with pytest.raises(ValueError, match="lacks"):
        bootstrap_interval([{"id": "x", "words": 3}])


def test_rows_from_eval_results_and_files(tmp_path: Path) -> None:
    result = UtteranceResult("a", "HELLO WORLD", "HELLO WORD", 1, 2, 1, 11, "spk1")
    assert Counts.from_row(result) == Counts("a", "spk1", 1, 2, 1, 11)
    assert (
        Counts.from_row({"id": "b", "word_errors": 0, "words": 1, "char_errors": 0, "chars": 3}).speaker == ""
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "word_errors": 1, "words": 2, "char_errors": 1, "chars": 11}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_counts(bad)
    with pytest.raises(FileNotFoundError, match="asr eval MANIFEST --errors"):
        load_counts(tmp_path / "missing.jsonl")


def _write(path: Path, rows: list[Counts]) -> Path:
    path.write_text("".join(json.dumps(vars(r)) + "\n" for r in rows))
    return path


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    a = _rows(rng.binomial(10, 0.5, size=200).tolist(), speakers=20)
    b = [Counts(r.id, r.speaker, max(0, r.word_errors - 2), r.words, r.char_errors, r.chars) for r in a]
    fa, fb = _write(tmp_path / "a.jsonl", a), _write(tmp_path / "b.jsonl", b)
    assert main(["compare", str(fa), str(fb), "--json", "--samples", "500"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"wer", "cer"}
    assert out["wer"]["significant"] and out["wer"]["delta"] < 0 and out["wer"]["by"] == "speaker"
    assert not out["cer"]["significant"]
    assert main(["compare", str(fa), str(fb)]) == 0
    text = capsys.readouterr().out
    assert "200 utterances in both" in text and "B is better" in text and "no significant difference" in text
    assert main(["compare", str(fa), str(tmp_path / "none.jsonl")]) == 1
    assert "no such error file" in capsys.readouterr().err
    assert main(["compare", str(fa), str(_write(tmp_path / "c.jsonl", a[:5]))]) == 1
    assert "not scored on the same utterances" in capsys.readouterr().err
