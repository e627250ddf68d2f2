"""The penalised CTC loss (asr.ctc): exact values and gradients, its effect on alignments, silence frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from asr.ctc import delay_penalty, penalized_ctc_loss, silence_penalty

BLANK = 0


def brute_force_loss(
    log_probs: Tensor, targets: Tensor, in_lens: Tensor, tgt_lens: Tensor, pen: Tensor
) -> Tensor:
    """The CTC forward recursion in plain autograd ops, with the penalty on non-blank emissions."""
    nonblank = torch.ones(log_probs.size(-1), dtype=log_probs.dtype)
    nonblank[BLANK] = 0
    z = log_probs - pen.t()[..., None] * nonblank
    total = z.new_zeros(())
    for b in range(log_probs.size(1)):
        ext = [BLANK]
        for c in targets[b, : tgt_lens[b]].tolist():
            ext += [c, BLANK]
        alpha = torch.full((len(ext),), -1e30, dtype=z.dtype)
        alpha[0], alpha[1] = z[0, b, ext[0]], z[0, b, ext[1]]
        for t in range(1, int(in_lens[b])):
            new = []
            for s in range(len(ext)):
                terms = [alpha[s]] + ([alpha[s - 1]] if s > 0 else [])
                if s > 1 and ext[s] != BLANK and ext[s] != ext[s - 2]:
                    terms.append(alpha[s - 2])
                new.append(torch.logsumexp(torch.stack(terms), 0) + z[t, b, ext[s]])
            alpha = torch.stack(new)
        total = total - torch.logsumexp(alpha[-2:], 0)
    return total


def batch() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, 0], [3, 3, 4]])  # a repeated token needs a blank between
    return logits, targets, torch.tensor([7, 6]), torch.tensor([2, 3])


def test_no_penalty_is_plain_ctc() -> None:
    logits, targets, in_lens, tgt_lens = batch()
    plain = F.ctc_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, blank=BLANK, reduction="sum")
    zeros = torch.zeros(2, 7, dtype=torch.float64)
    for pen in (None, zeros):
        ours = penalized_ctc_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, pen, BLANK)
        assert torch.allclose(ours, plain)
    g_plain = torch.autograd.grad(plain, logits)[0]
    ours = penalized_ctc_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, zeros, BLANK)
    assert torch.allclose(g_plain, torch.autograd.grad(ours, logits)[0])


def test_value_and_gradient_match_the_forward_recursion() -> None:
    logits, targets, in_lens, tgt_lens = batch()
    pen = torch.zeros(2, 7, dtype=torch.float64)
    pen[:, :2] = 1.5
    pen[1, 5] = 0.7
    pen[1, 6] = 9.0  # a padded frame of the second utterance: must not count
    ours = penalized_ctc_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, pen, BLANK)
    ref = brute_force_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, pen)
    assert torch.allclose(ours, ref, atol=1e-10)
    plain = F.ctc_loss(F.log_softmax(logits, -1), targets, in_lens, tgt_lens, blank=BLANK, reduction="sum")
    assert ours > plain  # every path pays something on the penalised frames
    g_ours = torch.autograd.grad(ours * 0.5, logits)[0]  # the upstream gradient scales it
    g_ref = torch.autograd.grad(ref * 0.5, logits)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-10)
    assert g_ours[6, 1].abs().max() == 0  # nothing flows into padding


def test_impossible_utterances_add_nothing() -> None:
    lp = F.log_softmax(torch.randn(2, 1, 4, dtype=torch.float64, requires_grad=True), -1)
    targets = torch.tensor([[1, 2, 3]])  # 3 tokens cannot fit in 2 frames
    pen = torch.ones(1, 2, dtype=torch.float64)
    loss = penalized_ctc_loss(lp, targets, torch.tensor([2]), torch.tensor([3]), pen, BLANK)
    assert loss == 0
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.abs().sum() == 0


def test_a_wrongly_shaped_penalty_is_refused() -> None:
    logits, targets, in_lens, tgt_lens = batch()
    with pytest.raises(ValueError, match=r"token_penalty must be \(B, T\) = \(2, 7\), got \(7, 2\)"):
        penalized_ctc_loss(logits, targets, in_lens, tgt_lens, torch.zeros(7, 2), BLANK)


def first_token_frame(logits: Tensor) -> int:
    """The frame of the first non-blank in the best path of ``(T, V)`` logits."""
    return int(torch.nonzero(logits.argmax(-1) != BLANK)[0])


@pytest.mark.parametrize("penalty", [0.0, 3.0, 6.0])
def test_training_moves_the_tokens_off_penalised_frames(penalty: float) -> None:
    """Free per-frame logits, started with the token spiking on frame 0 (as the bundled model does on
    leading silence): plain CTC leaves the spike there, and so does a penalty on frames 0-3 smaller than
    the spike's lead over the other alignments (about 8 nats here: the penalty reweights paths, it does not
    forbid them); a larger one moves the token to frame 4 or later."""
    torch.manual_seed(0)
    start = torch.full((10, 3), -2.0)
    start[:, BLANK] = 2.0
    start[0, 1], start[0, BLANK] = 4.0, 0.0  # token 1 on frame 0 ...
    start[6, 2], start[6, BLANK] = 4.0, 0.0  # ... and token 2 on frame 6
    logits = start.clone().requires_grad_()
    opt = torch.optim.Adam([logits], lr=0.1)
    pen = torch.zeros(1, 10)
    pen[0, :4] = penalty
    for _ in range(150):
        lp = F.log_softmax(logits, -1)[:, None]
        loss = penalized_ctc_loss(
            lp, torch.tensor([[1, 2]]), torch.tensor([10]), torch.tensor([2]), pen, BLANK
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    frame = first_token_frame(logits.detach())
    assert (frame == 0) if penalty < 5 else (frame >= 4), frame
    assert logits.detach().argmax(-1).tolist().count(2) >= 1  # the second token is still emitted


def test_delay_penalty_grows_with_the_frame() -> None:
    pen = delay_penalty(torch.tensor([5, 3]), 6, 0.5)
    assert pen.shape == (2, 6)
    assert pen[0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 0.0]  # the last frame is padding
    assert pen[1].tolist() == [0.0, 0.5, 1.0, 0.0, 0.0, 0.0]
    assert delay_penalty(torch.tensor([4]), 4, 0.0).abs().sum() == 0


@pytest.mark.parametrize("per_frame", [0.0, 2.0])
def test_training_with_a_delay_penalty_fires_the_token_sooner(per_frame: float) -> None:
    """Free per-frame logits with the token spiking on frame 6 of 10: plain CTC leaves it there; a delay
    penalty whose saving outweighs that alignment's lead (about 8 nats against frame 0) moves it sooner."""
    torch.manual_seed(0)
    start = torch.full((10, 3), -2.0)
    start[:, BLANK] = 2.0
    start[6, 1], start[6, BLANK] = 4.0, 0.0
    logits = start.clone().requires_grad_()
    opt = torch.optim.Adam([logits], lr=0.1)
    pen = delay_penalty(torch.tensor([10]), 10, per_frame)
    for _ in range(150):
        lp = F.log_softmax(logits, -1)[:, None]
        loss = penalized_ctc_loss(lp, torch.tensor([[1]]), torch.tensor([10]), torch.tensor([1]), pen, BLANK)
        opt.zero_grad()
        loss.backward()
        opt.step()
    frame = first_token_frame(logits.detach())
    assert (frame == 6) if per_frame == 0 else (frame < 4), frame


