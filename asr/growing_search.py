"""The joint CTC/attention beam search of one utterance whose encoder frames arrive chunk by chunk.

A streaming final (:mod:`asr.online`) decoded only at its endpoint costs a whole beam search after the speech
has ended: about 40 ms of CPU per second of the utterance, most of a final's latency. :class:`GrowingSearch`
runs the same search (:class:`asr.decoding._JointSearch`: the same scores, pre-beam, pruning and end rules)
while the utterance is still being heard, in the manner of blockwise synchronous beam search (Tsunoo et al.
2021): at each *milestone* (a chunk of encoder frames and the number of tokens the search may reach with
them) the attention memory and the CTC posteriors grow by the new frames and the hypotheses are extended,
``<eos>`` held back, up to the milestone's token limit; :meth:`GrowingSearch.finish` adds the last frames,
allows ``<eos>`` and runs the search to its end as offline decoding does. So at the endpoint only the last few
tokens are left to search.

The limit keeps the search away from the frames it has not heard yet: a token is searched only once greedy
CTC has placed the tokens after it well inside the frames so far (:func:`token_limit`). Two things differ
from decoding the whole utterance at once, which is why the result may differ a little:

* a hypothesis's attention steps taken at an earlier milestone saw only the frames up to it (its previous
  attention weights are extended with zeros over the new frames, as if it had not looked there);
* a prefix's CTC state is carried over the new frames by continuing its last token or blanks, not by a new
  start of its last token there (ESPnet's ``extend_state`` makes the same approximation), and its prefix
  score is the one it had when it was formed.

The result depends only on the milestones given (never on when :meth:`GrowingSearch.grow` is called), so
a final is the same whichever thread grew its search and how far behind it was.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from asr.decoder import DecoderState, Memory
from asr.decoding import DecodingOptions, Hypothesis, LanguageModel, _Beam, _JointSearch

__all__ = ["GrowingSearch", "UtteranceSearch", "token_limit"]


def token_limit(token_frames: Sequence[int], frames: int, guard: int, margin: int) -> int:
    """How many tokens a search over ``frames`` encoder frames may reach: the greedy CTC tokens (their frame
    indices ``token_frames``, in order) that lie at least ``guard`` frames before the end, less ``margin``
    (the attention decoder and greedy CTC need not agree on the count)."""
    heard = sum(1 for f in token_frames if f < frames - guard)
    return max(heard - margin, 0)


class GrowingSearch:
    """One utterance's joint beam search over encoder frames that keep coming (see the module docstring).

    ``prefix``: tokens every hypothesis starts with (the sentence's earlier finals, :mod:`asr.online`),
    teacher-forced at the first milestone. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: Any,
        options: DecodingOptions,
        lm: LanguageModel | None = None,
        prefix: Sequence[int] = (),
    ) -> None:
        if options.method != "beam" or options.tta_speeds:
            raise ValueError("a growing search needs the beam search without TTA views")
        self.model, self.options, self.lm = model, options, lm
        self.prefix = tuple(int(t) for t in prefix)
        self._search: _JointSearch | None = None
        self._beam: _Beam | None = None
        self._waiting: list[Tensor] = []  # frames before the first step
        self.frames = 0  # encoder frames taken in
        self.steps = 0  # search steps taken (tokens after the prefix)
        self.stepped_at = 0  # the frames taken in when the last step was taken
        self.done = False

    @torch.no_grad()
    def grow(self, enc: Tensor, limit: int) -> None:
        """One milestone: the next encoder frames ``(n, D)`` and the tokens the search may reach now."""
        if self.done:
            raise RuntimeError("the search has finished")
        self._take(enc)
        if limit <= self.steps:
            return
        search = self._started()
        search.allow_eos = False
        while self.steps < limit and self.steps <= int(search.maxlen.max()):
            if not self._step():
                break

    @torch.no_grad()
    def finish(self, enc: Tensor | None = None) -> list[Hypothesis]:
        """The last encoder frames ``(n, D)`` (if any): the n-best list, best first, as
        :func:`asr.decoding.beam_search` returns it for one utterance."""
        if self.done:
            raise RuntimeError("the search has finished")
        if enc is not None:
            self._take(enc)
        search = self._started()
        search.allow_eos = True
        while self.steps <= int(search.maxlen.max()):
            if not self._step():
                break
        self.done = True
        return search.results()[0]

    def best(self) -> tuple[int, ...]:
        """The tokens (after the prefix) of the best hypothesis still searched; ``()`` before the first step
        or once the search has finished."""
        beam = self._beam
        if beam is None or self.steps == 0 or self.done or beam.scores.numel() == 0:
            return ()
        return tuple(beam.yseq[int(beam.scores.argmax()), 1:].tolist())

    def _started(self) -> _JointSearch:
        """The search, started over the frames so far when its first step comes (so that a search that
        takes no step before the end is exactly the offline one)."""
        if self._search is None:
            if not self._waiting:
                raise ValueError("a search over no encoder frames")
            enc = torch.cat(self._waiting)[None]
            self._waiting = []
            lengths = torch.tensor([enc.size(1)], device=enc.device)
            self._search = _JointSearch(self.model, enc, lengths, self.options, self.lm, [self.prefix])
            self._beam = self._search._start()
        return self._search

    def rewind(self, frames: int) -> None:
        """Keep only the first ``frames`` encoder frames, as if no more had been taken in: exact when no step
        was taken after them (``stepped_at <= frames``); ``ValueError`` otherwise."""
        if frames > self.frames or self.stepped_at > frames:
            raise ValueError(
                f"cannot rewind a search of {self.frames} frames, stepped at {self.stepped_at}, to {frames}"
            )
        if frames == self.frames:
            return
        self.frames = frames
        search, beam = self._search, self._beam
        if search is None or beam is None:
            enc = torch.cat(self._waiting)[:frames]
            self._waiting = [enc] if frames else []
            return
        search.enc_lengths = torch.full_like(search.enc_lengths, frames)
        total = (search.enc_lengths.double() * self.options.max_length_ratio).clamp_min(1).long()
        search.maxlen = (total - search.plen).clamp_min(0)
        if search.use_att:
            mem = beam.memory
            beam.memory = Memory(mem.enc[:, :frames], mem.proj[:, :frames], mem.mask[:, :frames])
            beam.dstate = beam.dstate._replace(attention=beam.dstate.attention[:, :frames])
        if search.scorer is not None:
            search.scorer.rewind(frames)
            if beam.r is not None:
                beam.r = beam.r[:, :, :frames]

    def _step(self) -> bool:
        search, beam = self._search, self._beam
        assert search is not None and beam is not None
        scored = search._score(beam, self.steps)
        top = search._extend(beam, scored)
        alive = search._retire(beam, top, self.steps)
        self.steps += 1
        self.stepped_at = self.frames
        return alive

    def _take(self, enc: Tensor) -> None:
        """Grow the memory, the CTC posteriors and every hypothesis's state by ``enc (n, D)``."""
        n = enc.size(0)
        if n == 0:
            return
        t_old = self.frames
        self.frames += n
        search, beam = self._search, self._beam
        if search is None or beam is None:
            self._waiting.append(enc)
            return
        search.enc_lengths = search.enc_lengths + n
        total = (search.enc_lengths.double() * self.options.max_length_ratio).clamp_min(1).long()
        search.maxlen = (total - search.plen).clamp_min(0)
        if search.use_att:
            mem = beam.memory
            proj = self.model.decoder.attention.enc_proj(enc)[None]
            ones = torch.ones(1, n, dtype=torch.bool, device=enc.device)
            cat = torch.cat
            beam.memory = Memory(
                cat([mem.enc, enc[None]], 1), cat([mem.proj, proj], 1), cat([mem.mask, ones], 1)
            )
            d: DecoderState = beam.dstate
            beam.dstate = d._replace(attention=F.pad(d.attention, (0, n)))  # not looked at yet
        if search.scorer is not None:
            x = self.model.ctc_log_probs(enc[None]).double().transpose(1, 2)  # (1, V, n)
            search.scorer.grow(x)
            if beam.r is not None:
                beam.r = _carry(beam.r, x[0], beam.yseq[:, -1], search.scorer.blank, t_old)


