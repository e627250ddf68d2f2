"""The joint CTC/attention Listen-Attend-Spell model.

``loss = ctc_weight * CTC + (1 - ctc_weight) * attention``. Inference goes through :meth:`ASRModel.encode`;
decoding lives in :mod:`asr.decoding`, word timing in :mod:`asr.alignment`. This module is the network
only: recognition (audio in, :class:`~asr.transcribe.Transcript` out) is a layer above, in
:mod:`asr.transcribe`, whose :class:`~asr.transcribe.Transcriber` is what :func:`asr.load_model` returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.ctc import penalized_ctc_loss
from asr.decoder import AttentionDecoder, DecoderConfig
from asr.encoder import EncoderConfig, PyramidalBLSTMEncoder
from asr.features import WHISPER_KINDS, FeatureConfig, GlobalCMVN, LogMel
from asr.lc_blstm import LCBLSTMEncoder
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer
from asr.whisper_encoder import WhisperLogMel

Tokenizer = CharTokenizer | SentencePieceTokenizer
# (CTC log posteriors (B, T', V), encoder lengths, targets, target lengths) -> each decoder step's frames
MemoryLimiter = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# (encoder states, lengths) -> (a further loss term, its statistics), e.g. asr.training.distill
EncoderLoss = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float]]]
_Section = TypeVar("_Section", FeatureConfig, EncoderConfig, DecoderConfig)


@dataclass(frozen=True)
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.encoder.input_dim != self.features.n_mels:
            raise ValueError(
                f"encoder.input_dim ({self.encoder.input_dim}) must equal "
                f"features.n_mels ({self.features.n_mels})"
            )
        if (self.encoder.frontend == "whisper") != (self.features.kind in WHISPER_KINDS):
            raise ValueError(
                "a Whisper front end reads Whisper's features and only it does: set encoder.frontend and "
                f"features.kind to whisper together, not {self.encoder.frontend!r} and {self.features.kind!r}"
            )
        if self.encoder.frontend == "whisper" and self.encoder.streaming != (self.features.kind != "whisper"):
            raise ValueError(
                "a streaming Whisper front end (encoder.chunk_frames > 0) reads the frames a stream can "
                "compute, features.kind whisper-causal, and an offline one Whisper's own, features.kind "
                f"whisper; got chunk_frames {self.encoder.chunk_frames} with {self.features.kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(
            features=_section(FeatureConfig, d, "features"),
            encoder=_section(EncoderConfig, d, "encoder"),
            decoder=_section(DecoderConfig, d, "decoder"),
            ctc_weight=float(d.get("ctc_weight", 0.3)),
        )

    @property
    def encoder_frame_shift(self) -> float:
        """Seconds per encoder output frame."""
        return self.features.frame_shift * self.encoder.subsampling


def _section(cls: type[_Section], d: dict[str, Any], name: str) -> _Section:
    """``d[name]`` (a mapping, or absent for the defaults) -> ``cls``; unknown keys name the choices."""
    value = d.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"model config section 'model.{name}' must be a mapping of keys, got {value!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(
            f"unknown model config keys {sorted(f'{name}.{k}' for k in unknown)} in section 'model.{name}'; "
            f"expected some of {sorted(known)}"
        )
    return cls(**value)


class ASRModel(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        v = tokenizer.vocab_size
        # Whisper's features come normalised: their CMVN stays the identity (the trainer skips its statistics)
        kind = config.features.kind
        self.frontend = (
            WhisperLogMel(config.features.n_mels, causal=kind == "whisper-causal")
            if kind in WHISPER_KINDS
            else LogMel(config.features)
        )
        self.cmvn = GlobalCMVN(config.features.n_mels)
        self.encoder = (LCBLSTMEncoder if config.encoder.streaming else PyramidalBLSTMEncoder)(config.encoder)
        self.ctc = nn.Linear(config.encoder.output_dim, v)
        self.decoder = AttentionDecoder(
            v, config.encoder.output_dim, config.decoder, tokenizer.sos_id, tokenizer.eos_id
        )

    @property
    def device(self) -> torch.device:
        return self.ctc.weight.device

    def features(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S)`` 16 kHz waveforms -> ``(B, T, n_mels)`` log-mel features (before CMVN)."""
        return self.frontend(waveforms, lengths)

    def encode(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, n_mels)`` features -> ``(B, T', D)`` encoder states with lengths."""
        return self.encoder(self.cmvn(feats), feat_lengths)

    def encode_provisional(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`encode`, and the frames as a stream's partials read them first, from the look-ahead:
        ``(enc, provisional, lengths)`` (:meth:`asr.lc_blstm.LCBLSTMEncoder.forward_provisional`)."""
        if not isinstance(self.encoder, LCBLSTMEncoder):
            raise ValueError("provisional_ctc needs a chunk-streaming encoder (encoder.chunk_frames > 0)")
        return self.encoder.forward_provisional(self.cmvn(feats), feat_lengths)

    def ctc_log_probs(self, enc: Tensor) -> Tensor:
        """``(B, T', D)`` -> ``(B, T', V)`` CTC log posteriors (float32)."""
        return F.log_softmax(self.ctc(enc).float(), dim=-1)

    def forward(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        token_penalty: Tensor | None = None,
        memory_limits: MemoryLimiter | None = None,
        encoder_loss: EncoderLoss | None = None,
        provisional_ctc: float = 0.0,
    ) -> tuple[Tensor, dict[str, float]]:
        """Joint loss for a batch. ``targets (B, U)`` are padded with -1; returns ``(loss, stats)``.

        ``token_penalty (B, T')``, in nats per encoder frame, weights the CTC paths that emit tokens there
        (:mod:`asr.ctc`; e.g. :func:`asr.ctc.silence_penalty`); it leaves the attention loss alone.
        ``memory_limits``: from the CTC posteriors, the frames each decoder step may attend to
        (:class:`asr.training.triggered.MemoryLimits`); it leaves the CTC loss alone. ``encoder_loss``: a
        further term on the encoder states (:class:`asr.training.distill.Distilling`), added as it is.
        ``provisional_ctc``: the weight of a CTC loss on the frames as a stream's partials first read them
        (a chunk-streaming encoder's look-ahead, :meth:`asr.lc_blstm.LCBLSTMEncoder.forward_provisional`)."""
        early = None
        if provisional_ctc > 0:
            enc, early, enc_lengths = self.encode_provisional(feats, feat_lengths)
        else:
            enc, enc_lengths = self.encode(feats, feat_lengths)
        lam = self.config.ctc_weight
        stats: dict[str, float] = {}
        loss = enc.new_zeros(())
        lp = self.ctc_log_probs(enc) if lam > 0 or memory_limits is not None else None
        if lam > 0:
            assert lp is not None
            ctc = self._ctc_loss(lp, enc_lengths, targets, target_lengths, token_penalty)
            loss = loss + lam * ctc
            stats["ctc"] = float(ctc.detach())
        if early is not None:
            ctc = self._ctc_loss(
                self.ctc_log_probs(early), enc_lengths, targets, target_lengths, token_penalty
            )
            loss = loss + provisional_ctc * ctc
            stats["ctc_ahead"] = float(ctc.detach())
        if lam < 1:
            ys_in, ys_out = self._decoder_io(targets, target_lengths)
            limits = None
            if memory_limits is not None:
                assert lp is not None
                limits = memory_limits(lp.detach(), enc_lengths, targets, target_lengths)
            logits = self.decoder(enc, enc_lengths, ys_in, limits)
            att, acc = self.decoder.loss(logits, ys_out)
            loss = loss + (1 - lam) * att
            stats["att"] = float(att.detach())
            stats["acc"] = float(acc)
        if encoder_loss is not None:
            extra, extra_stats = encoder_loss(enc, enc_lengths)
            loss = loss + extra
            stats.update(extra_stats)
        stats["loss"] = float(loss.detach())
        return loss, stats

    def _ctc_loss(
        self, lp: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, penalty: Tensor | None
    ) -> Tensor:
        """The (penalised) CTC loss of ``lp (B, T', V)``: summed over frames, mean per utterance."""
        loss = penalized_ctc_loss(
            lp.transpose(0, 1),  # (T', B, V)
            targets.clamp_min(0),
            lengths,
            target_lengths,
            penalty,
            self.tokenizer.blank_id,
        )
        return loss / targets.size(0)

    def _decoder_io(self, targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``<sos> y`` as input and ``y <eos>`` as output, both ``(B, U + 1)``; output padded with -1."""
        b = targets.size(0)
        sos = targets.new_full((b, 1), self.tokenizer.sos_id)
        ys_in = torch.cat([sos, targets.clamp_min(0)], dim=1)  # padding positions never reach the loss
        ys_out = torch.cat([targets, targets.new_full((b, 1), -1)], dim=1)
        ys_out[torch.arange(b, device=targets.device), target_lengths] = self.tokenizer.eos_id
        return ys_in, ys_out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
