"""Phrase hints: contextual biasing of the beam search towards words and phrases a request expects.

The phrases' token sequences form an Aho-Corasick automaton. Each hypothesis carries the automaton state of
its tokens; a token that extends a match earns ``boost``, and a token that breaks one takes the unfinished
match's credit back, so only completed phrases keep their bonus (the context graph of Zhao et al. 2019,
"Shallow-fusion end-to-end contextual biasing", in the form icefall and WeNet use). A completed phrase
banks its credit where its word ends and the search starts matching afresh. A phrase must start at a
word boundary (after a space or at the start) and end at one: "CAT" earns nothing in "CONCATENATE" or
"CATS".

The automaton is tabulated over the whole vocabulary, so scoring a step is two tensor gathers:

>>> biaser = PhraseBiaser.build(model.tokenizer, ["kubernetes", "new york"], boost=2.0)
>>> state = biaser.init_state(batch, device)
>>> bonus, state = biaser.score(last_tokens, state)     # (N, V) added to the hypotheses' scores
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asr.tokenizer import (
    UNK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    normalize_text,
    tokenizer_fingerprint,
)

Tokenizer = CharTokenizer | SentencePieceTokenizer
MAX_PHRASE_TOKENS = 100
MAX_HINT_TOKENS = 10_000  # all the hints of one request together: bounds the tables (about 2.5 MB) and build
_CACHE: OrderedDict[tuple[str, tuple[str, ...], float], PhraseBiaser] = OrderedDict()
_CACHE_SIZE = 32
_CACHE_BYTES = 64 * 1024 * 1024
_CACHE_LOCK = threading.Lock()


def phrase_ids(tokenizer: Tokenizer, phrase: str) -> list[int]:
    """The tokens of a phrase hint; ``ValueError`` when there is nothing to match or it cannot be spelt."""
    ids = tokenizer.encode(normalize_text(phrase))
    if not ids or UNK_ID in ids:
        raise ValueError(f"phrase hint {phrase!r} has nothing this model can spell")
    if len(ids) > MAX_PHRASE_TOKENS:
        raise ValueError(f"phrase hint {phrase[:30]!r}... is over {MAX_PHRASE_TOKENS} tokens")
    return ids


def check_phrases(tokenizer: Tokenizer, phrases: Sequence[str]) -> list[list[int]]:
    """The tokens of every hint, checked one by one and together (``ValueError`` says what is wrong)."""
    ids = [phrase_ids(tokenizer, p) for p in phrases]
    total = sum(map(len, ids))
    if total > MAX_HINT_TOKENS:
        raise ValueError(f"phrase hints total {total} tokens; at most {MAX_HINT_TOKENS} per request")
    return ids


class PhraseBiaser:
    """Implements :class:`asr.decoding.LanguageModel`: ``score`` returns per-token bonuses, not log-probs."""

    def __init__(self, next_state: Tensor, bonus: Tensor, max_credit: float) -> None:
        self.next_state = next_state  # (M, V) int32: automaton state after each token (M states, 0 = root)
        self.bonus = bonus  # (M, V) float32: credit gained (or taken back) by each token from each state
        self.max_credit = max_credit  # the credit of the longest hint: what one more completed hint can add

    @property
    def nbytes(self) -> int:
        return self.next_state.numel() * self.next_state.element_size() + self.bonus.numel() * 4

    @classmethod
    def build(cls, tokenizer: Tokenizer, phrases: Sequence[str], boost: float) -> PhraseBiaser:
        """Raises ``ValueError`` for a phrase with nothing the tokenizer can spell, or a negative boost."""
        if boost < 0:
            raise ValueError(f"phrase boost must be >= 0, got {boost}")
        key = (tokenizer_fingerprint(tokenizer), tuple(phrases), float(boost))
        with _CACHE_LOCK:  # one model thread per served model
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
                return cached
        biaser = cls._build(tokenizer, phrases, boost)
        with _CACHE_LOCK:
            _CACHE[key] = biaser
            while len(_CACHE) > 1 and (
                len(_CACHE) > _CACHE_SIZE or sum(b.nbytes for b in _CACHE.values()) > _CACHE_BYTES
            ):
                _CACHE.popitem(last=False)
        return biaser

    @classmethod
    def _build(cls, tokenizer: Tokenizer, phrases: Sequence[str], boost: float) -> PhraseBiaser:
        space = tokenizer.space_id
        hint_ids = check_phrases(tokenizer, phrases)
        trie = _Trie.of(hint_ids, space)
        goto = trie.goto_table(tokenizer.vocab_size)
        if space is not None:
            goto[:, tokenizer.sos_id] = goto[0, space]  # the start of the text is a word boundary
        starts = _word_starts(tokenizer)
        bonus = _bonus_table(trie, goto, starts, boost)
        ends = np.flatnonzero(trie.end)
        goto[ends, tokenizer.eos_id] = 0
        bonus[ends, tokenizer.eos_id] = 0.0
        max_credit = boost * max(map(len, hint_ids), default=0)
        return cls(torch.from_numpy(goto.astype(np.int32)), torch.from_numpy(bonus), max_credit)

    # --- LanguageModel protocol -------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device) -> Tensor:
        if self.next_state.device != device:
            self.next_state, self.bonus = self.next_state.to(device), self.bonus.to(device)
        return torch.zeros(batch_size, dtype=torch.long, device=device)

    def score(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        state = self.next_state[state, tokens].long()
        return self.bonus[state], state

    def select(self, state: Tensor, index: Tensor) -> Tensor:
        return state[index]


@dataclass
class _Trie:
    """The hints' token sequences as a trie: node 0 is the root, ``children[n]`` maps a token to a node."""

    children: list[dict[int, int]]
    depth: list[int]  # tokens matched, the leading word boundary not counted
    end: list[bool]  # a hint ends here

    @classmethod
    def of(cls, hint_ids: Sequence[Sequence[int]], space: int | None) -> _Trie:
        """With a space tokenizer each hint starts with a space (a word boundary), which adds no depth."""
        trie = cls([{}], [0], [False])
        for ids in hint_ids:
            seq = [space, *ids] if space is not None else ids
            node = 0
            for i, t in enumerate(seq):
                nxt = trie.children[node].get(t)
                if nxt is None:
                    nxt = len(trie.children)
                    trie.children[node][t] = nxt
                    trie.children.append({})
                    trie.depth.append(trie.depth[node] + (0 if (space is not None and i == 0) else 1))
                    trie.end.append(False)
                node = nxt
            trie.end[node] = True
        return trie

    def goto_table(self, vocab_size: int) -> np.ndarray:
        """The Aho-Corasick automaton's full transition table ``(M, V)``, from the failure links (the
        longest proper suffix that is a trie path)."""
        children = self.children
        fail = [0] * len(children)
        goto = np.zeros((len(children), vocab_size), dtype=np.int64)
        queue: deque[int] = deque()
        for t, c in children[0].items():
            goto[0, t] = c
            queue.append(c)
        while queue:
            node = queue.popleft()
            goto[node] = goto[fail[node]]
            for t, c in children[node].items():
                fail[c] = int(goto[fail[node], t])
                goto[node, t] = c
                queue.append(c)
        return goto

    def banked(self, is_start: np.ndarray) -> list[int]:
        """Per node, the credit (in tokens) of the completed shorter hint a longer match passed through at a
        word start, kept if the longer one breaks ("NEW" in "NEW DELHI" with hints "NEW" and "NEW YORK")."""
        banked = [0] * len(self.children)
        stack = [0]
        while stack:
            node = stack.pop()
            for t, c in self.children[node].items():
                banked[c] = self.depth[node] if self.end[node] and is_start[t] else banked[node]
                stack.append(c)
        return banked


