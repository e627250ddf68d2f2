"""End to end through a real server on 127.0.0.1 (port 0) with a tiny random-weight model.

Results are compared with offline decoding of the same samples (``asr.transcribe``), so the model need not be
trained: equal text from random weights means the service decodes exactly what the library decodes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_model
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr import ASRModel, save_checkpoint
from asr.audio import SAMPLE_RATE, float_to_pcm16, resample
from asr.decoding import DecodingOptions
from asr.endpointing import EndpointConfig
from asr.transcribe import decode_waveforms, transcribe
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.app import create_server
from server.config import ServerConfig, default_stream_options

ROOT = Path(__file__).resolve().parent.parent
CHUNK = SAMPLE_RATE // 10  # 100 ms


class ServerThread:
    """A server on its own event loop thread, so tests can use the ordinary synchronous gRPC client."""

    def __init__(self, config: ServerConfig, model: ASRModel) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self.call(create_server(config, model))
        self.address = f"127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self) -> asr_pb2_grpc.RecognizerStub:
        return asr_pb2_grpc.RecognizerStub(self.channel())

    def stop(self, grace: float = 1.0) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def config(**kw: Any) -> ServerConfig:
    base: dict[str, Any] = dict(host="127.0.0.1", port=0, metrics_port=-1, beam_size=4, log_format="text")
    base.update(kw)
    return ServerConfig(**base)


@pytest.fixture(scope="module")
def model() -> ASRModel:
    return tiny_model()


@pytest.fixture(scope="module")
def server(model: ASRModel) -> Iterator[ServerThread]:
    s = ServerThread(
        config(metrics_port=0, max_streams=8, idle_timeout_s=2.0, max_stream_seconds=30.0), model
    )
    yield s
    s.stop()


def conversation(speech: list[np.ndarray]) -> np.ndarray:
    """Two utterances separated by a second of silence, with silence around them."""
    sil = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return np.concatenate([sil[: SAMPLE_RATE // 2], speech[0], sil, speech[2], sil])


def streaming_requests(
    audio: np.ndarray, sc: asr_pb2.StreamingRecognitionConfig, delay: float = 0.0
) -> Iterator[asr_pb2.StreamingRecognizeRequest]:
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=sc)
    for i in range(0, len(audio), CHUNK):
        if delay:
            time.sleep(delay)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=float_to_pcm16(audio[i : i + CHUNK]))


def stream_config(interim: bool = True, **kw: Any) -> asr_pb2.StreamingRecognitionConfig:
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE, enable_word_time_offsets=True
    )
    return asr_pb2.StreamingRecognitionConfig(config=cfg, interim_results=interim, **kw)


def seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def pcm_roundtrip(audio: np.ndarray) -> np.ndarray:
    """The samples the server sees after LINEAR16 encoding."""
    return np.frombuffer(float_to_pcm16(audio), dtype="<i2").astype(np.float32) / 32768.0


def code_of(fn: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


# -- the API -------------------------------------------------------------------------------------------------


def test_health_reflection_and_list_models(server: ServerThread, model: ASRModel) -> None:
    ch = server.channel()
    health = health_pb2_grpc.HealthStub(ch)
    for svc in ("", "asr.v1.Recognizer"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=svc)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    models = asr_pb2_grpc.RecognizerStub(ch).ListModels(asr_pb2.ListModelsRequest()).models
    assert len(models) == 1 and models[0].is_default and models[0].name == "default"
    assert models[0].sample_rate_hertz == SAMPLE_RATE and models[0].vocabulary_kind == "char"
    assert models[0].num_parameters == model.num_parameters()
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from server import probe

    assert probe.check(server.address) and not probe.check("127.0.0.1:1", timeout=0.5)

    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    answer = next(
        iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"asr.v1.Recognizer", "grpc.health.v1.Health"} <= names


def test_recognize_wav_matches_offline(server: ServerThread, model: ASRModel, speech_dir: Path) -> None:
    path = speech_dir / "utt3.wav"
    want = transcribe(model, path, DecodingOptions(beam_size=4))
    cfg = asr_pb2.RecognitionConfig(
        enable_word_time_offsets=True, enable_word_confidence=True, max_alternatives=2
    )
    resp = server.stub().Recognize(
        asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=path.read_bytes()))
    )
    assert len(resp.results) == 1 and resp.request_id and resp.model == "default"
    alts = resp.results[0].alternatives
    assert alts[0].transcript == want.text and 1 <= len(alts) <= 2
    assert [w.word for w in alts[0].words] == [w.word for w in want.words]
    for got, exp in zip(alts[0].words, want.words, strict=True):
        assert seconds(got.start_offset) == pytest.approx(exp.start, abs=1e-6)
        assert got.confidence == pytest.approx(exp.confidence, abs=1e-5)
    assert seconds(resp.total_billed_time) == pytest.approx(want.duration, abs=1e-3)


def test_recognize_raw_encodings(server: ServerThread, model: ASRModel, speech: list[np.ndarray]) -> None:
    audio8k = resample(speech[1], SAMPLE_RATE, 8000)
    pcm = float_to_pcm16(audio8k)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    want = transcribe(
        model, resample(samples, 8000, SAMPLE_RATE), DecodingOptions(beam_size=4, method="greedy")
    )
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16,
        sample_rate_hertz=8000,
        decoding=asr_pb2.DecodingConfig(method=asr_pb2.DecodingConfig.GREEDY),
    )
    resp = server.stub().Recognize(
        asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=pcm))
    )
    assert resp.results[0].alternatives[0].transcript == want.text
    stereo = np.stack([speech[1], speech[1]], axis=1).reshape(-1)
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE, audio_channel_count=2
    )
    resp = server.stub().Recognize(
        asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(stereo)))
    )
    assert seconds(resp.total_billed_time) == pytest.approx(len(speech[1]) / SAMPLE_RATE, abs=1e-3)
    ulaw = bytes(np.full(8000, 0xFF, dtype=np.uint8))  # one second of mu-law silence
    cfg = asr_pb2.RecognitionConfig(encoding=asr_pb2.MULAW, sample_rate_hertz=8000)
    resp = server.stub().Recognize(
        asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=ulaw))
    )
    assert seconds(resp.total_billed_time) == pytest.approx(1.0, abs=1e-3)


# -- streaming -----------------------------------------------------------------------------------------------


def run_stream(
    server: ServerThread, audio: np.ndarray, sc: asr_pb2.StreamingRecognitionConfig, **kw: Any
) -> list:
    return list(server.stub().StreamingRecognize(streaming_requests(audio, sc, **kw), timeout=60))


def check_finals_match_offline(
    model: ASRModel, audio: np.ndarray, responses: list, options: DecodingOptions | None = None
) -> list[asr_pb2.StreamingRecognitionResult]:
    finals = [r for resp in responses for r in resp.results if r.is_final]
    heard = pcm_roundtrip(audio)
    for f in finals:
        start, end = seconds(f.result_start_offset), seconds(f.result_end_offset)
        seg = heard[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        opts = options or DecodingOptions(beam_size=4)
        want = decode_waveforms(model, [seg], opts, offsets=[start])[0]
        assert f.alternatives[0].transcript == want.text
        assert [(w.word, round(seconds(w.start_offset), 4)) for w in f.alternatives[0].words] == [
            (w.word, round(w.start, 4)) for w in want.words
        ]
    return finals


def test_streaming_finals_match_offline_and_interims_come_first(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    audio = conversation(speech)
    responses = run_stream(server, audio, stream_config(interim_interval_ms=300), delay=0.02)  # 5x real time
    results = [(r, resp.request_id) for resp in responses for r in resp.results]
    assert len({rid for _, rid in results}) == 1
    finals = check_finals_match_offline(model, audio, responses)
    assert [f.utterance_index for f in finals] == [0, 1]  # one final per utterance, in order
    for k in (0, 1):
        mine = [r for r, _ in results if r.utterance_index == k]
        assert not mine[0].is_final and mine[-1].is_final, "interims must precede the utterance's final"
        assert all(0.0 <= r.stability < 1.0 for r in mine[:-1]) and mine[-1].stability == 1.0
    assert seconds(finals[0].result_end_offset) <= seconds(finals[1].result_start_offset) + 1e-6
    billed = [seconds(resp.total_billed_time) for resp in responses]
    assert (
        billed == sorted(billed)
        and seconds(finals[-1].result_end_offset) <= billed[-1] <= len(audio) / SAMPLE_RATE
    )


def test_test_time_augmentation_per_request_and_by_default(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    """DecodingConfig.tta_speeds decodes what the library decodes with those views, in Recognize and in
    streaming finals; a server started with tta_speeds uses its own when a request names none."""
    opts = DecodingOptions(beam_size=4, tta_speeds=(0.9, 1.1))
    audio = pcm_roundtrip(speech[1])
    want = transcribe(model, audio, opts)
    assert want.text != transcribe(model, audio, DecodingOptions(beam_size=4)).text  # the views matter here
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16,
        sample_rate_hertz=SAMPLE_RATE,
        decoding=asr_pb2.DecodingConfig(tta_speeds=[0.9, 1.1]),
    )
    req = asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(audio)))
    assert server.stub().Recognize(req, timeout=60).results[0].alternatives[0].transcript == want.text
    sc = stream_config(interim=False)
    sc.config.decoding.tta_speeds.extend([0.9, 1.1])
    conv = conversation(speech)
    finals = check_finals_match_offline(model, conv, run_stream(server, conv, sc), opts)
    assert len(finals) == 2
    with pytest.raises(AssertionError):  # and without the views they would have come out otherwise
        check_finals_match_offline(model, conv, [asr_pb2.StreamingRecognizeResponse(results=finals)])
    by_default = ServerThread(config(tta_speeds="0.9,1.1"), model)
    try:
        plain = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE)
        req = asr_pb2.RecognizeRequest(config=plain, audio=req.audio)
        assert by_default.stub().Recognize(req, timeout=60).results[0].alternatives[0].transcript == want.text
    finally:
        by_default.stop()
    with pytest.raises(ValueError, match=r"tta_speeds '0\.9,1'"):
        config(tta_speeds="0.9,1")


@pytest.mark.parametrize("fmt, subtype, encoding", [("OGG", "OPUS", "OGG_OPUS"), ("FLAC", "PCM_16", "FLAC")])
def test_streaming_encoded_containers(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray], fmt: str, subtype: str, encoding: str
) -> None:
    """An Ogg/Opus or FLAC file sent in pieces (as a browser recorder sends it) decodes as the whole file."""
    audio = conversation(speech)
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format=fmt, subtype=subtype)
    blob = buf.getvalue()
    heard = sf.read(io.BytesIO(blob), dtype="float32")[0]
    cfg = asr_pb2.RecognitionConfig(encoding=asr_pb2.AudioEncoding.Value(encoding))
    sc = asr_pb2.StreamingRecognitionConfig(config=cfg, interim_results=True, interim_interval_ms=300)
    step = max(200, len(blob) // 40)  # about 40 pieces, sent at a few times real time

    def requests() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=sc)
        for i in range(0, len(blob), step):
            time.sleep(0.03)
            yield asr_pb2.StreamingRecognizeRequest(audio_content=blob[i : i + step])

    responses = list(server.stub().StreamingRecognize(requests(), timeout=60))
    finals = [r for resp in responses for r in resp.results if r.is_final]
    assert [f.utterance_index for f in finals] == [0, 1]
    for f in finals:
        start, end = seconds(f.result_start_offset), seconds(f.result_end_offset)
        seg = heard[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        want = decode_waveforms(model, [seg], DecodingOptions(beam_size=4), offsets=[start])[0]
        assert f.alternatives[0].transcript == want.text
    if fmt == "OGG":  # Ogg pages decode as they arrive, so interims come while the stream is open
        assert any(not r.is_final for resp in responses for r in resp.results)


def test_streaming_without_interims_and_single_utterance(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    audio = conversation(speech)
    responses = run_stream(server, audio, stream_config(interim=False))
    assert all(r.is_final for resp in responses for r in resp.results)
    assert len(check_finals_match_offline(model, audio, responses)) == 2
    responses = run_stream(server, audio, stream_config(interim=False, single_utterance=True))
    events = [r.speech_event_type for r in responses]
    assert asr_pb2.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE in events
    finals = check_finals_match_offline(model, audio, responses)
    assert len(finals) == 1 and events.index(1) < [bool(r.results) for r in responses].index(True)


def test_forced_cut_at_max_segment_length(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    audio = np.concatenate([speech[3], speech[1], speech[3]])  # ~4 s of speech with short pauses
    sc = stream_config(
        interim=False, endpointing=asr_pb2.EndpointConfig(max_segment_seconds=1.5, silence_ms=2000)
    )
    finals = check_finals_match_offline(model, audio, run_stream(server, audio, sc))
    assert len(finals) >= 3
    assert all(seconds(f.result_end_offset) - seconds(f.result_start_offset) <= 1.5 + 1e-6 for f in finals)


def test_concurrent_streams(server: ServerThread, model: ASRModel, speech: list[np.ndarray]) -> None:
    audios = [np.concatenate([speech[i % 4], np.zeros(SAMPLE_RATE, np.float32)]) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(
            pool.map(
                lambda a: run_stream(server, a, stream_config(interim_interval_ms=200), delay=0.005), audios
            )
        )
    for audio, responses in zip(audios, outs, strict=True):
        finals = check_finals_match_offline(model, audio, responses)
        assert len(finals) == 1


# -- errors --------------------------------------------------------------------------------------------------


def test_invalid_arguments(server: ServerThread, speech: list[np.ndarray]) -> None:
    stub = server.stub()
    pcm = float_to_pcm16(speech[0])
    audio_msg = asr_pb2.StreamingRecognizeRequest(audio_content=pcm[:3200])
    config_msg = asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config())
    bad_streams = {
        "audio before config": [audio_msg],
        "config twice": [config_msg, audio_msg, config_msg],
        "no messages": [],
        "no sample rate": [
            asr_pb2.StreamingRecognizeRequest(
                streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16)
                )
            )
        ],
        "unknown encoding": [
            asr_pb2.StreamingRecognizeRequest(
                streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=asr_pb2.RecognitionConfig(encoding=99, sample_rate_hertz=16000)
                )
            )
        ],
        "garbage in an Ogg/Opus stream": [
            asr_pb2.StreamingRecognizeRequest(
                streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=asr_pb2.RecognitionConfig(encoding=asr_pb2.OGG_OPUS)
                )
            ),
            *[asr_pb2.StreamingRecognizeRequest(audio_content=bytes(range(256)) * 40) for _ in range(8)],
        ],
        "beam too wide": [
            asr_pb2.StreamingRecognizeRequest(
                streaming_config=asr_pb2.StreamingRecognitionConfig(
                    config=asr_pb2.RecognitionConfig(
                        encoding=asr_pb2.LINEAR16,
                        sample_rate_hertz=16000,
                        decoding=asr_pb2.DecodingConfig(beam_size=1000),
                    )
                )
            )
        ],
        "silence out of range": [
            asr_pb2.StreamingRecognizeRequest(
                streaming_config=stream_config(endpointing=asr_pb2.EndpointConfig(silence_ms=5))
            )
        ],
    }
    for name, msgs in bad_streams.items():
        code = code_of(lambda msgs=msgs: list(stub.StreamingRecognize(iter(msgs), timeout=10)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
    bad_unary = {
        "undecodable": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(),
            audio=asr_pb2.RecognitionAudio(content=b"not audio at all" * 100),
        ),
        "empty": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(), audio=asr_pb2.RecognitionAudio()
        ),
        "no config": asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=pcm)),
        "unknown model": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(
                encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000, model="nope"
            ),
            audio=asr_pb2.RecognitionAudio(content=pcm),
        ),
        "ctc weight": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(
                encoding=asr_pb2.LINEAR16,
                sample_rate_hertz=16000,
                decoding=asr_pb2.DecodingConfig(ctc_weight=2.0),
            ),
            audio=asr_pb2.RecognitionAudio(content=pcm),
        ),
        "tta speed 1.0": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(
                encoding=asr_pb2.LINEAR16,
                sample_rate_hertz=16000,
                decoding=asr_pb2.DecodingConfig(tta_speeds=[1.0]),
            ),
            audio=asr_pb2.RecognitionAudio(content=pcm),
        ),
        "too many tta speeds": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(
                encoding=asr_pb2.LINEAR16,
                sample_rate_hertz=16000,
                decoding=asr_pb2.DecodingConfig(tta_speeds=[0.6, 0.7, 0.8, 0.9, 1.1]),
            ),
            audio=asr_pb2.RecognitionAudio(content=pcm),
        ),
        "odd bytes": asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000),
            audio=asr_pb2.RecognitionAudio(content=b"\x01"),
        ),
    }
    for name, req in bad_unary.items():
        assert code_of(lambda req=req: stub.Recognize(req, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT, (
            name
        )
    assert_still_serving(server, speech)


def assert_still_serving(server: ServerThread, speech: list[np.ndarray]) -> None:
    cfg = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE)
    req = asr_pb2.RecognizeRequest(
        config=cfg, audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(speech[0]))
    )
    assert len(server.stub().Recognize(req, timeout=30).results) == 1
    deadline = time.time() + 5
    while server.server.service.active_streams and time.time() < deadline:
        time.sleep(0.02)
    assert server.server.service.active_streams == 0, "a stream slot leaked"


def test_limits_idle_deadline_cancel(server: ServerThread, speech: list[np.ndarray]) -> None:
    stub = server.stub()
    big = asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(), audio=asr_pb2.RecognitionAudio(content=b"\0" * (5 * 1024 * 1024))
    )
    assert code_of(lambda: stub.Recognize(big, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED

    def idle() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config())
        time.sleep(4)  # the server's idle timeout is 2 s

    assert (
        code_of(lambda: list(stub.StreamingRecognize(idle(), timeout=20)))
        == grpc.StatusCode.DEADLINE_EXCEEDED
    )

    long_audio = np.zeros(31 * SAMPLE_RATE, dtype=np.float32)  # the limit is 30 s
    code = code_of(lambda: run_stream(server, long_audio, stream_config()))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    def slow() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield from streaming_requests(speech[0], stream_config(), delay=0.3)

    code = code_of(lambda: list(stub.StreamingRecognize(slow(), timeout=0.5)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.StreamingRecognize(slow(), timeout=30)
    time.sleep(0.3)
    call.cancel()
    assert code_of(lambda: list(call)) == grpc.StatusCode.CANCELLED
    assert_still_serving(server, speech)


def test_too_many_streams(model: ASRModel, speech: list[np.ndarray]) -> None:
    srv = ServerThread(config(max_streams=1, warmup=False), model)
    try:
        stub = srv.stub()
        gate = threading.Event()

        def held() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
            yield asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config())
            gate.wait(10)

        first = stub.StreamingRecognize(held(), timeout=20)
        deadline = time.time() + 5
        while srv.server.service.active_streams < 1 and time.time() < deadline:
            time.sleep(0.01)
        assert (
            code_of(lambda: run_stream(srv, speech[0], stream_config())) == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        gate.set()
        assert list(first) == []  # silence only: no results, OK status
        assert len(run_stream(srv, speech[0], stream_config(interim=False))) == 1
    finally:
        srv.stop()


def test_early_finals_are_a_server_setting(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    """By default a final ends final_tail_ms (300 ms) after the speech; with the tail as long as the
    endpoint silence (800 ms) the server decodes finals only after the endpoint, as before."""
    sil = np.zeros(2 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([sil[: SAMPLE_RATE // 2], speech[0], sil])

    def final_end(srv: ServerThread) -> float:
        responses = run_stream(srv, audio, stream_config(interim=False))
        (final,) = check_finals_match_offline(model, audio, responses)
        return seconds(final.result_end_offset)

    late = ServerThread(config(final_tail_ms=800, warmup=False), model)
    try:
        assert final_end(late) - final_end(server) == pytest.approx(0.5, abs=0.001)
    finally:
        late.stop()
    with pytest.raises(ValueError, match="final_tail_ms"):
        ServerConfig(final_tail_ms=0)


def test_bad_stream_does_not_affect_others(
    server: ServerThread, model: ASRModel, speech: list[np.ndarray]
) -> None:
    audio = np.concatenate([speech[0], np.zeros(SAMPLE_RATE, np.float32)])

    def bad() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield from streaming_requests(speech[1][: SAMPLE_RATE // 2], stream_config())
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config())  # config after audio

    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(run_stream, server, audio, stream_config(), delay=0.01)
        badf = pool.submit(lambda: code_of(lambda: list(server.stub().StreamingRecognize(bad(), timeout=20))))
        assert badf.result() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(check_finals_match_offline(model, audio, good.result())) == 1


# -- security ------------------------------------------------------------------------------------------------


def test_bearer_token(model: ASRModel, speech: list[np.ndarray]) -> None:
    srv = ServerThread(config(token="s3cret,other", warmup=False), model)
    try:
        stub = srv.stub()
        req = asr_pb2.ListModelsRequest()
        assert code_of(lambda: stub.ListModels(req)) == grpc.StatusCode.UNAUTHENTICATED
        bad = (("authorization", "Bearer wrong"),)
        assert code_of(lambda: stub.ListModels(req, metadata=bad)) == grpc.StatusCode.UNAUTHENTICATED
        code = code_of(lambda: run_stream(srv, speech[0], stream_config()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListModels(req, metadata=(("authorization", "Bearer s3cret"),)).models
        assert stub.ListModels(req, metadata=(("authorization", "bearer other"),)).models
        health = health_pb2_grpc.HealthStub(srv.channel())  # exempt: probes need no token
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, with the openssl CLI."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        )
    return {k: d / k for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls_and_mutual_tls(model: ASRModel, tmp_path: Path) -> None:
    c = make_certs(tmp_path)
    ca = c["ca.pem"].read_bytes()
    srv = ServerThread(
        config(tls_cert=str(c["server.pem"]), tls_key=str(c["server.key"]), warmup=False), model
    )
    try:
        ch = grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(root_certificates=ca))
        assert asr_pb2_grpc.RecognizerStub(ch).ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
        plain = srv.stub()  # plaintext to a TLS port fails
        assert (
            code_of(lambda: plain.ListModels(asr_pb2.ListModelsRequest(), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    finally:
        srv.stop()
    srv = ServerThread(
        config(
            tls_cert=str(c["server.pem"]),
            tls_key=str(c["server.key"]),
            tls_client_ca=str(c["ca.pem"]),
            warmup=False,
        ),
        model,
    )
    try:
        creds = grpc.ssl_channel_credentials(ca, c["client.key"].read_bytes(), c["client.pem"].read_bytes())
        stub = asr_pb2_grpc.RecognizerStub(grpc.secure_channel(srv.address, creds))
        assert stub.ListModels(asr_pb2.ListModelsRequest(), timeout=10).models
        anon = asr_pb2_grpc.RecognizerStub(grpc.secure_channel(srv.address, grpc.ssl_channel_credentials(ca)))
        assert (
            code_of(lambda: anon.ListModels(asr_pb2.ListModelsRequest(), timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    finally:
        srv.stop()


# -- operations ----------------------------------------------------------------------------------------------


def test_metrics_endpoint(server: ServerThread, speech: list[np.ndarray]) -> None:
    assert_still_serving(server, speech)
    run_stream(server, conversation(speech), stream_config(interim=False))  # two utterances, early finals
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sent = re.search(r'^asr_early_finals_total\{outcome="sent"\} (\S+)$', text, re.M)
    assert sent is not None and float(sent.group(1)) >= 2
    assert 'asr_requests_total{code="OK",method="Recognize"}' in text
    for name in (
        "asr_active_streams",
        "asr_audio_seconds_total",
        "asr_batch_size_bucket",
        "asr_request_latency",
    ):
        assert name in text


def test_shutdown_drains_in_flight_calls(model: ASRModel, speech: list[np.ndarray]) -> None:
    srv = ServerThread(config(warmup=False), model)
    stub = srv.stub()
    audio = np.concatenate([speech[0], np.zeros(SAMPLE_RATE, np.float32)])
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(run_stream, srv, audio, stream_config(interim=False), delay=0.02)
        deadline = time.time() + 5
        while srv.server.service.active_streams < 1 and time.time() < deadline:
            time.sleep(0.01)
        srv.stop(grace=10)  # returns once the stream finished
        assert len(fut.result(timeout=1)) == 1, "the in-flight stream finished within the grace period"
    assert (
        code_of(lambda: stub.ListModels(asr_pb2.ListModelsRequest(), timeout=2))
        == grpc.StatusCode.UNAVAILABLE
    )


def test_serve_command_sigterm(model: ASRModel, tmp_path: Path, speech: list[np.ndarray]) -> None:
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(model, ckpt)
    env = {
        **os.environ,
        "ASR_MODEL": str(ckpt),
        "ASR_PORT": "0",
        "ASR_METRICS_PORT": "-1",
        "ASR_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--beam-size", "2"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("msg") == "serving":
                port = rec["port"]
                break
        assert port, "the server never logged 'serving'"
        stub = asr_pb2_grpc.RecognizerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.ListModels(asr_pb2.ListModelsRequest(), timeout=10).models[0].name == "tiny"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_command_without_model_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "ASR_MODELS_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--model", str(tmp_path / "missing.pt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "missing.pt" in done.stderr and "--model" in done.stderr


def test_config_from_env() -> None:
    c = ServerConfig.from_env(
        {"ASR_PORT": "1234", "ASR_TOKEN": "a, b", "ASR_WARMUP": "false"}, port=None, beam_size=2
    )
    assert c.port == 1234 and c.tokens == ("a", "b") and c.warmup is False and c.beam_size == 2
    with pytest.raises(ValueError, match="ASR_PORT"):
        ServerConfig.from_env({"ASR_PORT": "many"})
    loud = ServerConfig.from_env({"ASR_BLANK_QUIET_MS": "0", "ASR_BLANK_MS": "160"})
    endpoint = default_stream_options(loud).endpoint
    assert endpoint.blank_ms == 160 and endpoint.blank_quiet_ms == 0
    assert default_stream_options(ServerConfig()).endpoint.blank_quiet_ms == EndpointConfig.blank_quiet_ms
    with pytest.raises(ValueError, match="tls_key"):
        ServerConfig(tls_cert="x.pem")
