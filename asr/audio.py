"""Audio input: decode any common container, downmix to mono, resample to 16 kHz.

Every waveform that enters the model is float32 mono in [-1, 1] at ``SAMPLE_RATE``.
Decoding goes through libsndfile (``soundfile``), which reads WAV, FLAC, Ogg Vorbis/Opus and MP3;
resampling uses torchaudio's band-limited sinc resampler where its polyphase kernel is small (every common
rate: 8, 11.025, 22.05, 24, 32, 44.1, 48 kHz...) and libsoxr (``soxr``) for rates sharing no big factor with
16 kHz, where that kernel would take gigabytes (8001 Hz: 16,000 x 8,015 taps).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".aiff", ".aif", ".au")

AudioInput = str | os.PathLike | bytes | np.ndarray | torch.Tensor
MAX_SINC_KERNEL = 1 << 20  # polyphase kernel entries (out phases x in samples) torchaudio may build


def sinc_friendly(orig_sr: int, target_sr: int = SAMPLE_RATE) -> bool:
    """Whether torchaudio's polyphase sinc resampler stays small for this pair of rates."""
    g = math.gcd(orig_sr, target_sr)
    return (orig_sr // g) * (target_sr // g) <= MAX_SINC_KERNEL


class AudioError(ValueError):
    """The audio could not be decoded or is unusable (empty, corrupt, wrong shape)."""


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a float32 mono waveform ``(S,)`` from ``orig_sr`` to ``target_sr``."""
    if orig_sr <= 0:
        raise AudioError(f"sample rate must be positive, got {orig_sr}")
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.size == 0:
        return audio
    if sinc_friendly(orig_sr, target_sr):
        return AF.resample(torch.from_numpy(audio), orig_sr, target_sr).numpy()
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ")


def _to_mono(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:  # (S, C) -> (S,)
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float32)


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file held in memory (WAV, FLAC, Ogg/Opus, MP3...) to mono float32 at ``sample_rate``."""
    if not data:
        raise AudioError("audio is empty (0 bytes)")
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as exc:  # libsndfile raises a zoo of types for corrupt input
        raise AudioError(
            f"could not decode audio ({len(data)} bytes): {exc}. "
            "Send WAV, FLAC, Ogg/Opus or MP3, or raw PCM with an explicit encoding."
        ) from exc
    return _finish(_to_mono(audio), int(sr), sample_rate, what="audio")


def load_audio(source: AudioInput, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load audio from a path, encoded bytes, or an array already at ``sample_rate``.

    Arrays are float in [-1, 1] or integer PCM (int16, int32, int8, or uint8 centred on 128), which is scaled
    to [-1, 1). Returns a float32 mono array ``(S,)``. Raises :class:`AudioError` on missing, corrupt or empty
    audio.
    """
    if isinstance(source, bytes):
        return decode_audio(source, sample_rate)
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return array_to_float(source)
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:
        raise AudioError(f"could not decode {path}: {exc}") from exc
    return _finish(_to_mono(audio), int(sr), sample_rate, what=str(path))


def array_to_float(samples: np.ndarray) -> np.ndarray:
    """A mono waveform array (float, or integer PCM scaled to [-1, 1)) -> float32 ``(S,)``; checks it."""
    if samples.ndim != 1:
        raise AudioError(f"expected a mono waveform of shape (samples,), got shape {tuple(samples.shape)}")
    if samples.size == 0:
        raise AudioError("audio is empty (0 samples)")
    kind = samples.dtype.kind
    if kind == "f":
        audio = samples.astype(np.float32, copy=False)
        check_finite(audio, "audio")
        return audio
    if kind == "i":
        return (samples.astype(np.float64) / -np.iinfo(samples.dtype).min).astype(np.float32)
    if samples.dtype == np.uint8:
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise AudioError(
        f"unsupported sample type {samples.dtype}: "
        "pass float samples in [-1, 1] or int16/int32/int8/uint8 PCM"
    )


def check_finite(audio: np.ndarray, what: str) -> None:
    """Raise :class:`AudioError` when ``audio`` holds NaN or infinite samples."""
    if not np.isfinite(audio).all():
        raise AudioError(f"{what} contains NaN or infinite samples")


def _finish(audio: np.ndarray, sr: int, target_sr: int, what: str) -> np.ndarray:
    if audio.size == 0:
        raise AudioError(f"{what} contains no samples")
    check_finite(audio, what)
    return resample(audio, sr, target_sr)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise AudioError(f"LINEAR16 audio must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian signed 16-bit PCM bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _g711_ulaw_table() -> np.ndarray:
    u = (~np.arange(256, dtype=np.uint8)).astype(np.int32)  # G.711 stores the complement
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return (np.where(u & 0x80, -magnitude, magnitude) / 32768.0).astype(np.float32)


_ULAW = _g711_ulaw_table()


def mulaw_to_float(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes (telephony, 8 bits a sample) -> float32 in [-1, 1]."""
    return _ULAW[np.frombuffer(data, dtype=np.uint8)]


def duration(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return float(len(audio)) / sample_rate
