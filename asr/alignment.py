"""Word times and confidences from the CTC alignment of a hypothesis."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from asr.tokenizer import CharTokenizer, SentencePieceTokenizer


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float
    confidence: float  # mean CTC posterior of the word's tokens over their aligned frames, in [0, 1]


def align_words(
    log_probs: Tensor,
    tokens: Sequence[int],
    tokenizer: CharTokenizer | SentencePieceTokenizer,
    frame_shift: float,
    offset: float = 0.0,
) -> list[Word]:
    """Force-align ``tokens`` to CTC ``log_probs (T, V)`` and group token spans into words.

    ``frame_shift`` is seconds per CTC frame; ``offset`` is added to every time (segment start in a stream).
    If the tokens cannot be aligned (more labels than frames allow), the words are spread evenly over the
    audio with confidence 0, so a caller always gets one entry per word.
    """
    tokens = [t for t in tokens if t != tokenizer.blank_id]
    if not tokens:
        return []
    lp = log_probs.detach().float().cpu()
    targets = torch.tensor([tokens], dtype=torch.int32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligned, scores = AF.forced_align(lp[None], targets, blank=tokenizer.blank_id)
            spans = AF.merge_tokens(aligned[0], scores[0].exp(), blank=tokenizer.blank_id)
    except RuntimeError:
        return _even_words(tokens, tokenizer, lp.size(0) * frame_shift, offset)
    words: list[Word] = []
    starts = tokenizer.word_starts(tokens)
    current: list[int] = []

    def flush() -> None:
        if not current:
            return
        ids = [tokens[i] for i in current]
        text = tokenizer.decode(ids).strip()
        if text:
            s, e = spans[current[0]], spans[current[-1]]
            conf = sum(spans[i].score for i in current) / len(current)
            words.append(
                Word(text, offset + s.start * frame_shift, offset + e.end * frame_shift, float(conf))
            )
        current.clear()

    for i, tok in enumerate(tokens):
        if tok == tokenizer.space_id:
            flush()
            continue
        if starts[i]:
            flush()
        current.append(i)
    flush()
    return words


def voiced_span(
    audio: np.ndarray, sample_rate: int = 16000, frame_ms: int = 20
) -> tuple[float, float] | None:
    """Seconds where the voiced part of ``audio`` starts and ends, by frame energy; ``None`` when the audio
    has no clearly quieter part (loudest frames less than 20 dB above the quietest), so nothing is known.

    Frames count as voiced above ``max(floor + 10 dB, loud - 35 dB)``, where ``floor`` and ``loud`` are the
    10th and 95th percentiles of the frames' energies.
    """
    hop = sample_rate * frame_ms // 1000
    n = len(audio) // hop
    if n < 2:
        return None
    frames = audio[: n * hop].astype(np.float64).reshape(n, hop)
    energy = 10.0 * np.log10((frames**2).mean(axis=1) + 1e-10)
    floor, loud = np.percentile(energy, [10, 95])
    if loud - floor < 20.0:
        return None
    voiced = np.flatnonzero(energy > max(floor + 10.0, loud - 35.0))
    if voiced.size == 0:
        return None
    return float(voiced[0]) * frame_ms / 1000, float(voiced[-1] + 1) * frame_ms / 1000


def clamp_to_voiced(
    words: Sequence[Word], span: tuple[float, float] | None, offset: float = 0.0, margin: float = 0.1
) -> list[Word]:
    """Keep word times within the voiced span (seconds from the segment's start, moved by ``offset``) and
    ``margin`` around it. CTC puts a token's spike anywhere its frames allow, and a model trained on closely
    cut recordings without ``ctc_silence_penalty`` (:mod:`asr.ctc`) fires its first token on the first
    frame whatever silence comes before it: without this, the first word of a recording with a second of
    leading silence would "start" at 0."""
    if span is None:
        return list(words)
    lo, hi = offset + span[0] - margin, offset + span[1] + margin
    out = []
    for w in words:
        start = min(max(w.start, lo), hi)
        end = max(min(w.end, hi), start)
        out.append(dataclasses.replace(w, start=start, end=end))
    return out


def _even_words(
    tokens: list[int], tokenizer: CharTokenizer | SentencePieceTokenizer, total: float, offset: float
) -> list[Word]:
    text = tokenizer.decode(tokens).split()
    if not text:
        return []
    step = total / len(text)
    return [Word(w, offset + i * step, offset + (i + 1) * step, 0.0) for i, w in enumerate(text)]
