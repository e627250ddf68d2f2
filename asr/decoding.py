"""Decoding: greedy CTC and joint CTC/attention beam search with CTC prefix scoring.

The joint score of a prefix ``g`` is (Watanabe et al. 2017)::

    score(g) = (1 - ctc_weight) * log p_att(g) + ctc_weight * log p_ctc(g...) + lm_weight * log p_lm(g)
               + length_bonus * |g|

The CTC prefix scorer is vectorised over utterances, hypotheses and candidate tokens *and* over time:
the forward recursions ``r^n_t = (r^n_{t-1} + phi_{t-1}) y^c_t`` and
``r^b_t = (r^n_{t-1} + r^b_{t-1}) y^blank_t``
are first-order linear recurrences, so each is solved in closed form with one ``cumsum`` and one
``logcumsumexp`` over the time axis instead of a Python loop over frames (the loop that makes ESPnet's
scorer the bottleneck on long inputs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from asr.biasing import PhraseBiaser

NEG_INF = float("-inf")
MIN_TTA_SPEED, MAX_TTA_SPEED = 0.5, 2.0
MAX_TTA_SPEEDS = 4  # extra views per utterance: each costs about one more decoding
_PAD_LOGP = -1e4  # log-prob of non-blank tokens on padded frames (blank gets log 1 = 0 there)


@dataclass(frozen=True)
class DecodingOptions:
    """How to turn encoder output into text. Change with ``dataclasses.replace``."""

    method: str = "beam"  # "greedy" (CTC best path) or "beam" (joint CTC/attention)
    beam_size: int = 10
    ctc_weight: float = 0.3  # 0: attention only, 1: CTC prefix search only
    lm_weight: float = 0.0  # shallow fusion weight; needs a language model
    length_bonus: float = 0.0  # added to the score for every emitted token
    normalize_length: bool = False  # rank finished hypotheses by score / length
    eos_threshold: float | None = None  # allow <eos> only if log p(eos) >= threshold * max log p (e.g. 1.5)
    nbest: int = 1
    max_length_ratio: float = 1.0  # max tokens = ratio * encoder frames
    pre_beam_ratio: float = 1.5  # candidates per hypothesis = ratio * beam, chosen by the attention scores
    phrases: tuple[str, ...] = ()  # phrase hints: words and phrases to favour (asr.biasing)
    phrase_boost: float = 1.0  # score per token of a completed phrase hint (bench/biasing.py)
    tta_speeds: tuple[float, ...] = ()  # test-time augmentation: also decode at these speeds (asr.tta)
    # a segment in which greedy CTC emits no token decodes to nothing, without a search: CTC is the model's
    # speech detector, and the attention decoder alone writes words into silence and noise (60 s of digital
    # silence came back as "IT IT IT"); so does a recording of digital silence (transcribe.DIGITAL_SILENCE)
    ctc_gate: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.phrases, tuple):  # a list would make the options unhashable
            if isinstance(self.phrases, str):
                raise ValueError("phrases must be a sequence of strings, not one string")
            object.__setattr__(self, "phrases", tuple(self.phrases))
        if isinstance(self.tta_speeds, str):
            raise ValueError("tta_speeds must be a sequence of numbers, e.g. (0.9, 1.1), not a string")
        if not isinstance(self.tta_speeds, tuple):
            object.__setattr__(self, "tta_speeds", tuple(float(x) for x in self.tta_speeds))
        for speed in self.tta_speeds:
            if not MIN_TTA_SPEED <= speed <= MAX_TTA_SPEED or speed == 1.0:
                raise ValueError(
                    f"tta_speeds must lie in [{MIN_TTA_SPEED}, {MAX_TTA_SPEED}] and leave out 1.0 (the "
                    f"original is always decoded), got {speed}; e.g. (0.9, 1.1)"
                )
        if len(self.tta_speeds) > MAX_TTA_SPEEDS:
            raise ValueError(f"tta_speeds has {len(self.tta_speeds)} speeds; at most {MAX_TTA_SPEEDS}")
        if len(set(self.tta_speeds)) != len(self.tta_speeds):
            raise ValueError(f"tta_speeds has a speed twice: {self.tta_speeds}")
        if self.phrase_boost < 0:
            raise ValueError(f"phrase_boost must be >= 0, got {self.phrase_boost}")
        if self.method not in ("greedy", "beam"):
            raise ValueError(f"unknown decoding method {self.method!r}; choose 'greedy' or 'beam'")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        if self.tta_speeds and self.method != "beam":
            raise ValueError("tta_speeds needs the beam search (method 'beam'); greedy CTC decodes one view")
        if self.nbest < 1 or (self.nbest > self.beam_size and self.method == "beam"):
            raise ValueError(f"nbest must be in [1, beam_size={self.beam_size}], got {self.nbest}")
        if self.max_length_ratio <= 0:
            raise ValueError(f"max_length_ratio must be positive, got {self.max_length_ratio}")
        if self.eos_threshold is not None and self.eos_threshold < 1.0:
            raise ValueError(
                f"eos_threshold must be >= 1 (it scales the best log-prob), got {self.eos_threshold}"
            )

    def capped(self, beam: int) -> DecodingOptions:
        """These options with the beam (and n-best) at most ``beam``: what a server behind on its finals
        searches with (``0``: unchanged)."""
        if beam <= 0 or self.method != "beam" or self.beam_size <= beam:
            return self
        return dataclasses.replace(self, beam_size=beam, nbest=min(self.nbest, beam))


class Hypothesis(NamedTuple):
    tokens: tuple[int, ...]  # without <sos>/<eos>
    score: float  # the ranking score (length-normalised if asked)
    att_score: float = 0.0
    ctc_score: float = 0.0
    lm_score: float = 0.0


class LanguageModel(Protocol):
    """External token-level LM for shallow fusion; must share the ASR tokenizer's ids."""

    def init_state(self, batch_size: int, device: torch.device) -> Any: ...

    def score(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Previous tokens ``(N,)`` (``<sos>`` first) -> next-token log-probs ``(N, V)`` and the new state."""
        ...

    def select(self, state: Any, index: Tensor) -> Any: ...


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC: argmax per frame, merge repeats, drop blanks. ``log_probs (B, T, V)``."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(best[b, :n])
        out.append([t for t in path.tolist() if t != blank])
    return out


class CTCPrefixScorer:
    """CTC prefix probabilities for many hypotheses and candidates at once.

    ``log_probs (B, T, V)`` with ``lengths (B,)``. A hypothesis state is ``r (N, 2, T)``: the log-probs
    that the prefix's frames ``0..t`` end in a non-blank (``r[:, 0]``) or a blank (``r[:, 1]``).
    Time is the last, contiguous axis throughout, so every cumulative op runs along memory.

    A candidate's prefix score sums, over the frame ``t`` where it starts, the prefix's probability of
    having ended by ``t - 1`` (``phi``) times the candidate's posterior at ``t``. Only the frames where a
    row's ``phi`` is within ``window_margin`` nats of its best are summed (a window where the prefix
    ends: it follows the speech along a long utterance): the frames left out add at most ``T *
    exp(-window_margin)`` of the row's best ``phi`` to any candidate's score. So each step costs the
    window's frames, not the utterance's, and a 30 s segment is searched in about the time per second of
    a short one (docs/BENCHMARKS.md). ``window_margin=None`` sums every frame.
    """

    window_margin: float | None = 30.0

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, eos: int) -> None:
        x = log_probs.double()
        t = x.size(1)
        pad = torch.arange(t, device=x.device)[None, :] >= lengths[:, None].to(x.device)  # (B, T)
        x = x.masked_fill(pad[:, :, None], _PAD_LOGP)
        x[:, :, blank] = x[:, :, blank].masked_fill(pad, 0.0)
        self.x = x.transpose(1, 2).contiguous()  # (B, V, T)
        self.frames = ~pad  # (B, T): each utterance's own frames
        self.blank, self.eos = blank, eos
        self.blank_cum = torch.cumsum(self.x[:, blank], dim=1)  # (B, T)
        self.blank_prev = torch.cat([torch.zeros_like(self.blank_cum[:, :1]), self.blank_cum[:, :-1]], dim=1)

    def grow(self, x: Tensor) -> None:
        """Append frames ``x (B, V, n)`` (float64 log-probs, no padding) to every utterance's posteriors."""
        blank = torch.cumsum(x[:, self.blank], dim=1) + self.blank_cum[:, -1:]
        self.blank_prev = torch.cat([self.blank_prev, self.blank_cum[:, -1:], blank[:, :-1]], dim=1)
        self.blank_cum = torch.cat([self.blank_cum, blank], dim=1)
        self.x = torch.cat([self.x, x], dim=2)
        self.frames = torch.cat([self.frames, self.frames.new_ones(x.size(0), x.size(2))], dim=1)

    def rewind(self, frames: int) -> None:
        """Keep only the first ``frames`` frames (undoes :meth:`grow`)."""
        self.x = self.x[:, :, :frames]
        self.blank_cum, self.blank_prev = self.blank_cum[:, :frames], self.blank_prev[:, :frames]
        self.frames = self.frames[:, :frames]

    def initial_state(self, utt: Tensor) -> Tensor:
        """State of the empty prefix for hypotheses of utterances ``utt (N,)``: ``(N, 2, T)``."""
        rb = self.blank_cum[utt]
        return torch.stack([torch.full_like(rb, NEG_INF), rb], dim=1)

    def _phi(
        self, utt: Tensor, r_prev: Tensor, last: Tensor, is_empty: Tensor, cand: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Candidate posteriors ``xc``, ``phi_{t-1}`` (both ``(N, K, T)``) and ``r_sum (N, T)``."""
        n, k = cand.shape
        xc = self.x[utt[:, None], cand.clamp_max(self.x.size(1) - 1)]  # (N, K, T)
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (N, T)
        # phi_t: paths of g that may be followed by c at t+1; after a repeat only blank-ending paths may
        same = (cand == last[:, None])[:, :, None]  # (N, K, 1)
        phi = torch.where(same, r_prev[:, None, 1], r_sum[:, None, :])  # (N, K, T)
        start = torch.where(is_empty, 0.0, NEG_INF).to(xc.dtype)[:, None, None].expand(n, k, 1)
        phi_ext = torch.cat([start, phi[:, :, :-1]], dim=2)  # phi_{t-1}, with phi_{-1} = [g is empty]
        return xc, phi_ext, r_sum

    @staticmethod
    def _new_token_phi(r_prev: Tensor, is_empty: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``r_sum (N, T)``, the ``phi_{-1}`` column ``(N, 1)`` and ``phi_{t-1} (N, T)`` of a new token."""
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])
        start = torch.where(is_empty, 0.0, NEG_INF).to(r_sum.dtype)[:, None]
        return r_sum, start, torch.cat([start, r_sum[:, :-1]], dim=1)

    def _window(self, utt: Tensor, phi: Tensor) -> Tensor | None:
        """The frames ``(N, W)`` each row's prefix scores are summed over: one run of ``W`` frames per row
        that holds every frame of its utterance whose ``phi_{t-1}`` (``phi (N, T)``, for a new token) is
        within ``window_margin`` of the row's best (a padded frame adds nothing, a dead row nothing at all);
        None (every frame) without a margin or where the window would not halve the work."""
        t = phi.size(1)
        if self.window_margin is None or t < 8:
            return None
        best = phi.max(dim=1, keepdim=True).values
        keep = (phi >= best - self.window_margin) & (phi > NEG_INF) & self.frames[utt]  # (N, T)
        lo = keep.to(torch.uint8).argmax(dim=1)  # first kept frame (0 for a dead row)
        hi = t - 1 - keep.flip(1).to(torch.uint8).argmax(dim=1)
        hi = torch.where(keep.any(dim=1), hi, lo)
        width = int((hi - lo).max()) + 1
        if 2 * width > t:
            return None
        lo = lo.clamp(max=t - width)  # the run ends within the utterance's frames
        return lo[:, None] + torch.arange(width, device=lo.device)

    def _phi_window(
        self,
        utt: Tensor,
        r_prev: Tensor,
        last: Tensor,
        start: Tensor,
        cand: Tensor,
        phi: Tensor,
        frames: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`_phi` over each row's ``frames (N, W)`` only (``phi``: :meth:`_window`'s, ``start``: the
        ``phi_{-1}`` column): ``xc`` and ``phi_{t-1}``, ``(N, K, W)``."""
        xc = self.x[utt[:, None, None], cand.clamp_max(self.x.size(1) - 1)[:, :, None], frames[:, None, :]]
        any_path = phi.gather(1, frames)  # (N, W)
        blank_end = torch.cat([start, r_prev[:, 1, :-1]], dim=1).gather(1, frames)
        same = (cand == last[:, None])[:, :, None]  # (N, K, 1)
        return xc, torch.where(same, blank_end[:, None, :], any_path[:, None, :])  # (N, K, W)

    def score(self, utt: Tensor, r_prev: Tensor, last: Tensor, is_empty: Tensor, cand: Tensor) -> Tensor:
        """Prefix scores of extending each hypothesis with each candidate.

        utt, last, is_empty: ``(N,)``; r_prev: ``(N, 2, T)``; cand: ``(N, K)`` token ids.
        Returns ``psi (N, K)``: the log-prob of all paths whose label sequence starts with ``g + c``; for
        ``<eos>`` the full-sequence probability of ``g``. The new states come from :meth:`extend`, for the
        few extensions that survive the beam.
        """
        frames = None
        if self.window_margin is not None:
            r_sum, start, phi = self._new_token_phi(r_prev, is_empty)
            frames = self._window(utt, phi)
        if frames is None:
            xc, phi_ext, r_sum = self._phi(utt, r_prev, last, is_empty, cand)
        else:
            xc, phi_ext = self._phi_window(utt, r_prev, last, start, cand, phi, frames)
        psi = torch.logsumexp(phi_ext + xc, dim=2)  # (N, K)
        psi = torch.where(cand == self.eos, r_sum[:, -1:].expand_as(psi), psi)
        return psi.masked_fill(psi.isnan(), NEG_INF)  # (nan_to_num would turn -inf into a finite number)

    def extend(self, utt: Tensor, r_prev: Tensor, last: Tensor, is_empty: Tensor, token: Tensor) -> Tensor:
        """States ``(N, 2, T)`` of the prefixes ``g + token``, one ``token (N,)`` per hypothesis."""
        xc, phi_ext, _ = self._phi(utt, r_prev, last, is_empty, token[:, None])
        # r^n_t = sum_{s<=t} phi_{s-1} prod_{u=s..t} y^c_u  =  C_t + logcumsumexp_s(phi_{s-1} - C_{s-1})
        c_cum = torch.cumsum(xc, dim=2)
        c_prev = torch.cat([torch.zeros_like(c_cum[:, :, :1]), c_cum[:, :, :-1]], dim=2)
        rn = (c_cum + torch.logcumsumexp(phi_ext - c_prev, dim=2))[:, 0]  # (N, T)
        # r^b_t = sum_{s<=t} r^n_{s-1} prod_{u=s..t} y^blank_u
        rn_shift = torch.cat([torch.full_like(rn[:, :1], NEG_INF), rn[:, :-1]], dim=1)
        rb = self.blank_cum[utt] + torch.logcumsumexp(rn_shift - self.blank_prev[utt], dim=1)
        return torch.stack([rn, rb], dim=1)


# score terms fused into the search beside attention and CTC: (scorer, weight, is the LM)
Fused = list[tuple[LanguageModel, float, bool]]


@torch.no_grad()
def beam_search(
    model: Any,
    enc: Tensor,
    enc_lengths: Tensor,
    options: DecodingOptions,
    lm: LanguageModel | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Joint CTC/attention beam search, batched over utterances. Returns n-best lists, best first.

    Only live work is computed: the search starts from one row per utterance (the empty prefix) and widens
    to ``beam_size`` rows as extensions appear, and an utterance whose n-best list is final leaves the
    batch, so a batch of short and long utterances costs little more than its long ones decoded alone.

    ``prefixes``: tokens each utterance's hypotheses must start with (a streaming final's words already
    sent, :mod:`asr.online`). They are scored by teacher forcing, one step per token for the whole batch,
    and only what follows them is searched; every hypothesis returned starts with its prefix.
    """
    if options.lm_weight > 0 and lm is None:
        raise ValueError("lm_weight > 0 needs a language model (pass lm=...)")
    if prefixes is not None and len(prefixes) != enc.size(0):
        raise ValueError(f"{len(prefixes)} prefixes for a batch of {enc.size(0)} utterances")
    forced = [tuple(int(t) for t in p) for p in prefixes] if prefixes else [()] * enc.size(0)
    fused, _ = _fused_scorers(model.tokenizer, options, lm)
    if fused and len({len(p) for p in forced}) > 1:
        # fused scorers' states can only be selected, not merged row by row: one search per prefix length
        results: list[list[Hypothesis]] = [[] for _ in forced]
        for n in sorted({len(p) for p in forced}):
            rows = [i for i, p in enumerate(forced) if len(p) == n]
            index = torch.tensor(rows, device=enc.device)
            found = _JointSearch(
                model, enc[index], enc_lengths[index], options, lm, [forced[i] for i in rows]
            ).run()
            for i, hyps in zip(rows, found, strict=True):
                results[i] = hyps
        return results
    return _JointSearch(model, enc, enc_lengths, options, lm, forced).run()


