"""A word bigram language model scored one character at a time, for shallow fusion into character models.

The beam search extends hypotheses by characters, and a character n-gram only sees a few letters back. A word
LM knows which words exist and which follow which, but scores whole words. The look-ahead word LM of Hori et
al. 2018 ("End-to-end speech recognition with word-based RNN language models") joins the two: after the
previous word ``h`` and the partial word ``p``, the next character ``c`` gets the share of the word mass that
continues with it::

    P(c | h, p) = M(h, pc) / M(h, p),     M(h, p) = sum of P(w | h) over the words w that start with p

and the end of the word (a space or ``<eos>``) gets ``P(p | h) / M(h, p)``. Along a word the product is
``P(w | h)``, but every character already says whether the spelling heads for a likely word. Words outside
the vocabulary stay possible: every character gives ``oov`` of its mass to a uniform spelling, and off the
vocabulary each letter costs the same; a possessive ``'S`` may follow any word.

``P(w | h)`` interpolates a bigram with the unigram::

    P(w | h) = S(h) * c(h, w) / c(h, .)  +  (1 - S(h)) * P(w),     S(h) = n(h) / (n(h) + K)

``n(h)`` being the number of distinct words seen after ``h``: a word seen with many followers trusts them
(Witten-Bell style), which suits counts from lists that keep only the frequent pairs. The first word of a
sentence and the word after an out-of-vocabulary one are scored by the unigram.

The vocabulary is a trie over the sorted word list, so each node is a range of word ids: its unigram mass is
a difference of cumulative sums, and its bigram mass two binary searches in ``h``'s sorted successor list.

>>> lm = WordLM.from_counts(unigrams, bigrams, model.tokenizer)
>>> asr.transcribe.transcribe(model, "a.wav", DecodingOptions(lm_weight=0.5), lm=lm)
"""

from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asr.files import atomic_save
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, tokenizer_fingerprint

FORMAT = "las-asr-word-lm"
CACHE_SIZE = 200_000  # (history, trie node) distributions kept
FLOOR = 1e-12  # probability of a token the LM rules out (finite, so the acoustics can still overrule it)
START = -1  # history of the first word and of the word after an unknown one: the unigram
OOV, POSSESSIVE, POSSESSIVE_S = -1, -2, -3  # trie "nodes" off the vocabulary
State = tuple[int, int, int]  # previous word (or START), trie node (or OOV...), word id a possessive extends


