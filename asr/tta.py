"""Test-time augmentation: decode speed-perturbed copies of the audio and let all of them vote.

Each *view* is the audio played at one speed factor (Kaldi's speed perturbation, the one the model was
trained with), the original first. The joint CTC/attention beam search runs on every view; the n-best lists
are pooled, and each candidate transcript is rescored under every view by teacher forcing: its attention
log-likelihood and its CTC log-likelihood, averaged over the views, make the joint score
(with the LM and phrase-hint terms, which do not depend on the audio)::

    score(y) = mean_v [(1 - ctc_weight) * log p_att(y | x_v) + ctc_weight * log p_ctc(y | x_v)]
               + lm_weight * log p_lm(y) + boosts + length_bonus * |y|

The search on one view finds candidates the others miss, and the average over views irons out the errors
that belong to one playback speed (docs/TRAINING_LOG.md has the numbers). It costs one encoder pass and
one search per view, plus the rescoring; word times still come from the original view's CTC alignment.

>>> opts = DecodingOptions(tta_speeds=(0.9, 1.1))   # three views: 1.0, 0.9 and 1.1
>>> model.transcribe("a.wav", opts)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asr.data.augment import speed_perturb
from asr.decoding import DecodingOptions, Hypothesis, LanguageModel, beam_search

if TYPE_CHECKING:
    from asr.model import ASRModel

MAX_ROWS = 64  # candidate sequences scored in one teacher-forced pass (of similar lengths)
POOL_PER_VIEW = 3  # best hypotheses of each view's search that join the pool (or the n-best asked for)
RECOMMENDED = (0.9, 1.1)  # the speeds the model was trained with, besides 1.0 (docs/TRAINING_LOG.md)


def speeds_from_text(text: str) -> tuple[float, ...]:
    """``"0.9,1.1"`` -> ``(0.9, 1.1)``; ``""`` or ``"none"`` -> ``()`` (one view). ``ValueError`` says what
    is wrong (not numbers, or speeds :class:`DecodingOptions` refuses)."""
    if text.strip().lower() in ("", "none"):
        return ()
    speeds = tuple(float(x) for x in text.split(","))
    DecodingOptions(tta_speeds=speeds)
    return speeds


def parse_speeds(text: str) -> tuple[float, ...]:
    """:func:`speeds_from_text` for argparse."""
    try:
        return speeds_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def add_tta_argument(group: argparse._ActionsContainer) -> None:
    """``--tta-speeds`` for the commands that decode."""
    group.add_argument(
        "--tta-speeds",
        type=parse_speeds,
        metavar="S1,S2",
        help="test-time augmentation: also decode the audio played at these speeds and let the views vote "
        f"(e.g. {','.join(map(str, RECOMMENDED))}: about 5x the decoding time, bench/tta.py)",
    )


def views(waves: Sequence[np.ndarray], speeds: Sequence[float]) -> list[list[np.ndarray]]:
    """The speed-perturbed copies of each waveform, one list per speed (the original not included)."""
    return [[speed_perturb(w, s).astype(np.float32, copy=False) for w in waves] for s in speeds]


@torch.inference_mode()
def sequence_scores(
    model: ASRModel, enc: Tensor, enc_lengths: Tensor, utt: Sequence[int], seqs: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    """Teacher-forced log-likelihoods of token sequences: attention (with ``<eos>``) and CTC, ``(N,)`` each.

    ``seqs[i]`` (tokens without ``<sos>``/``<eos>``) is scored against utterance ``utt[i]`` of the batch
    ``enc (B, T', D)`` with ``enc_lengths (B,)``. These are the quantities the beam search accumulates
    (:attr:`Hypothesis.att_score`, :attr:`Hypothesis.ctc_score`). Sequences of similar lengths are scored
    together, so little of the decoder's step loop runs on padding."""
    n_all = len(seqs)
    att_all = torch.zeros(n_all, dtype=torch.float64)
    ctc_all = torch.zeros(n_all, dtype=torch.float64)
    if not n_all:
        return att_all, ctc_all
    ctc_lp = model.ctc_log_probs(enc)  # (B, T', V)
    order = sorted(range(n_all), key=lambda i: (len(seqs[i]), int(enc_lengths[utt[i]])))
    for lo in range(0, n_all, MAX_ROWS):
        idx = order[lo : lo + MAX_ROWS]
        att, ctc = _score_chunk(
            model, enc, enc_lengths, ctc_lp, [utt[i] for i in idx], [seqs[i] for i in idx]
        )
        att_all[idx], ctc_all[idx] = att.cpu(), ctc.cpu()
    return att_all, ctc_all


def _score_chunk(
    model: ASRModel,
    enc: Tensor,
    enc_lengths: Tensor,
    ctc_lp: Tensor,
    utt: Sequence[int],
    seqs: Sequence[Sequence[int]],
) -> tuple[Tensor, Tensor]:
    tok = model.tokenizer
    device = enc.device
    n = len(seqs)
    rows = torch.tensor(utt, dtype=torch.long, device=device)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    width = int(lengths.max()) + 1
    ys_in = torch.full((n, width), tok.sos_id, dtype=torch.long)
    ys_out = torch.full((n, width), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        ys_in[i, 1 : len(s) + 1] = torch.tensor(s, dtype=torch.long)
        ys_out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        ys_out[i, len(s)] = tok.eos_id
    ys_in, ys_out = ys_in.to(device), ys_out.to(device)
    lens = enc_lengths[rows]
    t = int(lens.max())
    logits = model.decoder(enc[rows, :t], lens, ys_in)
    lp = torch.log_softmax(logits.double(), dim=-1)
    picked = lp.gather(2, ys_out.clamp_min(0)[:, :, None])[:, :, 0]
    att = picked.masked_fill(ys_out < 0, 0.0).sum(1)
    targets = ys_out[:, :-1].clamp_min(0) if width > 1 else ys_out.new_zeros(n, 1)
    ctc = -F.ctc_loss(
        ctc_lp[rows, :t].double().transpose(0, 1),
        targets,
        lens,
        lengths,
        blank=tok.blank_id,
        reduction="none",
        zero_infinity=False,
    )
    return att, ctc


@torch.inference_mode()
def fused_scores(scorer: LanguageModel, seqs: Sequence[Sequence[int]], sos: int, eos: int) -> Tensor:
    """Log-probability of each whole sequence (with ``<eos>``) under a fused scorer such as an LM or
    :class:`asr.biasing.PhraseBiaser`, stepping its own state as the beam search does: ``(N,)``."""
    n = len(seqs)
    width = max(len(s) for s in seqs) + 1
    device = torch.device("cpu")
    nxt = torch.full((n, width), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        nxt[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        nxt[i, len(s)] = eos
    state = scorer.init_state(n, device)
    last = torch.full((n,), sos, dtype=torch.long)
    total = torch.zeros(n, dtype=torch.float64)
    for step in range(width):
        logp, state = scorer.score(last, state)
        target = nxt[:, step]
        gained = logp.double().cpu().gather(1, target.clamp_min(0)[:, None])[:, 0]
        total += gained.masked_fill(target < 0, 0.0)
        last = target.clamp_min(0)
    return total


# the hypotheses each view's search found, keyed by (utterance, tokens): (attention, CTC) log-likelihoods
Found = dict[tuple[int, tuple[int, ...]], tuple[float, float]]


@torch.inference_mode()
def search_views(
    model: ASRModel,
    encoded: Sequence[tuple[Tensor, Tensor]],
    options: DecodingOptions,
    lm: LanguageModel | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Pool the beam searches of several views of a batch and rescore the pool under all of them.

    ``encoded``: one ``(enc (B, T', D), enc_lengths (B,))`` per view, the same ``B`` utterances in each.
    ``prefixes``: the tokens each utterance's transcripts start with (:func:`asr.decoding.beam_search`).
    Returns n-best lists, best first, like :func:`asr.decoding.beam_search`."""
    if not encoded:
        raise ValueError("search_views needs at least one view")
    b = encoded[0][0].size(0)
    pools, known = _pool(model, encoded, options, lm, prefixes)
    pairs = [(u, s) for u in range(b) for s in pools[u]]
    if not pairs:
        return [[Hypothesis((), float("-inf"))] for _ in range(b)]
    att, ctc = _mean_view_scores(model, encoded, known, pairs)
    seqs = [list(s) for _, s in pairs]
    score, lm_score = _joint_scores(model, options, lm, att, ctc, seqs)
    results: list[list[Hypothesis]] = [[] for _ in range(b)]
    for i, (u, s) in enumerate(zip([u for u, _ in pairs], seqs, strict=True)):
        results[u].append(
            Hypothesis(tuple(s), float(score[i]), float(att[i]), float(ctc[i]), float(lm_score[i]))
        )
    out = []
    for hyps in results:
        ranked = sorted(hyps, key=lambda h: h.score, reverse=True)[: options.nbest]
        out.append(ranked or [Hypothesis((), float("-inf"))])
    return out


def _pool(
    model: ASRModel,
    encoded: Sequence[tuple[Tensor, Tensor]],
    options: DecodingOptions,
    lm: LanguageModel | None,
    prefixes: Sequence[Sequence[int]] | None,
) -> tuple[list[dict[tuple[int, ...], None]], list[Found]]:
    """Search every view: the pooled transcripts of each utterance, in the order found, and per view the
    scores its search gave its own finds."""
    b = encoded[0][0].size(0)
    per_view = dataclasses.replace(
        options, nbest=min(options.beam_size, max(POOL_PER_VIEW, options.nbest)), tta_speeds=()
    )
    pools: list[dict[tuple[int, ...], None]] = [{} for _ in range(b)]
    known: list[Found] = []
    for enc, lengths in encoded:
        found = {}
        for u, hyps in enumerate(beam_search(model, enc, lengths, per_view, lm=lm, prefixes=prefixes)):
            for h in hyps:
                if h.score > float("-inf"):
                    pools[u].setdefault(h.tokens, None)
                    found[(u, h.tokens)] = (h.att_score, h.ctc_score)
        known.append(found)
    return pools, known


def _mean_view_scores(
    model: ASRModel,
    encoded: Sequence[tuple[Tensor, Tensor]],
    known: Sequence[Found],
    pairs: Sequence[tuple[int, tuple[int, ...]]],
) -> tuple[Tensor, Tensor]:
    """The attention and CTC log-likelihoods ``(P,)`` of each (utterance, transcript) pair, averaged over
    the views. A view's search has scored its own finds already: only the other views' are rescored."""
    att = torch.zeros(len(pairs), dtype=torch.float64)
    ctc = torch.zeros(len(pairs), dtype=torch.float64)
    for (enc, lengths), found in zip(encoded, known, strict=True):
        missing = [i for i, p in enumerate(pairs) if p not in found]
        a, c = sequence_scores(
            model, enc, lengths, [pairs[i][0] for i in missing], [pairs[i][1] for i in missing]
        )
        att[missing] += a
        ctc[missing] += c
        have = [i for i, p in enumerate(pairs) if p in found]
        att[have] += torch.tensor([found[pairs[i]][0] for i in have], dtype=torch.float64)
        ctc[have] += torch.tensor([found[pairs[i]][1] for i in have], dtype=torch.float64)
    return att / len(encoded), ctc / len(encoded)


def _joint_scores(
    model: ASRModel,
    options: DecodingOptions,
    lm: LanguageModel | None,
    att: Tensor,
    ctc: Tensor,
    seqs: Sequence[Sequence[int]],
) -> tuple[Tensor, Tensor]:
    """The ranking score ``(P,)`` of each pooled transcript, as the search would give it, and its LM
    log-prob (zeros without an LM)."""
    tok = model.tokenizer
    lam = options.ctc_weight
    score = torch.zeros_like(att)
    if lam < 1:
        score += (1 - lam) * att
    if lam > 0:  # 0 * -inf (a transcript CTC cannot align) would be NaN
        score += lam * ctc
    lm_score = torch.zeros_like(score)
    if lm is not None and options.lm_weight > 0:
        lm_score = fused_scores(lm, seqs, tok.sos_id, tok.eos_id)
        score = score + options.lm_weight * lm_score
    if options.phrases and options.phrase_boost > 0:
        from asr.biasing import PhraseBiaser

        biaser = PhraseBiaser.build(tok, options.phrases, options.phrase_boost)
        score = score + fused_scores(biaser, seqs, tok.sos_id, tok.eos_id)
    lengths_t = torch.tensor([len(s) for s in seqs], dtype=torch.float64)
    score = score + options.length_bonus * lengths_t
    if options.normalize_length:
        score = score / (lengths_t + 1)
    return score, lm_score
