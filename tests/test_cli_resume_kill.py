"""Kill the server in the middle of a batch ``asr transcribe --server`` run, restart it, rerun the same
command: every input ends with exactly one output, none lost, none duplicated.

Real processes throughout: ``asr serve`` (tiny random-weight model) killed with SIGKILL, and the CLI run as a
subprocess, for both output kinds (one file per input, and one JSONL file for all).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from client_support import tiny_checkpoint

from asr.audio import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
N_FILES = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(checkpoint: Path, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ASR_MODEL": str(checkpoint),
        "ASR_PORT": str(port),
        "ASR_HOST": "127.0.0.1",
        "ASR_METRICS_PORT": "-1",
        "ASR_WARMUP": "false",
        "ASR_LOG_FORMAT": "json",
        "ASR_CPU_THREADS": "1",
        "ASR_BEAM_SIZE": "16",
        "ASR_MAX_BEAM_SIZE": "16",  # slow finals, so the batch is still going at the kill
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.time() + 60
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("msg") == "serving":
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the server did not start (exit code {proc.wait()})")


def transcribe(args: list[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "client.cli", "transcribe", *args, "--jobs", "2", "--retries", "1"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    for i in range(N_FILES):
        t = np.arange(6 * SAMPLE_RATE) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(
            sub / f"f{i}.wav", (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32), SAMPLE_RATE
        )
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def done_count(out: Path, jsonl: bool) -> int:
    if jsonl:
        return out.read_text().count("\n") if out.exists() else 0
    return len(list(out.rglob("*.txt"))) if out.exists() else 0


@pytest.mark.parametrize("jsonl", [False, True], ids=["one-file-per-input", "jsonl"])
def test_rerun_after_server_kill_finishes_the_batch(
    audio_dir: Path, checkpoint: Path, tmp_path: Path, jsonl: bool
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    out = tmp_path / ("all.jsonl" if jsonl else "out")
    args = [str(audio_dir), "--server", target, "-o", str(out), "-f", "jsonl" if jsonl else "txt"]

    server = start_server(checkpoint, port)
    cli = transcribe(args)
    try:
        deadline = time.time() + 60
        while done_count(out, jsonl) < 2 and cli.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)  # no drain, no goodbye: calls in flight just fail
        server.wait(10)
        _, err = cli.communicate(timeout=60)
    finally:
        server.kill()
        cli.kill()
        server.wait(10)
        cli.wait(10)
    first = done_count(out, jsonl)
    assert cli.returncode != 0 and 0 < first < N_FILES, (
        f"the kill did not interrupt the batch ({first}): {err}"
    )
    assert "Traceback" not in err

    server = start_server(checkpoint, port)  # the same address: the rerun is the same command
    rerun = transcribe(args)
    try:
        _, err = rerun.communicate(timeout=120)
    finally:
        server.kill()
        rerun.kill()
        server.wait(10)
        rerun.wait(10)
    assert rerun.returncode == 0, err
    assert f"skipping {first} file(s)" in err

    want = sorted(p.relative_to(audio_dir).as_posix() for p in audio_dir.rglob("*.wav"))
    if jsonl:
        lines = out.read_text().splitlines()
        ids = [json.loads(line)["id"] for line in lines]  # every line parses: no torn record left
        assert sorted(ids) == want, "lost or duplicated records"
    else:
        got = sorted(p.relative_to(out).with_suffix(".wav").as_posix() for p in out.rglob("*.txt"))
        assert got == want
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left behind"
