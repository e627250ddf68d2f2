"""Audio loading: containers, resampling, PCM helpers and clear errors for bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import (
    SAMPLE_RATE,
    AudioError,
    decode_audio,
    duration,
    float_to_pcm16,
    load_audio,
    mulaw_to_float,
    pcm16_to_float,
    resample,
    sinc_friendly,
)


def tone(freq: float = 440.0, seconds: float = 0.5, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(audio: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("WAV", "FLOAT")]
)
def test_decode_containers(fmt: str, subtype: str | None) -> None:
    wave = tone()
    out = decode_audio(encode(wave, SAMPLE_RATE, fmt, subtype))
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(wave)) <= 1200  # codecs may pad a little
    n = min(len(out), len(wave))
    if fmt != "OGG":  # lossless: sample-exact up to 16-bit quantisation
        np.testing.assert_allclose(out[:n], wave[:n], atol=1e-4)


def test_stereo_is_downmixed_and_rate_converted(tmp_path: Path) -> None:
    left, right = tone(440, sr=8000), tone(440, sr=8000) * 0.0
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000)
    out = load_audio(path)
    assert len(out) == 2 * len(left)
    assert abs(np.abs(out).max() - 0.25) < 0.02  # the mean of the channels, at 16 kHz


def test_resample_preserves_a_tone() -> None:
    wave = tone(1000, seconds=1.0, sr=48000)
    out = resample(wave, 48000)
    assert len(out) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(spectrum.argmax()) - 1000) <= 1
    assert resample(wave, 16000, 16000) is wave or np.shares_memory(resample(wave, 16000, 16000), wave)
    with pytest.raises(AudioError, match="positive"):
        resample(wave, 0)


@pytest.mark.parametrize("rate", [8001, 12001, 47999])
def test_resample_from_odd_rates(rate: int) -> None:
    # rates sharing no big factor with 16 kHz: a polyphase sinc filter of rate/gcd phases took gigabytes
    wave = tone(440, seconds=2.0, sr=rate)
    out = resample(wave, rate)
    assert abs(len(out) - 2 * SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(out[: SAMPLE_RATE]))
    assert abs(int(spectrum.argmax()) - 440) <= 1


@pytest.mark.parametrize("rate", [8000, 44100, 8001, 47999])
def test_stream_resampler_matches_whole_file(rate: int) -> None:
    from server.audio import StreamResampler

    wave = tone(300, seconds=1.0, sr=rate) * 0.5
    whole = resample(wave, rate)
    stream = StreamResampler(rate)
    chunk = rate // 10  # 100 ms chunks
    pieces = [stream.push(wave[i : i + chunk]) for i in range(0, len(wave), chunk)]
    if sinc_friendly(rate):  # the block resampler lags by its lookahead only (20 ms at 44.1 kHz)
        assert len(pieces[0]) > 0.075 * SAMPLE_RATE
    else:  # soxr's stream lags by up to ~100 ms, never seconds (blocks of rate/gcd = 8001 samples would)
        assert sum(map(len, pieces[:2])) > 0.09 * SAMPLE_RATE
    got = np.concatenate([*pieces, stream.flush()])
    assert abs(len(got) - len(whole)) <= 1
    n = min(len(got), len(whole))
    np.testing.assert_allclose(got[:n], whole[:n], atol=2e-3)


def test_array_and_tensor_inputs() -> None:
    wave = tone()
    np.testing.assert_array_equal(load_audio(wave), wave)
    np.testing.assert_array_equal(load_audio(torch.from_numpy(wave)), wave)
    assert load_audio(wave.astype(np.float64)).dtype == np.float32
    assert duration(wave) == pytest.approx(0.5)
    # integer PCM is scaled like a file's samples would be, not passed through at +-27,000
    pcm16 = np.frombuffer(float_to_pcm16(wave), dtype="<i2")
    np.testing.assert_allclose(load_audio(pcm16), wave, atol=2 / 32768)
    np.testing.assert_allclose(load_audio(pcm16.astype(np.int32) << 16), wave, atol=2 / 32768)
    np.testing.assert_allclose(load_audio((pcm16 // 256 + 128).astype(np.uint8)), wave, atol=2 / 256)
    with pytest.raises(AudioError, match="unsupported sample type"):
        load_audio(np.ones(100, dtype=np.uint16))
    bad = wave.copy()
    bad[3] = np.nan  # as a file would, an array with NaN or infinities is refused
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(bad)
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(torch.from_numpy(np.where(bad != bad, np.inf, bad)))


def test_pcm_helpers_round_trip() -> None:
    wave = tone()
    back = pcm16_to_float(float_to_pcm16(wave))
    np.testing.assert_allclose(back, wave, atol=2 / 32768)
    assert (
        float_to_pcm16(np.array([2.0, -2.0], dtype=np.float32)) == np.array([32767, -32767], "<i2").tobytes()
    )
    ulaw = mulaw_to_float(bytes([0x00, 0x7F, 0x80, 0xFF]))
    assert ulaw[0] < -0.9 and ulaw[2] > 0.9 and abs(ulaw[1]) < 1e-3 and abs(ulaw[3]) < 1e-3
    with pytest.raises(AudioError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


def test_bad_inputs_raise_clear_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        load_audio(b"")
    with pytest.raises(ValueError, match="empty"):
        load_audio(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="could not decode"):
        load_audio(b"definitely not audio" * 10)
    with pytest.raises(ValueError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="shape"):
        load_audio(np.zeros((2, 100), dtype=np.float32))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match="could not decode"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(empty)
    with pytest.raises(AudioError, match="NaN"):
        decode_audio(encode(np.array([0.0, np.nan, 0.1], dtype=np.float32), SAMPLE_RATE, "WAV", "FLOAT"))


def test_espeak_fixture_audio(hello_wav: Path) -> None:
    audio = load_audio(hello_wav)
    assert 0.5 < duration(audio) < 3.0
    assert np.abs(audio).max() > 0.05