def _carry(r: Tensor, x: Tensor, last: Tensor, blank: int, t_old: int) -> Tensor:
    """Prefix states ``r (N, 2, T)`` carried over new frames ``x (V, n)``: the prefix's last token goes on
    (``r^n_t = r^n_{t-1} y^last_t``) or blanks follow (``r^b_t = (r^n_{t-1} + r^b_{t-1}) y^blank_t``)."""
    xn = x[
        last.clamp_max(x.size(0) - 1)
    ]  # (N, n): the last token's posteriors (an empty prefix has r^n = -inf)
    xb = x[blank]  # (n,)
    rn, rb = r[:, 0, -1], r[:, 1, -1]
    cols_n, cols_b = [], []
    for t in range(x.size(1)):
        rn, rb = rn + xn[:, t], torch.logaddexp(rn, rb) + xb[t]
        cols_n.append(rn)
        cols_b.append(rb)
    grown = torch.stack([torch.stack(cols_n, 1), torch.stack(cols_b, 1)], 1)  # (N, 2, n)
    assert r.size(2) == t_old
    return torch.cat([r, grown], 2)


GUARD_FRAMES = 4  # a token is searched once greedy CTC places it this many frames before the frontier...
MARGIN_TOKENS = 1  # ...and this many more tokens after it (bench: speechocean762 validation, commonvoice)


