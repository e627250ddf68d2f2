"""CPU cost of truly streaming recognition in-process (issue 30): :class:`asr.online.OnlineRecognizer` fed
as the server feeds it, without the server.

    python bench/online_cpu.py                                  # 1, 8 and 32 streams, 30 s each, 1 thread
    python bench/online_cpu.py --streams 32 --seconds 20 --threads 2
    python bench/online_cpu.py --streams 8 --profile 25         # and cProfile's top 25 functions
    python bench/online_cpu.py --digest exp/online_cpu.json     # every result, to compare two versions

N streams of real speech (recordings of ``--data`` trimmed to their voiced span, ``--gap`` seconds of silence
between them, a different order per stream) advance in lockstep in 100 ms messages: ``accept_audio`` on every
stream, then one ``decode_streams`` over the ready ones (the server's batcher, when it keeps up), then each
stream's results are popped; at the end ``input_finished`` and decodes until every stream is done. Finals use
the server's default options (beam 8, word times).

Reported per stream count: process CPU (user + system, all threads) per second of audio per stream, and
where it went, inclusive times of the recognizer's parts (process CPU per second of audio per stream, so the
parts of one stream count add up to about the total): accepting audio (energy VAD), features (log-mel +
CMVN), the encoder's front end and whole step, greedy CTC, the bookkeeping of a chunk (partials, blank
endpoints), settling (energy endpoints, readiness), finals (beam search, word times) and the growing of the
finals' searches between them (``--whole-finals``: none, each final searched whole). ``--digest`` writes
every result (text, words, times) and its hash, so that an optimisation can be shown to change nothing.

With ``--threads 2`` on a machine whose other core is busy (a training run), set ``OMP_WAIT_POLICY=PASSIVE``:
OpenMP's spinning workers otherwise cost 30-60x the CPU (one stream: 3.9-5.9 s of CPU per second of audio
instead of 0.1 s), which the server pays too when it runs 2 torch threads beside other work.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.alignment import voiced_span  # noqa: E402
from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.decoding import DecodingOptions  # noqa: E402
from asr.online import OnlineRecognizer  # noqa: E402
from asr.stream_state import Stream, StreamOptions, StreamResult  # noqa: E402
from asr.streaming import RecognizerConfig  # noqa: E402
from bench.stream_latency import DEFAULT_DATA, read_sources  # noqa: E402

CHUNK = SAMPLE_RATE // 10  # 100 ms messages, as the SDK sends them
OPTIONS = StreamOptions(decoding=DecodingOptions(beam_size=8))  # server.config's default beam

# (label, object, method): the parts timed (a method that is not there is skipped); inclusive, so nested parts
# overlap their parents
PARTS = (
    ("accept (VAD)", "rec", "accept_audio"),
    ("features", "rec", "_features"),
    ("features", "model.frontend", "forward"),
    ("features", "model.cmvn", "forward"),
    ("front end", "encoder", "_front_window"),
    ("front end", "encoder", "_front_windows"),
    ("encoder step", "encoder", "step"),
    ("encoder step", "encoder", "step_ahead"),  # the chunk step with partials from the look-ahead
    ("greedy CTC", "model.ctc", "forward"),
    ("chunk bookkeeping", "rec", "_heard"),
    ("settle", "rec", "_settle"),
    ("finals", "rec", "_decode_closed"),
    ("growing searches", "rec", "_grow"),
)


def load_speech(sources: Sequence[Path], count: int) -> list[np.ndarray]:
    """``count`` recordings trimmed to their voiced span (0.1 s either side)."""
    from asr.data.dataset import load_utterance

    out = []
    for u in read_sources(sources, count):
        wave = load_utterance(u)
        span = voiced_span(wave)
        if span is not None:
            a, b = max(0, round((span[0] - 0.1) * SAMPLE_RATE)), round((span[1] + 0.1) * SAMPLE_RATE)
            wave = wave[a:b]
        if len(wave) >= SAMPLE_RATE:
            out.append(wave.astype(np.float32))
        if len(out) == count:
            break
    return out


def clip(speech: Sequence[np.ndarray], start: int, seconds: float, gap: float) -> np.ndarray:
    """Recordings from ``start`` on (cycling), ``gap`` s apart, 0.5 s of silence first, cut at ``seconds``."""
    parts, total, k = [np.zeros(SAMPLE_RATE // 2, np.float32)], SAMPLE_RATE // 2, start
    pause = np.zeros(round(gap * SAMPLE_RATE), np.float32)
    while total < seconds * SAMPLE_RATE:
        parts += [speech[k % len(speech)], pause]
        total += len(parts[-2]) + len(pause)
        k += 1
    return np.concatenate(parts)[: round(seconds * SAMPLE_RATE)]


class Timers:
    """Process CPU seconds spent inside methods, by label (re-entry counted once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth: dict[str, int] = defaultdict(int)

    def wrap(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name, None)
        if fn is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth[label] += 1
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[label] -= 1
                if not self._depth[label]:
                    self.seconds[label] += time.process_time() - t0

        setattr(obj, name, timed)


def play(rec: OnlineRecognizer, clips: Sequence[np.ndarray]) -> list[list[StreamResult]]:
    """Every clip on its own stream, 100 ms at a time in lockstep; each stream's results."""
    streams: list[Stream] = [rec.create_stream(OPTIONS) for _ in clips]
    results: list[list[StreamResult]] = [[] for _ in clips]
    n = max(len(c) for c in clips)
    for i in range(0, n + CHUNK, CHUNK):
        for s, c in zip(streams, clips, strict=True):
            if i < len(c):
                rec.accept_audio(s, c[i : i + CHUNK])
            elif not s.input_done:
                rec.input_finished(s)
        ready = [s for s in streams if rec.is_ready(s)]
        if ready:
            rec.decode_streams(ready)
        for k, s in enumerate(streams):
            results[k] += rec.pop_results(s)
    while not all(s.is_done for s in streams):
        rec.decode_streams([s for s in streams if rec.is_ready(s)])
        for k, s in enumerate(streams):
            results[k] += rec.pop_results(s)
    return results


@contextlib.contextmanager
def profiled(top: int) -> Iterator[None]:
    if not top:
        yield
        return
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        for key in ("tottime", "cumulative"):
            pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(top)


def measure(model: Any, speech: Sequence[np.ndarray], n: int, args: argparse.Namespace) -> dict[str, Any]:
    config = RecognizerConfig(
        max_batch_size=args.max_batch_size,
        growing_finals=not args.whole_finals,
        silence_gate=not args.no_silence_gate,
    )
    rec = OnlineRecognizer(model, config)
    timers = Timers()
    roots = {"rec": rec, "encoder": rec.encoder, "model": rec.model}
    for label, owner, name in PARTS:
        root, *attrs = owner.split(".")
        obj = roots[root]
        for attr in attrs:
            obj = getattr(obj, attr)
        timers.wrap(obj, name, label)
    clips = [clip(speech, 3 * k, args.seconds, args.gap) for k in range(n)]
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    play(rec, clips[:1])  # warm up (first calls allocate)
    timers.seconds.clear()
    t0, w0 = time.process_time(), time.perf_counter()
    with profiled(args.profile):
        results = play(rec, clips)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    per = 1000.0 / audio_s
    return {
        "streams": n,
        "audio_s_per_stream": audio_s / n,
        "cpu_ms_per_audio_s_per_stream": cpu * per,
        "wall_ms_per_audio_s_per_stream": wall * per,
        "parts_ms_per_audio_s_per_stream": {k: v * per for k, v in timers.seconds.items()},
        "finals": sum(r.is_final for rs in results for r in rs),
        "partials": sum(not r.is_final for rs in results for r in rs),
        "chunk_steps": rec.chunk_steps,
        "results": [[result_record(r) for r in rs] for rs in results],
    }


def result_record(r: StreamResult) -> list[Any]:
    words = [(w.word, round(w.start, 3), round(w.end, 3)) for w in r.words]
    return [r.is_final, r.text, round(r.start, 3), round(r.end, 3), r.utterance, words]


def digest(records: Any) -> str:
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()[:16]


def print_row(m: dict[str, Any], threads: int) -> None:
    parts = "  ".join(f"{k} {v:.1f}" for k, v in m["parts_ms_per_audio_s_per_stream"].items())
    print(
        f"streams {m['streams']:3d}  threads {threads}  cpu {m['cpu_ms_per_audio_s_per_stream']:6.1f} ms/s  "
        f"wall {m['wall_ms_per_audio_s_per_stream']:6.1f} ms/s  "
        f"finals {m['finals']}  partials {m['partials']}  steps {m['chunk_steps']}  "
        f"results {digest(m['results'])}\n    {parts}",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="streaming", help="a name under models/ or a checkpoint path")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    p.add_argument("--gap", type=float, default=0.8, help="silence between recordings, seconds")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--max-batch-size", type=int, default=16, help="RecognizerConfig.max_batch_size")
    p.add_argument(
        "--whole-finals",
        action="store_true",
        help="search each final whole at its endpoint (RecognizerConfig.growing_finals off)",
    )
    p.add_argument(
        "--no-silence-gate",
        action="store_true",
        help="encode the silence between recordings too (RecognizerConfig.silence_gate off)",
    )
    p.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA))
    p.add_argument("--profile", type=int, default=0, metavar="TOP", help="print cProfile's top functions")
    p.add_argument("--digest", type=Path, help="write every number and result here (JSON)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, run: Callable[..., dict[str, Any]] = measure) -> int:
    args = parse_args(argv)
    model = load_model(args.model, device="cpu").eval()
    speech = load_speech(args.data, 24)
    if not speech:
        raise SystemExit(f"skipped: no recordings in {args.data}")
    out = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.streams:
            m = run(model, speech, n, args)
            print_row(m, threads)
            out.append({"threads": threads, **m, "digest": digest(m["results"])})
    if args.digest:
        args.digest.parent.mkdir(parents=True, exist_ok=True)
        args.digest.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
