"""CTC forced alignment to word times and confidences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asr.alignment import align_words
from asr.tokenizer import CharTokenizer

TOK = CharTokenizer.default()


def posteriors(frames: list[int], vocab: int, sharp: float = 6.0) -> torch.Tensor:
    """Log posteriors ``(T, V)`` peaked on ``frames`` (one token id per frame)."""
    logits = torch.zeros(len(frames), vocab)
    logits[torch.arange(len(frames)), torch.tensor(frames)] = sharp
    return F.log_softmax(logits, -1)


def test_words_get_the_frames_they_were_spoken_in() -> None:
    h, i, sp, y, o, u = TOK.encode("HI YOU")
    assert sp == TOK.space_id
    frames = [0, 0, h, h, i, 0, 0, sp, 0, y, o, o, u, 0, 0]
    lp = posteriors(frames, TOK.vocab_size)
    words = align_words(lp, TOK.encode("HI YOU"), TOK, frame_shift=0.04, offset=1.0)
    assert [w.word for w in words] == ["HI", "YOU"]
    assert words[0].start == pytest.approx(1.0 + 2 * 0.04)
    assert words[0].end == pytest.approx(1.0 + 5 * 0.04)
    assert words[1].start == pytest.approx(1.0 + 9 * 0.04)
    assert words[1].end == pytest.approx(1.0 + 13 * 0.04)
    p = float(lp[2].exp().max())
    for w in words:
        assert w.confidence == pytest.approx(p, abs=1e-4)
        assert 0.0 <= w.confidence <= 1.0


def test_confidence_drops_on_uncertain_frames() -> None:
    ids = TOK.encode("AB")
    sure = align_words(posteriors([0, ids[0], ids[1], 0], TOK.vocab_size, 8.0), ids, TOK, 0.04)
    unsure = align_words(posteriors([0, ids[0], ids[1], 0], TOK.vocab_size, 1.0), ids, TOK, 0.04)
    assert sure[0].confidence > 0.9 > 0.2 > unsure[0].confidence > 0.0


def test_random_posteriors_give_ordered_words_in_range() -> None:
    torch.manual_seed(0)
    lp = torch.randn(60, TOK.vocab_size).log_softmax(-1)
    text = "THE CAT SAT ON A MAT"
    words = align_words(lp, TOK.encode(text), TOK, frame_shift=0.04)
    assert [w.word for w in words] == text.split()
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times) and times[0] >= 0.0 and times[-1] <= 60 * 0.04
    assert all(w.start < w.end for w in words)
    assert all(0.0 <= w.confidence <= 1.0 for w in words)


def test_too_many_tokens_for_the_frames_spreads_words_evenly() -> None:
    lp = torch.randn(3, TOK.vocab_size).log_softmax(-1)
    words = align_words(lp, TOK.encode("LONG WORDS"), TOK, frame_shift=0.1, offset=2.0)
    assert [w.word for w in words] == ["LONG", "WORDS"]
    assert [(w.start, w.end) for w in words] == [pytest.approx((2.0, 2.15)), pytest.approx((2.15, 2.3))]
    assert all(w.confidence == 0.0 for w in words)


def test_empty_and_blank_only_token_lists() -> None:
    lp = torch.randn(5, TOK.vocab_size).log_softmax(-1)
    assert align_words(lp, [], TOK, 0.04) == []
    assert align_words(lp, [0, 0], TOK, 0.04) == []
