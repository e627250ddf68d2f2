"""Long recordings cut into pieces at pauses (asr.transcribe.split_long_audio)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE
from asr.transcribe import PIECE_SECONDS, split_long_audio

RNG = np.random.default_rng(0)


def speech(seconds: float) -> np.ndarray:
    return (RNG.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def pause(seconds: float) -> np.ndarray:
    return (RNG.standard_normal(int(seconds * SAMPLE_RATE)) * 0.001).astype(np.float32)  # -60 dBFS


def seconds(bounds: list[tuple[int, int]]) -> list[tuple[float, float]]:
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in bounds]


def test_short_audio_is_one_piece() -> None:
    audio = speech(PIECE_SECONDS - 0.5)
    assert split_long_audio(audio) == [(0, len(audio))]


def test_cuts_fall_in_the_longest_pause_of_each_span() -> None:
    """A 500 ms pause early in the span beats a 50 ms one (a stop's closure) late in it, where a cut at
    the quietest frame of the span's end would split a word."""
    parts = [speech(4), pause(0.5), speech(3.5), pause(0.05), speech(4), pause(0.3), speech(2), pause(0.05)]
    parts += [speech(5)]
    audio = np.concatenate(parts)
    edges = np.cumsum([0] + [len(p) for p in parts]) / SAMPLE_RATE
    bounds = split_long_audio(audio, 10.0)
    cuts = [b / SAMPLE_RATE for _, b in bounds[:-1]]
    assert len(cuts) == 2
    assert edges[1] < cuts[0] < edges[2]  # the 500 ms pause
    assert edges[5] < cuts[1] < edges[6]  # the 300 ms one, not the 50 ms one after it


@pytest.mark.parametrize("max_seconds", [10.0, 30.0])
def test_pieces_cover_the_audio_end_to_end_within_the_limits(max_seconds: float) -> None:
    audio = np.concatenate([speech(2.5) if i % 2 == 0 else pause(0.1 * (i % 7)) for i in range(60)])
    bounds = split_long_audio(audio, max_seconds)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))
    lengths = [(b - a) / SAMPLE_RATE for a, b in bounds]
    assert max(lengths) <= max_seconds
    assert min(lengths[:-1]) >= max_seconds / 3 - 0.05


def test_digital_silence_is_cut_too() -> None:
    audio = np.zeros(25 * SAMPLE_RATE, dtype=np.float32)
    bounds = split_long_audio(audio, 10.0)
    assert bounds[-1][1] == len(audio) and all(b - a <= 10 * SAMPLE_RATE for a, b in bounds)
