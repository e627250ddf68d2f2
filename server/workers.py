"""``asr serve --workers N``: N server processes on one port, and the parent that starts and stops them.

One process's model threads (chunk steps, finals) hold Python's GIL between their torch ops, so on a CPU
they wait for each other: side by side in one process two such loops lose 7-35 % of their rates and leave
0.17-0.27 of 2 cores idle; as two processes they use 1.98 (``bench/thread_contention.py``,
docs/BENCHMARKS.md).
Workers are the usual way out (as gunicorn's, or gRPC's own multiprocessing example): each worker is a whole
server (models, batcher, model threads, limits, health) bound to the same port with ``SO_REUSEPORT``, and the
kernel spreads new connections over them. A connection stays with its worker, so the streams of one client
(one :class:`client.Client`, one connection) share a worker and its batches.

The parent binds nothing but checks the port is free first (``SO_REUSEPORT`` would otherwise let the workers
share a port some other server holds), starts the workers with ``spawn`` (no torch or gRPC state is
inherited), logs ``serving`` once every worker serves, forwards SIGTERM and SIGINT, and exits when they have
stopped; a worker that dies on its own stops the rest, and so do workers that have not all started within
``READY_TIMEOUT_S``; the parent then exits with an error for the supervisor (systemd, docker) to restart the
whole server. Each worker's metrics listen on ``metrics_port`` plus its
index (0: a free port each; -1: none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from server.config import ServerConfig

log = logging.getLogger("server")

READY_TIMEOUT_S = 600.0  # how long workers may take to load their models and warm up


def free_port(host: str, port: int) -> int:
    """``port`` (or a free one for 0) after checking that nothing holds it on ``host``; ``OSError`` naming
    the flag to change otherwise."""
    addr = host.strip("[]") or "::"
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError as exc:
            raise OSError(
                f"could not bind {host}:{port} ({exc.strerror}): the port is in use or the address is not "
                "this machine's; pick another --port / ASR_PORT or --host"
            ) from None
        return int(sock.getsockname()[1])


def worker_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    """Worker ``index``'s settings: one process on the shared ``port``, metrics on its own port, and its
    share of the cores for its model threads' torch threads."""
    metrics = config.metrics_port if config.metrics_port <= 0 else config.metrics_port + index
    threads = config.torch_threads()
    return dataclasses.replace(config, workers=1, port=port, metrics_port=metrics, cpu_threads=threads)


def report_ready(ready: Any, index: int) -> Callable[[int, int | None], None]:
    """The ``on_ready(port, metrics_port)`` with which worker ``index`` tells the parent it serves."""

    def on_ready(_port: int, metrics: int | None) -> None:
        ready.put((index, os.getpid(), metrics))

    return on_ready


def run_workers(config: ServerConfig, worker: Callable[[ServerConfig, int, Any], None]) -> int:
    """Run ``config.workers`` server processes until SIGTERM or SIGINT; the exit code (1: a worker failed).
    ``worker(config, index, ready)``: a worker's main (a module-level function, for ``spawn``), which serves
    with :func:`report_ready`'s callback."""
    port = free_port(config.host, config.port)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(worker_config(config, i, port), i, ready), name=f"asr-worker-{i}")
        for i in range(config.workers)
    ]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("shutting down", extra={"signal": signal.Signals(signum).name, "workers": len(procs)})
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        served = _wait_ready(procs, ready, config.workers, lambda: stopping, READY_TIMEOUT_S)
        if served is None and not stopping and all(p.exitcode is None for p in procs):
            log.error(
                "workers did not start in time; stopping them",
                extra={"workers": len(procs), "timeout_s": READY_TIMEOUT_S},
            )
            stop(signal.SIGTERM, None)
            _join(procs, config.grace_s + 30.0)
            return 1
        if served is not None:
            log.info(
                "serving",
                extra={
                    "port": port,
                    "workers": len(procs),
                    "pids": [pid for _, pid, _ in served],
                    "metrics_ports": [m for _, _, m in served if m is not None] or None,
                },
            )
        failed = _supervise(procs, lambda: stopping)
        if failed and not stopping:
            stop(signal.SIGTERM, None)
        _join(procs, config.grace_s + 30.0)
        log.info("stopped")
        return 1 if failed else 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _wait_ready(
    procs: list[Any], ready: Any, n: int, stopping: Any, timeout: float
) -> list[tuple[int, int, Any]] | None:
    """Each worker's (index, pid, metrics port) once all serve; None if one exited first, on a stop, or when
    ``timeout`` seconds pass first."""
    got: list[tuple[int, int, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline and not stopping():
        if any(p.exitcode is not None for p in procs):
            return None
        with contextlib.suppress(queue.Empty):
            got.append(ready.get(timeout=0.2))
    return sorted(got) if len(got) == n else None


def _supervise(procs: list[Any], stopping: Any) -> bool:
    """Wait until every worker has exited, or one exits on its own; whether one failed or exited unasked."""
    while True:
        alive = [p for p in procs if p.exitcode is None]
        done = [p for p in procs if p.exitcode is not None]
        bad = [p for p in done if p.exitcode != 0 or not stopping()]
        if bad:
            for p in bad:
                log.error("worker exited", extra={"worker": p.name, "exit_code": p.exitcode})
            return True
        if not alive:
            return False
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=0.5)


def _join(procs: list[Any], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the workers to stop; kill those that do not."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("worker did not stop; killing it", extra={"worker": p.name})
            p.kill()
            p.join(5)
