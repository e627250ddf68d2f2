"""CTC forced alignment to word times and confidences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asr.alignment import Word, align_words, clamp_to_voiced, voiced_span
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


def test_voiced_span_finds_the_speech_in_silence() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)
    audio = np.concatenate([np.zeros(int(1.5 * sr)), tone, np.zeros(sr // 2)]).astype(np.float32)
    audio += (rng.standard_normal(len(audio)) * 1e-4).astype(np.float32)
    start, end = voiced_span(audio, sr)  # type: ignore[misc]
    assert start == pytest.approx(1.5, abs=0.03) and end == pytest.approx(2.5, abs=0.03)
    # no clearly quieter part: nothing is known, nothing gets clamped
    assert voiced_span(tone.astype(np.float32), sr) is None
    assert voiced_span(np.zeros(100, dtype=np.float32), sr) is None


def test_clamp_to_voiced_moves_spikes_out_of_silence() -> None:
    words = [Word("WE", 0.0, 1.64, 0.9), Word("CALL", 1.72, 1.92, 0.2), Word("LATE", 2.9, 3.3, 0.5)]
    shifted = [Word(w.word, w.start + 10, w.end + 10, w.confidence) for w in words]
    out = clamp_to_voiced(shifted, (1.5, 2.6), offset=10.0)  # a segment 10 s into a stream
    assert [(w.start, w.end) for w in out] == [
        pytest.approx((11.4, 11.64)),  # the first token's spike sat on frame 0 of the segment
        pytest.approx((11.72, 11.92)),
        pytest.approx((12.7, 12.7)),  # wholly after the speech: pinned to its end
    ]
    assert clamp_to_voiced(shifted, None, offset=10.0) == shifted


def test_bundled_model_word_times_after_leading_silence(speech_dir: Path) -> None:
    """After 1.5 s of digital silence the first word starts where the speech does (the bundled model
    waits for the speech since stage 8; word times are also kept within the voiced span, for models that
    fire on the first frame)."""
    import asr
    from asr.audio import SAMPLE_RATE, load_audio

    model = asr.load_model()
    speech = load_audio(speech_dir / "utt0.wav")
    pad = 1.5
    audio = np.concatenate([np.zeros(int(pad * SAMPLE_RATE), dtype=np.float32), speech])
    onset = voiced_span(speech)
    assert onset is not None
    words = model.transcribe(audio).words
    assert words, "no words"
    assert words[0].start >= pad + onset[0] - 0.15, words[0]
    assert all(w.start <= w.end for w in words)
