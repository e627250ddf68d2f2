"""Client pieces that need no server: output formats, subtitle cues, SDK types, errors, audio helpers."""

from __future__ import annotations

import itertools
import json
import time

import grpc
import numpy as np
import pytest
from client_support import parse_cues

from client import errors
from client.audio import pace, pcm_chunks, read_audio, resample, split_at_quiet, to_linear16
from client.formats import cues, record, render
from client.types import Alternative, RecognitionConfig, Segment, Transcript, WordInfo


def _transcript(words: list[tuple[str, float, float]], seg_end: float = 20.0) -> Transcript:
    ws = tuple(WordInfo(w, s, e, 0.9) for w, s, e in words)
    text = " ".join(w for w, _, _ in words)
    return Transcript(text, (Segment(0.0, seg_end, (Alternative(text, 0.8, ws),)),), duration=seg_end)


@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_subtitles_parse_back_and_group_words(kind: str) -> None:
    # a pause of 2 s after "two" must start a new cue; a long run of words must be split by length
    words = [("one", 0.1, 0.4), ("two", 0.5, 0.9)]
    words += [(f"w{i:02d}", 3.0 + i * 0.3, 3.2 + i * 0.3) for i in range(30)]
    t = _transcript(words)
    parsed = parse_cues(render(kind, t), kind)
    assert parsed[0] == (0.1, 0.9, "one two")
    assert len(parsed) >= 3  # the 30 words after the pause do not fit in one cue of 84 characters / 7 s
    assert " ".join(c[2] for c in parsed) == t.text
    assert all(e - s <= 7.0 + 1e-6 for s, e, _ in parsed[1:])


def test_cue_fallback_one_per_segment_without_words() -> None:
    segs = (
        Segment(0.0, 2.5, (Alternative("hello there", 0.5),)),
        Segment(2.5, 2.5, (Alternative("", 0.0),)),  # empty pieces give no cue
        Segment(3.0, 4.0, (Alternative("general kenobi", 0.5),)),
    )
    t = Transcript.from_segments(segs, 4.0)
    assert t.text == "hello there general kenobi"
    assert [c.text for c in cues(t)] == ["hello there", "general kenobi"]
    parsed = parse_cues(render("srt", t), "srt")
    assert parsed == [(0.0, 2.5, "hello there"), (3.0, 4.0, "general kenobi")]


def test_cues_never_overlap_or_have_zero_length() -> None:
    t = _transcript([("a", 1.0, 1.0), ("b", 0.9, 0.95)], seg_end=2.0)  # zero-length and overlapping words
    for kind in ("srt", "vtt"):
        parse_cues(render(kind, t, None), kind)  # the parser asserts order and positive durations


def test_long_cue_wraps_to_two_lines() -> None:
    text = "the quick brown fox jumps over the lazy dog again"
    words = [(w, i * 0.2, i * 0.2 + 0.1) for i, w in enumerate(text.split())]
    out = render("srt", _transcript(words))
    assert out.count("\n") == 4  # index, times, two text lines
    assert parse_cues(out, "srt")[0][2] == text


@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_subtitle_lines_stay_within_42_characters(kind: str) -> None:
    # the review's case: a 44-character line from a split at the space nearest the middle
    rng = np.random.default_rng(0)
    vocab = ["LAUGHED", "THE", "CHANGE", "SHE", "TURNED", "FOR", "SHOWER", "A", "EXTRAORDINARILY", "IT"]
    for _ in range(50):
        ws = [str(rng.choice(vocab)) for _ in range(40)]
        t = _transcript([(w, 0.1 * i, 0.1 * i + 0.08) for i, w in enumerate(ws)])
        out = render(kind, t)
        text_lines = [ln for ln in out.splitlines() if ln and "-->" not in ln and not ln.isdigit()]
        assert all(len(ln) <= 42 for ln in text_lines if ln != "WEBVTT"), text_lines
        assert " ".join(c[2] for c in parse_cues(out, kind)) == t.text


