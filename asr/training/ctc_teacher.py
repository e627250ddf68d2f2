"""Distilling a whole-utterance model's CTC posteriors into a chunk-streaming one (``distill.kind: ctc``).

A streaming model's encoder (:mod:`asr.lc_blstm`) reads each chunk with a short look-ahead, where the
offline model it was fine-tuned from reads the whole utterance, and it is several WER points behind it
(docs/TRAINING_LOG.md, "The streaming model"). While the streaming model trains on its own data with its own
losses, it also learns, frame by frame, what the offline model's CTC head makes of the same augmented audio:
the KL divergence from the teacher's CTC posteriors to the student's, summed over each utterance's frames and
averaged over the batch, the CTC loss's own scale (Kurata and Saon 2020, "Knowledge distillation from offline
to streaming RNN transducer"; Yu et al. 2021, "Dual-mode ASR"). The teacher computes its own log-mel features
from the waveforms, so it reads them without SpecAugment, and it runs in eval mode without gradients.

Both models must share the tokenizer, the feature front end and the encoder's frame rate: the student is
normally the teacher's own weights run chunked (``init_from``), and a mismatch is refused when training
starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from asr.checkpoint import load_checkpoint, model_from_checkpoint, resolve_model_path
from asr.features import WHISPER_KINDS
from asr.model import ASRModel
from asr.training.distill import TeacherLoss


class CTCTeacher:
    """The CTC log posteriors ``(B, T', V)`` of a whole-utterance model, for a batch of waveforms."""

    def __init__(self, name_or_path: str, student: ASRModel, device: torch.device) -> None:
        path = resolve_model_path(name_or_path or None)
        model = model_from_checkpoint(load_checkpoint(path))
        _check_compatible(model, student, str(path))
        self.model = model.to(device).eval()
        self.name = str(path)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def targets(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S)`` 16 kHz waveforms with lengths -> float32 CTC log posteriors with their frame counts."""
        device = self.model.device
        feats, n = self.model.features(audio.to(device), lengths.to(device))
        enc, enc_lengths = self.model.encode(feats, n)
        return self.model.ctc_log_probs(enc), enc_lengths


def _check_compatible(teacher: ASRModel, student: ASRModel, name: str) -> None:
    t, s = teacher.config, student.config
    problems = []
    if teacher.tokenizer.to_dict() != student.tokenizer.to_dict():
        problems.append("a different tokenizer")
    # a streaming Whisper student reads causal frames of the teacher's Whisper ones (12.5 ms later, the same
    # encoder frames); each model computes its own features from the waveforms
    kinds = {t.features.kind, s.features.kind}
    same_kind = kinds <= set(WHISPER_KINDS) or len(kinds) == 1
    if not same_kind or dataclasses.replace(t.features, kind=s.features.kind) != s.features:
        problems.append(f"different features ({t.features} against {s.features})")
    if t.encoder_frame_shift != s.encoder_frame_shift:
        problems.append(f"encoder frames of {t.encoder_frame_shift} s against {s.encoder_frame_shift} s")
    if problems:
        raise ValueError(
            f"distill.teacher {name} cannot teach this model's CTC head: it has {'; '.join(problems)}. "
            "Name a model with the student's tokenizer, features and frame rate (normally the one it was "
            "initialised from)"
        )


class PosteriorLoss(TeacherLoss):
    """KL(teacher || student) over the CTC posteriors, summed over the frames both have, per utterance.

    It has no weights of its own: ``student`` maps the student's encoder states to its CTC log posteriors
    (the model's own ``ctc_log_probs``), so the gradient reaches the CTC head and the encoder."""

    def __init__(self, student: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.student = student

    def loss(self, enc: Tensor, enc_lengths: Tensor, target: Tensor, target_lengths: Tensor) -> Tensor:
        t = min(enc.size(1), target.size(1))
        log_q = self.student(enc[:, :t])
        log_p = target[:, :t].to(log_q.device).float()
        n = torch.minimum(enc_lengths.to(log_q.device), target_lengths.to(log_q.device)).clamp_max(t)
        mask = torch.arange(t, device=log_q.device)[None] < n[:, None]
        per_frame = (log_p.exp() * (log_p - log_q)).sum(-1)
        return (per_frame * mask).sum() / enc.size(0)
