"""Corpus importers and ``asr data prepare`` on tiny generated corpora, one per layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.importers import import_corpus
from asr.data.manifest import Utterance, read_manifest, split_by_speakers, write_manifest
from client.cli import main

SR = 16000


def tone(path: Path, seconds: float, sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)
    return path


def by_id(utts: list[Utterance]) -> dict[str, Utterance]:
    return {u.id: u for u in utts}


def test_kaldi_resolves_paths_from_the_corpus_root(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    tone(root / "WAVE" / "S1" / "a.wav", 0.5)
    tone(root / "WAVE" / "S2" / "b.wav", 0.75)
    d = root / "train"
    d.mkdir()
    (d / "wav.scp").write_text("a WAVE/S1/a.wav\nb WAVE/S2/b.wav\n")
    (d / "text").write_text("a HELLO THERE\nb GOOD BYE\n")
    (d / "utt2spk").write_text("a s1\nb s2\n")
    utts = by_id(import_corpus("kaldi", d))
    assert set(utts) == {"a", "b"}
    assert utts["a"].audio == str((root / "WAVE" / "S1" / "a.wav").resolve())
    assert utts["b"].speaker == "s2" and utts["b"].text == "GOOD BYE"
    assert utts["b"].duration == pytest.approx(0.75)


def test_kaldi_segments_and_missing_audio(tmp_path: Path) -> None:
    tone(tmp_path / "rec.wav", 2.0)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec {tmp_path / 'rec.wav'}\n")
    (d / "segments").write_text("u1 rec 0.0 0.8\nu2 rec 1.0 1.9\n")
    (d / "text").write_text("u1 ONE\nu2 TWO\n")
    utts = by_id(import_corpus("kaldi", d))
    assert utts["u2"].offset == pytest.approx(1.0) and utts["u2"].duration == pytest.approx(0.9)
    assert utts["u1"].speaker == "rec"
    (d / "wav.scp").write_text("rec nowhere/rec.wav\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_corpus("kaldi", d)


def test_librispeech(tmp_path: Path) -> None:
    ch = tmp_path / "train-clean" / "19" / "198"
    tone(ch / "19-198-0000.flac", 0.5, fmt="FLAC")
    tone(ch / "19-198-0001.flac", 0.6, fmt="FLAC")
    (ch / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 CHAPTER ONE\n")
    utts = by_id(import_corpus("librispeech", tmp_path))
    assert utts["19-198-0001"].text == "CHAPTER ONE"
    assert utts["19-198-0000"].speaker == "19"
    assert utts["19-198-0001"].duration == pytest.approx(0.6)


def test_arctic_per_file_transcripts_and_done_data(tmp_path: Path) -> None:
    cathy = tmp_path / "cathy"
    tone(cathy / "data" / "arctic_a0001.wav", 0.5)
    (cathy / "data" / "arctic_a0001.txt").write_text("Author of the danger trail, Philip Steels, etc.\n")
    tone(cathy / "data" / "arctic_a0002.wav", 0.5)  # no transcript: skipped
    utts = import_corpus("arctic", cathy)
    assert [(u.id, u.speaker) for u in utts] == [("arctic_a0001", "cathy")]
    assert utts[0].text.startswith("Author of")

    cmu = tmp_path / "cmu_us_bdl_arctic"
    tone(cmu / "wav" / "arctic_a0001.wav", 0.5)
    (cmu / "etc").mkdir()
    (cmu / "etc" / "txt.done.data").write_text('( arctic_a0001 "Author of the danger trail." )\n')
    utts = import_corpus("arctic", cmu, speaker="bdl")
    assert utts[0].text == "Author of the danger trail." and utts[0].speaker == "bdl"


def test_ljspeech(tmp_path: Path) -> None:
    tone(tmp_path / "wavs" / "LJ001-0001.wav", 0.5)
    tone(tmp_path / "wavs" / "LJ001-0002.wav", 0.5)
    (tmp_path / "metadata.csv").write_text(
        "LJ001-0001|Printing, in the 1st sense|Printing, in the first sense\nLJ001-0002|in being|\n"
    )
    utts = by_id(import_corpus("ljspeech", tmp_path))
    assert utts["LJ001-0001"].text == "Printing, in the first sense"  # the normalised column
    assert utts["LJ001-0002"].text == "in being"


def test_commonvoice(tmp_path: Path) -> None:
    tone(tmp_path / "clips" / "c1.wav", 0.5)
    tone(tmp_path / "clips" / "c2.wav", 0.5)
    (tmp_path / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\nspk1\tc1.wav\tHello there.\t2\nspk2\tc2.wav\t\t1\n"
    )
    utts = import_corpus("commonvoice", tmp_path)
    assert [(u.id, u.speaker, u.text) for u in utts] == [("c1", "spk1", "Hello there.")]  # empty text dropped
    with pytest.raises(FileNotFoundError, match="train"):
        import_corpus("commonvoice", tmp_path, split="dev")


def test_folder_recursive_with_lab(tmp_path: Path) -> None:
    tone(tmp_path / "alice" / "x.wav", 0.5)
    (tmp_path / "alice" / "x.txt").write_text("first\n")
    tone(tmp_path / "bob" / "x.wav", 0.5)
    (tmp_path / "bob" / "x.lab").write_text("second\n")
    utts = by_id(import_corpus("folder", tmp_path))
    assert set(utts) == {"alice_x", "bob_x"}
    assert utts["bob_x"].speaker == "bob" and utts["bob_x"].text == "second"


def test_unknown_corpus_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="librispeech"):
        import_corpus("timit", tmp_path)


def test_manifest_round_trip_and_relative_paths(tmp_path: Path) -> None:
    utts = [Utterance("a", "audio/a.wav", "HI", "s", 0.5, 1.25), Utterance("b", "/abs/b.wav", "YO")]
    write_manifest(utts, tmp_path / "m.jsonl")
    back = read_manifest(tmp_path / "m.jsonl")
    assert back[0].audio == str(tmp_path / "audio" / "a.wav")
    assert (back[0].offset, back[0].duration, back[1].speaker, back[1].duration) == (0.5, 1.25, "", None)
    (tmp_path / "bad.jsonl").write_text('{"audio": "x.wav"}\n')
    with pytest.raises(ValueError, match="text"):
        read_manifest(tmp_path / "bad.jsonl")


def test_speaker_split_is_disjoint_and_deterministic() -> None:
    utts = [Utterance(f"u{i}", f"{i}.wav", "A", f"s{i % 10}") for i in range(100)]
    rest, held = split_by_speakers(utts, 3, seed=1)
    assert len({u.speaker for u in held}) == 3
    assert not {u.speaker for u in held} & {u.speaker for u in rest}
    assert len(rest) + len(held) == 100
    assert split_by_speakers(utts, 3, seed=1) == (rest, held)
    with pytest.raises(ValueError, match="10"):
        split_by_speakers(utts, 10)


def test_data_prepare_cli_writes_train_and_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    for spk in range(4):
        for i in range(3):
            tone(src / f"spk{spk}" / f"u{i}.wav", 0.3 + 0.1 * i)
            (src / f"spk{spk}" / f"u{i}.txt").write_text(f"WORD {i}\n")
    out = tmp_path / "out"
    assert main(["data", "prepare", "folder", str(src), str(out), "--valid-speakers", "1"]) == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(line) for line in (out / "valid.jsonl").read_text().splitlines()]
    assert len(train) == 9 and len(valid) == 3
    assert len({u["speaker"] for u in valid}) == 1
    assert all(Path(u["audio"]).is_absolute() and u["duration"] > 0 for u in train + valid)
    assert "train.jsonl: 9 utterances" in capsys.readouterr().out
    assert (
        main(["data", "prepare", "folder", str(src), str(tmp_path / "all.jsonl"), "--max-duration", "0.45"])
        == 0
    )
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 8


def test_shared_speechocean_layout(shared_data: Path) -> None:
    utts = import_corpus("kaldi", shared_data / "speechocean762" / "train")
    assert len(utts) == 2500
    assert all(Path(u.audio).is_file() for u in utts[:20])
