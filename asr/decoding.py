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

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

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
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, eos: int) -> None:
        x = log_probs.double()
        t = x.size(1)
        pad = torch.arange(t, device=x.device)[None, :] >= lengths[:, None].to(x.device)  # (B, T)
        x = x.masked_fill(pad[:, :, None], _PAD_LOGP)
        x[:, :, blank] = x[:, :, blank].masked_fill(pad, 0.0)
        self.x = x.transpose(1, 2).contiguous()  # (B, V, T)
        self.blank, self.eos = blank, eos
        self.blank_cum = torch.cumsum(self.x[:, blank], dim=1)  # (B, T)
        self.blank_prev = torch.cat([torch.zeros_like(self.blank_cum[:, :1]), self.blank_cum[:, :-1]], dim=1)

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

    def score(self, utt: Tensor, r_prev: Tensor, last: Tensor, is_empty: Tensor, cand: Tensor) -> Tensor:
        """Prefix scores of extending each hypothesis with each candidate.

        utt, last, is_empty: ``(N,)``; r_prev: ``(N, 2, T)``; cand: ``(N, K)`` token ids.
        Returns ``psi (N, K)``: the log-prob of all paths whose label sequence starts with ``g + c``; for
        ``<eos>`` the full-sequence probability of ``g``. The new states come from :meth:`extend`, for the
        few extensions that survive the beam.
        """
        xc, phi_ext, r_sum = self._phi(utt, r_prev, last, is_empty, cand)
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


