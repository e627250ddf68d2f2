"""scripts/synth_espeak.py: WordNet example sentences read by espeak-ng into a training manifest."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("synth_espeak", ROOT / "scripts" / "synth_espeak.py")
assert _spec is not None and _spec.loader is not None
synth = importlib.util.module_from_spec(_spec)
sys.modules["synth_espeak"] = synth  # the worker pool pickles its function by module name
_spec.loader.exec_module(synth)

# Two synsets in WordNet's data file layout: the examples are the quoted parts of the gloss.
DATA_NOUN = (
    '02084071 05 n 03 dog 0 domestic_dog 0 | a member of the genus Canis; "the dog barked all night"; '
    '"Dogs are loyal, aren\'t they?"\n'
    '02121620 05 n 01 cat 0 | feline mammal; "the dog barked all night"; "cats sleep"; '
    '"in 1990 the cat had 2 kittens"; "a b c d e f g h i j k l m n o p"\n'
)


@pytest.fixture
def wordnet(tmp_path: Path) -> Path:
    root = tmp_path / "wordnet"
    root.mkdir()
    (root / "data.noun").write_text(DATA_NOUN, encoding="latin-1")
    return root


def test_examples_are_normalised_deduplicated_and_filtered(wordnet: Path) -> None:
    examples = synth.wordnet_examples(wordnet, 3, 14)
    # the repeat is kept once, "cats sleep" is too short, digits are dropped, the alphabet is too long
    assert examples == ["THE DOG BARKED ALL NIGHT", "DOGS ARE LOYAL AREN'T THEY"]


def test_writes_16khz_flac_and_a_manifest_the_trainer_reads(wordnet: Path, tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it: apt-get install espeak-ng sox)")
    out = tmp_path / "synth"
    synth.main([str(out), "--wordnet", str(wordnet), "--hours", "1", "--workers", "1", "--seed", "3"])
    rows = [json.loads(line) for line in (out / "all.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in rows) == ["DOGS ARE LOYAL AREN'T THEY", "THE DOG BARKED ALL NIGHT"]
    for row in rows:
        audio, rate = sf.read(row["audio"])
        assert rate == 16_000 and audio.ndim == 1
        assert row["duration"] == pytest.approx(len(audio) / rate, abs=1e-3)
        assert 0.8 < row["duration"] < 6.0
        assert float((audio**2).mean()) > 0.001 and abs(audio).max() <= 1.0
        assert "+" in row["speaker"]  # accent+variant: the voice is the speaker
    assert [u.id for u in read_manifest(out / "all.jsonl")] == [r["id"] for r in rows]


def test_stops_at_the_requested_hours_and_leaves_no_stray_audio(wordnet: Path, tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it: apt-get install espeak-ng sox)")
    out = tmp_path / "synth"
    synth.main([str(out), "--wordnet", str(wordnet), "--hours", "0.0001", "--workers", "1"])
    rows = (out / "all.jsonl").read_text().splitlines()
    assert len(rows) == 1
    assert len(list((out / "audio").glob("*.flac"))) == 1


def test_missing_wordnet_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="wordnet-base"):
        synth.main([str(tmp_path / "out"), "--wordnet", str(tmp_path / "nowhere")])
