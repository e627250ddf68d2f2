"""``asr stream`` against the real server: files, raw and encoded stdin, output on and off a terminal."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from client_support import ServerThread, tiny_server

from client import Client, RecognitionConfig, StreamingConfig
from client.audio import read_audio, to_linear16
from client.cli import main
from client.stream_cli import CLEAR_LINE, Printer
from client.types import StreamingResult


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with tiny_server(tmp_path_factory.mktemp("model")) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_TOKEN", raising=False)
    monkeypatch.delenv("ASR_SERVER", raising=False)


def finals_of(server: ServerThread, path: Path, **recognition: Any) -> list[str]:
    config = StreamingConfig(recognition=RecognitionConfig(**recognition), interim_results=False)
    with Client(server.target) as c:
        return [r.text for r in c.stream(path, config) if r.is_final and r.text]


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


def test_file_prints_finals_only_when_piped(
    server: ServerThread, speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = speech_dir / "utt3.wav"
    assert main(["stream", str(path), "--server", server.target, "--no-realtime"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == finals_of(server, path)
    assert "\r" not in out


def test_tta_speeds_reach_the_finals(
    server: ServerThread, speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = speech_dir / "utt3.wav"
    args = ["stream", str(path), "--server", server.target, "--no-realtime"]
    assert main([*args, "--tta-speeds", "0.9,1.1"]) == 0
    assert capsys.readouterr().out.splitlines() == finals_of(server, path, tta_speeds=(0.9, 1.1))
    assert main([*args, "--tta-speeds", "1.0"]) == 1  # INVALID_ARGUMENT, said in one line
    assert "tta_speeds" in capsys.readouterr().err


def test_json_with_interims(
    server: ServerThread, speech_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["stream", str(speech_dir / "utt3.wav"), "-s", server.target, "--no-realtime", "--json", "--interim"]
    )
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records and records[-1]["is_final"]
    assert all(
        set(r) >= {"text", "is_final", "stability", "start", "end", "utterance", "words"} for r in records
    )


def test_raw_and_encoded_stdin(
    server: ServerThread, hello_wav: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = finals_of(server, hello_wav)
    wave, rate = read_audio(hello_wav)
    monkeypatch.setattr("sys.stdin", _Stdin(to_linear16(wave)))
    assert main(["stream", "-", "--raw", "--rate", str(rate), "-s", server.target, "--no-realtime"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    monkeypatch.setattr("sys.stdin", _Stdin(hello_wav.read_bytes()))
    assert main(["stream", "-", "-s", server.target, "--no-realtime", "--timestamps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == expected
    assert lines[0].startswith("[00:0")


def test_realtime_pacing(server: ServerThread, hello_wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["stream", str(hello_wav), "-s", server.target, "--chunk-ms", "200"]) == 0
    assert (
        time.monotonic() - start >= read_audio(hello_wav)[0].size / 16000 - 0.25
    )  # sent no faster than it plays
    assert capsys.readouterr().out.strip()


def test_terminal_redraws_partials_in_place() -> None:
    out = io.StringIO()
    p = Printer(out, tty=True, interim=False, as_json=False, timestamps=False)
    p(StreamingResult("HEL", is_final=False))
    p(StreamingResult("HELLO WOR", is_final=False))
    p(StreamingResult("HELLO WORLD", is_final=True, stability=1.0))
    p(StreamingResult("GOOD", is_final=False))
    p.finish()
    text = out.getvalue()
    assert text == (f"{CLEAR_LINE}HEL{CLEAR_LINE}HELLO WOR{CLEAR_LINE}HELLO WORLD\n{CLEAR_LINE}GOOD\n")
    piped = io.StringIO()
    p = Printer(piped, tty=False, interim=True, as_json=False, timestamps=False)
    p(StreamingResult("HEL", is_final=False))
    p(StreamingResult("HELLO", is_final=True))
    assert piped.getvalue() == "(partial) HEL\nHELLO\n"


def test_errors_are_one_line(
    server: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "bad.wav").write_bytes(b"nonsense" * 10)
    assert main(["stream", str(tmp_path / "bad.wav"), "-s", server.target]) == 1
    assert main(["stream", str(tmp_path / "missing.wav"), "-s", server.target]) == 1
    monkeypatch.setattr("sys.stdin", _Stdin(b"\0" * 32000))
    assert main(["stream", "-", "--raw", "-s", f"127.0.0.1:{port}", "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3, err


def test_blank_ms_reaches_the_server(
    server: ServerThread, hello_wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stream", str(hello_wav), "-s", server.target, "--blank-ms", "20000"]) == 1
    err = capsys.readouterr().err
    assert "blank_ms" in err and "Traceback" not in err, err
    assert main(["stream", str(hello_wav), "-s", server.target, "--blank-ms", "0"]) == 0