@torch.no_grad()
def beam_search(
    model: Any,
    enc: Tensor,
    enc_lengths: Tensor,
    options: DecodingOptions,
    lm: LanguageModel | None = None,
) -> list[list[Hypothesis]]:
    """Joint CTC/attention beam search, batched over utterances. Returns n-best lists, best first.

    Only live work is computed: the search starts from one row per utterance (the empty prefix) and widens
    to ``beam_size`` rows as extensions appear, and an utterance whose n-best list is final leaves the
    batch, so a batch of short and long utterances costs little more than its long ones decoded alone.
    """
    if options.lm_weight > 0 and lm is None:
        raise ValueError("lm_weight > 0 needs a language model (pass lm=...)")
    tok = model.tokenizer
    # score terms fused into the search beside attention and CTC: (scorer, weight, is the LM)
    fused: list[tuple[LanguageModel, float, bool]] = []
    if lm is not None and options.lm_weight > 0:
        fused.append((lm, options.lm_weight, True))
    biaser = None
    if options.phrases and options.phrase_boost > 0:
        from asr.biasing import PhraseBiaser

        biaser = PhraseBiaser.build(tok, options.phrases, options.phrase_boost)
        fused.append((biaser, 1.0, False))
    blank, sos, eos = tok.blank_id, tok.sos_id, tok.eos_id
    lam, w = options.ctc_weight, options.beam_size
    b, device = enc.size(0), enc.device
    use_att, use_ctc = lam < 1.0, lam > 0.0
    v = tok.vocab_size

    # Row state, one row per live hypothesis: ``active[u]`` is the utterance of row block ``u`` (``rows``
    # rows each) and ``utt`` the utterance of each row, which indexes the CTC scorer's posteriors.
    active = list(range(b))
    rows = 1
    utt = torch.arange(b, device=device)
    memory, dstate = model.decoder.prepare(enc, enc_lengths)
    ctc_lp = model.ctc_log_probs(enc) if use_ctc else None
    scorer = CTCPrefixScorer(ctc_lp, enc_lengths, blank, eos) if ctc_lp is not None else None
    r = scorer.initial_state(utt) if scorer is not None else None
    fused_states = [f.init_state(b, device) for f, _, _ in fused]

    scores = torch.zeros(b, dtype=torch.float64, device=device)
    att_acc = torch.zeros(b, dtype=torch.float64, device=device)
    ctc_psi = torch.zeros(b, dtype=torch.float64, device=device)
    lm_acc = torch.zeros(b, dtype=torch.float64, device=device)
    yseq = torch.full((b, 1), sos, dtype=torch.long, device=device)
    maxlen = (enc_lengths.double() * options.max_length_ratio).clamp_min(1).long()  # (B,)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    k = v - 1 if not use_att else min(v - 1, max(w, int(options.pre_beam_ratio * w)))
    all_cands = torch.tensor([i for i in range(v) if i != blank], device=device)
    not_eos = torch.arange(v, device=device) != eos

    # Every score term is a log-probability of a growing prefix (attention, CTC prefix, LM), so without a
    # length bonus or normalisation a hypothesis's raw score can only fall as it grows: once the best live
    # one is below the n-th best finished one, the n-best list is final and the search can stop exactly.
    # Phrase hints add positive bonuses: a live hypothesis is then given the credit of its longest hint as
    # slack (one more completed hint could lift it that much; ESPnet's end detection covers the rest).
    monotone = not options.normalize_length and options.length_bonus <= 0
    slack = biaser.max_credit if biaser is not None else 0.0
    for step in range(int(maxlen.max()) + 1):
        n, nb = yseq.size(0), len(active)
        last = yseq[:, -1]
        total = torch.zeros(n, v, dtype=torch.float64, device=device)
        att_lp = torch.zeros(n, v, dtype=torch.float64, device=device)
        if use_att:
            logits, dstate = model.decoder.step(last, dstate, memory)
            att_lp = torch.log_softmax(logits.double(), dim=-1)
            total = total + (1 - lam) * att_lp
        lm_lp = torch.zeros_like(total)
        for i, (f, weight, is_lm) in enumerate(fused):
            f_lp, fused_states[i] = f.score(last, fused_states[i])
            if f_lp.shape != total.shape:
                raise ValueError(
                    f"language model gives {f_lp.size(-1)} log-probs per step; the tokenizer has {v} ids"
                )
            f_lp = f_lp.to(device=device, dtype=torch.float64)
            total = total + weight * f_lp
            if is_lm:
                lm_lp = f_lp
        total[:, blank] = NEG_INF
        if options.eos_threshold is not None and use_att:
            best_other = att_lp.masked_fill(~not_eos, NEG_INF).max(-1).values
            allow = att_lp[:, eos] >= options.eos_threshold * best_other
            total[:, eos] = total[:, eos].masked_fill(~allow, NEG_INF)
        at_max = step >= maxlen[utt]  # only <eos> is allowed once a hypothesis reaches the length cap
        total = torch.where(at_max[:, None] & not_eos, NEG_INF, total)
        if use_att:
            cand = total.topk(k, dim=1).indices  # (N, K) pre-beam by attention (+ LM)
        else:
            cand = all_cands[None, :].expand(n, -1)
        cand_scores = scores[:, None] + total.gather(1, cand) + options.length_bonus
        cand_scores = cand_scores.masked_fill((cand != eos) & at_max[:, None], NEG_INF)
        is_empty = torch.full_like(last, step == 0, dtype=torch.bool)
        psi = None
        if scorer is not None and r is not None:
            psi = scorer.score(utt, r, last, is_empty, cand)
            cand_scores = cand_scores + lam * (psi - ctc_psi[:, None])
            # dead slots (score -inf, CTC prefix -inf) give -inf + inf = NaN, which topk would rank first
            cand_scores = cand_scores.masked_fill(cand_scores.isnan(), NEG_INF)
        cand_scores = cand_scores - options.length_bonus * (cand == eos)  # <eos> is no output token
        # best extensions of each utterance: its rows x K candidates
        width = min(w, rows * cand.size(1))
        flat = cand_scores.view(nb, rows * cand.size(1))
        top, top_idx = flat.topk(width, dim=1)  # (nb, width)
        src = (top_idx // cand.size(1)) + torch.arange(nb, device=device)[:, None] * rows  # global row
        col = top_idx % cand.size(1)
        src, col, top = src.flatten(), col.flatten(), top.flatten()
        widened, rows = width != rows, width
        new_tok = cand[src, col]
        att_acc = att_acc[src] + att_lp[src, new_tok]
        lm_acc = lm_acc[src] + lm_lp[src, new_tok]
        ctc_psi = ctc_psi[src]
        if scorer is not None and r is not None and psi is not None:
            ctc_psi = psi[src, col]
            r = scorer.extend(utt[src], r[src], last[src], is_empty[src], new_tok)  # the survivors only
        utt = utt[src]
        yseq = torch.cat([yseq[src], new_tok[:, None]], dim=1)
        if use_att:
            dstate = dstate.index_select(src)
            if widened:  # memory rows are the same within an utterance: only their number changes
                memory = memory.index_select(src)
        fused_states = [f.select(s, src) for (f, _, _), s in zip(fused, fused_states, strict=True)]

        ended = (new_tok == eos) & torch.isfinite(top)
        if bool(ended.any()):
            for i in ended.nonzero().flatten().tolist():
                toks = tuple(yseq[i, 1:-1].tolist())
                raw = float(top[i])
                score = raw / (len(toks) + 1) if options.normalize_length else raw
                finished[active[i // rows]].append(
                    Hypothesis(toks, score, float(att_acc[i]), float(ctc_psi[i]), float(lm_acc[i]))
                )
        scores = top.masked_fill(ended, NEG_INF)
        best_alive = scores.view(nb, rows).max(dim=1).values.tolist()
        keep = [
            j
            for j, u in enumerate(active)
            if not (
                best_alive[j] == NEG_INF
                or (monotone and _cannot_improve(finished[u], best_alive[j] + slack, options.nbest))
                or _end_detected(finished[u], step)
            )
        ]
        if not keep:
            break
        if len(keep) < nb:  # utterances whose n-best list is final leave the batch
            active = [active[j] for j in keep]
            blocks = torch.tensor(keep, device=device)
            idx = (blocks[:, None] * rows + torch.arange(rows, device=device)).flatten()
            scores, att_acc, ctc_psi, lm_acc = scores[idx], att_acc[idx], ctc_psi[idx], lm_acc[idx]
            utt, yseq = utt[idx], yseq[idx]
            if r is not None:
                r = r[idx]
            if use_att:
                dstate, memory = dstate.index_select(idx), memory.index_select(idx)
            fused_states = [f.select(s, idx) for (f, _, _), s in zip(fused, fused_states, strict=True)]

    results = []
    for u in range(b):
        hyps = sorted(finished[u], key=lambda h: h.score, reverse=True)
        results.append(hyps[: options.nbest] if hyps else [Hypothesis((), NEG_INF)])
    return results


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
