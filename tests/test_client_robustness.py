"""The SDK and ``asr stream`` when things go wrong on the client's side: failing audio sources, deadlines of
long recordings, ``--timeout`` and bad ``--rate`` values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from client_support import ServerThread, tiny_server

from client import AsyncClient, Client, DeadlineExceeded
from client.audio import read_audio
from client.cli import main

SILENCE = b"\0" * 3200  # 100 ms of LINEAR16 at 16 kHz


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with tiny_server(tmp_path_factory.mktemp("model")) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_TOKEN", raising=False)
    monkeypatch.delenv("ASR_SERVER", raising=False)


class Unplugged:
    """A microphone that gives two chunks and then fails; ``error`` is what it raised."""

    def __init__(self) -> None:
        self.error = OSError("microphone unplugged")

    def __iter__(self) -> Iterator[bytes]:
        yield SILENCE
        yield SILENCE
        raise self.error


def wrong_type() -> Iterator[object]:
    yield SILENCE
    yield "not bytes"


# ------------------------------------------------------------------------------------------------------------
# 1. An audio source's own errors reach the caller unchanged


def test_sync_stream_reraises_the_source_error(server: ServerThread) -> None:
    mic = Unplugged()
    with Client(server.target, timeout=30) as c:
        with pytest.raises(OSError, match="microphone unplugged") as info:
            list(c.stream(mic))
        assert info.value is mic.error
        assert c.list_models()  # the client is still usable


def test_sync_stream_rejects_a_chunk_of_the_wrong_type(server: ServerThread) -> None:
    with Client(server.target, timeout=30) as c, pytest.raises(TypeError, match=r"bytes.*numpy.*got str"):
        list(c.stream(wrong_type()))  # type: ignore[arg-type]


def test_async_stream_reraises_the_source_error(server: ServerThread) -> None:
    async def async_mic(mic: Unplugged) -> AsyncIterator[bytes]:
        for chunk in mic:
            yield chunk

    async def run() -> None:
        async with AsyncClient(server.target, timeout=30) as c:
            for make in (lambda m: iter(m), async_mic):  # a sync iterator (read in a thread) and an async one
                mic = Unplugged()
                with pytest.raises(OSError, match="microphone unplugged") as info:
                    _ = [r async for r in c.stream(make(mic))]
                assert info.value is mic.error
            with pytest.raises(TypeError, match=r"bytes.*numpy.*got str"):
                _ = [r async for r in c.stream(wrong_type())]  # type: ignore[arg-type]
            assert await c.list_models()

    asyncio.run(run())


def test_async_stream_still_honours_task_cancellation(server: ServerThread) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.02)
            yield SILENCE

    async def run() -> None:
        async with AsyncClient(server.target, timeout=30) as c:
            task = asyncio.create_task(_drain(c.stream(endless())))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())


async def _drain(results: AsyncIterator[object]) -> None:
    async for _ in results:
        pass


# ------------------------------------------------------------------------------------------------------------
# 2. Long recordings (sent as streams) keep the client's timeout, the model and the request id


@pytest.fixture
def long_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    import client.sdk

    monkeypatch.setattr(client.sdk, "LONG_AUDIO_SECONDS", 0.5)  # hello_wav counts as long audio


def test_long_audio_uses_the_client_timeout(server: ServerThread, hello_wav: Path, long_audio: None) -> None:
    with Client(server.target, timeout=0.001) as c:
        with pytest.raises(DeadlineExceeded):
            c.recognize(hello_wav)
        assert c.recognize(hello_wav, timeout=30).text  # a per-call timeout still wins

    async def run() -> None:
        async with AsyncClient(server.target, timeout=0.001) as ac:
            with pytest.raises(DeadlineExceeded):
                await ac.recognize(hello_wav)

    asyncio.run(run())


def test_long_audio_reports_model_and_request_id(
    server: ServerThread, hello_wav: Path, long_audio: None
) -> None:
    with Client(server.target, timeout=30) as c:
        t = c.recognize(hello_wav)

    async def run() -> tuple[str, str]:
        async with AsyncClient(server.target, timeout=30) as ac:
            at = await ac.recognize(hello_wav)
            return at.model, at.request_id

    assert t.text and t.model == "default" and t.request_id
    model, request_id = asyncio.run(run())
    assert model == "default" and request_id and request_id != t.request_id


# ------------------------------------------------------------------------------------------------------------
# 3. and 4. `asr stream --timeout` and `--rate`


def test_stream_cli_timeout_is_the_stream_deadline(
    server: ServerThread, speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = speech_dir / "utt3.wav"  # over a second of audio, sent at real-time pace
    assert read_audio(path)[0].size / 16000 > 1.0
    assert main(["stream", str(path), "--server", server.target, "--timeout", "0.3"]) == 1
    assert "deadline exceeded" in capsys.readouterr().err.lower()
    assert main(["stream", str(path), "--server", server.target, "--no-realtime", "--timeout", "30"]) == 0


@pytest.mark.parametrize("rate", ["0", "-16000"])
def test_stream_cli_rejects_a_rate_that_is_not_positive(
    rate: str, server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["stream", "-", "--raw", "--rate", rate, "--server", server.target])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("asr stream: error: ") and "--rate" in err and rate in err


@pytest.mark.parametrize("rate", [0, -8000])
def test_sdk_rejects_a_sample_rate_that_is_not_positive(rate: int, server: ServerThread) -> None:
    with Client(server.target, timeout=30) as c:
        with pytest.raises(ValueError, match="sample_rate must be positive"):
            list(c.stream(iter([SILENCE]), sample_rate=rate))
        with pytest.raises(ValueError, match="sample_rate must be positive"):
            c.recognize(np.zeros(1600, dtype=np.float32), sample_rate=rate)

    async def run() -> None:
        async with AsyncClient(server.target, timeout=30) as ac:
            with pytest.raises(ValueError, match="sample_rate must be positive"):
                _ = [r async for r in ac.stream(iter([SILENCE]), sample_rate=rate)]
            with pytest.raises(ValueError, match="sample_rate must be positive"):
                await ac.recognize(np.zeros(1600, dtype=np.float32), sample_rate=rate)

    asyncio.run(run())
