"""The SDK against the real gRPC server on loopback: results, streaming, errors, retries, TLS, asyncio."""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from client_support import ServerThread, tiny_checkpoint

import asr
from asr.streaming import Recognizer
from client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    RecognitionConfig,
    ResourceExhausted,
    StreamingConfig,
    Unauthenticated,
    Unavailable,
)
from client.audio import read_audio, to_linear16

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> asr.ASRModel:
    return asr.load_model(tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt"), device="cpu")


@pytest.fixture(scope="module")
def server(model: asr.ASRModel) -> Iterator[ServerThread]:
    with ServerThread(model) as srv:
        yield srv


@pytest.fixture(scope="module")
def secured(model: asr.ASRModel) -> Iterator[ServerThread]:
    with ServerThread(model, token=TOKEN) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_recognize_path_bytes_and_array_agree(client: Client, hello_wav: Path) -> None:
    by_path = client.recognize(hello_wav)
    assert by_path.text and by_path.request_id and by_path.model == "default"
    assert by_path.duration == pytest.approx(read_audio(hello_wav)[0].size / 16000, abs=1e-3)
    assert client.recognize(hello_wav.read_bytes()).text == by_path.text
    wave, rate = read_audio(hello_wav)
    assert client.recognize(wave, sample_rate=rate).text == by_path.text
    assert client.recognize((wave * 32767).astype(np.int16), sample_rate=rate).text == by_path.text
    resampled = client.recognize(hello_wav, resample_to=8000)  # 8 kHz LINEAR16, resampled back by the server
    assert resampled.duration == pytest.approx(by_path.duration, abs=0.01)
    words = by_path.words
    assert words and all(0 <= w.start <= w.end <= by_path.duration + 0.05 for w in words)
    assert " ".join(w.word for w in words) == by_path.text


def test_recognize_options_reach_the_server(client: Client, hello_wav: Path) -> None:
    t = client.recognize(hello_wav, RecognitionConfig(method="beam", beam_size=4, max_alternatives=3))
    assert 1 <= len(t.segments[0].alternatives) <= 3
    no_words = client.recognize(hello_wav, RecognitionConfig(word_time_offsets=False, word_confidence=False))
    assert no_words.words == ()


def test_list_models(client: Client) -> None:
    [m] = client.list_models()
    assert m.name == "default" and m.is_default and m.sample_rate == 16000 and m.vocabulary_kind == "char"


def test_stream_a_file(client: Client, speech_dir: Path) -> None:
    path = speech_dir / "utt3.wav"
    results = list(client.stream(path, StreamingConfig(interim_results=True, interim_interval_ms=100)))
    finals = [r for r in results if r.is_final]
    assert finals and all(r.stability == 1.0 for r in finals)
    assert finals[-1].end == pytest.approx(read_audio(path)[0].size / 16000, abs=0.05)
    assert all(a.utterance_index <= b.utterance_index for a, b in itertools.pairwise(results))


def test_stream_chunks_from_an_iterator(client: Client, hello_wav: Path) -> None:
    wave, rate = read_audio(hello_wav)

    def microphone() -> Iterator[np.ndarray]:  # float chunks of 50 ms, as a sound card would give them
        for i in range(0, len(wave), rate // 20):
            yield wave[i : i + rate // 20]

    finals = [r for r in client.stream(microphone(), sample_rate=rate) if r.is_final]
    as_bytes = [r for r in client.stream(iter([to_linear16(wave)]), sample_rate=rate) if r.is_final]
    assert [r.text for r in finals] == [r.text for r in as_bytes]


def test_stream_stops_when_the_caller_stops(client: Client, speech_dir: Path) -> None:
    for _ in client.stream(speech_dir / "utt3.wav", realtime=True):
        break  # leaving the loop cancels the call; the next call still works
    assert client.list_models()


def test_large_audio_goes_as_a_stream(server: ServerThread, hello_wav: Path) -> None:
    with Client(server.target, max_message_bytes=10_000) as small:
        t = small.recognize(hello_wav)
    assert t.text and t.duration == pytest.approx(read_audio(hello_wav)[0].size / 16000, abs=1e-3)


def test_audio_longer_than_a_stream_goes_as_several(
    model: asr.ASRModel, speech_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import soundfile as sf

    import client.sdk

    rate = 16000
    gap = np.zeros(rate // 2, dtype=np.float32)
    utts = [read_audio(speech_dir / f"utt{i}.wav")[0] for i in range(4)]
    wave = np.concatenate([x for u in utts for x in (u, gap)])  # ~7 s: four words apart, longer than a stream
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, wave, rate)
    monkeypatch.setattr(client.sdk, "LONG_AUDIO_SECONDS", 0.5)
    with ServerThread(model, max_stream_seconds=3.0) as srv, Client(srv.target, timeout=30) as c:
        monkeypatch.setattr(client.sdk, "STREAM_PIECE_SECONDS", 1000.0)
        with pytest.raises(ResourceExhausted):  # one stream is over the server's limit
            c.recognize(long_wav)
        monkeypatch.setattr(client.sdk, "STREAM_PIECE_SECONDS", 2.9)
        t = c.recognize(long_wav)

        async def via_async() -> str:
            async with AsyncClient(srv.target) as ac:
                return (await ac.recognize(long_wav)).text

        assert asyncio.run(via_async()) == t.text
    assert t.duration == pytest.approx(len(wave) / rate, abs=1e-3)
    starts = [s.start for s in t.segments]
    assert len(t.segments) >= 3 and starts == sorted(starts)
    assert t.segments[-1].end > 5.0  # later pieces' times are shifted into the recording's time
    assert all(0 <= w.start <= w.end <= t.duration + 0.05 for w in t.words)


def test_bad_requests_are_invalid_argument(client: Client, hello_wav: Path) -> None:
    with pytest.raises(InvalidArgument, match="decode"):
        client.recognize(b"this is not audio" * 10)
    with pytest.raises(InvalidArgument):
        client.recognize(hello_wav, RecognitionConfig(model="no-such-model"))
    with pytest.raises(InvalidArgument):
        client.recognize(hello_wav, RecognitionConfig(beam_size=1000))
    with pytest.raises(ValueError, match="sample_rate"):  # checked before anything is sent
        client.recognize(np.zeros(100, dtype=np.float32))


def test_stream_deadline(client: Client) -> None:
    def slow() -> Iterator[bytes]:
        while True:
            time.sleep(0.05)
            yield b"\0" * 320

    with pytest.raises(DeadlineExceeded):
        list(client.stream(slow(), timeout=0.5))


def test_too_many_streams_is_resource_exhausted(model: asr.ASRModel, hello_wav: Path) -> None:
    release = threading.Event()

    def held_open() -> Iterator[bytes]:
        yield b"\0" * 3200
        release.wait(10)

    with ServerThread(model, max_streams=1) as srv, Client(srv.target) as c:
        first = threading.Thread(target=lambda: list(c.stream(held_open())))
        first.start()
        try:
            deadline = time.monotonic() + 5
            while srv._server.service.active_streams < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(ResourceExhausted, match="streams"):
                list(c.stream(hello_wav))
        finally:
            release.set()
            first.join(10)


def test_token_auth(secured: ServerThread, hello_wav: Path) -> None:
    with Client(secured.target) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.recognize(hello_wav)
        with pytest.raises(Unauthenticated):
            list(anonymous.stream(hello_wav))
    with Client(secured.target, token="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.list_models()
    with Client(secured.target, token=TOKEN) as good:
        assert good.recognize(hello_wav).text


def test_server_down_is_unavailable_after_retries(hello_wav: Path) -> None:
    with Client(f"127.0.0.1:{free_port()}", retries=2, backoff=0.1) as c:
        start = time.monotonic()
        with pytest.raises(Unavailable, match=r"127\.0\.0\.1"):
            c.recognize(hello_wav)
        assert time.monotonic() - start >= 0.05 + 0.1  # two waits: at least half of 0.1 and of 0.2 s
        with pytest.raises(Unavailable):
            list(c.stream(hello_wav))


def test_retries_reach_a_server_that_comes_up(model: asr.ASRModel, hello_wav: Path) -> None:
    port = free_port()
    wave, rate = read_audio(hello_wav)
    out: dict[str, object] = {}

    def call() -> None:
        with Client(f"127.0.0.1:{port}", retries=8, backoff=0.2, max_backoff=0.5) as c:
            out["text"] = c.recognize(hello_wav).text
            # a stream's audio pulled before the server answered is replayed on the retry: nothing is lost
            finals = [r for r in c.stream(iter([to_linear16(wave)]), sample_rate=rate) if r.is_final]
            out["end"] = finals[-1].end

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    with ServerThread(model, port=port):
        t.join(timeout=30)
    assert out["text"]
    # the whole recording was heard: the final ends where the library's own stream over it ends
    rec = Recognizer(model)
    s = rec.create_stream()
    rec.accept_audio(s, asr.load_audio(hello_wav))
    rec.input_finished(s)
    rec.decode_streams([s])
    (final,) = rec.pop_results(s)
    assert out["end"] == pytest.approx(final.end, abs=0.021)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client certificate, all EC P-256."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    try:
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca", cwd=d)
        for name in ("server", "client"):
            key, csr, ext = f"{name}.key", f"{name}.csr", f"{name}.ext"
            _openssl("req", *ec[:-2], "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
            (d / ext).write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", ext]
            _openssl("x509", "-req", "-in", csr, *sign, "-out", f"{name}.pem", cwd=d)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl could not make test certificates: {exc}")
    return d


def test_tls_and_mutual_tls(model: asr.ASRModel, certs: Path, hello_wav: Path) -> None:
    tls = {"tls_cert": str(certs / "server.pem"), "tls_key": str(certs / "server.key")}
    with ServerThread(model, **tls) as srv:
        with Client(srv.target, root_certificates=certs / "ca.pem") as c:
            assert c.recognize(hello_wav).text
        with Client(srv.target, retries=0) as plain, pytest.raises(Unavailable):
            plain.list_models()  # a plaintext client cannot talk to a TLS server
    with ServerThread(model, tls_client_ca=str(certs / "ca.pem"), **tls) as srv:
        with Client(
            srv.target,
            root_certificates=certs / "ca.pem",
            client_certificate=certs / "client.pem",
            client_key=certs / "client.key",
        ) as c:
            assert c.list_models()
        no_cert = Client(srv.target, root_certificates=certs / "ca.pem", retries=0)
        with no_cert, pytest.raises(Unavailable):
            no_cert.list_models()


def test_async_client(server: ServerThread, secured: ServerThread, hello_wav: Path) -> None:
    wave, rate = read_audio(hello_wav)

    async def chunks() -> AsyncIterator[bytes]:
        pcm = to_linear16(wave)
        for i in range(0, len(pcm), 3200):
            await asyncio.sleep(0)
            yield pcm[i : i + 3200]

    async def main() -> None:
        async with AsyncClient(server.target) as c:
            sync_text = Client(server.target).recognize(hello_wav).text
            t = await c.recognize(hello_wav)
            assert t.text == sync_text
            results = [r async for r in c.stream(hello_wav)]
            assert results and results[-1].is_final
            from_async = [r async for r in c.stream(chunks(), sample_rate=rate) if r.is_final]
            assert [r.text for r in from_async] == [r.text for r in results if r.is_final]
            many = await asyncio.gather(*(c.recognize(hello_wav) for _ in range(4)))
            assert {m.text for m in many} == {sync_text}
            assert (await c.list_models())[0].is_default
            with pytest.raises(InvalidArgument):
                await c.recognize(b"garbage" * 20)
        async with AsyncClient(secured.target) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.recognize(hello_wav)
            with pytest.raises(Unauthenticated):
                [r async for r in anonymous.stream(hello_wav)]
        async with AsyncClient(f"127.0.0.1:{free_port()}", retries=1, backoff=0.05) as down:
            with pytest.raises(Unavailable):
                await down.list_models()
            with pytest.raises(Unavailable):
                [r async for r in down.stream(hello_wav)]

    asyncio.run(main())
