"""Triggered attention: the frames each teacher-forced decoder step sees are the ones a growing search
(asr.growing_search) would have given it, and a decoder fed that way computes what the search computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asr.decoder import AttentionDecoder, DecoderConfig
from asr.growing_search import GUARD_FRAMES, MARGIN_TOKENS, token_limit
from asr.training.triggered import MemoryLimits, TriggeredAttentionConfig, token_starts

BLANK, V, D = 0, 7, 6


def spiky_log_probs(path: list[int]) -> torch.Tensor:
    """CTC log posteriors ``(T, V)`` that make ``path`` (one label per frame) by far the best."""
    logits = torch.full((len(path), V), -8.0)
    logits[torch.arange(len(path)), torch.tensor(path)] = 8.0
    return F.log_softmax(logits, dim=-1)


def test_token_starts_are_the_first_frames_of_the_forced_alignment() -> None:
    path = [0, 3, 3, 0, 0, 4, 0, 4, 4, 0, 5, 0]
    starts = token_starts(spiky_log_probs(path), torch.tensor([3, 4, 4, 5]), BLANK)
    assert starts is not None and starts.tolist() == [1, 5, 7, 10]
    # a path that disagrees with the posteriors still aligns: the reference decides
    assert token_starts(spiky_log_probs(path), torch.tensor([3, 5]), BLANK) is not None
    assert token_starts(spiky_log_probs(path), torch.tensor([]), BLANK).tolist() == []  # type: ignore[union-attr]
    assert token_starts(spiky_log_probs(path[:3]), torch.tensor([3, 3, 3]), BLANK) is None  # too many


def test_each_step_sees_the_frames_at_which_the_growing_search_takes_it() -> None:
    """Step ``u`` (to token ``u``) gets the first chunk boundary where :func:`token_limit` allows ``u + 1``
    tokens; the last ``margin`` tokens and ``<eos>`` are searched at the end, over every frame."""
    starts, frames, chunk = torch.tensor([2, 6, 9, 13, 21, 22]), 31, 4
    config = TriggeredAttentionConfig(prob=1.0, slack_frames=0)
    limits = MemoryLimits(config, chunk, BLANK, seed=0)._limits(starts, frames).tolist()
    assert len(limits) == len(starts) + 1
    for u, limit in enumerate(limits):
        boundaries = [f for f in range(chunk, frames, chunk)]
        allowed = [
            f for f in boundaries if token_limit(starts.tolist(), f, GUARD_FRAMES, MARGIN_TOKENS) >= u + 1
        ]
        assert limit == (allowed[0] if allowed else frames), u


def test_slack_only_adds_frames_and_prob_picks_the_utterances() -> None:
    starts, frames = torch.tensor([2, 6, 9, 13, 21, 22]), 60
    exact = MemoryLimits(TriggeredAttentionConfig(slack_frames=0), 4, BLANK, 0)._limits(starts, frames)
    for seed in range(5):
        loose = MemoryLimits(TriggeredAttentionConfig(slack_frames=8), 4, BLANK, seed)._limits(starts, frames)
        assert bool((loose >= exact).all()) and bool((loose <= exact + 8).all())
        assert bool((loose[1:] >= loose[:-1]).all())
    path = [0, 3, 0, 4, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 0, 0]
    lp = torch.stack([spiky_log_probs(path)] * 3)
    targets = torch.tensor(
        [[3, 4, 5, 3], [3, 4, 5, -1], [3, 3, 3, 3]]
    )  # the last cannot be aligned in 4 frames
    lengths, target_lengths = torch.tensor([16, 16, 4]), torch.tensor([4, 3, 4])
    off = MemoryLimits(TriggeredAttentionConfig(prob=0.0), 4, BLANK, 0)(lp, lengths, targets, target_lengths)
    assert off.tolist() == [[16] * 5, [16] * 5, [4] * 5]
    on = MemoryLimits(TriggeredAttentionConfig(prob=1.0, slack_frames=0), 4, BLANK, 0)
    limits = on(lp, lengths, targets, target_lengths)
    assert limits.shape == (3, 5)
    assert limits[0].tolist() == [8, 12, 16, 16, 16]  # token 1 at frame 3: 3 + 4 + 1 -> the boundary at 8
    assert limits[1, :4].tolist() == [8, 12, 16, 16] and limits[2].tolist() == [4] * 5


def test_limited_teacher_forcing_equals_stepping_over_a_growing_memory() -> None:
    """The decoder trained with limits computes what a growing search's steps compute: each step over the
    frames so far, its previous attention weights extended with zeros, the first over the first frames."""
    torch.manual_seed(0)
    config = DecoderConfig(
        embed_dim=5, hidden_size=7, attention_dim=4, location_channels=3, location_kernel=5, dropout=0.0
    )
    dec = AttentionDecoder(V, D, config, sos_id=V - 1, eos_id=V - 1).eval()
    enc, t = torch.randn(1, 14, D), 14
    ys_in = torch.tensor([[V - 1, 2, 3, 4, 1]])
    limits = torch.tensor([[4, 4, 8, 12, 14]])
    with torch.no_grad():
        taught = dec(enc, torch.tensor([t]), ys_in, limits)[0]
        _, state = dec.prepare(enc[:, :4], torch.tensor([4]))
        for u in range(ys_in.size(1)):
            n = int(limits[0, u])
            memory, _ = dec.prepare(enc[:, :n], torch.tensor([n]))
            state = state._replace(attention=F.pad(state.attention, (0, n - state.attention.size(1))))
            logits, state = dec.step(ys_in[:, u], state, memory)
            torch.testing.assert_close(logits[0], taught[u], atol=1e-5, rtol=1e-5)
        # limits that cover every frame are plain teacher forcing
        whole = dec(enc, torch.tensor([t]), ys_in)
        torch.testing.assert_close(dec(enc, torch.tensor([t]), ys_in, torch.full((1, 5), t)), whole)
        # a step never reads past its limit
        changed = enc.clone()
        changed[:, 8:] += 5.0
        again = dec(changed, torch.tensor([t]), ys_in, limits)[0]
        torch.testing.assert_close(again[:2], taught[:2])
        assert not torch.allclose(again[2:], taught[2:])
