"""Soak: many streams through one server; its resident memory and open file descriptors before and after.

    python bench/soak.py exp/data/so762_test/all.jsonl --streams 1000 --concurrency 8

Starts ``asr serve`` on loopback (bundled model), warms it with ``--warmup`` streams, samples the server
process's RSS and open fds (psutil), runs ``--streams`` streams (``--concurrency`` at a time, sent as fast as
the server takes them), then samples again after a short settle. The mix is mostly complete streams of a
recording (greedy finals; every 5th with beam search), with a share of bad ones that must fail cleanly:
every 10th cancelled mid-stream by the client, every 25th sending a config after audio (INVALID_ARGUMENT).
With ``--hints N`` every beam-search stream carries its own list of N random phrase hints, so the server
builds, caches and evicts a hint automaton per stream (warm up with 5 x 32 streams or more to fill the cache).
Growth is (after - before) / before; the target is under 5%. Bounded: ``--max-seconds`` stops the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import recordings, start_server  # noqa: E402


def sample(pid: int) -> dict[str, float]:
    import psutil

    proc = psutil.Process(pid)
    return {"rss_mib": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads()}


def random_hints(k: int, n: int) -> tuple[str, ...]:
    rng = np.random.default_rng(k)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return tuple("".join(rng.choice(letters, rng.integers(4, 13))) for _ in range(n))


def one(target: str, k: int, audio: np.ndarray, hints: int = 0) -> str:
    """Stream ``k`` of the soak; returns its outcome (``ok``, ``cancelled``, or an error code name)."""
    import grpc

    from asr.audio import float_to_pcm16
    from asr_grpc import asr_pb2, asr_pb2_grpc
    from client import ASRError, Client, RecognitionConfig, StreamingConfig

    if k % 25 == 24:  # config after audio, on the raw stub (the SDK never sends this)
        cfg = asr_pb2.StreamingRecognitionConfig(
            config=asr_pb2.RecognitionConfig(encoding=asr_pb2.LINEAR16, sample_rate_hertz=16000)
        )
        msgs = [
            asr_pb2.StreamingRecognizeRequest(streaming_config=cfg),
            asr_pb2.StreamingRecognizeRequest(audio_content=float_to_pcm16(audio[:1600])),
            asr_pb2.StreamingRecognizeRequest(streaming_config=cfg),
        ]
        with grpc.insecure_channel(target) as ch:
            try:
                list(asr_pb2_grpc.RecognizerStub(ch).StreamingRecognize(iter(msgs), timeout=30))
                return "ok"
            except grpc.RpcError as exc:
                return exc.code().name
    method = "beam" if k % 5 == 0 else "greedy"
    phrases = random_hints(k, hints) if hints and method == "beam" else ()
    config = StreamingConfig(RecognitionConfig(method=method, phrases=phrases), interim_results=True)
    try:
        with Client(target, timeout=60, retries=0) as client:
            for i, _ in enumerate(client.stream(audio, config, sample_rate=16000, chunk_ms=200)):
                if k % 10 == 9 and i == 0:
                    return "cancelled"  # leaving the iterator cancels the call
        return "ok"
    except ASRError as exc:
        return str(exc.code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder with recordings to play")
    p.add_argument("--model", help="checkpoint (default: models/default.pt)")
    p.add_argument("--server-threads", type=int, default=2)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop starting streams after this long")
    p.add_argument("--hints", type=int, default=0, help="random phrase hints on every beam-search stream")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    recs = [a for a, _, _ in recordings(args.data, 20)]
    proc, target = start_server(args.model, args.server_threads)
    outcomes: dict[str, int] = {}
    trend: list[dict[str, float]] = []  # a sample every 200 streams: does memory level off?
    lock = threading.Lock()
    try:
        cold = sample(proc.pid)
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda k: one(target, k, recs[k % len(recs)], args.hints), range(args.warmup)))
        time.sleep(2)
        before = sample(proc.pid)
        start = time.monotonic()
        done = 0

        def task(k: int) -> None:
            nonlocal done
            if time.monotonic() - start > args.max_seconds:
                return
            out = one(target, args.warmup + k, recs[k % len(recs)], args.hints)
            with lock:
                outcomes[out] = outcomes.get(out, 0) + 1
                done += 1
                if done % 200 == 0:
                    s = sample(proc.pid)
                    trend.append({"streams": done, **s})
                    print(f"  {done} streams, RSS {s['rss_mib']:.1f} MiB, fds {s['fds']}", file=sys.stderr)

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(task, range(args.streams)))
        elapsed = time.monotonic() - start
        time.sleep(2)
        after = sample(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    growth = {k: 100 * (after[k] - before[k]) / before[k] for k in ("rss_mib", "fds")}
    n = sum(outcomes.values())
    print(f"{n} streams in {elapsed:.0f} s ({args.concurrency} at a time): {outcomes}")
    print(f"{'':>10} | {'cold':>8} | {'before':>8} | {'after':>8} | growth")
    print(
        f"{'RSS MiB':>10} | {cold['rss_mib']:8.1f} | {before['rss_mib']:8.1f} | {after['rss_mib']:8.1f} | "
        f"{growth['rss_mib']:+.2f}%"
    )
    print(
        f"{'open fds':>10} | {cold['fds']:8.0f} | {before['fds']:8.0f} | {after['fds']:8.0f} | "
        f"{growth['fds']:+.2f}%"
    )
    print(f"{'threads':>10} | {cold['threads']:8.0f} | {before['threads']:8.0f} | {after['threads']:8.0f} |")
    ok = n >= args.streams and all(abs(g) < 5 for g in growth.values())
    print(f"target (>= {args.streams} streams, growth < 5%): {'met' if ok else 'NOT met'}")
    if args.json:
        result: dict[str, Any] = {
            "streams": n,
            "seconds": elapsed,
            "outcomes": outcomes,
            "cold": cold,
            "before": before,
            "after": after,
            "growth_pct": growth,
            "trend": trend,
        }
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
