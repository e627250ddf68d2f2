"""bench/stream_latency.py's pure helpers: reference times, word matching, latencies, lag, table cells."""

from __future__ import annotations

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE
from bench.stream_latency import (
    Clip,
    Piece,
    StreamLog,
    cell,
    compose,
    continuous,
    covered_latencies,
    end_of_speech,
    fell_behind,
    final_latency,
    finals_wer,
    first_seen,
    hypotheses,
    interim_lags,
    lag_growth,
    ratio,
    send_delay,
    speech_ms_per_s,
    trim_bounds,
    word_latencies,
)


def piece(seconds: float, words: tuple[tuple[str, float], ...], end: float) -> Piece:
    return Piece(np.ones(round(seconds * SAMPLE_RATE), np.float32), words, end)


def test_end_of_speech_prefers_the_voiced_span_then_the_last_word() -> None:
    assert end_of_speech((0.2, 2.5), (("A", 2.0),), 3.0) == 2.5
    assert end_of_speech(None, (("A", 1.0), ("B", 2.0)), 3.0) == 2.0
    assert end_of_speech(None, (), 3.0) == 3.0
    assert trim_bounds((0.05, 2.5), 2.55) == (0.0, 2.55)
    assert trim_bounds((1.0, 2.0), 3.0) == pytest.approx((0.9, 2.1))
    assert trim_bounds(None, 3.0) == (0.0, 3.0)


def test_compose_moves_words_and_speech_end_to_stream_time() -> None:
    a, b = piece(2.0, (("A", 1.0),), 1.8), piece(1.0, (("B", 0.5),), 0.9)
    clip = compose([a, b], gap_s=1.5, lead_s=0.5, trail_s=1.0)
    assert clip.seconds == pytest.approx(0.5 + 2.0 + 1.5 + 1.0 + 1.0)
    assert [w for w, _ in clip.words] == ["A", "B"]
    assert [e for _, e in clip.words] == pytest.approx([1.5, 4.5])
    assert clip.speech_end == pytest.approx(4.0 + 0.9)
    assert np.count_nonzero(clip.audio) == 3 * SAMPLE_RATE  # only the pieces are sound
    long = continuous([a, b, a], 4.0)
    assert long.words == () and long.speech_end == pytest.approx(0.5 + 4.0)


def test_first_seen_matches_words_in_order_and_keeps_the_first_time() -> None:
    ref = ["THE", "CAT", "SAT", "ON", "THE", "MAT"]
    hyps = [
        (1.0, ["THE", "KAT"]),
        (2.0, ["THE", "CAT", "SAT"]),
        (3.0, ["A", "CAT", "SAT", "ON", "THE", "MAP"]),
    ]
    assert first_seen(ref, hyps) == [1.0, 2.0, 2.0, 3.0, 3.0, None]
    # a word counts once, in its place: the first THE does not stand for the second
    assert first_seen(["THE", "CAT", "THE", "MAT"], [(1.0, ["THE", "CAT"])]) == [1.0, 1.0, None, None]
    swapped = first_seen(["CAT", "MAT"], [(1.0, ["MAT", "CAT"])])
    assert sorted(swapped, key=str) == [1.0, None]  # out of order: only one of the two


def test_hypotheses_put_earlier_finals_before_each_result() -> None:
    results = [(1.0, False, "hello", 0.5), (2.0, True, "hello world", 1.0), (3.0, False, "again", 1.5)]
    assert hypotheses(results) == [
        (1.0, ["HELLO"]),
        (2.0, ["HELLO", "WORLD"]),
        (3.0, ["HELLO", "WORLD", "AGAIN"]),
    ]


def test_latencies_run_from_the_send_of_the_chunk_holding_the_instant() -> None:
    clip = Clip(np.zeros(3 * SAMPLE_RATE, np.float32), (("HELLO", 0.95), ("WORLD", 1.55)), 1.6)
    log = StreamLog(sent=[10.0 + 0.1 * k for k in range(30)])
    log.results = [(11.3, False, "hello", 1.2), (12.5, True, "hello world", 1.9), (13.0, True, "", 2.9)]
    words, seen = word_latencies(clip, log)
    assert seen == 2 and words == pytest.approx([11.3 - 10.9, 12.5 - 11.5])
    assert final_latency(clip, log) == pytest.approx(13.0 - 11.5)  # the last final; 1.6 s ends chunk 15
    assert final_latency(clip, StreamLog(sent=log.sent)) is None
    # covered: the first result whose end reaches the word, whatever it says (1.2 s covers HELLO, not WORLD)
    assert covered_latencies(clip, log) == pytest.approx([11.3 - 10.9, 12.5 - 11.5])


