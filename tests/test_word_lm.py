"""The look-ahead word LM: character distributions that multiply out to word probabilities, its unknown-word
and possessive paths, persistence, ``asr lm train --kind word``, and fusion in beam search and the server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_lm import CTCModel, ambiguous_cat
from test_server import ServerThread, config

from asr import save_checkpoint
from asr.decoding import DecodingOptions, beam_search
from asr.lm import load_lm
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from asr.word_lm import START, WordLM, WordLMConfig
from asr_grpc import asr_pb2
from client.cli import main

TOK = CharTokenizer.default()
UNIGRAMS = {"THE": 50.0, "CAT": 10, "CATS": 4, "CUT": 6, "CAR": 5, "NEW": 8, "YORK": 3, "YOKE": 3}
BIGRAMS = {("THE", "CAT"): 9.0, ("NEW", "YORK"): 5.0, ("THE", "CAR"): 2.0}
EXACT = WordLMConfig(oov=1e-9, possessive=1e-9)  # no mass off the vocabulary: products are word probabilities


def lm(cfg: WordLMConfig = WordLMConfig()) -> WordLM:
    return WordLM.from_counts(UNIGRAMS, BIGRAMS, TOK, cfg)


def walk(model: WordLM, text: str) -> tuple[int, int, int]:
    state = model.advance((START, 0, -1), TOK.sos_id)
    ids = TOK.encode(text) + ([TOK.space_id] if text.endswith(" ") else [])  # encode() strips the space
    for t in ids:
        state = model.advance(state, t)
    return state


def test_every_state_is_normalised() -> None:
    model = lm()
    for text in ["", "TH", "THE ", "THE C", "CAT", "NEW Y", "QQ", "CAT'", "CAT'S", "ZEBRA "]:
        p = model.distribution(walk(model, text)).exp()
        assert p.shape == (TOK.vocab_size,)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-9), text


def test_characters_multiply_out_to_the_word_probability() -> None:
    model = lm(EXACT)
    the = model.index["THE"]
    for word in ["CAT", "CATS", "CAR", "CUT"]:
        state, logp = walk(model, "THE "), 0.0
        for t in TOK.encode(word):
            logp += float(model.distribution(state)[t])
            state = model.advance(state, t)
        logp += float(model.distribution(state)[TOK.space_id])  # the word ends (not the sentence)
        expected = math.log(model.word_prob(the, model.index[word]) * (1 - EXACT.eos))
        assert logp == pytest.approx(expected, abs=1e-6), word
    # the bigram moves the mass: after NEW, YORK beats YOKE; with no history they tie
    after_new = model.distribution(walk(model, "NEW YO"))
    assert after_new[TOK.encode("R")[0]] > after_new[TOK.encode("K")[0]] + 1.0
    alone = model.distribution(walk(model, "YO"))
    assert float(alone[TOK.encode("R")[0]]) == pytest.approx(float(alone[TOK.encode("K")[0]]))
    whole = sum(model.word_prob(the, i) for i in range(len(model.words)))
    assert whole == pytest.approx(1.0)


def test_sentences_of_known_words_beat_misspellings_and_unknown_words_still_score() -> None:
    model = lm()
    assert model.log_prob("THE CAT", TOK) > model.log_prob("THE CUT", TOK) > model.log_prob("THE KAT", TOK)
    assert math.isfinite(model.log_prob("THE ZYXWV CAT", TOK))
    # a possessive costs far less than spelling an unknown word
    assert model.log_prob("THE CAT'S", TOK) > model.log_prob("THE CATQS", TOK) + 3
    # after an unknown word the next one is scored without history
    assert walk(model, "ZYX ")[0] == START and walk(model, "NEW ")[0] == model.index["NEW"]
    assert walk(model, "CAT'S ")[0] == model.index["CAT"]
    # the empty sentence (silence) is possible
    cfg = model.config
    assert model.log_prob("", TOK) == pytest.approx(math.log(cfg.eos * (1 - cfg.oov)), abs=1e-6)
    assert model.perplexity(["THE CAT"], TOK) < model.perplexity(["XQ ZJ"], TOK)


def test_a_lower_oov_share_keeps_the_search_to_known_words() -> None:
    open_lm, closed_lm = lm(WordLMConfig(oov=0.01)), lm(WordLMConfig(oov=0.0001))
    unknown, known = "THE KAT", "THE CAT"
    # leaving the vocabulary costs log(0.01 / 0.0001) more; off it, every letter costs the same
    assert closed_lm.log_prob(unknown, TOK) < open_lm.log_prob(unknown, TOK) - 4.5
    assert closed_lm.log_prob(known, TOK) > open_lm.log_prob(known, TOK)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the tokenizer's characters"):
        WordLM.from_counts({"CAFÉ": 1.0}, {}, TOK)
    with pytest.raises(ValueError, match="at least one word"):
        WordLM.from_counts({}, {}, TOK)
    with pytest.raises(ValueError, match="oov must be between 0 and 1"):
        WordLMConfig(oov=0.0)
    with pytest.raises(ValueError, match="character tokenizer"):
        WordLM.from_counts(UNIGRAMS, {}, object.__new__(SentencePieceTokenizer))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no texts"):
        WordLM.train([], TOK)


def test_save_load_round_trip_and_tokenizer_check(tmp_path: Path) -> None:
    model = lm()
    model.save(tmp_path / "w.wlm")
    again = load_lm(tmp_path / "w.wlm", TOK)
    assert isinstance(again, WordLM) and again.words == model.words
    for text in ["THE CAT", "NEW YORK", "THE ZYX CAT'S"]:
        assert again.log_prob(text, TOK) == pytest.approx(model.log_prob(text, TOK), abs=1e-5)
    shuffled = CharTokenizer([*TOK.units[1:], TOK.units[0]])
    with pytest.raises(ValueError, match=r"w.wlm: the word LM was built for .* 'asr lm train --kind"):
        load_lm(tmp_path / "w.wlm", shuffled)


@torch.inference_mode()
def test_fusion_in_beam_search_prefers_real_words() -> None:
    model = CTCModel()
    enc, lengths = ambiguous_cat()  # reads "CUT" slightly more than "CAT"
    opts = DecodingOptions(beam_size=4, ctc_weight=1.0)
    assert TOK.decode(beam_search(model, enc, lengths, opts)[0][0].tokens) == "CUT"
    word_lm = WordLM.from_counts({"CAT": 20.0, "CUT": 1.0, "DOG": 5.0}, {}, TOK)
    fused_opts = DecodingOptions(beam_size=4, ctc_weight=1.0, lm_weight=0.5)
    fused = beam_search(model, enc, lengths, fused_opts, lm=word_lm)[0][0]
    assert TOK.decode(fused.tokens) == "CAT"
    assert fused.lm_score == pytest.approx(word_lm.log_prob("CAT", TOK), abs=1e-4)


def test_lm_train_kind_word_and_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tiny_model()
    save_checkpoint(tiny, tmp_path / "tiny.pt")
    (tmp_path / "counts.txt").write_text("the 100\ncat 20\nThe Cat 15\nnew york 3\nbad line here 2 x\n")
    (tmp_path / "text.txt").write_text("Hello world.\nHello there\n")
    out = tmp_path / "w.wlm"
    counts = str(tmp_path / "counts.txt")
    argv = ["lm", "train", "--kind", "word", str(tmp_path / "text.txt"), "--counts", counts]
    assert main([*argv, "-o", str(out), "--model", str(tmp_path / "tiny.pt")]) == 1  # the bad line
    assert "counts.txt:5: expected 'WORD COUNT' or 'WORD WORD COUNT'" in capsys.readouterr().err
    (tmp_path / "counts.txt").write_text("the 100\ncat 20\nThe Cat 15\nnew york 3\n")
    assert main([*argv, "-o", str(out), "--model", str(tmp_path / "tiny.pt")]) == 0
    assert "word bigram LM, 5 words, 3 word pairs" in capsys.readouterr().err  # NEW, YORK: pair only
    built = load_lm(out, tiny.tokenizer)
    assert isinstance(built, WordLM) and built.words == ["CAT", "HELLO", "THE", "THERE", "WORLD"]
    ckpt = str(tmp_path / "tiny.pt")
    assert main(["lm", "perplexity", str(out), str(tmp_path / "text.txt"), "--model", ckpt]) == 0
    assert float(capsys.readouterr().out.split()[1]) > 1
    assert main(["lm", "train", "--counts", str(tmp_path / "counts.txt"), "-o", str(out)]) == 1
    assert "--counts and --oov build a word LM: add --kind word" in capsys.readouterr().err
    assert main([*argv, "--oov", "0.0001", "-o", str(tmp_path / "closed.wlm"), "--model", ckpt]) == 0
    closed = load_lm(tmp_path / "closed.wlm", tiny.tokenizer)
    assert isinstance(closed, WordLM) and closed.config.oov == 0.0001 and built.config.oov == WordLMConfig.oov
    server = ServerThread(config(lm=str(out), lm_weight=0.3), tiny)
    try:
        (info,) = server.stub().ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
        assert info.language_model == "word bigram LM, 5 words, 3 word pairs"
    finally:
        server.stop()
