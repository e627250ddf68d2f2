"""Load generator on the SDK: N recordings streamed concurrently in real time, for growing N.

    python bench/load.py exp/data/so762_test/all.jsonl --streams 1 2 4 8 12 16
    python bench/load.py MANIFEST --server 127.0.0.1:50051 --streams 8 --rounds 3

Each stream is one ``client.Client`` playing a different recording from the manifest (or Kaldi folder) as
100 ms chunks at wall-clock pace: 0.5 s of silence, the recording, 1.2 s of silence, then the end of the
stream. Per stream it records

* first partial: first interim result received - the chunk holding the speech onset sent;
* final after end of speech: the final received - the chunk holding the last speech sample sent (includes
  the endpointer's silence wait, ``silence_ms``, 800 ms by default);
* final after endpoint: the final received - the chunk holding the endpoint sent (``silence_ms`` after the
  last speech frame; the final's ``end`` is ``final_tail_ms`` after it, the server's default assumed): the
  server's own delay once the endpointer has decided. The server decodes a final early, once
  ``final_tail_ms`` of silence is in, so this is often about zero;
* errors: calls that ended with an error status.

Levels run in order, each ``--rounds`` times; the run stops after the first level that loses real time: any
error, or p95 final after endpoint over ``--lost-ms`` (default 1000). Without ``--server`` it starts
``asr serve`` on loopback with the bundled model (``--server-threads`` torch threads). Everything is bounded:
at most ``--max-streams`` streams per level and ``timeout`` seconds per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.streaming import EndpointConfig  # noqa: E402
from bench.offline_speed import read_utterances  # noqa: E402

CHUNK_S = 0.1
LEAD_S, TAIL_S = 0.5, 1.2


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """Onset and end of speech in seconds: the first and last 20 ms frame within 30 dB of the loudest."""
    hop = SAMPLE_RATE // 50
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(rms > max(rms.max() * 10 ** (-30 / 20), 1e-3))
    return loud[0] * hop / SAMPLE_RATE, (loud[-1] + 1) * hop / SAMPLE_RATE


def recordings(data: Path, n: int) -> list[tuple[np.ndarray, float, float]]:
    """``n`` recordings of 2-8 s with silence around them, and their speech onset and end (stream seconds)."""
    from asr.data.dataset import load_utterance

    out = []
    for u in read_utterances(data):
        if u.duration is not None and not 2.0 <= u.duration <= 8.0:
            continue
        wave = load_utterance(u)
        onset, end = speech_bounds(wave)
        audio = np.concatenate(
            [
                np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32),
                wave,
                np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32),
            ]
        )
        out.append((audio, LEAD_S + onset, LEAD_S + end))
        if len(out) == n:
            break
    return out


def paced_chunks(audio: np.ndarray, sent: list[float]) -> Iterator[np.ndarray]:
    """``audio`` as ``CHUNK_S`` chunks at wall-clock pace (chunk k due ``k * CHUNK_S`` after the first);
    the ``time.perf_counter()`` at which each chunk left is appended to ``sent``."""
    step = int(CHUNK_S * SAMPLE_RATE)
    t0 = time.perf_counter()
    for k, i in enumerate(range(0, len(audio), step)):
        delay = t0 + k * CHUNK_S - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.perf_counter())
        yield audio[i : i + step]


def sent_at(sent: list[float], seconds: float) -> float:
    """When the chunk holding the sample at ``seconds`` (stream time) was sent."""
    return sent[max(0, min(len(sent) - 1, int(seconds / CHUNK_S - 1e-9)))]


def one_stream(
    target: str, audio: np.ndarray, onset: float, end: float, config: Any, out: list[dict], lag: float
) -> None:
    """Play one recording; ``lag``: seconds from a final's ``end`` to its endpoint."""
    from client import ASRError, Client

    sent: list[float] = []
    row: dict[str, Any] = {"first_partial": None, "final_after_speech": None, "final_after_endpoint": None}
    try:
        with Client(target, timeout=60 + len(audio) / SAMPLE_RATE, retries=0) as client:
            for r in client.stream(paced_chunks(audio, sent), config):
                now = time.perf_counter()
                if not r.is_final and row["first_partial"] is None:
                    row["first_partial"] = now - sent_at(sent, onset)
                if r.is_final and row["final_after_speech"] is None:
                    row["final_after_speech"] = now - sent_at(sent, end)
                    row["final_after_endpoint"] = now - sent_at(sent, r.end + lag)
        row["error"] = None
    except ASRError as exc:
        row["error"] = f"{exc.code}: {exc}"
    out.append(row)


def percentiles(values: list[float]) -> dict[str, int] | None:
    if not values:
        return None
    v = np.array(values) * 1000
    return {f"p{q}_ms": round(float(np.percentile(v, q))) for q in (50, 95, 99)}


