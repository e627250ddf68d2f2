"""A token-level n-gram language model for shallow fusion in :func:`asr.decoding.beam_search`.

Interpolated absolute discounting (Ney et al. 1994): for a history ``h`` and its shortened form ``h'``::

    p(w | h) = max(c(h, w) - D_n, 0) / c(h)  +  D_n * N1+(h .) / c(h) * p(w | h')

ending in a uniform distribution over the tokenizer's ids (the CTC blank excluded); a history never seen in
training falls straight through to ``h'``. ``D_n = n1 / (n1 + 2 n2)`` per order from the counts of counts.
The model counts over the ASR tokenizer's own ids, so it plugs into the decoder without any mapping; the
state of a hypothesis is its last ``order - 1`` tokens, so reordering the beam is a list gather.

>>> lm = NGramLM.train(texts, model.tokenizer, order=4)
>>> asr.transcribe.transcribe(model, "a.wav", DecodingOptions(lm_weight=0.3), lm=lm)
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.files import atomic_save
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, tokenizer_fingerprint
from asr.word_lm import FORMAT as WORD_FORMAT
from asr.word_lm import WordLM

FORMAT = "las-asr-ngram"
DEFAULT_LM_WEIGHT = 0.3  # shallow-fusion weight when an LM is given without one
CACHE_SIZE = 100_000  # histories whose distributions are kept
History = tuple[int, ...]


class NGramLM:
    """Token n-gram LM implementing :class:`asr.decoding.LanguageModel`.

    ``score(tokens (N,), state) -> (log-probs (N, V), state)``.
    """

    def __init__(
        self,
        counts: dict[History, Counter[int]],
        order: int,
        vocab_size: int,
        blank_id: int,
        sos_id: int,
        eos_id: int,
        tokenizer: str = "",
    ) -> None:
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        self.order, self.vocab_size = order, vocab_size
        self.blank_id, self.sos_id, self.eos_id = blank_id, sos_id, eos_id
        self.tokenizer = tokenizer  # tokenizer_fingerprint() of the ids it counts ("" in old files)
        self.counts = counts  # history (0..order-1 tokens) -> next-token counts
        self.discounts = self._discounts()
        self._cache: dict[History, Tensor] = {}

    @classmethod
    def train(
        cls, texts: Iterable[str], tokenizer: CharTokenizer | SentencePieceTokenizer, order: int = 4
    ) -> NGramLM:
        """Count n-grams of ``tokenizer.encode(text) + <eos>``, each sentence preceded by ``<sos>``s."""
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        counts: dict[History, Counter[int]] = defaultdict(Counter)
        pad = [tokenizer.sos_id] * (order - 1)
        for text in texts:
            seq = pad + tokenizer.encode(text) + [tokenizer.eos_id]
            for i in range(len(pad), len(seq)):
                for n in range(order):  # history lengths 0..order-1
                    counts[tuple(seq[i - n : i])][seq[i]] += 1
        if not counts:
            raise ValueError("cannot train a language model on no texts")
        return cls(
            dict(counts),
            order,
            tokenizer.vocab_size,
            tokenizer.blank_id,
            tokenizer.sos_id,
            tokenizer.eos_id,
            tokenizer_fingerprint(tokenizer),
        )

    @property
    def num_ngrams(self) -> int:
        return sum(len(nxt) for nxt in self.counts.values())

    def describe(self) -> str:
        """One line for logs and ``ListModels``, e.g. ``"6-gram token LM, 191,120 n-grams"``."""
        return f"{self.order}-gram token LM, {self.num_ngrams:,} n-grams"

    def _discounts(self) -> list[float]:
        out = []
        for n in range(self.order):
            cc = Counter(c for h, nxt in self.counts.items() if len(h) == n for c in nxt.values())
            n1, n2 = cc.get(1, 0), cc.get(2, 0)
            out.append(min(0.9, max(0.1, n1 / (n1 + 2 * n2))) if n1 + n2 else 0.5)
        return out

    def distribution(self, history: History) -> Tensor:
        """Next-token log-probs ``(V,)`` after ``history`` (its last ``order - 1`` tokens are used)."""
        history = history[-(self.order - 1) :] if self.order > 1 else ()
        cached = self._cache.get(history)
        if cached is not None:
            return cached
        if history:
            lower = self.distribution(history[1:]).exp()
        else:
            lower = torch.full((self.vocab_size,), 1.0 / (self.vocab_size - 1), dtype=torch.float64)
            lower[self.blank_id] = 0.0
        nxt = self.counts.get(history)
        if nxt:
            d = self.discounts[len(history)]
            total = sum(nxt.values())
            ids = torch.tensor(list(nxt.keys()))
            seen = torch.tensor(list(nxt.values()), dtype=torch.float64)
            probs = lower * (d * len(nxt) / total)
            probs[ids] += (seen - d).clamp_min(0) / total
        else:
            probs = lower
        logp = probs.log()
        if len(self._cache) >= CACHE_SIZE:  # large vocabularies: do not grow without bound in a server
            self._cache.clear()
        self._cache[history] = logp
        return logp

    def log_prob(self, text_ids: list[int]) -> float:
        """Log-probability of a whole token sequence (with ``<eos>``)."""
        hist: History = (self.sos_id,) * (self.order - 1)
        total = 0.0
        for t in [*text_ids, self.eos_id]:
            total += float(self.distribution(hist)[t])
            hist = (*hist, t)
        return total

    # --- LanguageModel protocol -------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device) -> list[History]:
        return [(self.sos_id,) * max(0, self.order - 2)] * batch_size

    def score(self, tokens: Tensor, state: list[History]) -> tuple[Tensor, list[History]]:
        keep = self.order - 1
        new_state = [(*h, t)[-keep:] if keep else () for h, t in zip(state, tokens.tolist(), strict=True)]
        logp = torch.stack([self.distribution(h) for h in new_state])
        return logp.to(device=tokens.device, dtype=torch.float32), new_state

    def select(self, state: list[History], index: Tensor) -> list[History]:
        return [state[i] for i in index.tolist()]

    # --- persistence -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (ints, lists, tensors): loadable with ``torch.load(..., weights_only=True)``."""
        by_len: dict[int, list[list[int]]] = defaultdict(list)
        for h, nxt in self.counts.items():
            by_len[len(h)].extend([*h, w, c] for w, c in nxt.items())
        return {
            "format": FORMAT,
            "order": self.order,
            "vocab_size": self.vocab_size,
            "blank_id": self.blank_id,
            "sos_id": self.sos_id,
            "eos_id": self.eos_id,
            "tokenizer": self.tokenizer,
            # ngrams[n]: (M, n + 2) int32 rows of history (n ids), next id, count
            "ngrams": {
                n: torch.tensor(r, dtype=torch.int32).reshape(-1, n + 2) for n, r in sorted(by_len.items())
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NGramLM:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an n-gram LM (expected format {FORMAT!r}, got {d.get('format')!r})")
        counts: dict[History, Counter[int]] = defaultdict(Counter)
        for n, rows in d["ngrams"].items():
            for row in rows.tolist():
                counts[tuple(row[:n])][row[n]] = row[n + 1]
        return cls(
            dict(counts),
            d["order"],
            d["vocab_size"],
            d["blank_id"],
            d["sos_id"],
            d["eos_id"],
            d.get("tokenizer", ""),
        )

    def save(self, path: str | os.PathLike) -> None:
        atomic_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGramLM:
        return cls.from_dict(cls.read(path))

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any]:
        """The plain data of an LM file (either kind)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"language model not found: {path}")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"could not read language model {path}: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path} is not a language model")
        return d

    def check_tokenizer(self, tokenizer: CharTokenizer | SentencePieceTokenizer) -> None:
        """Raise if this LM was counted over different ids than ``tokenizer`` produces."""
        same_ids = (self.vocab_size, self.sos_id, self.eos_id) == (
            tokenizer.vocab_size,
            tokenizer.sos_id,
            tokenizer.eos_id,
        )
        if not same_ids or (self.tokenizer and self.tokenizer != tokenizer_fingerprint(tokenizer)):
            raise ValueError(
                f"the language model does not match the model's tokenizer ({self.vocab_size} ids, tokenizer "
                f"{self.tokenizer or '?'}; the model has {tokenizer.vocab_size} ids, tokenizer "
                f"{tokenizer_fingerprint(tokenizer)}): train one for this model with "
                "'asr lm train TEXTS --model MODEL -o LM'"
            )

    def perplexity(self, texts: Iterable[str], tokenizer: CharTokenizer | SentencePieceTokenizer) -> float:
        total, count = 0.0, 0
        for text in texts:
            ids = tokenizer.encode(text)
            total += self.log_prob(ids)
            count += len(ids) + 1
        return math.exp(-total / max(1, count))


def load_lm(
    path: str | os.PathLike, tokenizer: CharTokenizer | SentencePieceTokenizer
) -> NGramLM | WordLM:
    """The LM in ``path`` (a token n-gram or a word LM), checked against the tokenizer of the model it will
    decode with."""
    path = Path(path)
    d = NGramLM.read(path)
    try:
        if d.get("format") == WORD_FORMAT:
            if not isinstance(tokenizer, CharTokenizer):
                raise ValueError("a word LM scores characters: it needs a model with a character tokenizer")
            return WordLM.from_dict(d, tokenizer)
        lm = NGramLM.from_dict(d)
        lm.check_tokenizer(tokenizer)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return lm
