"""CTC loss with per-frame penalties on the token paths: an alignment constraint for training.

Plain CTC is indifferent to *where* a token fires, and a bidirectional encoder that has heard the whole
utterance can put the first token on frame 0 of a second of silence (models/README.md, Limits). Here every
path through the CTC lattice is weighted by ``exp(-penalty[t])`` for each frame ``t`` on which it emits a
non-blank token::

    loss = -log  sum over paths pi of  prod_t  p(pi_t | x) * exp(-penalty[t] * [pi_t != blank])

The model's distributions stay normalised and the penalty sits outside them, so training moves the model's
posteriors toward the alignments that avoid penalised frames rather than teaching it to compensate (as a
penalty added to the logits would). It reweights paths and forbids none: to move a token that a trained
model already puts on penalised frames, the penalty must outweigh that alignment's lead in log-probability
(tests/test_ctc.py). With no penalty this is exactly ``F.ctc_loss``. Icefall's delay penalty
weights lattice paths in the same way, there to cut latency.

:func:`silence_penalty` gives the usual penalty: the frames before and after the voiced part of each
utterance (:func:`asr.alignment.voiced_span`), so tokens are pushed off the leading and trailing silence.
:func:`delay_penalty` gives the other: a penalty that grows with the frame index, so that among the alignments
of the same tokens the earlier ones weigh more and the model learns to fire its tokens sooner (a streaming
model's partials and endpoints wait for them; issue 30). It is icefall's delay penalty (Kang et al. 2022,
"Delay-penalized transducer for low-latency streaming ASR") on the CTC lattice.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from asr.alignment import voiced_span

SILENCE_MARGIN = 0.1  # seconds around the voiced span left unpenalised (as asr.alignment.clamp_to_voiced)


class _WeightedCTC(torch.autograd.Function):
    """Per-utterance losses ``(B,)`` of penalised log-probs, with the exact gradient.

    ``F.ctc_loss`` returns ``exp(lp) - posterior`` as the gradient of its input: the gradient for the logits
    *if* ``lp`` is a log-softmax. Penalised log-probs are not normalised, so its gradient is corrected here
    to the true ``-posterior``, which autograd then takes back through the log-softmax.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        log_probs: Tensor,  # (T, B, V), penalties included
        targets: Tensor,
        input_lengths: Tensor,
        target_lengths: Tensor,
        blank: int,
    ) -> Tensor:
        with torch.enable_grad():
            lp = log_probs.detach().requires_grad_()
            losses = F.ctc_loss(lp, targets, input_lengths, target_lengths, blank=blank, reduction="none")
            (grad,) = torch.autograd.grad(losses.sum(), lp)  # not finite for utterances with no alignment
        feasible = torch.isfinite(losses.detach())
        t = torch.arange(log_probs.size(0), device=log_probs.device)[:, None]
        valid = (t < input_lengths.to(log_probs.device)[None, :]) & feasible[None, :]
        grad = torch.where(valid[..., None], grad - lp.detach().exp(), 0.0)
        ctx.save_for_backward(grad)
        return torch.where(feasible, losses.detach(), 0.0)

    @staticmethod
    def backward(ctx: Any, grad_losses: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[None, :, None], None, None, None, None


def penalized_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    token_penalty: Tensor | None,
    blank: int,
) -> Tensor:
    """Summed CTC loss of ``(T, B, V)`` log-probs, each path penalised by ``token_penalty (B, T)`` (in
    nats) on the frames where it emits a non-blank token; ``None`` or all zeros is ``F.ctc_loss``.
    Utterances without any valid alignment add 0 (``zero_infinity``)."""
    if token_penalty is None:
        return F.ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank=blank,
            reduction="sum",
            zero_infinity=True,
        )
    expected = tuple(log_probs.shape[1::-1])
    if tuple(token_penalty.shape) != expected:
        raise ValueError(f"token_penalty must be (B, T) = {expected}, got {tuple(token_penalty.shape)}")
    nonblank = torch.ones(log_probs.size(-1), dtype=log_probs.dtype, device=log_probs.device)
    nonblank[blank] = 0.0
    penalised = log_probs - token_penalty.t().to(log_probs)[..., None] * nonblank
    losses = _WeightedCTC.apply(penalised, targets, input_lengths, target_lengths, blank)
    return losses.sum()


def delay_penalty(lengths: Tensor, num_frames: int, per_frame: float) -> Tensor:
    """``(B, num_frames)`` penalties ``per_frame * t`` on the frames ``t < T_b`` of each utterance
    (``lengths``, in encoder frames), 0 on padding: a token fired one frame sooner saves ``per_frame`` nats.
    Not centred on the utterance (as icefall's transducer penalty is): a CTC path may hold a token over
    several frames, and a bonus on the early frames would pay it to spread the first tokens over the leading
    silence; from 0 up, every extra frame a token holds costs, so the spikes stay one frame wide."""
    t = torch.arange(num_frames, dtype=torch.float32, device=lengths.device)[None, :]
    return torch.where(t < lengths.to(t.device)[:, None], per_frame * t, 0.0)


def silence_penalty(
    audio: Tensor,
    audio_lengths: Tensor,
    num_frames: int,
    frame_shift: float,
    penalty: float,
    sample_rate: int = 16000,
    margin: float = SILENCE_MARGIN,
) -> Tensor:
    """``(B, num_frames)`` penalties: ``penalty`` on the encoder frames that lie wholly before or after the
    voiced part of each waveform (``margin`` seconds around it kept free), 0 elsewhere; 0 throughout for
    utterances with no clearly quieter part (``voiced_span`` is ``None``) and on padded frames."""
    out = torch.zeros(audio.size(0), num_frames)
    starts = torch.arange(num_frames, dtype=torch.float64) * frame_shift
    ends = starts + frame_shift
    wave = audio.detach().float().cpu().numpy()
    for b, n in enumerate(audio_lengths.tolist()):
        span = voiced_span(wave[b, :n], sample_rate)
        if span is None:
            continue
        frames = min(num_frames, math.ceil(n / sample_rate / frame_shift))
        silent = (ends <= span[0] - margin) | (starts >= span[1] + margin)
        silent[frames:] = False
        out[b, silent] = penalty
    return out.to(audio.device)
