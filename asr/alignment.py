"""Word times and confidences from the CTC alignment of a hypothesis."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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


def _even_words(
    tokens: list[int], tokenizer: CharTokenizer | SentencePieceTokenizer, total: float, offset: float
) -> list[Word]:
    text = tokenizer.decode(tokens).split()
    if not text:
        return []
    step = total / len(text)
    return [Word(w, offset + i * step, offset + (i + 1) * step, 0.0) for i, w in enumerate(text)]