def test_silence_penalty_covers_the_silence_around_the_speech() -> None:
    sr, shift = 16000, 0.08
    rng = np.random.default_rng(0)
    quiet = lambda s: 1e-4 * rng.standard_normal(int(s * sr))  # noqa: E731
    loud = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr) + 1e-4 * rng.standard_normal(sr)
    wave = np.concatenate([quiet(0.8), loud, quiet(0.8)])  # speech from 0.8 s to 1.8 s of 2.6 s
    flat = quiet(2.6) * 0 + 0.1  # no quieter part: nothing is known, so nothing is penalised
    audio = torch.zeros(3, len(wave), dtype=torch.float32)
    audio[0] = torch.from_numpy(wave)
    audio[1] = torch.from_numpy(flat)
    audio[2, : sr // 2] = torch.from_numpy(wave[int(1.3 * sr) : int(1.8 * sr)])  # 0.5 s, all voiced
    lengths = torch.tensor([len(wave), len(wave), sr // 2])
    pen = silence_penalty(audio, lengths, 34, shift, 2.5, sr)
    assert pen.shape == (3, 34)
    row = pen[0]
    starts = torch.arange(34) * shift
    # frames ending by 0.7 s (0.8 s less the 0.1 s margin) and starting from 1.9 s are penalised
    assert torch.all(row[(starts + shift) <= 0.69] == 2.5)
    assert torch.all(row[(starts >= 0.6) & (starts < 1.9)] == 0)
    assert torch.all(row[(starts >= 1.92) & (starts < 2.6)] == 2.5)
    assert torch.all(row[starts >= 2.6] == 0)  # padded frames (2.6 s of audio is 33 frames)
    assert pen[1].abs().sum() == 0
    assert pen[2].abs().sum() == 0