@dataclass
class _Beam:
    """The live hypotheses, one row each, in blocks of ``rows`` rows per utterance still searched:
    ``active[j]`` is the utterance of block ``j`` and ``utt (N,)`` the utterance of each row, which indexes
    the CTC scorer's posteriors. Scores are float64 ``(N,)``."""

    active: list[int]
    rows: int
    utt: Tensor
    yseq: Tensor  # (N, step + 1): <sos> and the tokens so far
    scores: Tensor  # the joint score of the prefix
    att_acc: Tensor  # its attention log-prob
    ctc_psi: Tensor  # its CTC prefix score
    lm_acc: Tensor  # its LM log-prob
    r: Tensor | None  # CTC prefix state (N, 2, T), None without CTC
    dstate: Any  # decoder state
    memory: Any  # decoder memory (the encoder output, prepared), one row per active utterance
    fused_states: list[Any]


class _Step(NamedTuple):
    """One step's scores: ``att_lp`` and ``lm_lp`` per token ``(N, V)``; the candidates ``cand (N, K)``,
    their joint scores ``cand_scores (N, K)`` and CTC prefix scores ``psi (N, K)`` (None without CTC); and
    per row ``(N,)`` the ``last`` token and whether the prefix ``is_empty``."""

    att_lp: Tensor
    lm_lp: Tensor
    cand: Tensor
    cand_scores: Tensor
    psi: Tensor | None
    last: Tensor
    is_empty: Tensor


