"""asr.data.synth: text sources, engines, the resumable corpus builder and `asr data synth`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.manifest import read_manifest
from asr.data.synth import corpus, engines, text
from asr.data.synth.corpus import SynthConfig, plan_corpus, plan_speech, split_manifest, synthesize_corpus

ROOT = Path(__file__).resolve().parent.parent
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make test installs it)"
)

# Two synsets in WordNet's data file layout: definitions, then the quoted examples, after the "|".
DATA_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
    '02084071 05 n 03 dog 0 domestic_dog 0 | a member of the genus Canis; "the dog barked all night"; '
    '"Dogs are loyal, aren\'t they?"\n'
    '02121620 05 n 01 cat 0 | feline mammal usually having thick soft fur; "cats sleep"; '
    '"in 1990 the cat had 2 kittens"; "it cost $5"\n'
)


@pytest.fixture
def wordnet(tmp_path: Path) -> Path:
    root = tmp_path / "wordnet"
    root.mkdir()
    (root / "data.noun").write_text(DATA_NOUN, encoding="latin-1")
    return root


def test_numbers_are_read_out_and_ambiguous_symbols_refused() -> None:
    assert text.spoken_form("In 1990 the cat had 2 kittens.") == "IN NINETEEN NINETY THE CAT HAD TWO KITTENS"
    assert text.spoken_form("the 3rd of 1,200 and 50% & more") == (
        "THE THIRD OF ONE THOUSAND TWO HUNDRED AND FIFTY PERCENT AND MORE"
    )
    assert text.spoken_form("it cost $5") is None
    assert text.spoken_form("B2B") is None  # a digit inside a word has no one reading
    assert text.spoken_form("...") is None


def test_wordnet_examples_and_definitions(wordnet: Path) -> None:
    examples = text.wordnet_sentences(wordnet, 3, 20, glosses=False)
    assert examples == [
        "THE DOG BARKED ALL NIGHT",
        "DOGS ARE LOYAL AREN'T THEY",
        "IN NINETEEN NINETY THE CAT HAD TWO KITTENS",
    ]  # "cats sleep" is too short, "$5" is ambiguous, the licence header is skipped
    both = text.wordnet_sentences(wordnet, 3, 20)
    assert "A MEMBER OF THE GENUS CANIS" in both and "FELINE MAMMAL USUALLY HAVING THICK SOFT FUR" in both
    assert len(both) == len(set(both))


def test_text_sources(tmp_path: Path, wordnet: Path) -> None:
    arctic = tmp_path / "cmuarctic.data"
    arctic.write_text('( arctic_a0001 "Author of the danger trail, Philip Steels, etc." )\n')
    assert text.read_source(f"arctic:{arctic}", 1, 40) == ["AUTHOR OF THE DANGER TRAIL PHILIP STEELS ETC"]
    train = tmp_path / "train"
    train.mkdir()
    (train / "text").write_text("u1 WE CALL IT BEAR\nu2\n")
    assert text.read_source(f"kaldi:{train}", 1, 40) == ["WE CALL IT BEAR"]
    assert text.read_source(f"wordnet-examples:{wordnet}", 3, 20)[0] == "THE DOG BARKED ALL NIGHT"


def test_text_sources_refuse_test_splits_and_say_what_is_wrong(tmp_path: Path) -> None:
    test = tmp_path / "test"
    test.mkdir()
    (test / "text").write_text("u1 WE CALL IT BEAR\n")
    with pytest.raises(ValueError, match="test split"):
        text.read_source(f"kaldi:{test}", 1, 40)
    with pytest.raises(ValueError, match="unknown text source 'books:x'"):
        text.read_source("books:x", 1, 40)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text.read_source(f"text:{tmp_path / 'missing.txt'}", 1, 40)
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        text.read_source(f"wordnet:{tmp_path}", 1, 40)


def test_unknown_or_missing_engines_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="choose from espeak-ng, pico"):
        engines.get_engine("mbrola")
    monkeypatch.setattr(engines.shutil, "which", lambda _: None)
    with pytest.raises(engines.EngineUnavailable, match="apt-get install libttspico-utils"):
        engines.get_engine("pico").check()
    assert {v.person for v in engines.get_engine("flite").voices()} >= {"arctic-slt", "arctic-rms"}
    assert len(engines.get_engine("kokoro").voices()) == 5 + 30  # five voices and 30 blends of two


def test_plans_are_seeded_and_grow_by_extension() -> None:
    sentences = [f"SENTENCE NUMBER {n} HAS FIVE" for n in range(400)]
    config = SynthConfig(hours={"espeak-ng": 0.2}, seed=3)
    espeak = engines.get_engine("espeak-ng")
    small = plan_speech(espeak, 0.1, sentences, config)
    big = plan_speech(espeak, 0.2, sentences, config)
    assert big[: len(small)] == small  # a bigger run keeps what a smaller one made: resumable after edits
    assert plan_speech(espeak, 0.2, sentences, SynthConfig(seed=4)) != big
    assert len({j.voice for j in big}) > 10 and all(0.8 <= j.speed <= 1.25 for j in big)
    assert plan_corpus(config, sentences) == plan_corpus(config, sentences)
    with pytest.raises(ValueError, match="no sentences"):
        plan_corpus(config, [])
    with pytest.raises(ValueError, match="unknown synthesis engine"):
        SynthConfig(hours={"sam": 1.0})


def test_nonspeech_clips_are_quiet_and_wordless(tmp_path: Path) -> None:
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(
        noise / "tap.flac", np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.3, 16000
    )
    jobs = corpus.plan_nonspeech(SynthConfig(nonspeech_hours=0.02, noise_dir=str(noise)))
    assert {j.source for j in jobs} == {"silence", "hiss", "tap.flac"} and all(j.text == "" for j in jobs)
    for job in jobs[:6]:
        audio = corpus.render(job, str(noise))
        assert len(audio) == round(job.seconds * 16000)
        rms = float(np.sqrt(np.mean(audio**2)))
        if job.source == "silence":
            assert rms == 0.0
        else:
            assert rms == pytest.approx(10 ** (job.level_db / 20), rel=0.05)


@needs_espeak
def test_corpus_resumes_after_a_kill_and_holds_out_whole_voices(tmp_path: Path) -> None:
    sentences = ["THE DOG BARKED ALL NIGHT", "CATS SLEEP ALL DAY LONG", "WE CALL IT BEAR"]
    config = SynthConfig(hours={"espeak-ng": 0.01}, nonspeech_hours=0.002, seed=1)
    jobs = plan_corpus(config, sentences)
    out = tmp_path / "synth"
    first = list(synthesize_corpus(jobs[:3], out))
    assert all(row is not None for row, _ in first)
    with (out / "all.jsonl").open("a") as f:
        f.write('{"id": "torn')  # a kill in the middle of a line
    rest = list(synthesize_corpus(jobs, out, workers=2))
    assert len(rest) == len(jobs) - 3  # only what was missing
    rows = [json.loads(line) for line in (out / "all.jsonl").read_text().splitlines() if line.endswith("}")]
    assert sorted(r["id"] for r in rows) == sorted(j.id for j in jobs)
    for row in rows:
        audio, rate = sf.read(out / row["audio"])
        assert rate == 16_000 and audio.ndim == 1
        assert row["duration"] == pytest.approx(len(audio) / rate, abs=1e-3)
        if row["engine"] == "espeak-ng":
            assert row["text"] in sentences and {"voice", "speed", "pitch"} <= set(row)
            assert 0.5 < np.abs(audio).max() <= 1.0
        else:
            assert row["text"] == ""
    held = {rows[0]["speaker"]}
    stats = split_manifest(out, held)
    valid = read_manifest(out / "valid.jsonl")
    train = read_manifest(out / "train.jsonl")
    assert {u.speaker for u in valid} == held and held.isdisjoint(u.speaker for u in train)
    assert stats["train"][0] + stats["valid"][0] == len(rows)
    assert Path(train[0].audio).is_file()  # relative paths resolve against the manifest's folder


@needs_espeak
def test_cli_writes_splits_and_an_engine_table(
    tmp_path: Path, wordnet: Path, capsys: pytest.CaptureFixture
) -> None:
    from client.cli import main

    out = tmp_path / "synth"
    args = ["data", "synth", str(out), "--hours", "espeak-ng=0.005", "--text", f"wordnet:{wordnet}"]
    assert main([*args, "--workers", "1", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "espeak-ng" in printed and "audio s per CPU s" in printed
    assert (out / "train.jsonl").is_file() and (out / "valid.jsonl").is_file()
    assert main(["data", "synth", str(out), "--hours", "espeak-ng", "--text", f"wordnet:{wordnet}"]) == 1
    assert "ENGINE=HOURS" in capsys.readouterr().err


def test_cli_names_the_package_of_a_missing_engine(
    tmp_path: Path, wordnet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from client.cli import main

    monkeypatch.setattr(engines.shutil, "which", lambda _: None)
    args = ["data", "synth", str(tmp_path), "--hours", "rhvoice=1", "--text", f"wordnet:{wordnet}"]
    assert main(args) == 1
    assert "apt-get install rhvoice rhvoice-english" in capsys.readouterr().err


@needs_espeak
def test_synth_speed_bench_reports_audio_per_cpu_second(capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("synth_speed", ROOT / "bench" / "synth_speed.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--engines", "espeak-ng", "--utterances", "2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["engine"] == "espeak-ng" and row["utterances"] == 2
    assert row["audio_s"] > 1.0 and row["cpu_s"] > 0
    # cpu_s is printed to 2 decimals: a fast engine's few hundredths of a second bound the speed only so far
    lo, hi = row["audio_s"] / (row["cpu_s"] + 0.005), row["audio_s"] / max(row["cpu_s"] - 0.005, 1e-3)
    assert lo * 0.99 <= row["speed"] <= hi * 1.01, row