@dataclass(frozen=True)
class WordLMConfig:
    """Smoothing constants, stored with the model."""

    followers_k: float = 3.0  # K in S(h) = n(h) / (n(h) + K)
    max_bigram_share: float = 0.95  # S(h) never above this
    # share of every character's mass given to a uniform spelling (0.01 until session 47; 0.001 spells
    # fewer near-misses such as "TRUSURE" for "TREASURE": docs/TRAINING_LOG.md, "The word LM's unknown words")
    oov: float = 0.001
    oov_word_end: float = 0.2  # chance that an unknown word ends at each further character
    eos: float = 0.1  # share of a word's end that is the end of the sentence (the rest is a space)
    possessive: float = 0.02  # share of a word's end that continues as "'S"

    def __post_init__(self) -> None:
        for name in ("oov", "oov_word_end", "eos", "possessive", "max_bigram_share"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
        if self.followers_k <= 0:
            raise ValueError(f"followers_k must be positive, got {self.followers_k}")


Counts = dict[str, float]
PairCounts = dict[tuple[str, str], float]


def add_text_counts(texts: Iterable[str], unigrams: Counts, bigrams: PairCounts) -> None:
    """Add the words and word pairs of normalised sentences to ``unigrams`` and ``bigrams``."""
    for text in texts:
        words = text.split()
        for w in words:
            unigrams[w] = unigrams.get(w, 0.0) + 1.0
        for pair in itertools.pairwise(words):
            bigrams[pair] = bigrams.get(pair, 0.0) + 1.0


class _Trie:
    """Prefix tree over a sorted word list: node -> range of word ids, child per token, word ending there."""

    def __init__(self, words: list[str], char_ids: Mapping[str, int], vocab_size: int) -> None:
        lo, hi, word_at = [0], [len(words)], [-1]
        children: list[dict[int, int]] = [{}]
        for i, word in enumerate(words):
            node = 0
            for ch in word:
                t = char_ids[ch]
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(lo)
                    children[node][t] = nxt
                    lo.append(i)
                    hi.append(i + 1)
                    word_at.append(-1)
                    children.append({})
                else:
                    hi[nxt] = i + 1
                node = nxt
            word_at[node] = i
        self.lo, self.hi = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
        self.word_at = np.array(word_at, dtype=np.int64)
        self.child = np.full((len(lo), vocab_size), -1, dtype=np.int32)  # (nodes, V)
        for node, kids in enumerate(children):
            if kids:
                self.child[node, list(kids)] = list(kids.values())


class WordLM:
    """Word bigram LM implementing :class:`asr.decoding.LanguageModel` over a character tokenizer's ids."""

    def __init__(
        self,
        words: list[str],
        unigram_counts: np.ndarray,
        bigram_rows: np.ndarray,
        bigram_cols: np.ndarray,
        bigram_counts: np.ndarray,
        tokenizer: CharTokenizer,
        config: WordLMConfig = WordLMConfig(),
    ) -> None:
        """``words`` sorted and unique; ``unigram_counts (W,)``; the bigrams as CSR arrays: followers of word
        ``h`` are ``bigram_cols[bigram_rows[h]:bigram_rows[h + 1]]`` (sorted) with their counts."""
        if not isinstance(tokenizer, CharTokenizer):
            raise ValueError("a word LM scores characters: it needs a model with a character tokenizer")
        if not words:
            raise ValueError("a word LM needs at least one word")
        if list(words) != sorted(set(words)):
            raise ValueError("the word list must be sorted and without repeats")
        if len(unigram_counts) != len(words) or len(bigram_rows) != len(words) + 1:
            raise ValueError("unigram counts and bigram rows must have one entry per word")
        self.config = config
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = tokenizer.vocab_size
        self.blank_id, self.sos_id, self.eos_id = tokenizer.blank_id, tokenizer.sos_id, tokenizer.eos_id
        self.tokenizer = tokenizer_fingerprint(tokenizer)
        if tokenizer.space_id is None:
            raise ValueError("a word LM needs a tokenizer with a space between words")
        self.char_ids = {u: tokenizer.pieces.index(u) for u in tokenizer.units if u != " "}
        self.space_id = tokenizer.space_id
        self.apostrophe_id = self.char_ids.get("'")
        self.s_id = self.char_ids.get("S")
        bad = [w for w in self.words if not w or any(ch not in self.char_ids for ch in w)]
        if bad:
            raise ValueError(f"words outside the tokenizer's characters: {', '.join(bad[:5])}")
        self.unigram_counts = np.asarray(unigram_counts, dtype=np.float64)
        self.rows = np.asarray(bigram_rows, dtype=np.int64)
        self.cols = np.asarray(bigram_cols, dtype=np.int64)
        self.counts = np.asarray(bigram_counts, dtype=np.float64)
        uni = self.unigram_counts / self.unigram_counts.sum()
        self.uni = uni
        self.uni_cum = np.concatenate([[0.0], np.cumsum(uni)])
        # bigram part: S(h) * c(h, w) / c(h, .), as a running sum over all rows
        followers = np.diff(self.rows).astype(np.float64)
        share = np.minimum(followers / (followers + config.followers_k), config.max_bigram_share)
        row_of = np.repeat(np.arange(len(words)), np.diff(self.rows))
        count_cum = np.concatenate([[0.0], np.cumsum(self.counts)])
        row_total = np.maximum(count_cum[self.rows[1:]] - count_cum[self.rows[:-1]], 1e-30)
        seen = share[row_of] * self.counts / row_total[row_of]
        self.seen_cum = np.concatenate([[0.0], np.cumsum(seen)])
        self.backoff = 1.0 - share  # weight of the unigram after each word
        self.trie = _Trie(self.words, self.char_ids, self.vocab_size)
        self.letters = np.array(sorted(self.char_ids.values()), dtype=np.int64)
        self._cache: OrderedDict[tuple[int, int], Tensor] = OrderedDict()

    # --- building ----------------------------------------------------------------------------------

    @classmethod
    def from_counts(
        cls,
        unigrams: Mapping[str, float],
        bigrams: Mapping[tuple[str, str], float],
        tokenizer: CharTokenizer,
        config: WordLMConfig = WordLMConfig(),
    ) -> WordLM:
        """From word and word-pair counts (upper case, the tokenizer's characters); a pair's words must be in
        ``unigrams``, others are dropped."""
        words = sorted(w for w, c in unigrams.items() if c > 0)
        index = {w: i for i, w in enumerate(words)}
        pairs = sorted(
            (index[a], index[b], c) for (a, b), c in bigrams.items() if c > 0 and a in index and b in index
        )
        rows = np.zeros(len(words) + 1, dtype=np.int64)
        for a, _, _ in pairs:
            rows[a + 1] += 1
        return cls(
            words,
            np.array([unigrams[w] for w in words], dtype=np.float64),
            np.cumsum(rows),
            np.array([b for _, b, _ in pairs], dtype=np.int64),
            np.array([c for _, _, c in pairs], dtype=np.float64),
            tokenizer,
            config,
        )

    @classmethod
    def train(
        cls, texts: Iterable[str], tokenizer: CharTokenizer, config: WordLMConfig = WordLMConfig()
    ) -> WordLM:
        """Count the words and word pairs of normalised sentences."""
        unigrams: Counts = defaultdict(float)
        bigrams: PairCounts = defaultdict(float)
        add_text_counts(texts, unigrams, bigrams)
        if not unigrams:
            raise ValueError("cannot train a language model on no texts")
        return cls.from_counts(unigrams, bigrams, tokenizer, config)

    # --- probabilities ------------------------------------------------------------------------------

    def word_prob(self, history: int, word: int) -> float:
        """``P(word | history)`` (ids into :attr:`words`; ``START`` for the first word of a sentence)."""
        p = float(self.uni[word])
        if history == START:
            return p
        a, b = self.rows[history], self.rows[history + 1]
        j = a + int(np.searchsorted(self.cols[a:b], word))
        seen = self.seen_cum[j + 1] - self.seen_cum[j] if j < b and self.cols[j] == word else 0.0
        return float(seen + self.backoff[history] * p)

    def _mass(self, history: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``M(history, prefix)`` for the prefixes whose words are the id ranges ``[lo, hi)``."""
        uni = self.uni_cum[hi] - self.uni_cum[lo]
        if history == START:
            return uni
        a, b = self.rows[history], self.rows[history + 1]
        cols = self.cols[a:b]
        seen = self.seen_cum[a + np.searchsorted(cols, hi)] - self.seen_cum[a + np.searchsorted(cols, lo)]
        return np.asarray(seen + self.backoff[history] * uni)

    def distribution(self, state: State) -> Tensor:
        """Next-token log-probs ``(V,)`` in ``state`` (previous word, trie node, possessive's word)."""
        key = (state[0], state[1])
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        logp = torch.from_numpy(np.log(np.maximum(self._probs(*key), FLOOR)))
        self._cache[key] = logp
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return logp

    def _probs(self, history: int, node: int) -> np.ndarray:
        cfg = self.config
        p = np.zeros(self.vocab_size, dtype=np.float64)
        if node == POSSESSIVE:  # after "WORD'": only S continues it
            p[self.letters] = cfg.oov / len(self.letters)
            if self.s_id is not None:
                p[self.s_id] += 1.0 - cfg.oov
            return p
        if node in (OOV, POSSESSIVE_S):
            end = cfg.oov_word_end if node == OOV else 1.0 - cfg.oov
            p[self.letters] = (1.0 - end) / len(self.letters)
            p[self.space_id], p[self.eos_id] = end * (1 - cfg.eos), end * cfg.eos
            return p
        trie = self.trie
        kids = trie.child[node]
        has = np.flatnonzero(kids >= 0)
        total = self._mass(history, trie.lo[[node]], trie.hi[[node]])[0]
        known = np.zeros(self.vocab_size, dtype=np.float64)
        known[has] = self._mass(history, trie.lo[kids[has]], trie.hi[kids[has]]) / total
        word = int(trie.word_at[node])
        end = self.word_prob(history, word) / total if word >= 0 else 0.0
        if end and self.apostrophe_id is not None:
            known[self.apostrophe_id] += end * cfg.possessive
            end *= 1 - cfg.possessive
        known[self.space_id] += end * (1 - cfg.eos)
        known[self.eos_id] += end * cfg.eos
        if node == 0 and history == START:  # an empty sentence (silence) is a sentence too
            known *= 1 - cfg.eos
            known[self.eos_id] += cfg.eos
        p = (1.0 - cfg.oov) * known
        p[self.letters] += cfg.oov / len(self.letters)
        return p

    def advance(self, state: State, token: int) -> State:
        """The state after ``token``."""
        history, node, word = state
        if token == self.sos_id:
            return (START, 0, -1)
        if token == self.space_id:
            if node >= 0 and self.trie.word_at[node] >= 0:
                return (int(self.trie.word_at[node]), 0, -1)
            if node == POSSESSIVE_S:
                return (word, 0, -1)
            return (START, 0, -1) if node != 0 else state
        if node >= 0:
            nxt = int(self.trie.child[node, token])
            if nxt >= 0:
                return (history, nxt, -1)
            at = int(self.trie.word_at[node])
            if token == self.apostrophe_id and at >= 0:
                return (history, POSSESSIVE, at)
            return (history, OOV, -1)
        if node == POSSESSIVE and token == self.s_id:
            return (history, POSSESSIVE_S, word)
        return (history, OOV, -1)

    def log_prob(self, text: str, tokenizer: Tokenizer) -> float:
        """Log-probability of a normalised sentence, ``<eos>`` included."""
        state: State = self.advance((START, 0, -1), self.sos_id)
        total = 0.0
        for t in [*tokenizer.encode(text), self.eos_id]:
            total += float(self.distribution(state)[t])
            state = self.advance(state, t)
        return total

    def perplexity(self, texts: Iterable[str], tokenizer: Tokenizer) -> float:
        """Per-token perplexity (characters and ``<eos>``), comparable with a token n-gram's."""
        total, count = 0.0, 0
        for text in texts:
            total += self.log_prob(text, tokenizer)
            count += len(tokenizer.encode(text)) + 1
        return math.exp(-total / max(1, count))

    def describe(self) -> str:
        return f"word bigram LM, {len(self.words):,} words, {len(self.cols):,} word pairs"

    # --- LanguageModel protocol -------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device) -> list[State]:
        return [(START, 0, -1)] * batch_size

    def score(self, tokens: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        new_state = [self.advance(s, t) for s, t in zip(state, tokens.tolist(), strict=True)]
        logp = torch.stack([self.distribution(s) for s in new_state])
        return logp.to(device=tokens.device, dtype=torch.float32), new_state

    def select(self, state: list[State], index: Tensor) -> list[State]:
        return [state[i] for i in index.tolist()]

    # --- persistence -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tokenizer": self.tokenizer,
            "units": [" ", *self.char_ids],
            "config": asdict(self.config),
            "words": "\n".join(self.words),
            "unigram_counts": torch.from_numpy(self.unigram_counts.astype(np.float32)),
            "bigram_rows": torch.from_numpy(self.rows.astype(np.int32)),
            "bigram_cols": torch.from_numpy(self.cols.astype(np.int32)),
            "bigram_counts": torch.from_numpy(self.counts.astype(np.float32)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], tokenizer: CharTokenizer) -> WordLM:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a word LM (expected format {FORMAT!r}, got {d.get('format')!r})")
        lm = cls(
            d["words"].split("\n"),
            d["unigram_counts"].numpy(),
            d["bigram_rows"].numpy(),
            d["bigram_cols"].numpy(),
            d["bigram_counts"].numpy(),
            tokenizer,
            WordLMConfig(**d["config"]),
        )
        if lm.tokenizer != d["tokenizer"]:
            raise ValueError(
                f"the word LM was built for tokenizer {d['tokenizer']}; the model has {lm.tokenizer}: build "
                "one for this model with 'asr lm train --kind word'"
            )
        return lm

    def check_tokenizer(self, tokenizer: CharTokenizer | SentencePieceTokenizer) -> None:
        """Raise if ``tokenizer`` gives other ids than the one this LM scores."""
        if tokenizer_fingerprint(tokenizer) != self.tokenizer:
            raise ValueError(
                f"the word LM was built for tokenizer {self.tokenizer}; the model has "
                f"{tokenizer_fingerprint(tokenizer)}: build one for it with 'asr lm train --kind word'"
            )

    def save(self, path: str | os.PathLike) -> None:
        atomic_save(self.to_dict(), Path(path))
