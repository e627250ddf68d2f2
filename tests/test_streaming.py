"""asr.streaming without the server: endpointing, interims, finals equal to offline decoding, batching."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from conftest import silence, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr import ASRModel
from asr.audio import SAMPLE_RATE, AudioError
from asr.decoding import DecodingOptions
from asr.streaming import EndpointConfig, Recognizer, RecognizerConfig, Stream, StreamOptions, StreamResult
from asr.transcribe import decode_waveforms, transcribe

CHUNK = SAMPLE_RATE // 10
FAST = 0.3  # random weights never say <eos>: cap the beam search at 0.3 tokens per encoder frame


@pytest.fixture(scope="module")
def model() -> ASRModel:
    return tiny_model()


def feed(
    rec: Recognizer, stream: Stream, audio: np.ndarray, chunk: int = CHUNK, decode_every: int = 1
) -> list[StreamResult]:
    """Real-time-like loop: accept a chunk, decode when ready (every ``decode_every`` chunks), collect
    results; then close the input."""
    out: list[StreamResult] = []
    for k, i in enumerate(range(0, len(audio), chunk)):
        rec.accept_audio(stream, audio[i : i + chunk])
        if k % decode_every == 0 and rec.is_ready(stream):
            rec.decode_streams([stream])
        out += rec.pop_results(stream)
    rec.input_finished(stream)
    while rec.is_ready(stream):
        rec.decode_streams([stream])
    out += rec.pop_results(stream)
    assert stream.is_done
    return out


def assert_matches_offline(
    model: ASRModel, audio: np.ndarray, finals: list[StreamResult], opts: DecodingOptions
) -> None:
    for f in finals:
        seg = audio[round(f.start * SAMPLE_RATE) : round(f.end * SAMPLE_RATE)]
        want = decode_waveforms(model, [seg], opts, offsets=[f.start])[0]
        assert f.text == want.text
        got = [(w.word, round(w.start, 6), round(w.end, 6)) for w in f.words]
        assert got == [(w.word, round(w.start, 6), round(w.end, 6)) for w in want.words]


def test_two_utterances_give_two_finals_equal_to_offline(model: ASRModel, speech: list[np.ndarray]) -> None:
    audio = np.concatenate([silence(0.7), speech[0], silence(1.0), speech[3], silence(1.0)])
    rec = Recognizer(model)
    opts = StreamOptions(
        decoding=DecodingOptions(beam_size=4, max_length_ratio=FAST), interim_interval_ms=300
    )
    results = feed(rec, rec.create_stream(opts), audio)
    finals = [r for r in results if r.is_final]
    assert [f.utterance for f in finals] == [0, 1]
    assert_matches_offline(model, audio, finals, opts.decoding)
    # the utterance starts pre_speech_ms before the onset, not at the stream start; words in stream time
    assert 0.2 < finals[0].start < 0.7 and finals[0].end <= finals[1].start
    assert all(finals[1].start <= w.start for w in finals[1].words)
    for k in (0, 1):
        mine = [r for r in results if r.utterance == k]
        assert len(mine) >= 2 and not mine[0].is_final and mine[-1].is_final
        assert all(r.stability < 1.0 for r in mine[:-1]) and mine[-1].stability == 1.0
        ends = [r.end for r in mine[:-1]]
        assert ends == sorted(ends)


def test_silence_only_gives_nothing(model: ASRModel) -> None:
    rec = Recognizer(model)
    noise = (np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE) * 1e-3).astype(np.float32)
    s = rec.create_stream()
    assert feed(rec, s, noise) == []
    assert (
        len(s.segment) <= (s.options.endpoint.pre_speech_ms + 20) * SAMPLE_RATE // 1000
    )  # no unbounded buffer


def test_non_finite_samples_are_refused_and_leave_the_stream_working(
    model: ASRModel, speech: list[np.ndarray]
) -> None:
    rec = Recognizer(model)
    s = rec.create_stream()
    bad = speech[0][:1600].copy()
    bad[5] = np.nan  # one NaN used to make the noise floor NaN, and no frame was speech ever after
    with pytest.raises(AudioError, match="NaN or infinite"):
        rec.accept_audio(s, bad)
    assert s.noise_floor is None or np.isfinite(s.noise_floor)
    finals = [r for r in feed(rec, s, np.concatenate([silence(0.3), speech[0], silence(1.0)])) if r.is_final]
    assert finals  # speech is still detected: the endpointer never saw the NaN


def test_input_finished_flushes_the_open_utterance(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    s = rec.create_stream(
        StreamOptions(interim_results=False, decoding=DecodingOptions(beam_size=2, max_length_ratio=FAST))
    )
    audio = np.concatenate([silence(0.3), speech[1][: len(speech[1]) * 2 // 3]])  # cut mid-speech, odd length
    audio = audio[: len(audio) - 77]
    finals = feed(rec, s, audio)
    assert len(finals) == 1 and finals[0].is_final
    assert finals[0].end == pytest.approx(len(audio) / SAMPLE_RATE)
    assert_matches_offline(model, audio, finals, s.options.decoding)


def test_forced_cut_at_the_quietest_point(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    ep = EndpointConfig(max_segment_seconds=1.5, silence_ms=3000)
    s = rec.create_stream(
        StreamOptions(
            endpoint=ep, interim_results=False, decoding=DecodingOptions(beam_size=2, max_length_ratio=FAST)
        )
    )
    audio = np.concatenate([speech[3], speech[2], speech[3]])
    finals = feed(rec, s, audio)
    assert len(finals) >= 3 and all(f.end - f.start <= 1.5 + 1e-9 for f in finals)
    for a, b in itertools.pairwise(finals):
        assert a.end == pytest.approx(b.start)  # no audio lost or repeated at a forced cut
    assert_matches_offline(model, audio, finals, s.options.decoding)


def test_single_utterance_stops_after_the_first_final(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    opts = StreamOptions(
        single_utterance=True, interim_results=False, decoding=DecodingOptions(max_length_ratio=FAST)
    )
    s = rec.create_stream(opts)
    finals = feed(rec, s, np.concatenate([speech[0], silence(1.0), speech[1], silence(1.0)]))
    assert len(finals) == 1 and finals[0].end_of_single_utterance and s.ended


def test_batched_streams_equal_streams_alone(model: ASRModel, speech: list[np.ndarray]) -> None:
    """Decoding several streams in one batch gives each stream what it gets alone."""
    audios = [np.concatenate([silence(0.2 * i), speech[i], silence(1.0)]) for i in range(4)]
    opts = StreamOptions(
        decoding=DecodingOptions(beam_size=3, max_length_ratio=FAST), interim_interval_ms=200
    )
    rec = Recognizer(model, RecognizerConfig(max_batch_size=3))  # 4 streams: two model calls per round
    alone = [[r.text for r in feed(rec, rec.create_stream(opts), a)] for a in audios]
    streams = [rec.create_stream(opts) for _ in audios]
    got: list[list[str]] = [[] for _ in audios]
    for i in range(0, max(map(len, audios)), CHUNK):
        for s, a in zip(streams, audios, strict=True):
            if i < len(a):
                rec.accept_audio(s, a[i : i + CHUNK])
        rec.decode_streams([s for s in streams if rec.is_ready(s)])
        for k, s in enumerate(streams):
            got[k] += [r.text for r in rec.pop_results(s)]
    for s in streams:
        rec.input_finished(s)
    rec.decode_streams(streams)
    for k, s in enumerate(streams):
        got[k] += [r.text for r in rec.pop_results(s)]
    assert got == alone


def test_offline_stream_equals_transcribe(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    audio = np.concatenate([speech[2], silence(0.5), speech[0]])
    opts = StreamOptions(decoding=DecodingOptions(beam_size=3, nbest=2, max_length_ratio=FAST))
    s = rec.create_offline_stream(audio, opts)
    rec.decode_streams([s])
    (r,) = rec.pop_results(s)
    want = transcribe(model, audio, opts.decoding)
    assert (
        r.is_final
        and r.text == want.text
        and [a.text for a in r.alternatives] == [a.text for a in want.alternatives]
    )
    assert s.is_done


def test_failed_decode_keeps_finals_for_a_retry(
    model: ASRModel, speech: list[np.ndarray], monkeypatch
) -> None:
    rec = Recognizer(model)
    s = rec.create_offline_stream(speech[0], StreamOptions(decoding=DecodingOptions(max_length_ratio=FAST)))

    def boom(jobs: list) -> list:
        raise RuntimeError("device lost")

    monkeypatch.setattr(rec, "_decode", boom)
    with pytest.raises(RuntimeError):
        rec.decode_streams([s])
    monkeypatch.undo()
    assert rec.is_ready(s)
    rec.decode_streams([s])
    assert len(rec.pop_results(s)) == 1


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="silence_ms"):
        EndpointConfig(silence_ms=10)
    with pytest.raises(ValueError, match="interim_interval_ms"):
        StreamOptions(interim_interval_ms=5)
    with pytest.raises(ValueError, match="mono"):
        Recognizer.accept_audio(None, Stream(StreamOptions()), np.zeros((2, 10), np.float32))  # type: ignore[arg-type]
    assert dataclasses.replace(StreamOptions(), single_utterance=True).single_utterance


def test_interim_interval_grows_with_the_utterance(model: ASRModel) -> None:
    """Each interim re-encodes the open utterance, so on long ones interims thin out geometrically."""
    rec = Recognizer(model)
    opts = StreamOptions(
        decoding=DecodingOptions(method="greedy"),
        endpoint=EndpointConfig(max_segment_seconds=30.0),
        interim_interval_ms=200,
        interim_growth=0.5,
    )
    rng = np.random.default_rng(0)
    loud = (0.3 * rng.standard_normal(12 * SAMPLE_RATE)).astype(np.float32)
    noise = np.concatenate([silence(0.5), loud])  # one long "utterance" after a quiet start
    ends = [round(r.end - r.start, 1) for r in feed(rec, rec.create_stream(opts), noise) if not r.is_final]
    gaps = np.diff(ends)
    assert len(ends) >= 5
    assert all(g >= 0.5 * e - 0.11 for g, e in zip(gaps, ends[:-1], strict=False)), (ends, gaps)
    flat = dataclasses.replace(opts, interim_growth=0.0)
    n_flat = sum(not r.is_final for r in feed(rec, rec.create_stream(flat), noise))
    assert n_flat > 2 * len(ends)  # without growth: one interim every 200 ms


def test_finals_only_leaves_interims_for_later(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    opts = StreamOptions(decoding=DecodingOptions(method="greedy"), interim_interval_ms=200)
    closed, open_ = rec.create_stream(opts), rec.create_stream(opts)
    rec.accept_audio(closed, np.concatenate([silence(0.3), speech[0], silence(1.5)]))
    rec.accept_audio(open_, np.concatenate([silence(0.3), speech[3][: int(0.8 * SAMPLE_RATE)]]))  # mid-speech
    assert rec.has_final(closed) and not rec.has_final(open_)
    rec.decode_streams([closed, open_], interims=False)
    assert [r.is_final for r in rec.pop_results(closed)] == [True]
    assert rec.pop_results(open_) == [] and rec.is_ready(open_)  # its interim is still due
    rec.decode_streams([open_])
    assert [r.is_final for r in rec.pop_results(open_)] == [False]


def test_interims_share_a_budget_longest_waiting_first(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model, RecognizerConfig(max_interim_seconds=1.0))
    opts = StreamOptions(decoding=DecodingOptions(method="greedy"), interim_interval_ms=200)
    streams = [rec.create_stream(opts) for _ in range(3)]
    for s in streams:  # each has an open utterance of ~0.8-1.5 s: only one fits the 1 s budget at a time
        rec.accept_audio(s, np.concatenate([silence(0.3), speech[3][: int(0.8 * SAMPLE_RATE)]]))
    served = []
    for _ in range(3):
        rec.decode_streams(streams)
        served.append([i for i, s in enumerate(streams) if rec.pop_results(s)])
    assert all(len(x) == 1 for x in served), served
    assert sorted(x[0] for x in served) == [0, 1, 2]  # every stream gets its turn


# ---------------------------------------------------------------- early finals


def speech_end(audio: np.ndarray) -> float:
    """Seconds to the end of the last 20 ms frame with any signal."""
    frames = np.abs(audio[: len(audio) // 320 * 320].reshape(-1, 320)).max(axis=1)
    return (int(np.flatnonzero(frames > 1e-3)[-1]) + 1) * 320 / SAMPLE_RATE


def voiced(audio: np.ndarray) -> np.ndarray:
    """The audio without its trailing silence."""
    return audio[: int(speech_end(audio) * SAMPLE_RATE)]


def test_early_final_is_decoded_before_the_endpoint_and_sent_at_it(
    model: ASRModel, speech: list[np.ndarray]
) -> None:
    rec = Recognizer(model)
    beam = DecodingOptions(beam_size=2, max_length_ratio=FAST)
    s = rec.create_stream(StreamOptions(decoding=beam, interim_interval_ms=100))
    head = np.concatenate([silence(0.3), voiced(speech[0])])
    end = speech_end(head)
    rec.accept_audio(s, head)
    rec.decode_streams([s])
    (interim,) = rec.pop_results(s)
    assert not interim.is_final
    rec.accept_audio(s, silence(end + 0.5 - len(head) / SAMPLE_RATE))
    assert rec.has_final(s)  # 300 ms of silence are in: the final is due early...
    rec.decode_streams([s])
    assert rec.pop_results(s) == []  # ...but held back until the endpoint
    rec.accept_audio(s, silence(0.4))  # 800 ms of silence: the endpoint
    assert not rec.is_ready(s)  # (no interims over the silence after the final's audio)
    (final,) = rec.pop_results(s)  # out at once, with no decoding call
    assert final.is_final and final.utterance == 0
    # the segment ends final_tail_ms after the last speech frame, and its final equals offline decoding
    assert final.end == pytest.approx(end + 0.3, abs=0.021)
    assert final.closed_at == pytest.approx(end + 0.8, abs=0.021)  # when the endpoint came
    assert_matches_offline(model, np.concatenate([head, silence(1.0)]), [final], beam)
    rec.input_finished(s)
    assert s.is_done and not rec.is_ready(s)


def test_early_final_is_dropped_when_speech_resumes(model: ASRModel, speech: list[np.ndarray]) -> None:
    rec = Recognizer(model)
    opts = StreamOptions(decoding=DecodingOptions(method="greedy"), interim_results=False)
    s = rec.create_stream(opts)
    first = np.concatenate([silence(0.3), voiced(speech[0])])
    rec.accept_audio(s, np.concatenate([first, silence(0.5)]))
    rec.decode_streams([s])  # the early final of the first part, held
    assert rec.pop_results(s) == []
    rec.accept_audio(s, voiced(speech[3]))  # a 500 ms pause, not an endpoint: the utterance goes on
    rec.accept_audio(s, silence(0.2))
    assert not rec.has_final(s)
    rec.accept_audio(s, silence(1.0))
    rec.decode_streams([s])
    (final,) = rec.pop_results(s)  # one final over both parts, never the first part's
    assert (s.early_finals_wasted, s.early_finals_sent) == (1, 1)  # the first decoded in vain
    assert final.utterance == 0 and final.start < 0.3 < len(first) / SAMPLE_RATE + 0.5 < final.end


def test_endpoint_while_the_early_final_is_decoded(model: ASRModel, speech: list[np.ndarray]) -> None:
    """The endpoint (and the end of input) arrive while the early final is in the model: it is sent when
    it comes out, the stream is not done before, and nothing is decoded twice."""
    calls: list[int] = []

    class Racing(Recognizer):
        def _decode(self, jobs: list) -> list[StreamResult]:  # type: ignore[type-arg]
            calls.append(len(jobs))
            if len(calls) == 1:
                self.accept_audio(s, silence(0.6))
                self.input_finished(s)
                assert not s.is_done
            return super()._decode(jobs)

    rec = Racing(model)
    greedy = DecodingOptions(method="greedy")
    opts = StreamOptions(decoding=greedy, interim_results=False, single_utterance=True)
    s = rec.create_stream(opts)
    rec.accept_audio(s, np.concatenate([silence(0.3), voiced(speech[0])]))
    rec.accept_audio(s, silence(0.5))
    rec.decode_streams([s])
    (final,) = rec.pop_results(s)
    assert final.is_final and final.end_of_single_utterance
    assert s.is_done and not rec.is_ready(s) and calls == [1]


def test_tail_as_long_as_the_silence_decodes_after_the_endpoint(
    model: ASRModel, speech: list[np.ndarray]
) -> None:
    rec = Recognizer(model)
    ep = EndpointConfig(silence_ms=400, final_tail_ms=1000)  # the tail is capped at silence_ms
    s = rec.create_stream(StreamOptions(endpoint=ep, interim_results=False))
    rec.accept_audio(s, np.concatenate([silence(0.3), voiced(speech[0])]))
    rec.accept_audio(s, silence(0.25))
    assert not rec.has_final(s)
    rec.accept_audio(s, silence(0.3))
    assert rec.has_final(s) and rec.pop_results(s) == []
    with pytest.raises(ValueError, match="final_tail_ms"):
        EndpointConfig(final_tail_ms=0)


def test_segment_limit_in_a_pause_ends_the_utterance_at_the_early_final(
    model: ASRModel, speech: list[np.ndarray]
) -> None:
    head = np.concatenate([silence(0.3), voiced(speech[0])])
    end = speech_end(head)
    rec = Recognizer(model)
    ep = EndpointConfig(silence_ms=3000, max_segment_seconds=len(head) / SAMPLE_RATE + 0.5)
    s = rec.create_stream(StreamOptions(decoding=DecodingOptions(method="greedy"), endpoint=ep))
    results = feed(rec, s, np.concatenate([head, silence(4.0)]))
    finals = [r for r in results if r.is_final]
    assert len(finals) == 1  # not a second final over the silence after the cut
    assert finals[0].end == pytest.approx(end + 0.3, abs=0.021)


def final_ranges(results: list[StreamResult]) -> list[tuple[str, int, int, int]]:
    return [
        (r.text, r.utterance, round(r.start * SAMPLE_RATE), round(r.end * SAMPLE_RATE))
        for r in results
        if r.is_final
    ]


PAUSES = [0.1, 0.36, 0.5, 0.7, 1.0]  # around the 300 ms early-final tail and the 800 ms endpoint


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    blocks=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(PAUSES)), min_size=1, max_size=4),
    chunk=st.integers(50, 8000),
    decode_every=st.integers(1, 6),
)
def test_finals_do_not_depend_on_chunks_or_decode_timing(
    model: ASRModel, speech: list[np.ndarray], blocks: list[tuple[int, float]], chunk: int, decode_every: int
) -> None:
    """Speech with pauses of every length: the finals are the same whether the audio comes in one piece
    and is decoded at the end, or in chunks decoded now and then (early finals made, kept, dropped)."""
    parts = [np.concatenate([voiced(speech[i]), silence(pause)]) for i, pause in blocks]
    audio = np.concatenate([silence(0.3), *parts])
    rec = Recognizer(model)
    opts = StreamOptions(decoding=DecodingOptions(method="greedy"), interim_interval_ms=100)
    whole, s = rec.create_stream(opts), rec.create_stream(opts)
    want = final_ranges(feed(rec, whole, audio, chunk=len(audio)))  # one piece, decoded after it all
    got = feed(rec, s, audio, chunk, decode_every)  # (feed checks that both streams end done)
    assert want and final_ranges(got) == want
    assert [f[1] for f in want] == list(range(len(want)))  # every utterance once, in order
    assert all(a[3] <= b[2] for a, b in itertools.pairwise(want))
