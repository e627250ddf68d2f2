"""Augmentation: speed perturbation and additive noise on waveforms (data workers), SpecAugment on features
(the training device, batched)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from asr.audio import SAMPLE_RATE
from asr.features import lengths_to_mask


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