def test_finals_wer_joins_each_streams_finals_and_ignores_interims() -> None:
    clip = Clip(np.zeros(3 * SAMPLE_RATE, np.float32), (("HELLO", 0.95), ("WORLD", 1.55)), 1.6)
    log = StreamLog(results=[(1.0, False, "jello", 1.0), (2.0, True, "Hello,", 1.2), (3, True, "word", 2.0)])
    silent = StreamLog(results=[(1.0, False, "hello", 1.0)])  # no final: both words deleted
    assert finals_wer([clip], [log]) == pytest.approx(50.0)
    assert finals_wer([clip, clip], [log, silent]) == pytest.approx(75.0)
    assert finals_wer([], []) is None


def test_send_delay_lag_and_falling_behind() -> None:
    sent = [0.1 * k for k in range(30)]
    assert send_delay(sent) == pytest.approx(0.0, abs=1e-9)
    assert send_delay([*sent[:5], 0.9, 1.0]) == pytest.approx(0.4)
    steady = StreamLog(sent=sent, results=[(0.1 * k + 0.05, False, "x", 0.1 * k - 0.2) for k in range(1, 29)])
    assert interim_lags(steady) == pytest.approx(
        [0.3] * 28
    )  # chunk k, sent at 0.1 k, holds audio to 0.1 (k + 1)
    assert lag_growth(interim_lags(steady)) == pytest.approx(0.0, abs=1e-9)
    assert lag_growth([0.1, 0.5]) is None
    assert not fell_behind(steady, final=0.8)
    assert fell_behind(steady, final=None) and fell_behind(steady, final=2.5)
    # interims losing 50 ms per 100 ms of audio: the lag grows
    late = StreamLog(sent=sent, results=[(0.1 * k + 0.05, False, "x", 0.05 * k) for k in range(1, 29)])
    assert (lag_growth(interim_lags(late)) or 0.0) > 0.5 and fell_behind(late, final=0.8)
    # a constant lag of 1.5 s does not grow, but it is behind all the same
    far = StreamLog(sent=sent, results=[(0.1 * k + 0.05, False, "x", 0.1 * k - 1.5) for k in range(1, 29)])
    assert lag_growth(interim_lags(far)) == pytest.approx(0.0, abs=1e-9) and fell_behind(far, final=0.8)


def test_cpu_per_second_of_speech_takes_off_what_the_clips_silence_costs_alone() -> None:
    # 3 clips of 5 s of speech and 2 s of silence each: 1.6 s of CPU, of which 0.1 s per clip is silence's
    assert speech_ms_per_s(1.6, 3, 0.1, 15.0) == pytest.approx(1000 * 1.3 / 15)
    # the same cost per second of speech with one long clip: equal, where per second of audio it was not
    assert speech_ms_per_s(60 * 1.3 / 15 + 0.1, 1, 0.1, 60.0) == pytest.approx(1000 * 1.3 / 15)


def test_table_cells_and_ratios() -> None:
    assert [cell(None), cell(float("nan")), cell(3), cell(812.4), cell(0.523)] == [
        "-",
        "-",
        "3",
        "812",
        "0.52",
    ]
    assert ratio(400.0, 800.0) == 0.5 and ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


def test_audio_latency_stamps_results_with_the_audio_fed_and_counts_words(speech: list[np.ndarray]) -> None:
    """bench/audio_latency.py on the bundled streaming model: results come in audio order, none before the
    audio that let it out, a final after the end of speech; the words it got are counted where first seen."""
    from asr.checkpoint import load_model
    from asr.online import OnlineRecognizer, RecognizerConfig
    from asr.stream_state import StreamOptions
    from bench.audio_latency import measure, percentiles, run_clip

    wave = speech[2]  # "OPEN THE DOOR"
    end = len(wave) / SAMPLE_RATE
    words = tuple((w, end * (k + 1) / 3) for k, w in enumerate(["OPEN", "THE", "DOOR"]))
    clip = compose([Piece(wave, words, end)], 0.0)
    rec = OnlineRecognizer(load_model("streaming", device="cpu"), RecognizerConfig())
    results = run_clip(rec, clip, StreamOptions())
    times = [t for t, _ in results]
    assert times == sorted(times) and times[-1] <= len(clip.audio) / SAMPLE_RATE
    assert all(r.end <= t + 1e-6 for t, r in results)  # nothing covers audio not yet fed
    finals = [t for t, r in results if r.is_final]
    assert finals and finals[-1] > clip.speech_end
    out = measure("streaming", [clip], blank_ms=160)
    assert out["final"]["count"] == 1 and out["final"]["p50_ms"] is not None
    assert out["word"]["count"] == out["word_in_partial"]["count"] + out["word_in_final"]["count"] >= 1
    assert percentiles([0.1, 0.2, 0.3, 0.4]) == {"p50_ms": 300, "p95_ms": 400, "count": 4}
    assert percentiles([]) == {"p50_ms": None, "p95_ms": None, "count": 0}
