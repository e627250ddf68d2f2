"""Front end: 80-dim log-mel filterbanks and global mean/variance normalisation.

Batch training, offline decoding and streaming segments all go through :class:`LogMel` and
:class:`GlobalCMVN`, so a segment cut from a stream gets exactly the features it would get offline.
Frames are not centred (no reflection padding), which makes the frame count a pure function of the
sample count: ``T = 1 + (S - n_fft) // hop_length`` (the STFT frames ``n_fft`` samples; the window sits in
their middle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torch import Tensor, nn

from asr import whisper_encoder
from asr.audio import SAMPLE_RATE

FEATURE_KINDS = ("logmel", "whisper", "whisper-causal")
WHISPER_KINDS = ("whisper", "whisper-causal")


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE
    n_mels: int = 80
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    # "logmel": :class:`LogMel` with the fields above, normalised by :class:`GlobalCMVN`; "whisper": Whisper's
    # own normalised log-mel (asr.whisper_encoder.WhisperLogMel: 80 Slaney mels, centred 25 ms frames every
    # 10 ms, two per 20 ms of audio), for an encoder whose front end is Whisper's (``encoder.frontend``);
    # "whisper-causal": the same frames not centred and with a fixed floor, which a stream computes as its
    # audio arrives (WhisperLogMel(causal=True); the n_fft and win_length fields do not apply: 400 samples)
    kind: str = "logmel"

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"features.kind must be one of {list(FEATURE_KINDS)}, got {self.kind!r}")
        if self.kind in WHISPER_KINDS and (self.sample_rate, self.hop_length) != (SAMPLE_RATE, 160):
            raise ValueError("whisper features are 16 kHz audio with a 160-sample hop; keep those fields")

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive feature frames."""
        return self.hop_length / self.sample_rate

    def num_frames(self, num_samples: Tensor) -> Tensor:
        """Frame count for each sample count (logmel: 0 when shorter than one ``n_fft`` frame)."""
        if self.kind == "whisper":
            return whisper_encoder.frames(num_samples)
        return torch.clamp((num_samples - self.frame_samples) // self.hop_length + 1, min=0)

    @property
    def frame_samples(self) -> int:
        """Samples one frame reads (not centred kinds: a frame reads its own samples only)."""
        return whisper_encoder.N_FFT if self.kind == "whisper-causal" else self.n_fft


def hz_to_mel(hz: Tensor) -> Tensor:
    """The HTK mel scale, which :class:`LogMel`'s filterbank uses (torchaudio's default)."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_centers(config: FeatureConfig) -> Tensor:
    """Centre frequencies in Hz, ``(n_mels,)``, of :class:`LogMel`'s filters: evenly spaced mels from
    0 Hz to Nyquist, torchaudio's defaults."""
    top = hz_to_mel(torch.tensor(config.sample_rate / 2))
    return mel_to_hz(torch.linspace(0.0, float(top), config.n_mels + 2)[1:-1])


class LogMel(nn.Module):
    """``(B, S)`` waveforms with lengths -> ``(B, T, n_mels)`` log-mel features with lengths."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            center=False,
            power=2.0,
        )

    @torch.no_grad()
    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
        if waveforms.size(1) < self.config.n_fft:  # pad so that the STFT has one frame to work with
            waveforms = nn.functional.pad(waveforms, (0, self.config.n_fft - waveforms.size(1)))
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            spec = self.mel(waveforms.float())  # (B, n_mels, T)
        feats = torch.log(spec + 1e-6).transpose(1, 2)  # (B, T, n_mels)
        feat_lengths = self.config.num_frames(lengths)
        return feats, feat_lengths


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation; statistics are buffers so they travel in the checkpoint."""

    mean: Tensor
    istd: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("istd", torch.ones(dim))

    def forward(self, feats: Tensor) -> Tensor:
        return (feats - self.mean) * self.istd

    @torch.no_grad()
    def set_stats(self, total: Tensor, total_sq: Tensor, count: int) -> None:
        """Set from accumulated sums over frames: ``sum x`` and ``sum x^2`` (each ``(dim,)``)."""
        if count <= 0:
            raise ValueError("CMVN statistics need at least one frame")
        mean = total / count
        var = (total_sq / count - mean**2).clamp_min(1e-8)
        self.mean.copy_(mean)
        self.istd.copy_(var.rsqrt())


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``(B,)`` lengths -> ``(B, T)`` bool mask, True on valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
