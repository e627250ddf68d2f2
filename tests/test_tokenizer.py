"""Text normalisation, character and SentencePiece tokenizers."""

from __future__ import annotations

import pytest

from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, normalize_text, tokenizer_from_dict


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Author of the danger-trail, Philip Steels, etc.", "AUTHOR OF THE DANGER TRAIL PHILIP STEELS ETC"),
        ("  don't   stop  ", "DON'T STOP"),
        ("'quoted' words", "QUOTED WORDS"),
        ("Café naïve", "CAFE NAIVE"),
        ("rock `n' roll", "ROCK N ROLL"),
        ("o'clock", "O'CLOCK"),
        ("123 !?", ""),
    ],
)
def test_normalize_text(raw: str, normal: str) -> None:
    assert normalize_text(raw) == normal


def test_char_tokenizer_layout_and_round_trip() -> None:
    tok = CharTokenizer.default()
    assert tok.blank_id == 0 and tok.id_to_piece(1) == "<unk>"
    assert tok.sos_id == tok.eos_id == tok.vocab_size - 1 == 30  # blank, unk, space, apostrophe, A-Z, sos/eos
    ids = tok.encode("Hello, world!")
    assert all(1 < i < tok.eos_id for i in ids)
    assert tok.decode(ids) == "HELLO WORLD"
    assert tok.decode([0, *ids, tok.eos_id, 0]) == "HELLO WORLD"  # specials are dropped
    assert tok.space_id == 2 and tok.encode("A B")[1] == 2


def test_char_tokenizer_word_starts() -> None:
    tok = CharTokenizer.default()
    ids = tok.encode("AB C")
    assert tok.word_starts(ids) == [True, False, False, True]


def test_char_tokenizer_unknown_and_dict() -> None:
    tok = CharTokenizer.train(["abc", "cab d"])
    assert tok.units == [" ", "A", "B", "C", "D"]
    assert tok.encode("xa") == [1, tok.encode("a")[0]]  # X is unknown
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, CharTokenizer) and again.pieces == tok.pieces
    with pytest.raises(ValueError, match="unique"):
        CharTokenizer(["A", "A"])
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "wordpiece"})


def test_sentencepiece_tokenizer() -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "hello world", "speech recognition is fun"] * 20
    tok = SentencePieceTokenizer.train(texts, vocab_size=40)
    assert tok.vocab_size == 42 and tok.blank_id == 0 and tok.eos_id == 41
    ids = tok.encode("hello world")
    assert all(1 <= i <= 40 for i in ids)
    assert tok.decode(ids) == "HELLO WORLD"
    assert tok.decode([0, *ids, tok.eos_id]) == "HELLO WORLD"
    starts = tok.word_starts(ids)
    assert starts[0] and sum(starts) == 2
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode("hello world") == ids
    assert tok.id_to_piece(0) == "<blank>" and tok.id_to_piece(tok.eos_id) == "<sos/eos>"
