"""Faults and bad input through the real server on loopback (tiny random-weight model).

Complements ``test_server.py`` (audio before config, config after audio, a stream with no messages, idle and
expired deadlines, a cancel, the stream duration cap, too many streams, an oversized Recognize message): here
the client vanishes mid-stream (a killed process, a closed channel, a torn HTTP/2 frame), slow senders,
unknown encodings, random bytes as audio, an oversized stream message, many cancels and deadlines at once.
After each the server must hold no stream slot, no extra file descriptors, and still answer.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from client_support import ServerThread, tiny_checkpoint

import asr
from asr.audio import SAMPLE_RATE, float_to_pcm16
from asr_grpc import asr_pb2, asr_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CHUNK = SAMPLE_RATE // 10  # 100 ms
IDLE_S = 1.5


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> asr.ASRModel:
    return asr.load_model(tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt"), device="cpu")


@pytest.fixture(scope="module")
def server(model: asr.ASRModel) -> Iterator[ServerThread]:
    with ServerThread(
        model,
        max_streams=16,
        idle_timeout_s=IDLE_S,
        max_stream_seconds=20.0,
        max_message_bytes=1024 * 1024,
        beam_size=2,
    ) as srv:
        yield srv


@pytest.fixture
def stub(server: ServerThread) -> Iterator[asr_pb2_grpc.RecognizerStub]:
    channel = grpc.insecure_channel(server.target)
    yield asr_pb2_grpc.RecognizerStub(channel)
    channel.close()


def speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A loud chirp with quiet around it: enough for the VAD to open and close a segment."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voiced = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    quiet = np.zeros(SAMPLE_RATE // 2)
    audio = np.concatenate([quiet, voiced, quiet, quiet])
    return (audio + 0.001 * rng.standard_normal(audio.size)).astype(np.float32)


def stream_config(
    encoding: Any = asr_pb2.LINEAR16, rate: int = SAMPLE_RATE
) -> asr_pb2.StreamingRecognitionConfig:
    cfg = asr_pb2.RecognitionConfig(encoding=encoding, sample_rate_hertz=rate)
    return asr_pb2.StreamingRecognitionConfig(config=cfg, interim_results=True)


def requests(
    chunks: list[bytes], sc: asr_pb2.StreamingRecognitionConfig | None = None, delay: float = 0.0
) -> Iterator[asr_pb2.StreamingRecognizeRequest]:
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=sc or stream_config())
    for c in chunks:
        if delay:
            time.sleep(delay)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=c)


def pcm_chunks(audio: np.ndarray) -> list[bytes]:
    return [float_to_pcm16(audio[i : i + CHUNK]) for i in range(0, len(audio), CHUNK)]


def status(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_idle(server: ServerThread, timeout: float = 10.0) -> None:
    service = server._server.service
    deadline = time.time() + timeout
    while service.active_streams and time.time() < deadline:
        time.sleep(0.02)
    assert service.active_streams == 0, f"{service.active_streams} stream slot(s) leaked"


def assert_serving(server: ServerThread) -> None:
    """Stream slots all free, and a stream and a Recognize call still get results."""
    wait_idle(server)
    with grpc.insecure_channel(server.target) as ch:
        stub = asr_pb2_grpc.RecognizerStub(ch)
        responses = list(stub.StreamingRecognize(requests(pcm_chunks(speech())), timeout=30))
        assert any(r.is_final for resp in responses for r in resp.results), "no final from a good stream"
        req = asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE),
            audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(speech())),
        )
        assert stub.Recognize(req, timeout=30).request_id
    wait_idle(server)


def wait_for_streams(server: ServerThread, n: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while server._server.service.active_streams < n and time.time() < deadline:
        time.sleep(0.01)
    assert server._server.service.active_streams >= n


# -- the client goes away ------------------------------------------------------------------------------------

KILLED_CLIENT = """
import sys, time, grpc
sys.path.insert(0, {root!r})
from asr_grpc import asr_pb2, asr_pb2_grpc
def reqs():
    cfg = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000)
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(config=cfg))
    while True:
        yield asr_pb2.StreamingRecognizeRequest(audio_content=b"\\x10\\x20" * 1600)
        time.sleep(0.1)
for _ in asr_pb2_grpc.RecognizerStub(grpc.insecure_channel({target!r})).StreamingRecognize(reqs()):
    pass