def _word_starts(tokenizer: Tokenizer) -> np.ndarray:
    """The tokens that start a word: the space, or the SentencePiece pieces that begin with one."""
    if tokenizer.space_id is not None:
        return np.array([tokenizer.space_id])
    pieces = (tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size))
    return np.array([i for i, p in enumerate(pieces) if p.startswith("\u2581")], dtype=int)


def _bonus_table(trie: _Trie, goto: np.ndarray, starts: np.ndarray, boost: float) -> np.ndarray:
    """The credit ``(M, V)`` float32 each token gains (or takes back) from each state; rewires ``goto``
    where a completed phrase banks its credit.

    A completed phrase banks its credit where its word ends: at a word start (a space, or a piece that
    begins a word) or <eos>. Anything else takes the credit back, as for a broken match ("CATS"), unless it
    extends a longer phrase; a longer phrase that then breaks keeps the shorter one's credit (``banked``).
    """
    is_start = np.zeros(goto.shape[1], dtype=bool)
    is_start[starts] = True
    banked = trie.banked(is_start)
    depth_a = np.asarray(trie.depth, dtype=np.float32)
    gained = depth_a[goto] - depth_a[:, None]
    extends = gained > 0  # only a child is deeper
    bonus = boost * np.where(extends, gained, gained + np.asarray(banked, dtype=np.float32)[:, None])
    ends = np.flatnonzero(trie.end)
    if len(ends) and len(starts):
        sub = goto[np.ix_(ends, starts)]  # (E, S)
        bank = depth_a[sub] <= depth_a[ends][:, None]  # not an extension (a child is one token deeper)
        rows, cols = np.nonzero(bank)
        fresh = goto[0, starts][cols]
        goto[ends[rows], starts[cols]] = fresh
        bonus[ends[rows], starts[cols]] = boost * depth_a[fresh]
    return bonus
