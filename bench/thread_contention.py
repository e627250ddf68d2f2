"""How much two model threads in one process slow each other (issue 30: why 32 streams use 1.45 of 2 cores).

    python bench/thread_contention.py                       # streaming model, 20 s per run
    python bench/thread_contention.py --seconds 10 --streams 32 --beam 8

The server runs a stream's chunk steps and its finals' beam searches on two threads of one process
(:mod:`server.batcher`). This runs the same two kinds of work as loops, one torch thread each, first alone,
then side by side as two threads of one process, then as two processes (forked), and prints each loop's rate
and the CPU in cores:

* chunks: ``--streams`` encoder streams of the streaming model fed 10 s of speech each, one batched
  :meth:`~asr.lc_blstm.LCBLSTMEncoder.step_ahead` after another (started again when they run out);
* searches: the joint CTC/attention beam search (``--beam``) over the first utterances of ``--data``, encoded
  once by the same model, one utterance at a time.

If the two loops did not contend, each would keep its rate side by side on two cores and use 2.0 cores in
all. Two threads lose what they wait for the GIL between torch ops and what the cores cost each other
(caches, memory, clocks); two processes lose only the second.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.queues
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE, load_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.decoding import DecodingOptions, beam_search  # noqa: E402
from asr.transcribe import encode_waveforms  # noqa: E402

DEFAULT_DATA = ROOT / "exp" / "data" / "cv" / "all.jsonl"

Loop = Callable[[threading.Event], int]


def chunk_loop(model: torch.nn.Module, feats: torch.Tensor, streams: int) -> Loop:
    """Batched chunk steps of ``streams`` encoder streams over ``feats``; returns the steps taken."""

    def run(stop: threading.Event) -> int:
        torch.set_num_threads(1)
        steps = 0
        with torch.inference_mode():
            while not stop.is_set():
                encoders = [model.encoder.new_stream() for _ in range(streams)]
                for es in encoders:
                    es.push(feats)
                    es.finish()
                while not stop.is_set():
                    ready = [es for es in encoders if model.encoder.ready(es)]
                    if not ready:
                        break
                    model.encoder.step_ahead(ready)
                    steps += 1
        return steps

    return run


def search_loop(model: torch.nn.Module, enc: torch.Tensor, lengths: torch.Tensor, beam: int) -> Loop:
    """Beam searches of the encoded utterances, one at a time; returns the searches finished."""
    opts = DecodingOptions(beam_size=beam)

    def run(stop: threading.Event) -> int:
        torch.set_num_threads(1)
        done = 0
        with torch.inference_mode():
            while not stop.is_set():
                for i in range(enc.size(0)):
                    if stop.is_set():
                        break
                    beam_search(model, enc[i : i + 1, : lengths[i]], lengths[i : i + 1], opts)
                    done += 1
        return done

    return run


def measure(loops: list[Loop], seconds: float) -> tuple[list[float], float]:
    """Run ``loops`` side by side for ``seconds``: each one's rate per second, and the process CPU (cores)."""
    stop = threading.Event()
    counts: list[int] = [0] * len(loops)

    def body(i: int) -> None:
        counts[i] = loops[i](stop)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(loops))]
    c0, w0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - w0
    return [c / wall for c in counts], (time.process_time() - c0) / wall


def measure_processes(loops: list[Loop], seconds: float) -> tuple[list[float], float]:
    """:func:`measure` with each loop in a process of its own (forked: the model is shared, copy on write):
    each one's rate per second, and the processes' CPU in cores."""
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[tuple[int, float, float]] = ctx.Queue()

    def body(i: int) -> None:
        c0, w0 = time.process_time(), time.perf_counter()
        stop = threading.Event()
        threading.Timer(seconds, stop.set).start()
        n = loops[i](stop)
        results.put((i, n / (time.perf_counter() - w0), time.process_time() - c0))

    procs = [ctx.Process(target=body, args=(i,)) for i in range(len(loops))]
    w0 = time.perf_counter()
    for proc in procs:
        proc.start()
    got = sorted(results.get(timeout=seconds + 120) for _ in procs)
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - w0
    return [rate for _, rate, _ in got], sum(cpu for _, _, cpu in got) / wall


def _cell(rates: dict[int, float], alone: dict[int, float], key: int, together: bool) -> str:
    """A loop's rate in a run ("" if it did not run), side by side also against its rate alone."""
    if key not in rates:
        return ""
    rate, base = rates[key], alone.get(key)
    return f"{rate:.2f}" + (f" ({rate / base - 1:+.0%})" if together and base else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="streaming", help="a chunk-streaming model (default: streaming)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="manifest (JSONL) of speech to use")
    p.add_argument("--utterances", type=int, default=8, help="utterances searched (default 8)")
    p.add_argument("--streams", type=int, default=32, help="encoder streams per chunk step (default 32)")
    p.add_argument("--beam", type=int, default=8, help="beam of the searches (default 8, the server's)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    args = p.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"no manifest at {args.data}: pass --data (e.g. one from `asr data prepare`)")
    torch.set_num_threads(1)
    model = load_model(args.model, device="cpu")
    if not model.config.encoder.streaming:
        raise SystemExit(f"{args.model} has no chunked encoder (encoder.chunk_frames = 0)")
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    waves = [load_audio(r["audio"]) for r in rows[: args.utterances]]
    enc, lengths, _ = encode_waveforms(model, waves)
    speech = np.resize(np.concatenate(waves), 10 * SAMPLE_RATE)  # 10 s, repeated if need be
    x = torch.from_numpy(speech)[None]
    feats, _ = model.features(x, torch.tensor([x.size(1)]))
    feats = model.cmvn(feats)[0]
    chunks, searches = chunk_loop(model, feats, args.streams), search_loop(model, enc, lengths, args.beam)
    runs = [
        ("chunks alone", [chunks], measure),
        ("searches alone", [searches], measure),
        ("both, threads", [chunks, searches], measure),
        ("both, processes", [chunks, searches], measure_processes),
    ]
    print(f"{args.model}: {args.streams} streams a chunk step, beam {args.beam}, {args.seconds:g} s a run")
    print(f"{'run':<16} | chunk steps / s | searches / s | process CPU, cores")
    alone: dict[int, float] = {}
    for name, loops, how in runs:
        rates, cores = how(loops, args.seconds)
        cells = dict(zip((id(f) for f in loops), rates, strict=True))
        if len(loops) == 1:
            alone.update(cells)
        text = {id(f): _cell(cells, alone, id(f), together=len(loops) > 1) for f in (chunks, searches)}
        print(f"{name:<16} | {text[id(chunks)]:>15} | {text[id(searches)]:>12} | {cores:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
