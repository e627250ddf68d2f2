"""Robustness of data preparation: Unicode transcripts, unusual Kaldi ``segments`` files, typos in the
model section of a training config."""

from __future__ import annotations

import json
import logging
import random
import re
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.dataset import load_utterance
from asr.data.importers import import_corpus
from asr.data.manifest import Utterance
from asr.model import ModelConfig
from asr.tokenizer import CharTokenizer, normalize_text
from client.cli import main

SR = 16000


def tone(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    return path


def by_id(utts: list[Utterance]) -> dict[str, Utterance]:
    return {u.id: u for u in utts}


# ------------------------------------------------------------------------------------------ normalisation


def _ascii_reference(text: str) -> str:
    """normalize_text as it was before non-ASCII handling changed; ASCII input must still give this."""
    text = text.upper().replace("`", "'").replace("-", " ")
    text = re.sub(r"[^A-Z' ]+", " ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", r"\1 \2", text)
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("apostrophe", ["\u2019", "\u2018", "\u02bc", "\u00b4", "`"])
def test_typographic_apostrophes_normalize_like_ascii(apostrophe: str) -> None:
    assert normalize_text(f"Don{apostrophe}t stop O{apostrophe}Neill{apostrophe}s") == "DON'T STOP O'NEILL'S"
    tok = CharTokenizer.default()
    assert tok.encode(f"Don{apostrophe}t") == tok.encode("Don't")


def test_typographic_quotes_are_stripped_like_ascii_quotes() -> None:
    assert normalize_text("\u2018quoted\u2019 words") == normalize_text("'quoted' words") == "QUOTED WORDS"


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("twenty\u2014two", "TWENTY TWO"),  # em dash
        ("pages 3\u20134 of A\u2013B", "PAGES OF A B"),  # en dash
        ("years\u2026later", "YEARS LATER"),  # ellipsis
        ("\u00abbonjour\u00bbmonde", "BONJOUR MONDE"),  # guillemets
        ("ni\u00f1o\u4e2dword", "NINO WORD"),  # a letter outside Latin
    ],
)
def test_non_ascii_separators_never_merge_words(raw: str, normal: str) -> None:
    assert normalize_text(raw) == normal


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("na\u00efve caf\u00e9 \u00c5ngstr\u00f6m", "NAIVE CAFE ANGSTROM"),
        ("e\u0301le\u0300ve", "ELEVE"),  # already decomposed
        ("Stra\u00dfe S\u00f8ren \u0141\u00f3d\u017a \u00c6sir", "STRASSE SOREN LODZ AESIR"),
        ("\ufb01ne", "FINE"),  # ligature
    ],
)
def test_accented_latin_letters_keep_the_word_whole(raw: str, normal: str) -> None:
    assert normalize_text(raw) == normal


def test_ascii_text_normalizes_as_before() -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " -'`.,!?;:\"()\t"
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    assert [normalize_text(s) for s in samples] == [_ascii_reference(s) for s in samples]


def test_shared_transcripts_normalize_as_before(shared_data: Path) -> None:
    lines = (shared_data / "speechocean762" / "train" / "text").read_text(encoding="utf-8").splitlines()
    assert lines and all(line.isascii() for line in lines)
    assert [normalize_text(s) for s in lines] == [_ascii_reference(s) for s in lines]


# ---------------------------------------------------------------------------------------- Kaldi segments


def kaldi_dir(tmp_path: Path, segments: str, text: str, seconds: float = 3.0) -> Path:
    rec = tone(tmp_path / "rec1.wav", seconds)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 {rec}\n")
    (d / "segments").write_text(segments)
    (d / "text").write_text(text)
    return d


def test_kaldi_segment_end_minus_one_runs_to_the_end_of_the_recording(tmp_path: Path) -> None:
    d = kaldi_dir(tmp_path, "s1 rec1 0.0 1.0\ns2 rec1 1.25 -1\n", "s1 HELLO\ns2 OPEN THE DOOR\n")
    utts = by_id(import_corpus("kaldi", d))
    assert set(utts) == {"s1", "s2"}
    assert utts["s2"].offset == pytest.approx(1.25) and utts["s2"].duration == pytest.approx(1.75)
    assert len(load_utterance(utts["s2"])) == pytest.approx(1.75 * SR, abs=2)