class UtteranceSearch:
    """The growing search of one streamed utterance (:mod:`asr.online`): each of its encoder chunks is a
    milestone, whose token limit (:func:`token_limit`) comes from the frames of its greedy CTC tokens, so that
    the search's result depends on the chunks alone, never on when they were given to it.

    ``context``: encoder frames before the utterance (the sentence's earlier utterances, whose finals are
    the ``prefix``), taken in before the first chunk. ``lock`` serialises :meth:`catch_up` and :meth:`finish`
    from different threads."""

    def __init__(
        self,
        model: Any,
        options: DecodingOptions,
        lm: LanguageModel | None,
        prefix: Sequence[int],
        context: Tensor | None,
        context_utterances: int = 0,
    ) -> None:
        self.lock = threading.Lock()
        self.args = (model, options, lm, tuple(prefix))
        self.context = context
        self.context_utterances = context_utterances
        self.search = self._new()
        self.taken = 0  # chunks given to the search
        self.taken_frames = 0  # their frames

    def _new(self) -> GrowingSearch:
        search = GrowingSearch(*self.args)
        if self.context is not None and self.context.size(0):
            search.grow(self.context, 0)
        return search

    @property
    def started(self) -> bool:
        """Whether the search has taken a step (before that, finishing it is the offline search)."""
        return self.search.steps > 0

    def catch_up(self, chunks: Sequence[Tensor], token_frames: Sequence[int]) -> None:
        """Give the search the chunks ``(n_i, D)`` it has not had, each with its limit; ``token_frames``: the
        utterance's greedy CTC token frames so far."""
        if self.search.done:
            return
        for chunk in chunks[self.taken :]:
            self.taken += 1
            self.taken_frames += chunk.size(0)
            limit = token_limit(token_frames, self.taken_frames, GUARD_FRAMES, MARGIN_TOKENS)
            self.search.grow(chunk, limit)

    def best(self) -> tuple[int, ...]:
        """The best hypothesis so far (:meth:`GrowingSearch.best`)."""
        return self.search.best()

    def finish(self, chunks: Sequence[Tensor], token_frames: Sequence[int], keep: int) -> list[Hypothesis]:
        """The n-best list over the utterance's first ``keep`` frames of ``chunks``: the chunks not yet given
        go in as milestones first. A search that has taken in frames past ``keep`` (an energy endpoint keeps
        the utterance to the chunk after the speech's tail, heard some chunks later) is rewound to them when
        it took no step after them; one that did, or that finished before (a final decoded again after a
        failure), starts again over them."""
        if self.taken_frames > keep and not self.search.done:
            base = self.search.frames - self.taken_frames  # the context's frames
            sizes = [c.size(0) for c in chunks[: self.taken]]
            ends = [base + sum(sizes[: k + 1]) for k in range(len(sizes))]
            at = next((k + 1 for k, e in enumerate(ends) if e == base + keep), None)
            if at is not None and self.search.stepped_at <= base + keep:
                self.search.rewind(base + keep)
                self.taken, self.taken_frames = at, keep
        if self.taken_frames > keep or self.search.done:
            self.search, self.taken, self.taken_frames = self._new(), 0, 0
        kept, total = [], 0
        for chunk in chunks:
            if total >= keep:
                break
            kept.append(chunk[: keep - total])
            total += kept[-1].size(0)
        self.catch_up(kept, token_frames)
        return self.search.finish()
