"""``asr serve --workers N`` (server.workers): N server processes on one port. Connections from separate
clients land on different workers; SIGTERM stops them all cleanly; a worker that dies takes the server down
with an error (for the supervisor to restart it); a port in use fails clearly before any worker starts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from client_support import tiny_checkpoint

import server.workers
from asr.audio import float_to_pcm16
from asr_grpc import asr_pb2, asr_pb2_grpc
from server.config import ServerConfig
from server.workers import free_port, run_workers, worker_config

ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """``asr serve --workers 2`` on a free loopback port; its log records as they come."""

    def __init__(self, checkpoint: Path, workers: int = 2, metrics_port: int = -1) -> None:
        env = {
            **os.environ,
            "ASR_MODEL": str(checkpoint),
            "ASR_PORT": "0",
            "ASR_HOST": "127.0.0.1",
            "ASR_METRICS_PORT": str(metrics_port),
            "ASR_WARMUP": "false",
            "ASR_LOG_FORMAT": "json",
            "ASR_WORKERS": str(workers),
        }
        cmd = [sys.executable, "-m", "client.cli", "serve"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        assert self.proc.stderr is not None
        deadline = time.time() + 120
        for line in self.proc.stderr:
            rec = json.loads(line) if line.startswith("{") else {}
            self.records.append(rec)
            if rec.get("msg") == "serving" or time.time() > deadline:
                break
        self.serving = self.records[-1] if self.records and self.records[-1].get("msg") == "serving" else {}
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.records.append(json.loads(line))

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            for child in self.children():
                child.kill()
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "tiny.pt")


def _recognize(port: int) -> str:
    """One Recognize call on a connection of its own."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        audio = float_to_pcm16(np.zeros(8000, dtype=np.float32))
        config = asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000)
        stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=audio)))
        return stub.ListModels(asr_pb2.ListModelsRequest(), timeout=10).models[0].name


def _recognized(metrics_port: int) -> float:
    """The Recognize calls a worker's /metrics counts."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found = re.search(r'asr_requests_total\{code="OK",method="Recognize"\} ([\d.]+)', text)
    return float(found.group(1)) if found else 0.0


def test_workers_share_the_port_and_stop_on_sigterm(checkpoint: Path) -> None:
    server = Workers(checkpoint, metrics_port=0)
    try:
        serving = server.serving
        assert serving, server.records
        port, pids = serving["port"], serving["pids"]
        assert serving["workers"] == 2 and len(set(pids)) == 2
        workers = [r for r in server.records if r.get("msg") == "worker serving"]
        assert sorted(r["pid"] for r in workers) == sorted(pids) and {r["port"] for r in workers} == {port}
        assert {c.pid for c in server.children()} >= set(pids)
        for _ in range(16):  # connections of their own: the kernel spreads them over the workers
            assert _recognize(port) == "tiny"
        served = [_recognized(m) for m in serving["metrics_ports"]]
        assert sum(served) == 16 and min(served) > 0, served  # all on one: 2 ** -15
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    finally:
        server.close()


def test_a_worker_that_dies_stops_the_server_with_an_error(checkpoint: Path) -> None:
    server = Workers(checkpoint)
    try:
        assert server.serving, server.records
        first, second = server.serving["pids"]
        os.kill(first, signal.SIGKILL)
        assert server.proc.wait(timeout=60) == 1
        assert not (psutil.pid_exists(second) and psutil.Process(second).status() != "zombie")
        assert any(r.get("msg") == "worker exited" for r in server.records)
    finally:
        server.close()


def test_a_port_in_use_fails_before_any_worker_starts(checkpoint: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError, match="--port"):
            free_port("127.0.0.1", port)
        env = {**os.environ, "ASR_MODEL": str(checkpoint), "ASR_HOST": "127.0.0.1", "ASR_PORT": str(port)}
        done = subprocess.run(
            [sys.executable, "-m", "client.cli", "serve", "--workers", "2", "--metrics-port", "-1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0 and "pick another --port" in done.stderr
    assert "worker serving" not in done.stderr


def _never_ready(_config: ServerConfig, _index: int, _ready: Any) -> None:
    """A worker that hangs while it starts (a model that never finishes loading)."""
    time.sleep(120)


def test_workers_that_never_start_stop_the_server_with_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server.workers, "READY_TIMEOUT_S", 2.0)
    config = ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=-1, grace_s=1.0)
    t0 = time.monotonic()
    with caplog.at_level("INFO", logger="server"):
        assert run_workers(config, _never_ready) == 1
    assert time.monotonic() - t0 < 60  # stopped, not waited out
    messages = [r.getMessage() for r in caplog.records]
    assert "workers did not start in time; stopping them" in messages and "serving" not in messages
    workers = [
        p
        for p in psutil.Process().children()
        if p.status() != "zombie" and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert not workers  # (multiprocessing's own resource tracker may stay)


def test_each_worker_gets_its_own_metrics_port_and_a_share_of_the_threads() -> None:
    config = ServerConfig(workers=2, metrics_port=9100, cpu_threads=0, finals_threads=1)
    assert [worker_config(config, i, 5000).metrics_port for i in range(2)] == [9100, 9101]
    one = worker_config(config, 1, 5000)
    assert one.port == 5000 and one.workers == 1
    # the cores shared among every worker's model threads, not each worker's own guess at all of them
    assert one.cpu_threads == config.torch_threads() <= max(1, ServerConfig().torch_threads() // 2)
    ports = [worker_config(ServerConfig(metrics_port=m, workers=2), 1, 1).metrics_port for m in (0, -1)]
    assert ports == [0, -1]  # a free port each, or none
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ServerConfig(workers=0)
