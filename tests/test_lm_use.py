"""The language model as users reach it: ``asr lm``, ``--lm`` on ``asr eval`` and ``asr transcribe``, and a
server started with ``--lm`` (ListModels, per-request ``lm_weight``, Recognize and StreamingRecognize).

A random-weight model reads speech as noise, so an LM counted from one sentence and given a large weight takes
the search over: the output becomes that sentence. That makes "the LM was used" visible end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import tiny_model
from test_server import ServerThread, code_of, config, pcm_roundtrip, stream_config, streaming_requests

from asr import ASRModel, save_checkpoint
from asr.audio import SAMPLE_RATE, float_to_pcm16, load_audio
from asr.decoding import DecodingOptions
from asr.lm import NGramLM, load_lm
from asr.lm_cli import beam_from_args, ctc_weight_from_args, read_texts
from asr.model_decoding import ModelDecoding
from asr.tokenizer import CharTokenizer
from asr.transcribe import transcribe
from asr_grpc import asr_pb2
from client import Client, RecognitionConfig
from client.cli import main
from server.app import create_server

SENTENCE = "HELLO WORLD"
STRONG = 5.0  # an LM weight that overrides a random model


@pytest.fixture(scope="module")
def model() -> ASRModel:
    return tiny_model()


@pytest.fixture(scope="module")
def files(model: ASRModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lm")
    save_checkpoint(model, d / "tiny.pt")
    (d / "text.txt").write_text(f"{SENTENCE.lower()}!\n\n{SENTENCE}\n", encoding="utf-8")
    (d / "text.jsonl").write_text(json.dumps({"id": "a", "audio": "x.wav", "text": "Hello, world."}) + "\n")
    (d / "kaldi_text").write_text("utt1 HELLO WORLD\nutt2\n")
    argv = ["lm", "train", str(d / "text.txt"), "-o", str(d / "hello.lm"), "--model", str(d / "tiny.pt")]
    assert main(argv) == 0
    return {"model": d / "tiny.pt", "lm": d / "hello.lm", "dir": d}


@pytest.fixture(scope="module")
def wav(speech_dir: Path) -> Path:
    return speech_dir / "utt1.wav"


def test_read_texts_formats_and_errors(files: dict[str, Path]) -> None:
    d = files["dir"]
    assert list(read_texts([d / "text.txt"])) == [SENTENCE, SENTENCE]  # normalised, blank lines skipped
    assert list(read_texts([d / "text.jsonl"])) == [SENTENCE]
    assert list(read_texts([d / "kaldi_text"], "kaldi")) == [SENTENCE]  # an id without text is skipped
    with pytest.raises(ValueError, match=r"text\.txt:1: not a JSON object"):
        list(read_texts([d / "text.txt"], "jsonl"))
    with pytest.raises(FileNotFoundError, match="no such text file"):
        list(read_texts([d / "missing.txt"]))
    with pytest.raises(ValueError, match="unknown text format"):
        list(read_texts([d / "text.txt"], "csv"))


def test_lm_train_and_perplexity_commands(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d, ckpt = files["dir"], str(files["model"])
    out = d / "six.lm"
    assert main(["lm", "train", str(d / "text.jsonl"), str(d / "text.txt"), "-o", str(out), "--model", ckpt,
                 "--valid", str(d / "text.txt")]) == 0
    captured = capsys.readouterr()
    assert "6-gram token LM" in captured.err and "from 3 sentences" in captured.err
    seen = float(captured.out.split()[-1])
    assert main(["lm", "perplexity", str(out), str(d / "text.jsonl"), "--model", ckpt]) == 0
    assert float(capsys.readouterr().out.split()[1]) == pytest.approx(seen)
    (d / "other.txt").write_text("QUIZZICAL JUXTAPOSITION\n")
    assert main(["lm", "perplexity", str(out), str(d / "other.txt"), "--model", ckpt]) == 0
    assert float(capsys.readouterr().out.split()[1]) > 3 * seen  # unseen text is less likely
    (d / "empty.txt").write_text("\n...\n")
    train = ["lm", "train", "-o", str(d / "e.lm"), "--model", ckpt]
    assert main([*train, str(d / "empty.txt")]) == 1
    assert "no text in" in capsys.readouterr().err
    assert main([*train, str(d / "text.txt"), "--order", "0"]) == 1
    assert "--order" in capsys.readouterr().err


def test_an_lm_is_tied_to_its_tokenizer(
    files: dict[str, Path], model: ASRModel, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lm = load_lm(files["lm"], model.tokenizer)
    assert lm.order == 6 and lm.tokenizer
    units = model.tokenizer.units
    shuffled = CharTokenizer([*units[1:], units[0]])  # same size, other ids
    with pytest.raises(ValueError, match=r"hello.lm: the language model does not match.*asr lm train"):
        load_lm(files["lm"], shuffled)
    other = NGramLM.train([SENTENCE], shuffled)
    other.save(tmp_path / "other.lm")
    argv = ["transcribe", str(wav), "--model", str(files["model"]), "--device", "cpu"]
    assert main([*argv, "--lm", str(tmp_path / "other.lm")]) == 1
    assert "other.lm: the language model does not match the model's tokenizer" in capsys.readouterr().err


def test_shallow_fusion_through_the_library(model: ASRModel, files: dict[str, Path], wav: Path) -> None:
    lm = load_lm(files["lm"], model.tokenizer)
    plain = transcribe(model, wav, DecodingOptions(beam_size=4))
    assert plain.text != SENTENCE
    assert transcribe(model, wav, DecodingOptions(beam_size=4, lm_weight=0.0), lm=lm).text == plain.text
    assert model.transcribe(wav, DecodingOptions(beam_size=4, lm_weight=STRONG), lm=lm).text == SENTENCE


def test_eval_and_transcribe_take_an_lm(
    files: dict[str, Path], wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u", "audio": str(wav), "text": SENTENCE}) + "\n")
    base = ["eval", str(manifest), "--model", str(files["model"]), "--device", "cpu", "--beam", "4", "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["wer"] > 0
    assert main([*base, "--lm", str(files["lm"]), "--lm-weight", str(STRONG)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["wer"] == 0.0

    tr = ["transcribe", str(wav), "--model", str(files["model"]), "--device", "cpu", "--beam", "4"]
    assert main([*tr, "--lm", str(files["lm"]), "--lm-weight", str(STRONG)]) == 0
    assert capsys.readouterr().out.strip() == SENTENCE
    assert main([*tr, "--lm-weight", "0.5"]) == 1
    assert "--lm-weight needs a language model" in capsys.readouterr().err
    assert main([*tr, "--lm", str(files["dir"] / "missing.lm")]) == 1
    assert "language model not found" in capsys.readouterr().err
    assert main(["transcribe", str(wav), "--server", "127.0.0.1:1", "--lm", str(files["lm"])]) == 2
    assert "asr serve --lm" in capsys.readouterr().err


# -- the server ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_server(model: ASRModel, files: dict[str, Path]) -> Iterator[ServerThread]:
    s = ServerThread(config(lm=str(files["lm"]), lm_weight=STRONG), model)
    yield s
    s.stop()


def recognize(server: ServerThread, audio: np.ndarray, **decoding: float) -> str:
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16,
        sample_rate_hertz=SAMPLE_RATE,
        decoding=asr_pb2.DecodingConfig(**decoding),  # type: ignore[arg-type]
    )
    req = asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(audio)))
    resp = server.stub().Recognize(req, timeout=60)
    return " ".join(r.alternatives[0].transcript for r in resp.results)


def test_server_fuses_its_lm(lm_server: ServerThread, model: ASRModel, wav: Path) -> None:
    audio = load_audio(wav)
    (info,) = lm_server.stub().ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
    assert info.language_model.startswith("6-gram token LM")
    assert recognize(lm_server, audio) == SENTENCE  # the server's default weight
    plain = transcribe(model, pcm_roundtrip(audio), DecodingOptions(beam_size=4)).text
    assert recognize(lm_server, audio, lm_weight=0.0) == plain  # a request can turn it off
    assert recognize(lm_server, audio, method=asr_pb2.DecodingConfig.GREEDY) != SENTENCE  # greedy: no search
    assert code_of(lambda: recognize(lm_server, audio, lm_weight=-1.0)) == grpc.StatusCode.INVALID_ARGUMENT
    pad = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    responses = list(
        lm_server.stub().StreamingRecognize(
            streaming_requests(np.concatenate([pad, audio, pad, pad]), stream_config(interim=False)),
            timeout=60,
        )
    )
    finals = [
        r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final
    ]
    assert finals == [SENTENCE]
    with Client(lm_server.address) as client:  # the SDK: the model's LM and a per-request weight
        assert client.list_models()[0].language_model == info.language_model
        assert client.recognize(wav, RecognitionConfig(beam_size=4)).text == SENTENCE
        assert client.recognize(wav, RecognitionConfig(beam_size=4, lm_weight=0.0)).text != SENTENCE


def test_server_without_lm_refuses_an_lm_weight(model: ASRModel, wav: Path) -> None:
    s = ServerThread(config(), model)
    try:
        audio = load_audio(wav)
        assert s.stub().ListModels(asr_pb2.ListModelsRequest(), timeout=10).models[0].language_model == ""
        with pytest.raises(grpc.RpcError) as info:
            recognize(s, audio, lm_weight=0.5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has none (start the server with --lm)" in str(info.value.details())
        plain = transcribe(model, pcm_roundtrip(audio), DecodingOptions(beam_size=4)).text
        assert recognize(s, audio, lm_weight=0.0) == plain
    finally:
        s.stop()


def test_server_refuses_an_lm_for_another_tokenizer(model: ASRModel, tmp_path: Path) -> None:
    units = model.tokenizer.units
    NGramLM.train([SENTENCE], CharTokenizer([*units[1:], units[0]])).save(tmp_path / "other.lm")
    with pytest.raises(ValueError, match="cannot decode model 'default'"):
        asyncio.run(create_server(config(lm=str(tmp_path / "other.lm"), warmup=False), model))
    with pytest.raises(ValueError, match="lm_weight must be >= 0"):
        config(lm_weight=-0.1)


def test_stream_command_passes_the_lm_weight(
    lm_server: ServerThread, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stream", str(wav), "--server", lm_server.address, "--no-realtime", "--beam", "4"]
    assert main(argv) == 0
    assert capsys.readouterr().out.split("\n")[0].strip() == SENTENCE
    assert main([*argv, "--lm-weight", "0"]) == 0
    assert SENTENCE not in capsys.readouterr().out


# -- a model's own decoding settings (NAME.decoding.json) ----------------------------------------------------


def test_model_decoding_settings_are_read_and_checked(files: dict[str, Path], tmp_path: Path) -> None:
    assert ModelDecoding.read(tmp_path / "none.decoding.json") == ModelDecoding()
    side = tmp_path / "m.decoding.json"
    side.write_text(json.dumps({"lm": str(files["lm"]), "ctc_weight": 0.5, "note": "why"}))
    assert ModelDecoding.read(side) == ModelDecoding(0.5, files["lm"], 0.3)  # an LM's weight defaults to 0.3
    for bad, message in [
        ({"lm_wieght": 1}, r"unknown decoding settings \['lm_wieght'\]"),
        ({"ctc_weight": 2}, "ctc_weight must be a number in"),
        ({"lm": "hello.lm", "lm_weight": -1}, "lm_weight must be a number >= 0"),
        ({"beam_size": 0}, "beam_size must be a whole number >= 1"),
        ({"beam_size": 2.5}, "beam_size must be a whole number >= 1"),
        ([1, 2], "unknown decoding settings"),
    ]:
        side.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            ModelDecoding.read(side)
    side.write_text("{")
    with pytest.raises(ValueError, match="not a JSON object"):
        ModelDecoding.read(side)
    side.write_text(json.dumps({"lm": "missing.lm"}))
    with pytest.raises(FileNotFoundError, match=r"its language model .*missing.lm is missing"):
        ModelDecoding.read(side)
    ns = argparse.Namespace(ctc_weight=None, model=str(files["model"]))
    assert ctc_weight_from_args(ns, 0.3) == 0.3  # no settings beside tiny.pt (yet)
    assert ctc_weight_from_args(argparse.Namespace(ctc_weight=0.7, model=None), 0.3) == 0.7
    beside = tmp_path / "beamy.pt"
    beside.write_bytes(files["model"].read_bytes())
    (tmp_path / "beamy.decoding.json").write_text(json.dumps({"beam_size": 20}))
    assert ModelDecoding.of(beside) == ModelDecoding(beam_size=20)
    assert beam_from_args(argparse.Namespace(beam=None, model=str(beside)), 10) == 20
    assert beam_from_args(argparse.Namespace(beam=4, model=str(beside)), 10) == 4  # the flag wins
    assert beam_from_args(argparse.Namespace(beam=None, model=str(files["model"])), 10) == 10


def test_the_cli_and_a_server_decode_with_the_models_own_lm(
    model: ASRModel, files: dict[str, Path], wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint with ``NAME.decoding.json`` beside it: ``asr transcribe`` and ``asr serve`` use its LM
    and weights unless told otherwise (``--lm-weight 0``, ``--no-model-decoding``, another ``--lm``)."""
    ckpt = tmp_path / "own.pt"
    save_checkpoint(model, ckpt)
    (tmp_path / "hello.lm").write_bytes(files["lm"].read_bytes())
    (tmp_path / "own.decoding.json").write_text(
        json.dumps({"lm": "hello.lm", "lm_weight": STRONG, "ctc_weight": 0.4})
    )
    assert ctc_weight_from_args(argparse.Namespace(ctc_weight=None, model=str(ckpt)), 0.3) == 0.4
    tr = ["transcribe", str(wav), "--model", str(ckpt), "--device", "cpu", "--beam", "4"]
    assert main(tr) == 0
    assert capsys.readouterr().out.strip() == SENTENCE  # the model's own LM took the search over
    assert main([*tr, "--lm-weight", "0"]) == 0
    assert capsys.readouterr().out.strip() != SENTENCE
    audio = load_audio(wav)
    for changes, want in [({}, True), ({"model_decoding": False}, False)]:
        s = ServerThread(config(model=str(ckpt), **changes), None)  # type: ignore[arg-type]
        try:
            (info,) = s.stub().ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
            assert info.language_model.startswith("6-gram token LM") is want
            assert (recognize(s, audio) == SENTENCE) is want
            loaded = s.server.service.models["own"]
            assert (loaded.ctc_weight, loaded.lm_weight) == ((0.4, STRONG) if want else (0.3, 0.0))
        finally:
            s.stop()
