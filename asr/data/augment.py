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
    if features.kind != "logmel":
        raise ValueError(
            f"vtlp warps the bins of logmel features, not {features.kind!r} ones: set data.vtlp.max_warp: 0"
        )
    b, t, f = feats.shape
    alpha = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * config.max_warp
    pos = vtlp_source_bins(alpha.to(feats.device), features, config.boundary_hz)  # (B, F)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(f - 1)
    w = (pos - lo.float()).to(feats.dtype)[:, None, :]

    def take(idx: Tensor) -> Tensor:
        return feats.gather(2, idx[:, None, :].expand(b, t, f))

    return take(lo) * (1 - w) + take(hi) * w


@dataclass(frozen=True)
class ChannelAugmentConfig:
    """What a real microphone, room and line do to speech, for training on clean synthetic speech: room
    reverberation (image-source impulse responses from pyroomacoustics), band-limiting (a telephone band or a
    random low-pass), a lossy codec (Opus at a random compression level, as the real corpora here are
    stored, or 8-bit mu-law) and a random gain. Each is drawn per utterance and epoch; all 0 turns it off."""

    reverb_prob: float = 0.0
    rt60: tuple[float, float] = (0.15, 0.7)  # seconds, uniform
    bandlimit_prob: float = 0.0
    codec_prob: float = 0.0
    gain_db: tuple[float, float] = (
        0.0,
        0.0,
    )  # uniform; the result is clipped to [-1, 1] as a sound card would
    rir_bank: int = 48  # impulse responses simulated once per data worker, drawn from per utterance

    def __post_init__(self) -> None:
        for name in ("reverb_prob", "bandlimit_prob", "codec_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"channel.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.rt60[0] <= self.rt60[1]:
            raise ValueError(f"channel.rt60 must be a range of positive seconds, got {self.rt60}")

    @property
    def enabled(self) -> bool:
        probs = (self.reverb_prob, self.bandlimit_prob, self.codec_prob)
        return any(p > 0 for p in probs) or self.gain_db != (0.0, 0.0)

    def impulse_responses(self, seed: int = 0) -> list[np.ndarray]:
        """The bank of simulated rooms (empty when reverberation is off)."""
        if self.reverb_prob <= 0:
            return []
        rng = np.random.default_rng(seed)
        return [room_impulse_response(float(rng.uniform(*self.rt60)), rng) for _ in range(self.rir_bank)]


def room_impulse_response(
    rt60: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A simulated impulse response of a random shoebox room with reverberation time ``rt60`` (seconds),
    talker and microphone at random places in it; normalised to a unit direct path."""
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=min(max_order, 17))
    margin = 0.5
    room.add_source(rng.uniform(margin, dims - margin))
    room.add_microphone(rng.uniform(margin, dims - margin))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float32)
    return rir / (np.abs(rir).max() + 1e-9)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir``, keeping the length and the level of the dry speech: ``(S,) -> (S,)``."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(audio, rir)[: len(audio)]
    scale = np.sqrt((np.mean(audio**2) + 1e-10) / (np.mean(wet**2) + 1e-10))
    return (wet * scale).astype(np.float32)


def band_limit(audio: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Half the time a telephone channel (300-3400 Hz, through 8 kHz), otherwise a low-pass at 3-7 kHz."""
    from scipy.signal import butter, sosfilt

    if rng.random() < 0.5:
        sos = butter(6, [300, 3400], btype="bandpass", fs=sample_rate, output="sos")
        narrow = AF.resample(torch.from_numpy(sosfilt(sos, audio).astype(np.float32)), sample_rate, 8000)
        return AF.resample(narrow, 8000, sample_rate).numpy()[: len(audio)]
    sos = butter(8, float(rng.uniform(3000, 7000)), btype="lowpass", fs=sample_rate, output="sos")
    return sosfilt(sos, audio).astype(np.float32)


def codec(audio: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Through a lossy codec and back: Opus at a random compression level (2 in 3), else 8-bit mu-law."""
    if rng.random() < 2 / 3:
        import io

        import soundfile as sf

        buf = io.BytesIO()
        level = float(rng.uniform(0.3, 1.0))  # libsndfile: higher is smaller files, lower quality
        sf.write(
            buf, np.clip(audio, -1, 1), sample_rate, format="OGG", subtype="OPUS", compression_level=level
        )
        buf.seek(0)
        out, _ = sf.read(buf, dtype="float32")
        out = out[: len(audio)]
        return np.pad(out, (0, len(audio) - len(out))).astype(np.float32)
    x = torch.from_numpy(np.clip(audio, -1, 1).astype(np.float32))
    return AF.mu_law_decoding(AF.mu_law_encoding(x, 256), 256).numpy()


def channel(
    audio: np.ndarray, config: ChannelAugmentConfig, rng: np.random.Generator, rirs: list[np.ndarray]
) -> np.ndarray:
    """Room, band, codec and gain, each by its probability; ``rirs`` is a bank of impulse responses."""
    if rirs and rng.random() < config.reverb_prob:
        audio = reverberate(audio, rirs[int(rng.integers(len(rirs)))])
    if rng.random() < config.bandlimit_prob:
        audio = band_limit(audio, rng)
    if config.gain_db != (0.0, 0.0):
        audio = audio * np.float32(10 ** (rng.uniform(*config.gain_db) / 20))
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    if rng.random() < config.codec_prob:
        audio = codec(audio, rng)
    return audio
