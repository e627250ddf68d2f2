"""Request audio -> float32 16 kHz mono: whole files for Recognize, raw chunks for streams.

Raw PCM chunks are converted statefully (:class:`ChunkDecoder`): a stray byte or a partial multi-channel frame
waits for the next chunk, and resampling keeps context across chunk edges so a stream gets (nearly) the
samples a whole-file resample would give. Encoded streams (Ogg/Opus, FLAC, WAV, MP3) go through
:class:`ContainerChunkDecoder`; :func:`stream_decoder` picks one for a stream's encoding.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio.functional as AF

from asr.audio import SAMPLE_RATE, AudioError, decode_audio, mulaw_to_float, pcm16_to_float, sinc_friendly
from asr_grpc import asr_pb2

RAW = (asr_pb2.LINEAR16, asr_pb2.MULAW)
CONTAINERS = (asr_pb2.ENCODING_UNSPECIFIED, asr_pb2.FLAC, asr_pb2.OGG_OPUS, asr_pb2.MP3, asr_pb2.WAV)
MIN_RATE, MAX_RATE = 8000, 48000


def check_raw_format(encoding: int, sample_rate: int, channels: int) -> None:
    known = encoding in asr_pb2.AudioEncoding.values()
    name = asr_pb2.AudioEncoding.Name(encoding) if known else str(encoding)
    if encoding not in RAW:
        raise ValueError(f"expected raw audio (LINEAR16 or MULAW), got {name}")
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
    """Resampling of a stream chunk by chunk, with the filter :func:`asr.audio.resample` uses for the rate, so
    a stream gets (nearly) the samples a whole-file resample would give.

    Common rates (:func:`asr.audio.sinc_friendly`) go through torchaudio's sinc resampler in whole blocks of
    ``rate / gcd`` samples with context around: output lags input by the lookahead (a few ms). Other rates go
    through libsoxr's streaming resampler, which lags by up to about 100 ms. :meth:`flush` returns the rest.
    """

    def __init__(self, rate: int, target: int = SAMPLE_RATE) -> None:
        self.rate, self.target = rate, target
        self._soxr = (
            None if sinc_friendly(rate, target) else soxr.ResampleStream(rate, target, 1, "float32", "HQ")
        )
        g = math.gcd(rate, target)
        self.in_block, self.out_block = rate // g, target // g
        # >= 64 input samples of context (the sinc filter's reach); soxr keeps its own history
        self.ctx = 0 if self._soxr is not None else max(1, math.ceil(64 / self.in_block)) * self.in_block
        self._buf = np.zeros(self.ctx, dtype=np.float32)  # history (zeros at the start) + unconverted input

    def push(self, x: np.ndarray) -> np.ndarray:
        if self._soxr is not None:
            return self._soxr.resample_chunk(np.ascontiguousarray(x, dtype=np.float32))
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
        if self._soxr is not None:
            out = self._soxr.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            self._soxr.clear()
            return out
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


class ContainerChunkDecoder:
    """An encoded stream (Ogg/Opus, FLAC, WAV, MP3), chunk by chunk -> float32 16 kHz mono.

    libsndfile has no incremental API, so the growing container is decoded again from its start once enough
    new bytes have arrived: at least ``min_bytes`` and at least ``growth`` of what is buffered, which keeps
    the total decoding work linear in the stream's length. A truncated Ogg, WAV or MP3 yields every complete
    page or frame, so results come while the stream is live; a truncated FLAC does not decode, and its audio
    comes when the stream ends. Bytes that are no audio at all fail once ``probe_bytes`` have arrived.
    """

    def __init__(
        self,
        encoding: int,
        *,
        sample_rate: int = 0,
        min_bytes: int = 2048,
        growth: float = 0.125,
        probe_bytes: int = 65536,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.name = asr_pb2.AudioEncoding.Name(encoding)
        self.min_bytes, self.growth = min_bytes, growth
        self.probe_bytes, self.max_bytes = probe_bytes, max_bytes
        self._buf = bytearray()
        self._decoded_at = 0
        self._emitted = 0  # samples at the native rate already passed on
        self._header_ok = False
        self.resampler: StreamResampler | None = None
        self.declared_rate = sample_rate  # sample_rate_hertz: 0, or the rate the header must have
        self.rate = 0
        self.input_seconds = 0.0

    def push(self, data: bytes) -> np.ndarray:
        self._buf += data
        if len(self._buf) > self.max_bytes:
            raise AudioError(
                f"{self.name} stream is over {self.max_bytes >> 20} MiB; send LINEAR16 for long audio"
            )
        if len(self._buf) - self._decoded_at < max(self.min_bytes, int(self.growth * len(self._buf))):
            return np.zeros(0, dtype=np.float32)
        return self._decode(final=False)

    def flush(self) -> np.ndarray:
        if not self._buf:
            return np.zeros(0, dtype=np.float32)
        out = self._decode(final=True)
        tail = self.resampler.flush() if self.resampler is not None else np.zeros(0, dtype=np.float32)
        return np.concatenate([out, tail])

    def _decode(self, final: bool) -> np.ndarray:
        self._decoded_at = len(self._buf)
        data = io.BytesIO(bytes(self._buf))
        try:
            audio, sr = sf.read(data, dtype="float32", always_2d=True)
        except Exception as exc:
            probed = len(self._buf) >= self.probe_bytes
            hopeless = probed and not self._header_ok and not self._readable_header()
            if final or hopeless:
                raise AudioError(
                    f"could not decode the {self.name} stream ({len(self._buf)} bytes): {exc}"
                ) from exc
            return np.zeros(0, dtype=np.float32)  # a partial page or frame: wait for more
        self._header_ok = True
        if not self.rate:
            self.rate = int(sr)
            if self.declared_rate and self.declared_rate != self.rate:
                raise AudioError(
                    f"sample_rate_hertz={self.declared_rate} disagrees with the {self.name} stream's header "
                    f"({self.rate} Hz); send 0 to take the header's rate"
                )
            if not MIN_RATE <= self.rate <= MAX_RATE:
                raise AudioError(
                    f"{self.name} stream has a sample rate of {self.rate} Hz; "
                    f"supported: {MIN_RATE}-{MAX_RATE}"
                )
            self.resampler = StreamResampler(self.rate) if self.rate != SAMPLE_RATE else None
        mono = np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32)
        new = mono[self._emitted :]
        self._emitted = max(self._emitted, len(mono))
        self.input_seconds = self._emitted / self.rate
        return self.resampler.push(new) if self.resampler is not None else new

    def _readable_header(self) -> bool:
        try:
            sf.info(io.BytesIO(bytes(self._buf)))
        except Exception:
            return False
        self._header_ok = True
        return True


def stream_decoder(encoding: int, sample_rate: int, channels: int) -> ChunkDecoder | ContainerChunkDecoder:
    """The chunk decoder for a stream: raw PCM (LINEAR16, MULAW) or an encoded container."""
    if encoding in RAW:
        return ChunkDecoder(encoding, sample_rate, channels)
    if encoding in CONTAINERS and encoding != asr_pb2.ENCODING_UNSPECIFIED:
        return ContainerChunkDecoder(encoding, sample_rate=sample_rate)
    raise ValueError(f"unknown encoding {encoding}; see asr.v1.AudioEncoding")


__all__ = [
    "ChunkDecoder",
    "ContainerChunkDecoder",
    "StreamResampler",
    "check_raw_format",
    "decode_request_audio",
    "stream_decoder",
]