def run_level(target: str, n: int, rounds: int, recs: list, config: Any, lag: float) -> dict[str, Any]:
    rows: list[dict] = []
    for r in range(rounds):
        threads = [
            threading.Thread(
                target=one_stream, args=(target, *recs[(r * n + i) % len(recs)], config, rows, lag)
            )
            for i in range(n)
        ]
        for i, t in enumerate(threads):
            time.sleep(0.037 * (i > 0))  # clients do not all start on the same millisecond
            t.start()
        for t in threads:
            t.join()
    summary: dict[str, Any] = {
        "streams": n,
        "calls": len(rows),
        "errors": sum(r["error"] is not None for r in rows),
    }
    for key in ("first_partial", "final_after_speech", "final_after_endpoint"):
        summary[key] = percentiles([r[key] for r in rows if r[key] is not None])
    summary["error_samples"] = sorted({r["error"] for r in rows if r["error"]})[:3]
    return summary


def start_server(model: str | None, threads: int, extra_env: dict[str, str] | None = None) -> tuple[Any, str]:
    """``asr serve`` on 127.0.0.1, a free port, the bundled model unless ``model``: (process, address)."""
    import subprocess

    env = {
        **os.environ,
        "ASR_PORT": "0",
        "ASR_METRICS_PORT": "-1",
        "ASR_HOST": "127.0.0.1",
        "ASR_LOG_FORMAT": "json",
        "ASR_CPU_THREADS": str(threads),
        **(extra_env or {}),
    }
    if model:
        env["ASR_MODEL"] = model
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    watchdog = threading.Timer(180, proc.kill)  # never wait forever for a server that does not come up
    watchdog.start()
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("msg") == "serving":
            watchdog.cancel()
            port = json.loads(line)["port"]
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, f"127.0.0.1:{port}"
    watchdog.cancel()
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder with the recordings to play")
    p.add_argument("--server", help="address of a running server (default: start one on loopback)")
    p.add_argument("--model", help="checkpoint for the started server (default: models/default.pt)")
    p.add_argument("--server-threads", type=int, default=2, help="torch threads of the started server")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    p.add_argument("--max-streams", type=int, default=32, help="hard cap on streams per level")
    p.add_argument("--rounds", type=int, default=2, help="repetitions per level")
    p.add_argument(
        "--lost-ms", type=float, default=1000.0, help="p95 final-after-endpoint that counts as lost"
    )
    p.add_argument("--greedy", action="store_true", help="greedy CTC finals instead of beam search")
    p.add_argument("--beam", type=int, help="beam of the finals (default: the server's, 8)")
    p.add_argument("--silence-ms", type=int, help="endpointer silence (default: the server's, 800 ms)")
    p.add_argument("--json", type=Path, help="write the levels to this JSON file (for bench/plots.py)")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    from client import RecognitionConfig, StreamingConfig

    levels = [n for n in args.streams if 1 <= n <= args.max_streams]
    recs = recordings(args.data, max(levels) * args.rounds)
    config = StreamingConfig(
        RecognitionConfig(method="greedy" if args.greedy else None, beam_size=args.beam),
        interim_results=True,
        silence_ms=args.silence_ms,
    )
    ep = EndpointConfig()
    silence = args.silence_ms or ep.silence_ms
    lag = (silence - min(ep.final_tail_ms, silence)) / 1000  # a final's end to its endpoint
    proc = None
    target = args.server
    if target is None:
        proc, target = start_server(args.model, args.server_threads)
    results = []
    try:
        one_stream(target, *recs[0], config, [], lag)  # warm the path once
        print(
            f"server {target}; finals: {'greedy' if args.greedy else f'beam {args.beam or 8}'}; "
            "ms p50/p95/p99"
        )
        print(
            f"{'streams':>7} | {'first partial':>16} | {'final after speech':>18} | "
            f"{'after endpoint':>16} | errors"
        )
        for n in levels:
            s = run_level(target, n, args.rounds, recs, config, lag)
            results.append(s)

            def cell(d: dict | None) -> str:
                return "-" if d is None else f"{d['p50_ms']}/{d['p95_ms']}/{d['p99_ms']}"

            print(
                f"{n:>7} | {cell(s['first_partial']):>16} | {cell(s['final_after_speech']):>18} | "
                f"{cell(s['final_after_endpoint']):>16} | {s['errors']}/{s['calls']} "
                f"{' '.join(s['error_samples'])}",
                flush=True,
            )
            ep = s["final_after_endpoint"]
            if s["errors"] or ep is None or ep["p95_ms"] > args.lost_ms:
                print(f"real time lost at {n} streams (errors, or p95 after endpoint > {args.lost_ms:g} ms)")
                break
        else:
            print(f"real time kept up to {levels[-1]} streams (the largest level tried)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"server_threads": args.server_threads, "levels": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
