"""Phrase hints: the automaton's credit rules, and the beam search they steer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from conftest import tiny_model
from test_lm import CTCModel, ambiguous_cat
from test_server import ServerThread, config

from asr import biasing, save_checkpoint
from asr.biasing import PhraseBiaser, check_phrases, phrase_ids
from asr.decoding import DecodingOptions, beam_search
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from asr_grpc import asr_pb2
from client import Client, RecognitionConfig
from client.cli import main

TOK = CharTokenizer.default()


def credit(biaser: PhraseBiaser, text: str, end: bool = True, tok: Any = TOK) -> float:
    """Total bonus the search would add along ``<sos> text [<eos>]``."""
    state = biaser.init_state(1, torch.device("cpu"))
    last, total = tok.sos_id, 0.0
    for t in [*tok.encode(text), *([tok.eos_id] if end else [])]:
        bonus, state = biaser.score(torch.tensor([last]), state)
        total += float(bonus[0, t])
        last = t
    return total


def test_completed_phrases_keep_their_credit_and_broken_ones_lose_it() -> None:
    b = PhraseBiaser.build(TOK, ["cat"], boost=1.0)
    assert credit(b, "CAT") == pytest.approx(3.0)
    assert credit(b, "A CAT SAT") == pytest.approx(3.0)
    assert credit(b, "CAT CAT") == pytest.approx(6.0)
    assert credit(b, "CAR") == pytest.approx(0.0)  # C, A credited, then taken back at R
    assert credit(b, "CA") == pytest.approx(0.0)  # taken back at <eos>
    assert credit(b, "CA", end=False) == pytest.approx(2.0)  # (a live prefix holds its credit)
    assert credit(b, "CONCAT") == pytest.approx(0.0)  # only from a word boundary
    assert credit(b, "CATS") == pytest.approx(0.0)  # whole words only
    assert credit(b, "CAT", end=False) == pytest.approx(3.0)  # (banked at the next word start or <eos>)


def test_failure_links_carry_a_broken_match_into_a_shorter_phrase() -> None:
    b = PhraseBiaser.build(TOK, ["new york", "york"], boost=0.5)
    assert credit(b, "NEW YORK") == pytest.approx(0.5 * 8)  # N E W _ Y O R K
    assert credit(b, "OLD YORK") == pytest.approx(0.5 * 4)
    assert credit(b, "NEW YORK", end=False) == pytest.approx(0.5 * 8)
    assert credit(b, "NEW YOGURT") == pytest.approx(0.0)
    assert credit(b, "NEW YOGURT", end=False) == pytest.approx(0.0)
    assert credit(b, "NEWS YORK") == pytest.approx(0.5 * 4)  # NEW broken by S, YORK matched afresh
    both = PhraseBiaser.build(TOK, ["new", "new york"], boost=1.0)
    assert credit(both, "NEW") == pytest.approx(3.0)
    assert credit(both, "NEW YORK") == pytest.approx(8.0)  # the longer phrase goes on through the space
    assert credit(both, "NEW DELHI") == pytest.approx(3.0)  # when it breaks, NEW keeps its credit
    assert credit(both, "NEW YO") == pytest.approx(3.0)
    assert credit(both, "NEWT") == pytest.approx(0.0)


def test_word_pieces_match_whole_words() -> None:
    bpe = SentencePieceTokenizer.train(["the cat sat on the mat", "a cat and a dog", "concatenate"] * 20, 40)
    b = PhraseBiaser.build(bpe, ["cat"], boost=1.0)
    n = len(bpe.encode("CAT"))
    assert credit(b, "THE CAT SAT", tok=bpe) == pytest.approx(n)
    assert credit(b, "CONCATENATE", tok=bpe) == pytest.approx(0.0)
    assert credit(b, "CA", tok=bpe) == pytest.approx(0.0)


def test_builds_are_checked_and_cached() -> None:
    b = PhraseBiaser.build(TOK, ["cat", "dog"], boost=1.0)
    assert PhraseBiaser.build(TOK, ["cat", "dog"], boost=1.0) is b
    assert PhraseBiaser.build(TOK, ["cat", "dog"], boost=2.0) is not b
    with pytest.raises(ValueError, match="nothing this model can spell"):
        PhraseBiaser.build(TOK, ["cat", "!!!"], boost=1.0)
    with pytest.raises(ValueError, match="over 100 tokens"):
        phrase_ids(TOK, "x" * 101)
    with pytest.raises(ValueError, match="boost must be >= 0"):
        PhraseBiaser.build(TOK, ["cat"], boost=-1.0)
    with pytest.raises(ValueError, match="not one string"):
        DecodingOptions(phrases="cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="phrase_boost"):
        DecodingOptions(phrases=("cat",), phrase_boost=-0.5)
    assert DecodingOptions(phrases=["cat"]).phrases == ("cat",)  # type: ignore[arg-type]
    hash(DecodingOptions(phrases=["cat"]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total 10100 tokens; at most 10000 per request"):
        check_phrases(TOK, ["x" * 100] * 101)


def test_the_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(biasing, "_CACHE", biasing.OrderedDict())
    one = PhraseBiaser.build(TOK, ["kubernetes"], boost=1.0)
    monkeypatch.setattr(biasing, "_CACHE_BYTES", 3 * one.nbytes)
    for boost in (2.0, 3.0, 4.0, 5.0):
        PhraseBiaser.build(TOK, ["kubernetes"], boost=boost)
    assert len(biasing._CACHE) == 3  # the oldest went first
    assert PhraseBiaser.build(TOK, ["kubernetes"], boost=1.0) is not one


@torch.inference_mode()
def test_hints_steer_the_search() -> None:
    model = CTCModel()
    enc, lengths = ambiguous_cat()  # reads "CUT", with "CAT" a close second
    opts = DecodingOptions(beam_size=4, ctc_weight=1.0)
    assert TOK.decode(beam_search(model, enc, lengths, opts)[0][0].tokens) == "CUT"
    hinted = DecodingOptions(beam_size=4, ctc_weight=1.0, phrases=("cat",), phrase_boost=0.5)
    assert TOK.decode(beam_search(model, enc, lengths, hinted)[0][0].tokens) == "CAT"
    other = DecodingOptions(beam_size=4, ctc_weight=1.0, phrases=("dog", "cap"), phrase_boost=0.5)
    assert TOK.decode(beam_search(model, enc, lengths, other)[0][0].tokens) == "CUT"  # distractors
    off = DecodingOptions(beam_size=4, ctc_weight=1.0, phrases=("cat",), phrase_boost=0.0)
    assert TOK.decode(beam_search(model, enc, lengths, off)[0][0].tokens) == "CUT"


# -- through the server, the SDK and the CLI -----------------------------------------------------------------
# A random-weight model reads speech as noise: a strongly boosted hint takes the search over, so "the hint was
# used" shows in the text.

HINT = "hello world"


@pytest.fixture(scope="module")
def hint_server() -> Iterator[ServerThread]:
    s = ServerThread(config(max_phrases=3), tiny_model())
    yield s
    s.stop()


def recognize(server: ServerThread, wav: Path, **fields: Any) -> str:
    cfg = asr_pb2.RecognitionConfig(**fields)
    req = asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=wav.read_bytes()))
    resp = server.stub().Recognize(req, timeout=60)
    return " ".join(r.alternatives[0].transcript for r in resp.results)


def test_server_takes_phrase_hints(
    hint_server: ServerThread, hello_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "HELLO WORLD" not in recognize(hint_server, hello_wav)
    assert "HELLO WORLD" in recognize(hint_server, hello_wav, phrases=[HINT, "good"], phrase_boost=3.0)
    assert "HELLO WORLD" not in recognize(hint_server, hello_wav, phrases=[HINT], phrase_boost=0.0)
    monkeypatch.setattr(biasing, "MAX_HINT_TOKENS", 12)
    with pytest.raises(grpc.RpcError) as info:
        recognize(hint_server, hello_wav, phrases=[HINT, "good"])  # 11 + 4 tokens
    assert "total 15 tokens; at most 12" in str(info.value.details())
    monkeypatch.undo()
    greedy = asr_pb2.DecodingConfig(method=asr_pb2.DecodingConfig.GREEDY)
    assert "HELLO WORLD" not in recognize(hint_server, hello_wav, phrases=[HINT], decoding=greedy)
    for fields, message in [
        ({"phrases": ["a", "b", "c", "d"]}, "4 phrase hints; this server takes at most 3"),
        ({"phrases": [HINT, "!!!"]}, "'!!!' has nothing this model can spell"),
        ({"phrases": [HINT], "phrase_boost": 11.0}, "phrase_boost must be in [0, 10]"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            recognize(hint_server, hello_wav, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(info.value.details())
    sc = asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(phrases=[HINT], phrase_boost=3.0, encoding=asr_pb2.WAV)
    )
    requests = [
        asr_pb2.StreamingRecognizeRequest(streaming_config=sc),
        asr_pb2.StreamingRecognizeRequest(audio_content=hello_wav.read_bytes()),
    ]
    finals = [
        r.results[0].alternatives[0].transcript
        for r in hint_server.stub().StreamingRecognize(iter(requests), timeout=60)
        if r.results and r.results[0].is_final
    ]
    assert finals and all("HELLO WORLD" in f for f in finals if f)
    with Client(hint_server.address) as client:
        hinted = RecognitionConfig(phrases=(HINT,), phrase_boost=3)
        assert "HELLO WORLD" in client.recognize(hello_wav, hinted).text
        with pytest.raises(ValueError, match="not one string"):
            RecognitionConfig(phrases=HINT)  # type: ignore[arg-type]


def test_cli_phrase_flags(
    hint_server: ServerThread, hello_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model(), ckpt)
    local = ["transcribe", str(hello_wav), "--model", str(ckpt), "--device", "cpu", "--beam", "4"]
    assert main([*local, "--phrase", HINT, "--phrase-boost", "3"]) == 0
    assert "HELLO WORLD" in capsys.readouterr().out
    (tmp_path / "hints.txt").write_text(f"\n{HINT}\n")
    assert main([*local, "--phrases", str(tmp_path / "hints.txt"), "--phrase-boost", "3"]) == 0
    assert "HELLO WORLD" in capsys.readouterr().out
    assert main([*local, "--phrase", "!!!"]) == 1
    assert "nothing this model can spell" in capsys.readouterr().err
    assert main([*local, "--phrases", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read --phrases" in capsys.readouterr().err
    remote = ["transcribe", str(hello_wav), "--server", hint_server.address]
    assert main([*remote, "--phrase", HINT, "--phrase-boost", "3"]) == 0
    assert "HELLO WORLD" in capsys.readouterr().out
    stream = ["stream", str(hello_wav), "--server", hint_server.address, "--no-realtime"]
    assert main([*stream, "--phrase", HINT, "--phrase-boost", "3"]) == 0
    assert "HELLO WORLD" in capsys.readouterr().out


@torch.inference_mode()
def test_hints_and_an_lm_fuse_together() -> None:
    from asr.lm import NGramLM

    model = CTCModel()
    enc, lengths = ambiguous_cat()
    lm = NGramLM.train(["THE CAT SAT", "A CAT RAN", "MY CAT"], TOK, order=3)
    opts = DecodingOptions(beam_size=4, ctc_weight=1.0, lm_weight=0.5, phrases=("cut",), phrase_boost=2.0)
    best = beam_search(model, enc, lengths, opts, lm=lm)[0][0]
    assert TOK.decode(best.tokens) == "CUT"  # the hint outweighs the LM here
    assert best.lm_score == pytest.approx(lm.log_prob(list(best.tokens)), abs=1e-5)  # bonuses not in it
    plain = DecodingOptions(beam_size=4, ctc_weight=1.0, lm_weight=0.5)
    no_hint = beam_search(model, enc, lengths, plain, lm=lm)
    assert TOK.decode(no_hint[0][0].tokens) == "CAT"
