"""A streaming (chunked-encoder) model beside an offline one in one real server on 127.0.0.1:
StreamingRecognize gets partials while its audio is still coming and finals equal to the library's, Recognize
works, bad input gets the right status."""

from __future__ import annotations

import asyncio
import difflib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import tiny_model
from prometheus_client import generate_latest
from test_online import OPTS, chunked, feed
from test_server import CHUNK, code_of, config, pcm_roundtrip, seconds, stream_config

from asr import Transcriber, load_model
from asr.audio import SAMPLE_RATE, float_to_pcm16, load_audio
from asr.online import OnlineRecognizer
from asr.transcribe import transcribe
from asr_grpc import asr_pb2, asr_pb2_grpc
from client.convert import streaming_config
from client.types import StreamingConfig
from server.app import create_server


class Served:
    """A server with two models (``offline``, the default, and ``streaming``) on its own event loop thread."""

    def __init__(self, models: dict[str, Any], **changes: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = config(beam_size=4, idle_timeout_s=5.0, **changes)
        self.server, port = asyncio.run_coroutine_threadsafe(
            create_server(cfg, models=models), self.loop
        ).result(120)
        self.stub = asr_pb2_grpc.RecognizerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def streaming_model() -> Transcriber:
    return chunked(load_model("streaming", device="cpu"))


@pytest.fixture(scope="module")
def served(streaming_model: Transcriber) -> Iterator[Served]:
    s = Served({"offline": tiny_model(), "streaming": streaming_model})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def audio(speech_dir: Path) -> np.ndarray:
    sil = np.zeros(SAMPLE_RATE, dtype=np.float32)
    speech = [load_audio(speech_dir / f"utt{i}.wav") for i in (3, 2)]
    return pcm_roundtrip(np.concatenate([sil[: SAMPLE_RATE // 2], speech[0], sil, sil, speech[1], sil]))


def paced(audio: np.ndarray, sc: Any, sent: list[float], delay: float) -> Iterator[Any]:
    """The config, then 100 ms messages every ``delay`` s; ``sent`` gets the time the audio ended."""
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=sc)
    for i in range(0, len(audio), CHUNK):
        time.sleep(delay)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=float_to_pcm16(audio[i : i + CHUNK]))
    sent.append(time.monotonic())


def test_list_models_marks_the_streaming_model(served: Served) -> None:
    models = {m.name: m for m in served.stub.ListModels(asr_pb2.ListModelsRequest()).models}
    assert models["streaming"].streaming and not models["offline"].streaming
    assert models["offline"].is_default


def test_stream_gets_partials_before_its_audio_ends_then_finals(
    served: Served, streaming_model: Transcriber, audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partials while the audio comes, finals as the library gives them, each final's beam search mostly
    done before its endpoint (the finals thread grew it while idle)."""
    sc = stream_config(interim=True)
    sc.config.model = "streaming"
    sent: list[float] = []
    arrivals = []
    ahead: list[tuple[int, int]] = []  # each final's search steps before its endpoint, and in all
    grown = OnlineRecognizer._grown

    def spy(self: OnlineRecognizer, c: Any, options: Any) -> Any:
        before = c.search.search.steps if c.search is not None else 0
        out = grown(self, c, options)
        ahead.append((before, c.search.search.steps if c.search is not None else 0))
        return out

    monkeypatch.setattr(OnlineRecognizer, "_grown", spy)
    for resp in served.stub.StreamingRecognize(paced(audio, sc, sent, delay=0.06)):
        arrivals += [(time.monotonic(), r) for r in resp.results]
    monkeypatch.undo()
    assert len(ahead) == 2 and all(total > 0 and before >= total // 2 for before, total in ahead), ahead
    scraped = generate_latest(served.server.metrics.registry).decode()
    grown = re.search(r'asr_stream_finals_total\{model="streaming",search="grown"\} ([\d.]+)', scraped)
    assert grown is not None and float(grown.group(1)) >= 2, scraped
    end = sent[0]
    partials = [r for t, r in arrivals if not r.is_final and t < end]
    assert len(partials) >= 4  # partials while the audio was still being sent
    finals = [r for _, r in arrivals if r.is_final]
    rec = OnlineRecognizer(streaming_model)
    want = [r for _, r in feed(rec, rec.create_stream(OPTS), audio) if r.is_final]
    # The same utterances, cut in the same places; the words themselves may differ where the beam search
    # prunes between near-equal hypotheses (features computed over differently grouped messages differ in the
    # last float bits: "THANK YOU VERY MUCH" against "... MOUT"). The words both have start at the same
    # times (within 2 encoder frames, from forced alignments of transcripts that may differ by a word).
    for f, w in zip(finals, want, strict=True):
        assert difflib.SequenceMatcher(None, f.alternatives[0].transcript, w.text).ratio() > 0.8
        got = [(x.word, seconds(x.start_offset)) for x in f.alternatives[0].words]
        matcher = difflib.SequenceMatcher(None, [x for x, _ in got], [x.word for x in w.words])
        for a, b, n in matcher.get_matching_blocks():
            assert all(abs(got[a + i][1] - w.words[b + i].start) <= 0.081 for i in range(n)), (got, w.words)
    assert [f.utterance_index for f in finals] == [0, 1]
    assert finals[0].alternatives[0].words  # word times asked for and given
    assert any(t < end for t, r in arrivals if r.is_final)  # the first final came before the audio ended


def test_recognize_on_the_streaming_model_equals_transcribe(
    served: Served, streaming_model: Transcriber, audio: np.ndarray
) -> None:
    cfg = asr_pb2.RecognitionConfig(
        encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE, model="streaming"
    )
    seg = audio[: 3 * SAMPLE_RATE]
    resp = served.stub.Recognize(
        asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(seg)))
    )
    assert resp.model == "streaming"
    assert resp.results[0].alternatives[0].transcript == transcribe(streaming_model, seg, OPTS.decoding).text


def test_bad_streaming_input_gets_invalid_argument(served: Served, audio: np.ndarray) -> None:
    sc = stream_config()
    sc.config.model = "streaming"
    sc.endpointing.blank_ms = -5
    reqs = [asr_pb2.StreamingRecognizeRequest(streaming_config=sc)]
    assert (
        code_of(lambda: list(served.stub.StreamingRecognize(iter(reqs)))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    sc.endpointing.blank_ms = 0  # 0 is allowed: the energy rule only
    sc.config.model = "nonesuch"
    reqs = [asr_pb2.StreamingRecognizeRequest(streaming_config=sc)]
    assert (
        code_of(lambda: list(served.stub.StreamingRecognize(iter(reqs)))) == grpc.StatusCode.INVALID_ARGUMENT
    )
    audio_first = [asr_pb2.StreamingRecognizeRequest(audio_content=float_to_pcm16(audio[:CHUNK]))]
    assert (
        code_of(lambda: list(served.stub.StreamingRecognize(iter(audio_first))))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_the_bundled_models_serve_together_from_disk() -> None:
    """``make serve`` (``--model default,streaming``): both bundled checkpoints load by name, the streaming
    one is chunked (its chunk and look-ahead in its checkpoint), within the 25 MB a bundled model may take."""
    from asr.checkpoint import resolve_model_path
    from server.app import _models_to_serve
    from server.config import ServerConfig

    assert resolve_model_path("streaming").stat().st_size < 25_000_000
    models = _models_to_serve(ServerConfig(model="default,streaming"), None, None)
    assert list(models) == ["default", "streaming"]
    assert not models["default"].config.encoder.streaming
    enc = models["streaming"].config.encoder
    assert (enc.chunk_frames, enc.lookahead_frames) == (4, 2)
    assert enc.frontend == "whisper" and models["streaming"].config.features.kind == "whisper-causal"
    rechunked = _models_to_serve(ServerConfig(model="default,streaming", chunk_ms=80), None, None)
    enc = rechunked["streaming"].config.encoder
    assert (enc.chunk_frames, enc.lookahead_frames) == (2, 2)  # --chunk-ms: the streaming model's only
    assert rechunked["default"].config.encoder == models["default"].config.encoder
    with pytest.raises(ValueError, match=r"chunk_ms must be a positive multiple of the encoder's 40 ms"):
        _models_to_serve(ServerConfig(model="streaming", chunk_ms=100), None, None)
    with pytest.raises(ValueError, match=r"chunk_ms must be >= 0"):
        ServerConfig(chunk_ms=-40)
    early = _models_to_serve(ServerConfig(model="default,streaming", early_lookahead="on"), None, None)
    assert early["streaming"].config.encoder.early_lookahead
    assert early["default"].config.encoder == models["default"].config.encoder
    auto = _models_to_serve(ServerConfig(model="streaming", early_lookahead="auto"), None, None)["streaming"]
    assert auto.config.encoder.early_lookahead and auto.config.encoder.lookahead_block_when_arrived
    late = _models_to_serve(ServerConfig(model="streaming", early_lookahead="off"), None, None)["streaming"]
    assert not late.config.encoder.early_lookahead and not late.config.encoder.lookahead_block_when_arrived
    with pytest.raises(ValueError, match=r"--early-lookahead applies to streaming models over a Whisper"):
        _models_to_serve(ServerConfig(model="default", early_lookahead="on"), None, None)
    with pytest.raises(ValueError, match=r"early_lookahead must be on, off, auto or empty"):
        ServerConfig(early_lookahead="yes")


def test_a_request_chooses_whole_or_growing_finals(
    served: Served, audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``growing_finals`` false in the request: its finals are searched whole at their endpoints (the
    metric counts them so), whatever the server's default; the SDK and the CLI send it only when set."""

    def counts() -> dict[str, float]:
        scraped = generate_latest(served.server.metrics.registry).decode()
        pattern = r'asr_stream_finals_total\{model="streaming",search="(\w+)"\} ([\d.]+)'
        return {k: float(v) for k, v in re.findall(pattern, scraped)}

    before = counts()
    sc = stream_config(interim=False)
    sc.config.model = "streaming"
    sc.growing_finals = False
    finals = [
        r for resp in served.stub.StreamingRecognize(paced(audio, sc, [], delay=0.0)) for r in resp.results
    ]
    after = counts()
    assert len(finals) == 2 and finals[0].alternatives[0].transcript
    assert after["whole"] - before["whole"] == 2 and after["grown"] == before["grown"]
    unset = streaming_config(StreamingConfig(), 16000).streaming_config
    assert not unset.HasField("growing_finals")
    chosen = streaming_config(StreamingConfig(growing_finals=False), 16000).streaming_config
    assert chosen.HasField("growing_finals") and not chosen.growing_finals


def test_streaming_finals_from_a_second_model(streaming_model: Transcriber, audio: np.ndarray) -> None:
    """``--streaming-finals offline``: the streaming model's partials and endpoints, each final decoded from
    its utterance's audio by the offline model (here the bundled default; counted as second-pass finals,
    within a roomy ``--second-pass-budget-ms``); a name the server does not serve is refused at start-up."""
    offline = load_model("default", device="cpu")
    models = {"offline": offline, "streaming": streaming_model}
    served = Served(models, streaming_finals="offline", second_pass_budget_ms=60_000)
    try:
        recognizer = served.server.service.models["streaming"].recognizer
        assert recognizer.config.second_pass_budget_ms == 60_000  # --second-pass-budget-ms reaches it
        sc = stream_config(interim=True)
        sc.config.model = "streaming"
        sent: list[float] = []
        results = [
            r for resp in served.stub.StreamingRecognize(paced(audio, sc, sent, 0.0)) for r in resp.results
        ]
        scraped = generate_latest(served.server.metrics.registry).decode()
    finally:
        served.stop()
    finals = [r for r in results if r.is_final]
    assert len(finals) == 2 and any(not r.is_final for r in results)
    for f in finals:
        lo, hi = (
            round(seconds(f.result_start_offset) * SAMPLE_RATE),
            round(seconds(f.result_end_offset) * SAMPLE_RATE),
        )
        assert f.alternatives[0].transcript == transcribe(offline, audio[lo:hi], OPTS.decoding).text
    second = re.search(r'asr_stream_finals_total\{model="streaming",search="second_pass"\} ([\d.]+)', scraped)
    assert second is not None and float(second.group(1)) == 2, scraped
    with pytest.raises(ValueError, match="'nonesuch' is not a served model"):
        Served({"offline": offline, "streaming": streaming_model}, streaming_finals="nonesuch")
