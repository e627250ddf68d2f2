"""Augmentation: speed perturbation and additive noise on waveforms (data workers), SpecAugment and
vocal-tract-length perturbation on features (the training device, batched)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from asr.audio import SAMPLE_RATE
from asr.features import FeatureConfig, hz_to_mel, lengths_to_mask, mel_centers


def speed_perturb(audio: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``factor`` times faster, pitch too (Kaldi's speed perturbation): ``(S,) -> (S / factor,)``."""
    if factor == 1.0:
        return audio
    orig = round(sample_rate * factor)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig, sample_rate)
    return out.numpy()


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mix ``noise`` (looped or cropped at a random point to the audio's length) at ``snr_db``."""
    if len(noise) < len(audio):
        noise = np.tile(noise, int(np.ceil(len(audio) / len(noise))))
    start = int(rng.integers(0, len(noise) - len(audio) + 1))
    noise = noise[start : start + len(audio)]
    p_sig = float(np.mean(audio**2)) + 1e-10
    p_noise = float(np.mean(noise**2)) + 1e-10
    scale = np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def pad_silence(
    audio: np.ndarray, lead: float, trail: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Put ``lead`` seconds of background before ``audio`` and ``trail`` seconds after it:
    ``(S,) -> (S + (lead + trail) * sample_rate,)``.

    The background is Gaussian noise at the recording's own floor (the RMS of its quietest 10 ms frame), so
    the padding sounds like the room the speech was recorded in rather than digital silence, which the model
    would learn to spot. Shows the model speech that starts later than in its corpus (the speechocean762
    recordings all start within 0.7 s of their speech). On its own it did not stop the CTC head firing on
    the first frame (stage 6, models/README.md); with ``ctc_silence_penalty`` (:mod:`asr.ctc`) it did.
    """
    n_lead, n_trail = round(lead * sample_rate), round(trail * sample_rate)
    if n_lead <= 0 and n_trail <= 0:
        return audio
    frame = sample_rate // 100
    usable = len(audio) // frame * frame
    floor = 1e-4
    if usable:
        rms = np.sqrt(np.mean(audio[:usable].reshape(-1, frame) ** 2, axis=1))
        floor = max(float(rms.min()), 1e-5)
    noise = (rng.standard_normal(n_lead + n_trail) * floor).astype(np.float32)
    return np.concatenate([noise[:n_lead], audio.astype(np.float32, copy=False), noise[n_lead:]])


@dataclass(frozen=True)
class SpecAugmentConfig:
    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 27  # at most this many mel bins per mask
    time_masks: int = 2
    time_width: int = 40  # at most this many frames per mask...
    time_width_ratio: float = 0.1  # ...and at most this share of the utterance


def spec_augment(
    feats: Tensor, lengths: Tensor, config: SpecAugmentConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Frequency and time masking (Park et al. 2019) on ``(B, T, F)`` log-mel features, filled with each
    utterance's mean so masks look like average speech, not silence. Time masks stay inside each utterance's
    valid frames. Returns a new tensor."""
    if not config.enabled:
        return feats
    b, t, f = feats.shape
    dev = feats.device
    valid = lengths_to_mask(lengths, t)[:, :, None]  # (B, T, 1)
    mean = (feats * valid).sum(dim=(1, 2)) / (lengths.clamp_min(1) * f)  # (B,)
    mask = torch.zeros(b, t, f, dtype=torch.bool, device=dev)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

    bins = torch.arange(f, device=dev)
    for _ in range(config.freq_masks):
        width = (rand(b) * (config.freq_width + 1)).long().clamp_max(f)
        start = (rand(b) * (f - width + 1)).long()
        mask |= ((bins[None] >= start[:, None]) & (bins[None] < (start + width)[:, None]))[:, None, :]
    frames = torch.arange(t, device=dev)
    max_w = torch.minimum(
        torch.full_like(lengths, config.time_width), (lengths.float() * config.time_width_ratio).long()
    )
    for _ in range(config.time_masks):
        width = (rand(b) * (max_w + 1).float()).long()
        start = (rand(b) * (lengths - width + 1).clamp_min(1).float()).long()
        mask |= ((frames[None] >= start[:, None]) & (frames[None] < (start + width)[:, None]))[:, :, None]
    return torch.where(mask, mean[:, None, None].to(feats.dtype), feats)


@dataclass(frozen=True)
class VtlpConfig:
    """Vocal-tract-length perturbation (Jaitly & Hinton 2013): each utterance's spectrum is stretched or
    squeezed along the frequency axis by a factor drawn from ``[1 - max_warp, 1 + max_warp]``, as if a
    shorter or longer vocal tract had spoken it (children's formants sit up to 20 % above adults'). Unlike
    speed perturbation it leaves the tempo alone, and it draws a new factor for every utterance of every
    epoch. 0 turns it off."""

    max_warp: float = 0.0
    boundary_hz: float = 4800.0  # the warp is linear up to here, then bends to keep the Nyquist frequency

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_warp < 0.5:
            raise ValueError(f"vtlp.max_warp must be in [0, 0.5), got {self.max_warp}")
        if self.boundary_hz <= 0:
            raise ValueError(f"vtlp.boundary_hz must be positive, got {self.boundary_hz}")


def vtlp_source_bins(alpha: Tensor, features: FeatureConfig, boundary_hz: float) -> Tensor:
    """Fractional mel-bin index, ``(B, n_mels)``, that each output bin reads for warp factors ``(B,)``.

    The forward warp maps a frequency ``f`` to ``alpha * f`` up to ``b = boundary_hz * min(alpha, 1)``
    and from there linearly onto the Nyquist frequency; this inverts it at the bins' centre frequencies.
    """
    nyquist = features.sample_rate / 2
    centers = mel_centers(features).to(alpha.device)[None, :]  # (1, F) in Hz
    a = alpha[:, None].float()
    b = min(boundary_hz, nyquist * 0.99) * a.clamp(max=1.0)
    low = centers / a
    high = nyquist - (nyquist - centers) * (nyquist - b / a) / (nyquist - b)
    source = torch.where(centers <= b, low, high)
    # Hz -> fractional bin index: the filter centres sit every ``step`` mels, the first one ``step`` above 0
    step = hz_to_mel(torch.tensor(nyquist)) / (features.n_mels + 1)
    return (hz_to_mel(source) / step - 1.0).clamp(0.0, features.n_mels - 1.0)


def vtlp(
    feats: Tensor,
    features: FeatureConfig,
    config: VtlpConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Warp ``(B, T, n_mels)`` log-mel features along frequency, one random factor per utterance
    (linear interpolation between neighbouring bins). Returns a new tensor; the input when turned off."""
    if config.max_warp <= 0:
        return feats
    b, t, f = feats.shape
    alpha = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * config.max_warp
    pos = vtlp_source_bins(alpha.to(feats.device), features, config.boundary_hz)  # (B, F)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(f - 1)
    w = (pos - lo.float()).to(feats.dtype)[:, None, :]

    def take(idx: Tensor) -> Tensor:
        return feats.gather(2, idx[:, None, :].expand(b, t, f))

    return take(lo) * (1 - w) + take(hi) * w
