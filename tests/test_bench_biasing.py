"""bench/biasing.py: the hint lists, the biased/unbiased error split, and a run on generated speech."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from client_support import tiny_checkpoint

from bench.biasing import biased_errors, hint_lists, main


def test_hint_lists_hold_own_rare_words_and_distractors() -> None:
    refs = ["THE CAT SAT ON THE MAT", "THE ELEPHANT IS BIG", "THE GIRAFFE IS TALL"]
    lists = hint_lists(refs, min_letters=3, common=2, distractors=1)  # THE and IS are the common words
    assert set(lists[0]) >= {"CAT", "SAT", "MAT"} and len(lists[0]) == 4
    assert "THE" not in lists[1] and "ELEPHANT" in lists[1] and len(lists[1]) == 3  # BIG, ELEPHANT + 1
    assert any(w not in refs[2].split() for w in lists[2])  # a distractor from another utterance
    assert hint_lists(refs, 3, 2, 1) == lists  # seeded


def test_biased_errors_split_hinted_and_other_words() -> None:
    hinted = {"ELEPHANT"}
    assert biased_errors("THE ELEPHANT IS BIG", "THE ELEPHANT IS BIG", hinted) == (0, 1, 0, 3)
    assert biased_errors("THE ELEPHANT IS BIG", "A ELEVATOR IS BIG", hinted) == (1, 1, 1, 3)
    assert biased_errors("THE ELEPHANT IS BIG", "THE ELEPHANT IS VERY BIG", hinted) == (0, 1, 1, 3)
    assert biased_errors("THE ELEPHANT", "", hinted) == (1, 1, 1, 1)


ROW = re.compile(r"^\| (no hints|boost [\d.]+) \| ([\d.]+) % \|", re.M)


def test_prints_one_row_per_boost(
    speech_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = speech_manifest
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    assert main([str(manifest), "--model", str(model), "--boosts", "1", "--common", "0", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert [r[0] for r in ROW.findall(out)] == ["no hints", "boost 1"], out
    with pytest.raises(SystemExit):
        main([str(manifest), "--boosts", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