"""


def test_killed_client_frees_its_stream(server: ServerThread) -> None:
    wait_idle(server)
    fds = open_fds()
    procs = [
        subprocess.Popen([sys.executable, "-c", KILLED_CLIENT.format(root=str(ROOT), target=server.target)])
        for _ in range(3)
    ]
    try:
        wait_for_streams(server, 3, timeout=30)
    finally:
        for p in procs:
            p.kill()  # SIGKILL mid-stream: no goodbye, the kernel closes the socket
            p.wait(10)
    assert_serving(server)
    assert open_fds() <= fds + 2


def test_closed_channel_mid_stream(server: ServerThread) -> None:
    fds = open_fds()
    for _ in range(5):
        channel = grpc.insecure_channel(server.target)
        call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
            requests(pcm_chunks(speech(3.0)), delay=0.05), timeout=30
        )
        wait_for_streams(server, 1)
        channel.close()  # the caller drops the connection without cancelling first
        assert status(lambda call=call: list(call)) == grpc.StatusCode.CANCELLED
    assert_serving(server)
    assert open_fds() <= fds + 2


def _h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def _hpack_literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, plain (non-Huffman) strings under 127 bytes."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def torn_stream(target: str, end_stream: bool) -> None:
    """A hand-made HTTP/2 client: a valid config message, then a gRPC frame whose length prefix promises
    1000 bytes of which only 10 arrive; then either the connection drops or the client half-closes."""
    host, port = target.rsplit(":", 1)
    headers = b"".join(
        _hpack_literal(k, v)
        for k, v in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/asr.v1.Recognizer/StreamingRecognize"),
            (":authority", target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    config = asr_pb2.StreamingRecognizeRequest(streaming_config=stream_config()).SerializeToString()
    data = b"\0" + struct.pack(">I", len(config)) + config + b"\0" + struct.pack(">I", 1000) + b"x" * 10
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b""))
        s.sendall(_h2_frame(1, 0x4, 1, headers))  # HEADERS, END_HEADERS
        s.sendall(_h2_frame(0, 0x1 if end_stream else 0, 1, data))  # DATA (END_STREAM when half-closing)
        if end_stream:  # the server must end the call: trailers (HEADERS + END_STREAM) or RST_STREAM
            assert _call_ended(s, stream_id=1), "the server never ended the torn call"
        else:
            time.sleep(0.3)


def _call_ended(s: socket.socket, stream_id: int) -> bool:
    buf = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return False
            buf += data
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                if sid == stream_id and (kind == 3 or (kind in (0, 1) and flags & 0x1)):
                    return True
                buf = buf[9 + length :]
    except TimeoutError:
        return False


@pytest.mark.parametrize("end_stream", [False, True], ids=["connection-dropped", "half-closed"])
def test_half_sent_message(server: ServerThread, end_stream: bool) -> None:
    fds = open_fds()
    for _ in range(3):
        torn_stream(server.target, end_stream)
    assert_serving(server)
    assert open_fds() <= fds + 2


# -- slow senders, deadlines, cancels ------------------------------------------------------------------------


def test_slow_sender_within_idle_timeout_is_served(
    server: ServerThread, stub: asr_pb2_grpc.RecognizerStub
) -> None:
    """Messages 0.4 s apart (slower than real time, under the 1.5 s idle timeout) still get a final."""
    audio = speech(0.8)
    chunks = [float_to_pcm16(audio[i : i + 4 * CHUNK]) for i in range(0, len(audio), 4 * CHUNK)]
    responses = list(stub.StreamingRecognize(requests(chunks, delay=0.4), timeout=30))
    assert any(r.is_final for resp in responses for r in resp.results)


def test_many_cancels_and_deadlines_at_once(server: ServerThread, stub: asr_pb2_grpc.RecognizerStub) -> None:
    wait_idle(server)
    fds = open_fds()
    audio = pcm_chunks(speech(3.0))
    calls = [stub.StreamingRecognize(requests(audio, delay=0.05), timeout=30) for _ in range(6)]
    short = [stub.StreamingRecognize(requests(audio, delay=0.05), timeout=0.3 + 0.1 * i) for i in range(4)]
    expired = stub.StreamingRecognize(requests(audio), timeout=0.0001)  # past its deadline at once
    wait_for_streams(server, 1)
    for k, c in enumerate(calls):
        time.sleep(0.05 * k)
        c.cancel()
    codes = [status(lambda c=c: list(c)) for c in calls]
    assert codes == [grpc.StatusCode.CANCELLED] * len(calls)
    assert [status(lambda c=c: list(c)) for c in short] == [grpc.StatusCode.DEADLINE_EXCEEDED] * len(short)
    assert status(lambda: list(expired)) == grpc.StatusCode.DEADLINE_EXCEEDED
    expired_unary = asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE),
        audio=asr_pb2.RecognitionAudio(content=float_to_pcm16(speech(5.0))),
    )
    assert status(lambda: stub.Recognize(expired_unary, timeout=0.0001)) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_serving(server)
    assert open_fds() <= fds + 2


def test_burst_past_max_streams(model: asr.ASRModel) -> None:
    """12 streams at once against a limit of 4: the excess get RESOURCE_EXHAUSTED, the rest finish."""
    with ServerThread(model, max_streams=4, beam_size=2) as srv:
        gate = threading.Event()
        audio = pcm_chunks(speech(0.5))

        def held() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
            yield from requests(audio)
            gate.wait(20)

        with grpc.insecure_channel(srv.target) as ch:
            stub = asr_pb2_grpc.RecognizerStub(ch)
            calls = [stub.StreamingRecognize(held(), timeout=30) for _ in range(4)]
            wait_for_streams(srv, 4)
            extra = [stub.StreamingRecognize(requests(audio), timeout=30) for _ in range(8)]
            assert {status(lambda c=c: list(c)) for c in extra} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            gate.set()
            assert {status(lambda c=c: list(c)) for c in calls} == {grpc.StatusCode.OK}
        assert_serving(srv)


# -- bad input -----------------------------------------------------------------------------------------------


def test_unknown_encodings_are_invalid_argument(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    for enc in (99, 12345):
        sc = stream_config(encoding=enc)
        assert status(lambda sc=sc: list(stub.StreamingRecognize(requests([b"\0\0"], sc), timeout=10))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        req = asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(encoding=cast(Any, enc), sample_rate_hertz=SAMPLE_RATE),
            audio=asr_pb2.RecognitionAudio(content=b"\0\0" * 1600),
        )
        assert status(lambda req=req: stub.Recognize(req, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert_serving(server)


def test_random_bytes_as_audio(stub: asr_pb2_grpc.RecognizerStub, server: ServerThread) -> None:
    rng = np.random.default_rng(1)
    noise = [rng.bytes(int(n)) for n in rng.integers(1, 4000, 20)]  # odd lengths split samples across chunks
    for enc, rate in ((asr_pb2.LINEAR16, 16000), (asr_pb2.MULAW, 8000), (asr_pb2.LINEAR16, 44100)):
        call = stub.StreamingRecognize(requests(noise, stream_config(enc, rate)), timeout=30)
        assert status(lambda call=call: list(call)) == grpc.StatusCode.OK  # raw PCM: any bytes are samples
    for enc in (asr_pb2.ENCODING_UNSPECIFIED, asr_pb2.WAV, asr_pb2.FLAC, asr_pb2.OGG_OPUS, asr_pb2.MP3):
        for blob in (
            rng.bytes(3000),
            b"RIFF" + rng.bytes(3000),
            b"fLaC" + rng.bytes(3000),
            b"OggS" + rng.bytes(300),
        ):
            req = asr_pb2.RecognizeRequest(
                config=asr_pb2.RecognitionConfig(encoding=enc), audio=asr_pb2.RecognitionAudio(content=blob)
            )
            code = status(lambda req=req: stub.Recognize(req, timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (enc, blob[:4])
    assert_serving(server)


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8001])
def test_nan_samples_in_a_float_wav(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread, rate: int
) -> None:
    import io

    import soundfile as sf

    wave = (np.random.default_rng(2).standard_normal(rate) * 0.1).astype(np.float32)
    wave[rate // 2] = np.nan
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    blob = buf.getvalue()
    chunks = [blob[i : i + 4000] for i in range(0, len(blob), 4000)]
    call = stub.StreamingRecognize(requests(chunks, stream_config(asr_pb2.WAV, 0)), timeout=30)
    assert status(lambda: list(call)) == grpc.StatusCode.INVALID_ARGUMENT
    req = asr_pb2.RecognizeRequest(
        config=asr_pb2.RecognitionConfig(encoding=asr_pb2.WAV), audio=asr_pb2.RecognitionAudio(content=blob)
    )
    assert status(lambda: stub.Recognize(req, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert_serving(server)


def test_config_only_stream_ends_ok_without_results(stub: asr_pb2_grpc.RecognizerStub) -> None:
    assert list(stub.StreamingRecognize(requests([]), timeout=10)) == []
    assert list(stub.StreamingRecognize(requests([b""] * 3), timeout=10)) == []  # empty audio messages


def test_oversized_stream_message(stub: asr_pb2_grpc.RecognizerStub, server: ServerThread) -> None:
    big = b"\0" * (2 * 1024 * 1024)  # the server's limit is 1 MiB per message
    assert status(lambda: list(stub.StreamingRecognize(requests([big]), timeout=10))) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert_serving(server)


def test_stream_past_duration_cap_after_results(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    """Going over the cap ends the stream with RESOURCE_EXHAUSTED even after finals were already sent."""
    audio = np.tile(speech(1.0), 8)  # 16 s per pass, the cap is 20 s
    got: list[asr_pb2.StreamingRecognizeResponse] = []

    def consume() -> None:
        for resp in stub.StreamingRecognize(requests(pcm_chunks(np.concatenate([audio, audio]))), timeout=60):
            got.append(resp)

    assert status(consume) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert any(r.is_final for resp in got for r in resp.results)
    assert_serving(server)


# -- the protocol's contract ---------------------------------------------------------------------------------


def _encoded(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt)
    return buf.getvalue()


def test_values_outside_the_documented_ranges(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    pcm = float_to_pcm16(speech(0.5))
    cfg = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE)
    cfg.decoding.method = cast(Any, 7)  # not a DecodingConfig.Method
    req = asr_pb2.RecognizeRequest(config=cfg, audio=asr_pb2.RecognitionAudio(content=pcm))
    assert status(lambda: stub.Recognize(req, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    bad, ok = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK
    for seconds, want in ((50.0, bad), (0.5, bad), (-1.0, bad), (30.0, ok)):
        sc = stream_config()
        sc.endpointing.max_segment_seconds = seconds
        got = status(lambda sc=sc: list(stub.StreamingRecognize(requests([pcm], sc), timeout=30)))
        assert got == want, seconds
    assert_serving(server)


def test_stream_header_rate_must_match_a_declared_rate(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    wav = _encoded(np.zeros(22050, dtype=np.float32), 22050, "WAV")
    chunks = [wav[i : i + 4096] for i in range(0, len(wav), 4096)]
    for declared, want in (
        (16000, grpc.StatusCode.INVALID_ARGUMENT),
        (22050, grpc.StatusCode.OK),
        (0, grpc.StatusCode.OK),
    ):
        sc = stream_config(asr_pb2.WAV, declared)
        assert status(lambda sc=sc: list(stub.StreamingRecognize(requests(chunks, sc), timeout=30))) == want
    assert_serving(server)


def test_flac_stream_cannot_pass_the_duration_cap(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    # a FLAC stream decodes only at its end: its audio was never counted against max_stream_seconds (20 s)
    flac = _encoded(np.tile(speech(1.0), 10), SAMPLE_RATE, "FLAC")  # 25 s
    chunks = [flac[i : i + 16384] for i in range(0, len(flac), 16384)]
    sc = stream_config(asr_pb2.FLAC, 0)
    assert status(lambda: list(stub.StreamingRecognize(requests(chunks, sc), timeout=60))) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert_serving(server)


def test_container_streams_decode_off_the_event_loop(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.audio as server_audio

    threads: set[int] = set()
    push = server_audio.ContainerChunkDecoder.push

    def spy(self: server_audio.ContainerChunkDecoder, data: bytes) -> np.ndarray:
        threads.add(threading.get_ident())
        return push(self, data)

    monkeypatch.setattr(server_audio.ContainerChunkDecoder, "push", spy)
    ogg = _encoded(speech(1.0), SAMPLE_RATE, "OGG")
    chunks = [ogg[i : i + 2048] for i in range(0, len(ogg), 2048)]
    list(stub.StreamingRecognize(requests(chunks, stream_config(asr_pb2.OGG_OPUS, 0)), timeout=30))
    assert threads and server._thread.ident not in threads  # never on the loop that serves every call


def test_a_passed_deadline_is_counted_as_such(
    stub: asr_pb2_grpc.RecognizerStub, server: ServerThread
) -> None:
    errors = server._server.service.metrics.errors
    before = errors.labels("StreamingRecognize", "DEADLINE_EXCEEDED")._value.get()
    slow = requests(pcm_chunks(speech(1.0)), delay=0.2)
    code = status(lambda: list(stub.StreamingRecognize(slow, timeout=0.5)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while errors.labels("StreamingRecognize", "DEADLINE_EXCEEDED")._value.get() == before:
        samples = (s for m in errors.collect() for s in m.samples if s.name.endswith("_total"))
        counted = {s.labels["code"]: s.value for s in samples}  # counts, not the _created timestamps
        assert time.monotonic() < deadline, f"the server did not count the deadline: {counted}"
        time.sleep(0.05)


def test_a_used_port_is_refused(model: asr.ASRModel, server: ServerThread) -> None:
    # gRPC's default SO_REUSEPORT let a second server share the port and take half the connections
    with pytest.raises(OSError, match="could not bind"), ServerThread(model, port=server.port):
        pass


def test_metrics_listen_where_grpc_does(model: asr.ASRModel) -> None:
    with ServerThread(model, host="127.0.0.1", metrics_port=0) as srv:
        port = srv._server.metrics_port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(OSError):  # another loopback address: /metrics is not on every interface
            socket.create_connection(("127.0.0.2", port), timeout=5).close()

