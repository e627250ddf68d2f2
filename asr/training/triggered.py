"""Training the attention decoder on the memory a growing search gives it (triggered attention).

A streaming final searched while its utterance is heard (:mod:`asr.growing_search`) takes each decoder
step over the encoder frames received so far: token ``u`` is searched once greedy CTC has placed the
``margin`` tokens after it ``guard`` frames before the end of the frames so far, and those frames end on a
chunk boundary. A decoder trained on whole utterances only has never attended over a memory that stops
there, and loses 2.4 WER points on speechocean762 when searched that way (docs/BENCHMARKS.md, session 26).
:class:`MemoryLimits` gives each teacher-forced step the frames that search would have had, from the CTC
forced alignment of the reference (Moritz et al. 2019, "Triggered attention"), for a share of the
utterances, so the decoder learns both ways.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor

from asr.growing_search import GUARD_FRAMES, MARGIN_TOKENS


@dataclass(frozen=True)
class TriggeredAttentionConfig:
    prob: float = 0.0  # share of the utterances whose steps see only their growing search's frames; 0: off
    guard_frames: int = GUARD_FRAMES  # as asr.growing_search searches
    margin_tokens: int = MARGIN_TOKENS
    chunk_frames: int = 0  # encoder frames per chunk; 0: the streaming encoder's own
    slack_frames: int = 4  # up to this many more frames at random (greedy CTC and the alignment differ)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"triggered_attention.prob must be in [0, 1], got {self.prob}")
        for name in ("guard_frames", "margin_tokens", "chunk_frames", "slack_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"triggered_attention.{name} must be >= 0, got {getattr(self, name)}")


def token_starts(log_probs: Tensor, tokens: Tensor, blank: int) -> Tensor | None:
    """The first frame of each of ``tokens (U,)`` in the CTC forced alignment over ``log_probs (T, V)``;
    ``None`` when they cannot be aligned (more tokens than the frames allow)."""
    if tokens.numel() == 0:
        return tokens.new_zeros(0)
    lp = log_probs.detach().float().cpu()[None]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchaudio's notice about the function's future
            aligned, _ = AF.forced_align(lp, tokens.cpu().int()[None], blank=blank)
    except RuntimeError:
        return None
    path = aligned[0]
    changed = torch.ones_like(path, dtype=torch.bool)
    changed[1:] = path[1:] != path[:-1]
    starts = torch.nonzero(changed & (path != blank)).flatten()
    return starts if starts.numel() == tokens.numel() else None


class MemoryLimits:
    """Per teacher-forced step, how many encoder frames the attention may read (see the module docstring).

    Called by :meth:`asr.model.ASRModel.forward` with the batch's CTC log posteriors ``(B, T, V)``, encoder
    lengths and targets ``(B, U)`` (padded with -1); returns ``(B, U + 1)`` frame counts (the last step
    predicts ``<eos>``), the encoder length on every step of the utterances left whole."""

    def __init__(self, config: TriggeredAttentionConfig, chunk_frames: int, blank: int, seed: int) -> None:
        if chunk_frames <= 0:
            raise ValueError(
                "triggered attention needs the encoder's chunk size: a streaming encoder "
                "(model.encoder.chunk_frames) or triggered_attention.chunk_frames"
            )
        self.config, self.chunk, self.blank = config, chunk_frames, blank
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, log_probs: Tensor, enc_lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Tensor:
        b, u = targets.shape
        limits = enc_lengths.detach().cpu().long()[:, None].repeat(1, u + 1)
        chosen = torch.rand(b, generator=self.generator) < self.config.prob
        for i in torch.nonzero(chosen).flatten().tolist():
            n, t = int(target_lengths[i]), int(enc_lengths[i])
            starts = token_starts(log_probs[i, :t], targets[i, :n], self.blank)
            if starts is not None:
                limits[i, : n + 1] = self._limits(starts, t)
        return limits.to(enc_lengths.device)

    def _limits(self, starts: Tensor, frames: int) -> Tensor:
        """Frames seen by the steps of one utterance with ``len(starts)`` tokens, then ``<eos>``."""
        c, n = self.config, starts.numel()
        limits = torch.full((n + 1,), frames, dtype=torch.long)
        # the step to token u waits for token u + margin at least guard frames before the frontier
        gate = torch.arange(n) + c.margin_tokens
        early = gate < n
        slack = torch.randint(0, c.slack_frames + 1, (n,), generator=self.generator)
        needed = starts[gate[early]] + c.guard_frames + 1 + slack[early]
        limits[: int(early.sum())] = torch.clamp(
            torch.ceil(needed.double() / self.chunk).long() * self.chunk, max=frames
        )
        return torch.cummax(limits, 0).values  # a later step never sees fewer frames


def chunk_frames_of(config: TriggeredAttentionConfig, encoder_chunk: int) -> int:
    """The chunk the limits round up to: the config's, else the streaming encoder's."""
    return config.chunk_frames or encoder_chunk
