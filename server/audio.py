"""Request audio -> float32 16 kHz mono: whole files for Recognize, raw chunks for streams.

Raw PCM chunks are converted statefully (:class:`ChunkDecoder`): a stray byte or a partial multi-channel frame
waits for the next chunk, and resampling keeps context across chunk edges so a stream gets (nearly) the
samples a whole-file resample would give.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.audio import SAMPLE_RATE, AudioError, decode_audio, mulaw_to_float, pcm16_to_float
from client.proto.asr.v1 import asr_pb2

RAW = (asr_pb2.LINEAR16, asr_pb2.MULAW)
CONTAINERS = (asr_pb2.ENCODING_UNSPECIFIED, asr_pb2.FLAC, asr_pb2.OGG_OPUS, asr_pb2.MP3, asr_pb2.WAV)
MIN_RATE, MAX_RATE = 8000, 48000


def check_raw_format(encoding: int, sample_rate: int, channels: int) -> None:
    name = asr_pb2.AudioEncoding.Name(encoding)
    if encoding not in RAW:
        raise ValueError(f"a stream needs raw audio (LINEAR16 or MULAW), got {name}")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(f"{name} needs sample_rate_hertz in [{MIN_RATE}, {MAX_RATE}], got {sample_rate}")
    if not 1 <= channels <= 8:
        raise ValueError(f"audio_channel_count must be in [1, 8], got {channels}")


def decode_request_audio(content: bytes, encoding: int, sample_rate: int, channels: int) -> np.ndarray:
    """The audio of a Recognize request as float32 16 kHz mono. Raises ``ValueError`` (``AudioError``)."""
    if not content:
        raise AudioError("audio is empty (0 bytes)")
    if encoding in RAW:
        check_raw_format(encoding, sample_rate, channels)
        dec = ChunkDecoder(encoding, sample_rate, channels)
        audio = np.concatenate([dec.push(content), dec.flush()])
        if audio.size == 0:
            raise AudioError(f"audio is shorter than one sample frame ({len(content)} bytes)")
        return audio
    if encoding not in CONTAINERS:
        raise ValueError(f"unknown encoding {encoding}; see asr.v1.AudioEncoding")
    if sample_rate:
        try:
            header_rate = sf.info(io.BytesIO(content)).samplerate
        except Exception as exc:
            raise AudioError(f"could not decode audio ({len(content)} bytes): {exc}") from exc
        if header_rate != sample_rate:
            raise ValueError(
                f"sample_rate_hertz={sample_rate} disagrees with the file header ({header_rate} Hz)"
            )
    return decode_audio(content)


class ChunkDecoder:
    """Raw LINEAR16 / MULAW bytes, chunk by chunk -> float32 16 kHz mono."""

    def __init__(self, encoding: int, sample_rate: int, channels: int = 1) -> None:
        check_raw_format(encoding, sample_rate, channels)
        self.encoding = encoding
        self.channels = channels
        self.bytes_per_frame = (2 if encoding == asr_pb2.LINEAR16 else 1) * channels
        self._rest = b""
        self.resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self.input_seconds = 0.0

    def push(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        n = (len(data) // self.bytes_per_frame) * self.bytes_per_frame
        self._rest = data[n:]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        raw = data[:n]
        x = pcm16_to_float(raw) if self.encoding == asr_pb2.LINEAR16 else mulaw_to_float(raw)
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.resampler is None:
            self.input_seconds += len(x) / SAMPLE_RATE
            return x
        self.input_seconds += len(x) / self.resampler.rate
        return self.resampler.push(x)

    def flush(self) -> np.ndarray:
        return self.resampler.flush() if self.resampler is not None else np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Band-limited resampling of a stream in whole blocks of ``rate / gcd`` samples, with context around.

    Output lags input by the lookahead (a few ms); :meth:`flush` returns the rest.
    """

    def __init__(self, rate: int, target: int = SAMPLE_RATE) -> None:
        self.rate, self.target = rate, target
        g = math.gcd(rate, target)
        self.in_block, self.out_block = rate // g, target // g
        blocks = max(
            1, math.ceil(64 / self.in_block)
        )  # >= 64 input samples of context: the sinc filter's reach
        self.ctx = blocks * self.in_block
        self._buf = np.zeros(
            self.ctx, dtype=np.float32
        )  # history (zeros before the start) + unconverted input

    def push(self, x: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, x])
        ready = len(self._buf) - 2 * self.ctx  # input with history before and lookahead after it
        n = (ready // self.in_block) * self.in_block if ready > 0 else 0
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        window = self._buf[: self.ctx + n + self.ctx]
        y = self._convert(window)
        c_out = self.ctx // self.in_block * self.out_block
        out = y[c_out : c_out + n // self.in_block * self.out_block]
        self._buf = self._buf[n:]
        return out

    def flush(self) -> np.ndarray:
        rest = len(self._buf) - self.ctx
        if rest <= 0:
            return np.zeros(0, dtype=np.float32)
        pad = (-rest) % self.in_block + self.ctx
        y = self._convert(np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)]))
        c_out = self.ctx // self.in_block * self.out_block
        out = y[c_out : c_out + round(rest * self.target / self.rate)]
        self._buf = self._buf[-self.ctx :]
        return out

    def _convert(self, x: np.ndarray) -> np.ndarray:
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), self.rate, self.target).numpy()


__all__ = ["ChunkDecoder", "StreamResampler", "check_raw_format", "decode_request_audio"]