def test_kaldi_segment_end_minus_one_survives_data_prepare(tmp_path: Path) -> None:
    d = kaldi_dir(tmp_path, "s1 rec1 0.0 1.0\ns2 rec1 1.5 -1\n", "s1 HELLO\ns2 OPEN THE DOOR\n")
    out = tmp_path / "all.jsonl"
    assert main(["data", "prepare", "kaldi", str(d), str(out)]) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"s1", "s2"}
    assert rows["s2"]["offset"] == pytest.approx(1.5) and rows["s2"]["duration"] == pytest.approx(1.5)


def test_kaldi_segments_accept_a_channel_field(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = kaldi_dir(tmp_path, "s1 rec1 0.0 1.0 0\ns2 rec1 1.0 2.5 1\n", "s1 HELLO\ns2 GOOD MORNING\n")
    with caplog.at_level(logging.WARNING, logger="asr.data.importers"):
        utts = by_id(import_corpus("kaldi", d))
    assert utts["s2"].offset == pytest.approx(1.0) and utts["s2"].duration == pytest.approx(1.5)
    assert "1 segments name a channel other than 0" in caplog.text


@pytest.mark.parametrize(
    "line, match",
    [
        ("s1 rec1 0.0", "4 or 5 fields"),
        ("s1 rec1 0.0 1.0 0 extra", "4 or 5 fields"),
        ("s1 rec1 zero 1.0", "seconds"),
        ("s1 rec1 0.0 1.0 A", "whole number"),
        ("s1 rec1 0.0 1.0 -1", "channel must be 0 or more"),
    ],
)
def test_kaldi_malformed_segment_lines_say_what_is_wrong(tmp_path: Path, line: str, match: str) -> None:
    d = kaldi_dir(tmp_path, f"{line}\n", "s1 HELLO\n")
    with pytest.raises(ValueError, match=match) as info:
        import_corpus("kaldi", d)
    assert "segments:1" in str(info.value)


def test_kaldi_segment_without_recording_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = kaldi_dir(
        tmp_path,
        "s1 rec1 0.0 1.0\ns2 rec2 0.0 1.0\ns3 rec9 0 1\n",
        "s1 HELLO\ns2 GOOD MORNING\ns3 THANKS\n",
    )
    with caplog.at_level(logging.WARNING, logger="asr.data.importers"):
        utts = by_id(import_corpus("kaldi", d))
    assert set(utts) == {"s1"}
    assert "skipped 2 segments whose recording is not in wav.scp" in caplog.text
    assert "s2 -> rec2" in caplog.text


def test_kaldi_inverted_segment_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = kaldi_dir(tmp_path, "s1 rec1 0.0 1.0\ns2 rec1 2.0 1.5\n", "s1 HELLO\ns2 GOOD MORNING\n")
    with caplog.at_level(logging.WARNING, logger="asr.data.importers"):
        utts = by_id(import_corpus("kaldi", d))
    assert set(utts) == {"s1"}
    assert "skipping empty or inverted segment" in caplog.text


# ------------------------------------------------------------------------------------ model config typos


@pytest.mark.parametrize("section", ["encoder", "decoder", "features"])
def test_unknown_nested_model_key_names_section_key_and_choices(section: str) -> None:
    expected = re.escape(f"['{section}.hiden_size'] in section 'model.{section}'")
    with pytest.raises(ValueError, match=expected) as info:
        ModelConfig.from_dict({section: {"hiden_size": 32}})
    assert "expected some of [" in str(info.value)
    if section == "encoder":
        assert "'hidden_size'" in str(info.value)


def test_model_section_that_is_not_a_mapping_is_reported() -> None:
    with pytest.raises(ValueError, match=r"'model\.encoder' must be a mapping"):
        ModelConfig.from_dict({"encoder": 32})


def test_valid_nested_model_keys_still_load() -> None:
    config = ModelConfig.from_dict({"encoder": {"hidden_size": 32, "num_layers": 2}})
    assert config.encoder.hidden_size == 32 and config.encoder.num_layers == 2
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_train_config_with_a_typo_in_the_model_section(tmp_path: Path) -> None:
    from asr.train import load_config

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {train: [x.jsonl]}\nmodel: {encoder: {hiden_size: 32}}\n")
    with pytest.raises(ValueError, match=r"encoder\.hiden_size"):
        load_config(cfg)