class _JointSearch:
    """One call of :func:`beam_search`: the fixed inputs, and the steps that grow a :class:`_Beam`.

    With prefixes, the beam starts after them: ``yseq[:, 0]`` is the token before the search (``<sos>`` or
    the prefix's last token), steps count the searched tokens only, and finished hypotheses get their
    prefix back."""

    def __init__(
        self,
        model: Any,
        enc: Tensor,
        enc_lengths: Tensor,
        options: DecodingOptions,
        lm: LanguageModel | None,
        prefixes: Sequence[tuple[int, ...]],
    ) -> None:
        tok = model.tokenizer
        self.model, self.enc, self.enc_lengths, self.options = model, enc, enc_lengths, options
        self.prefixes = list(prefixes)
        self.plen = torch.tensor([len(p) for p in self.prefixes], dtype=torch.long, device=enc.device)
        self.fused, biaser = _fused_scorers(tok, options, lm)
        self.blank, self.sos, self.eos = tok.blank_id, tok.sos_id, tok.eos_id
        self.lam, self.w = options.ctc_weight, options.beam_size
        self.b, self.device = enc.size(0), enc.device
        self.use_att, self.use_ctc = self.lam < 1.0, self.lam > 0.0
        v = self.v = tok.vocab_size
        ctc_lp = model.ctc_log_probs(enc) if self.use_ctc else None
        self.scorer = None if ctc_lp is None else CTCPrefixScorer(ctc_lp, enc_lengths, self.blank, self.eos)
        # tokens each utterance may still add after its prefix
        total = (enc_lengths.double() * options.max_length_ratio).clamp_min(1).long()  # (B,)
        self.maxlen = (total - self.plen.to(total.device)).clamp_min(0)
        w = self.w
        self.k = v - 1 if not self.use_att else min(v - 1, max(w, int(options.pre_beam_ratio * w)))
        self.all_cands = torch.tensor([i for i in range(v) if i != self.blank], device=self.device)
        self.not_eos = torch.arange(v, device=self.device) != self.eos
        # Every score term is a log-probability of a growing prefix (attention, CTC prefix, LM), so without
        # a length bonus or normalisation a hypothesis's raw score can only fall as it grows: once the best
        # live one is below the n-th best finished one, the n-best list is final and the search can stop
        # exactly. Phrase hints add positive bonuses: a live hypothesis is then given the credit of its
        # longest hint as slack (one more completed hint could lift it that much; ESPnet's end detection
        # covers the rest).
        self.monotone = not options.normalize_length and options.length_bonus <= 0
        self.slack = biaser.max_credit if biaser is not None else 0.0
        self.finished: list[list[Hypothesis]] = [[] for _ in range(self.b)]
        self.allow_eos = True  # False while a growing search (asr.growing_search) has not heard the end

    def run(self) -> list[list[Hypothesis]]:
        beam = self._start()
        for step in range(int(self.maxlen.max()) + 1):
            scored = self._score(beam, step)
            top = self._extend(beam, scored)
            if not self._retire(beam, top, step):
                break
        return self.results()

    def results(self) -> list[list[Hypothesis]]:
        """Each utterance's n-best list of the hypotheses finished so far, best first."""
        results = []
        for u in range(self.b):
            hyps = sorted(self.finished[u], key=lambda h: h.score, reverse=True)
            results.append(hyps[: self.options.nbest] if hyps else [Hypothesis((), NEG_INF)])
        return results

    def _start(self) -> _Beam:
        """One row per utterance: the empty prefix."""
        b, device = self.b, self.device
        utt = torch.arange(b, device=device)
        memory, dstate = self.model.decoder.prepare(self.enc, self.enc_lengths)
        r = self.scorer.initial_state(utt) if self.scorer is not None else None
        fused_states = [f.init_state(b, device) for f, _, _ in self.fused]

        def zeros() -> Tensor:
            return torch.zeros(b, dtype=torch.float64, device=device)

        yseq = torch.full((b, 1), self.sos, dtype=torch.long, device=device)
        beam = _Beam(
            list(range(b)), 1, utt, yseq, zeros(), zeros(), zeros(), zeros(), r, dstate, memory, fused_states
        )
        for t in range(int(self.plen.max()) if b else 0):
            self._force(beam, t)
        return beam

    def _force(self, beam: _Beam, t: int) -> None:
        """Teacher-force token ``t`` of each utterance's prefix (one row per utterance); the rows whose
        prefix is shorter keep their state."""
        on = self.plen > t  # (B,)
        token = torch.tensor(
            [p[t] if len(p) > t else self.eos for p in self.prefixes], dtype=torch.long, device=self.device
        )
        last = beam.yseq[:, -1]
        old_dstate = beam.dstate
        total, att_lp, lm_lp = self._token_scores(beam, last)
        if self.use_att:
            beam.dstate = old_dstate.where(on, beam.dstate)
        gain = total.gather(1, token[:, None])[:, 0]
        if self.scorer is not None and beam.r is not None:
            is_empty = torch.full_like(on, t == 0)
            psi = self.scorer.score(beam.utt, beam.r, last, is_empty, token[:, None])[:, 0]
            r = self.scorer.extend(beam.utt, beam.r, last, is_empty, token)
            gain = gain + self.lam * (psi - beam.ctc_psi)
            beam.r = torch.where(on[:, None, None], r, beam.r)
            beam.ctc_psi = torch.where(on, psi, beam.ctc_psi)
        beam.scores = torch.where(on, beam.scores + gain, beam.scores)
        beam.att_acc = torch.where(on, beam.att_acc + att_lp.gather(1, token[:, None])[:, 0], beam.att_acc)
        beam.lm_acc = torch.where(on, beam.lm_acc + lm_lp.gather(1, token[:, None])[:, 0], beam.lm_acc)
        beam.yseq = torch.where(on, token, last)[:, None]

    def _token_scores(self, beam: _Beam, last: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``total``, ``att_lp`` and ``lm_lp`` ``(N, V)`` of every next token (advances the decoder and the
        fused scorers' states)."""
        n, v, device = last.size(0), self.v, self.device
        total = torch.zeros(n, v, dtype=torch.float64, device=device)
        att_lp = torch.zeros(n, v, dtype=torch.float64, device=device)
        if self.use_att:
            logits, beam.dstate = self.model.decoder.step(last, beam.dstate, beam.memory)
            att_lp = torch.log_softmax(logits.double(), dim=-1)
            total = total + (1 - self.lam) * att_lp
        lm_lp = torch.zeros_like(total)
        for i, (f, weight, is_lm) in enumerate(self.fused):
            f_lp, beam.fused_states[i] = f.score(last, beam.fused_states[i])
            if f_lp.shape != total.shape:
                raise ValueError(
                    f"language model gives {f_lp.size(-1)} log-probs per step; the tokenizer has {v} ids"
                )
            f_lp = f_lp.to(device=device, dtype=torch.float64)
            total = total + weight * f_lp
            if is_lm:
                lm_lp = f_lp
        return total, att_lp, lm_lp

    def _score(self, beam: _Beam, step: int) -> _Step:
        """Scores of this step's candidate extensions of every row."""
        options, eos = self.options, self.eos
        last = beam.yseq[:, -1]
        total, att_lp, lm_lp = self._token_scores(beam, last)
        total[:, self.blank] = NEG_INF
        if options.eos_threshold is not None and self.use_att:
            best_other = att_lp.masked_fill(~self.not_eos, NEG_INF).max(-1).values
            allow = att_lp[:, eos] >= options.eos_threshold * best_other
            total[:, eos] = total[:, eos].masked_fill(~allow, NEG_INF)
        # only <eos> is allowed once a hypothesis reaches the length cap
        at_max = step >= self.maxlen[beam.utt]
        total = torch.where(at_max[:, None] & self.not_eos, NEG_INF, total)
        if self.use_att:
            cand = total.topk(self.k, dim=1).indices  # (N, K) pre-beam by attention (+ LM)
        else:
            cand = self.all_cands[None, :].expand(last.size(0), -1)
        cand_scores = beam.scores[:, None] + total.gather(1, cand) + options.length_bonus
        cand_scores = cand_scores.masked_fill((cand != eos) & at_max[:, None], NEG_INF)
        is_empty = (self.plen[beam.utt] == 0) & (step == 0)
        psi = None
        if self.scorer is not None and beam.r is not None:
            psi = self.scorer.score(beam.utt, beam.r, last, is_empty, cand)
            cand_scores = cand_scores + self.lam * (psi - beam.ctc_psi[:, None])
            # dead slots (score -inf, CTC prefix -inf) give -inf + inf = NaN, which topk would rank first
            cand_scores = cand_scores.masked_fill(cand_scores.isnan(), NEG_INF)
        cand_scores = cand_scores - options.length_bonus * (cand == eos)  # <eos> is no output token
        if not self.allow_eos:
            cand_scores = cand_scores.masked_fill(cand == eos, NEG_INF)
        return _Step(att_lp, lm_lp, cand, cand_scores, psi, last, is_empty)

    def _extend(self, beam: _Beam, s: _Step) -> Tensor:
        """Keep the best ``beam_size`` extensions of each utterance (its rows x K candidates) as the new
        rows; returns their joint scores ``(N',)``."""
        nb, k = len(beam.active), s.cand.size(1)
        width = min(self.w, beam.rows * k)
        flat = s.cand_scores.view(nb, beam.rows * k)
        top, top_idx = flat.topk(width, dim=1)  # (nb, width)
        src = (top_idx // k) + torch.arange(nb, device=self.device)[:, None] * beam.rows  # global row
        col = top_idx % k
        src, col, top = src.flatten(), col.flatten(), top.flatten()
        beam.rows = width
        new_tok = s.cand[src, col]
        beam.att_acc = beam.att_acc[src] + s.att_lp[src, new_tok]
        beam.lm_acc = beam.lm_acc[src] + s.lm_lp[src, new_tok]
        beam.ctc_psi = beam.ctc_psi[src]
        if self.scorer is not None and beam.r is not None and s.psi is not None:
            beam.ctc_psi = s.psi[src, col]
            # the survivors' CTC states only
            beam.r = self.scorer.extend(beam.utt[src], beam.r[src], s.last[src], s.is_empty[src], new_tok)
        beam.utt = beam.utt[src]
        beam.yseq = torch.cat([beam.yseq[src], new_tok[:, None]], dim=1)
        if self.use_att:
            beam.dstate = beam.dstate.index_select(src)  # the memory is the utterances': it stays
        beam.fused_states = self._select_fused(beam, src)
        return top

    def _select_fused(self, beam: _Beam, index: Tensor) -> list[Any]:
        return [f.select(s, index) for (f, _, _), s in zip(self.fused, beam.fused_states, strict=True)]

    def _retire(self, beam: _Beam, top: Tensor, step: int) -> bool:
        """File the rows that chose ``<eos>`` as finished hypotheses and drop the utterances whose n-best list
        is final; False when none is left."""
        options, rows, nb, slack = self.options, beam.rows, len(beam.active), self.slack
        ended = (beam.yseq[:, -1] == self.eos) & torch.isfinite(top)
        if bool(ended.any()):
            for i in ended.nonzero().flatten().tolist():
                u = beam.active[i // rows]
                toks = self.prefixes[u] + tuple(beam.yseq[i, 1:-1].tolist())
                raw = float(top[i])
                score = raw / (len(toks) + 1) if options.normalize_length else raw
                att, ctc, lm = float(beam.att_acc[i]), float(beam.ctc_psi[i]), float(beam.lm_acc[i])
                self.finished[u].append(Hypothesis(toks, score, att, ctc, lm))
        beam.scores = top.masked_fill(ended, NEG_INF)
        best_alive = beam.scores.view(nb, rows).max(dim=1).values.tolist()
        keep = [
            j
            for j, u in enumerate(beam.active)
            if not (
                best_alive[j] == NEG_INF
                or (self.monotone and _cannot_improve(self.finished[u], best_alive[j] + slack, options.nbest))
                or _end_detected(self.finished[u], step + len(self.prefixes[u]))
            )
        ]
        if keep and len(keep) < nb:  # utterances whose n-best list is final leave the batch
            self._keep_blocks(beam, keep)
        return bool(keep)

    def _keep_blocks(self, beam: _Beam, keep: list[int]) -> None:
        """Keep only the row blocks ``keep`` (indices into ``beam.active``)."""
        beam.active = [beam.active[j] for j in keep]
        blocks = torch.tensor(keep, device=self.device)
        idx = (blocks[:, None] * beam.rows + torch.arange(beam.rows, device=self.device)).flatten()
        beam.scores, beam.att_acc = beam.scores[idx], beam.att_acc[idx]
        beam.ctc_psi, beam.lm_acc = beam.ctc_psi[idx], beam.lm_acc[idx]
        beam.utt, beam.yseq = beam.utt[idx], beam.yseq[idx]
        if beam.r is not None:
            beam.r = beam.r[idx]
        if self.use_att:
            beam.dstate, beam.memory = beam.dstate.index_select(idx), beam.memory.index_select(blocks)
        beam.fused_states = self._select_fused(beam, idx)


def _fused_scorers(
    tok: Any, options: DecodingOptions, lm: LanguageModel | None
) -> tuple[Fused, PhraseBiaser | None]:
    """The score terms fused into the search beside attention and CTC, and the phrase biaser if any."""
    fused: Fused = []
    if lm is not None and options.lm_weight > 0:
        fused.append((lm, options.lm_weight, True))
    biaser = None
    if options.phrases and options.phrase_boost > 0:
        from asr.biasing import PhraseBiaser

        biaser = PhraseBiaser.build(tok, options.phrases, options.phrase_boost)
        fused.append((biaser, 1.0, False))
    return fused, biaser


def _cannot_improve(hyps: list[Hypothesis], best_alive: float, nbest: int) -> bool:
    if len(hyps) < nbest:
        return False
    return best_alive < sorted((h.score for h in hyps), reverse=True)[nbest - 1]


def _end_detected(hyps: list[Hypothesis], step: int, m: int = 3, margin: float = math.log(1e-10)) -> bool:
    """ESPnet's end detection: the best hypotheses that ended in each of the last ``m`` steps all
    score far below the best finished one, so longer hypotheses are very unlikely to win."""
    if not hyps:
        return False
    best = max(h.score for h in hyps)
    count = 0
    for back in range(m):
        length = step - back  # hypotheses that ended at this step have this many tokens
        same = [h.score for h in hyps if len(h.tokens) == length]
        if same and max(same) - best < margin:
            count += 1
    return count == m