def test_timestamps_past_an_hour() -> None:
    t = _transcript([("late", 3725.5, 3726.25)], seg_end=4000.0)
    assert "01:02:05,500 --> 01:02:06,250" in render("srt", t)
    assert "01:02:05.500 --> 01:02:06.250" in render("vtt", t)


def test_json_and_jsonl_records() -> None:
    t = _transcript([("hi", 0.0, 0.5), ("you", 0.6, 1.0)], seg_end=1.2)
    one = json.loads(render("json", t, "a/b.wav"))
    line = render("jsonl", t, "a/b.wav")
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == one == record(t, "a/b.wav")
    assert one["id"] == "a/b.wav" and one["text"] == "hi you" and one["duration"] == 1.2
    assert [w["word"] for w in one["words"]] == ["hi", "you"]
    assert render("txt", t) == "hi you\n"
    with pytest.raises(ValueError, match="unknown output format"):
        render("docx", t)


def test_empty_transcript_renders_valid_files() -> None:
    t = Transcript("", (), 1.0)
    assert parse_cues(render("srt", t), "srt") == []
    assert parse_cues(render("vtt", t), "vtt") == []
    assert json.loads(render("json", t))["text"] == ""


def test_recognition_config_checks_values() -> None:
    with pytest.raises(ValueError, match="method"):
        RecognitionConfig(method="viterbi")
    with pytest.raises(ValueError, match="ctc_weight"):
        RecognitionConfig(ctc_weight=1.5)
    with pytest.raises(ValueError, match="beam_size"):
        RecognitionConfig(beam_size=0)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
        (grpc.StatusCode.INTERNAL, errors.ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, errors.ServerError),
    ],
)
def test_status_codes_map_to_sdk_errors(code: grpc.StatusCode, cls: type[errors.ASRError]) -> None:
    exc = errors.from_grpc(_FakeRpcError(code, "details here"), "host:1")
    assert type(exc) is cls and isinstance(exc, errors.ASRError)
    assert "details here" in str(exc) and exc.code == code.name
    assert errors.is_retryable(_FakeRpcError(code)) == (code == grpc.StatusCode.UNAVAILABLE)


def test_invalid_argument_is_a_value_error() -> None:
    assert isinstance(errors.InvalidArgument("x"), ValueError)


def test_audio_helpers() -> None:
    sr = 8000
    t = np.arange(sr) / sr
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    up = resample(wave, sr, 16000)
    assert up.shape == (16000,) and up.dtype == np.float32
    # the tone survives resampling: its spectrum still peaks at 440 Hz
    assert abs(np.argmax(np.abs(np.fft.rfft(up))) * 16000 / len(up) - 440) < 2
    pcm = to_linear16(wave)
    chunks = list(pcm_chunks(pcm, sr, chunk_ms=100))
    assert len(chunks) == 10 and all(len(c) == 1600 for c in chunks) and b"".join(chunks) == pcm
    with pytest.raises(ValueError, match="could not decode"):
        read_audio(b"not audio at all")


def test_pace_sends_in_real_time() -> None:
    start = time.monotonic()
    list(pace([b"\0" * 3200] * 4, bytes_per_second=32000))  # 4 x 100 ms; the first goes at once
    assert 0.28 <= time.monotonic() - start < 1.0


def test_split_at_quiet_cuts_in_pauses_and_covers_everything() -> None:
    rate = 1000
    rng = np.random.default_rng(0)
    loud = lambda n: rng.uniform(-0.5, 0.5, n).astype(np.float32)  # noqa: E731
    quiet = np.zeros(200, dtype=np.float32)
    audio = np.concatenate([loud(700), quiet, loud(900), quiet, loud(500)])  # pauses at 700-900, 1800-2000
    pieces = split_at_quiet(audio, rate, max_seconds=1.0, search_seconds=0.5)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert all(0 < end - start <= rate for start, end in pieces)
    assert 700 <= pieces[0][1] <= 900  # the first cut falls in the first pause
    assert split_at_quiet(audio[:500], rate, max_seconds=1.0) == [(0, 500)]
    with pytest.raises(ValueError, match="positive"):
        split_at_quiet(audio, rate, max_seconds=0)
