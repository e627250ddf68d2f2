"""Client-side audio: read any common format, resample if asked, cut into LINEAR16 chunks, pace in real time.

Kept free of torch so the SDK stays light: decoding is libsndfile (``soundfile``: WAV, FLAC, Ogg/Opus, MP3),
resampling is libsoxr (``soxr``; the server resamples anyway, the client only does it when asked).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioSource",
    "apace",
    "audio_duration",
    "pace",
    "pcm_chunks",
    "read_audio",
    "read_raw",
    "resample",
    "split_at_quiet",
    "to_linear16",
]

# Same list as asr.audio.AUDIO_EXTENSIONS (not imported: that pulls in torch).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".oga", ".aiff", ".aif", ".au")
DEFAULT_CHUNK_MS = 100

AudioSource = str | os.PathLike | bytes | np.ndarray


def read_audio(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """Decode a file or encoded bytes to float32 mono ``(S,)`` at its own rate; returns ``(audio, rate)``.

    Raises ``ValueError`` for audio that cannot be decoded or is empty, ``FileNotFoundError`` for a missing
    file.
    """
    what = f"{len(source)} bytes of audio" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"audio file not found: {source}")
    try:
        data, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                             dtype="float32")
    except Exception as exc:  # libsndfile raises several types for corrupt input
        raise ValueError(f"could not decode {what}: {exc}") from exc
    if data.ndim == 2:  # (S, C) -> (S,)
        data = data.mean(axis=1)
    if data.size == 0:
        raise ValueError(f"{what} contains no samples")
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)


def audio_duration(source: str | os.PathLike | BinaryIO) -> float:
    """Seconds of audio in a file (or file object) from its header; 0.0 when the header cannot be read."""
    try:
        return float(sf.info(source if hasattr(source, "read") else str(source)).duration)
    except Exception:
        return 0.0


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample float32 mono ``(S,)`` (libsoxr, high quality; any pair of rates, linear cost)."""
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    if orig_rate == target_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), orig_rate, target_rate, quality="HQ")


def split_at_quiet(
    audio: np.ndarray, sample_rate: int, max_seconds: float, search_seconds: float = 30.0
) -> list[tuple[int, int]]:
    """Cut a recording into ``[start, end)`` sample ranges of at most ``max_seconds`` each, every cut at the
    quietest 50 ms in the ``search_seconds`` before the limit (so cuts fall between words where there is a
    pause). The ranges cover the audio without gaps or overlaps."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    limit = max(1, int(max_seconds * sample_rate))
    frame = max(1, sample_rate // 20)
    search = max(frame, min(int(search_seconds * sample_rate), limit // 2))
    pieces, start, n = [], 0, len(audio)
    while n - start > limit:
        lo = start + limit - search
        window = audio[lo : start + limit]
        frames = len(window) // frame
        energy = np.square(window[: frames * frame].reshape(frames, frame)).mean(axis=1)
        # The last quietest frame: the longest pieces, the fewest cuts.
        quiet = frames - 1 - int(np.argmin(energy[::-1]))
        cut = lo + quiet * frame + frame // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, n))
    return pieces


def to_linear16(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian signed 16-bit PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm_chunks(
    pcm: bytes, sample_rate: int, chunk_ms: int = DEFAULT_CHUNK_MS, channels: int = 1
) -> Iterator[bytes]:
    """Cut LINEAR16 bytes into chunks of ``chunk_ms`` (whole frames of all channels)."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    step = max(1, sample_rate * chunk_ms // 1000) * 2 * channels
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


def read_raw(stream: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """Chunks of a raw byte stream (a pipe, stdin) as they arrive, each at most ``chunk_bytes``."""
    read = getattr(stream, "read1", stream.read)  # read1 returns what is there, not waiting for a full chunk
    while True:
        data = read(chunk_bytes)
        if not data:
            return
        yield data


def pace(chunks: Iterable[bytes], bytes_per_second: float) -> Iterator[bytes]:
    """Yield chunks no faster than real time: chunk k leaves when the audio before it has "played"."""
    start = time.monotonic()
    sent = 0
    for chunk in chunks:
        delay = start + sent / bytes_per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield chunk
        sent += len(chunk)


async def apace(chunks: AsyncIterable[bytes], bytes_per_second: float) -> AsyncIterator[bytes]:
    """:func:`pace` for async iterables."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    async for chunk in chunks:
        delay = start + sent / bytes_per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield chunk
        sent += len(chunk)
