"""Batched offline throughput: seconds of audio recognised per second, against batch size.

    python bench/throughput.py exp/data/so762_test/all.jsonl --limit 96 --batch-sizes 1 4 16 32
    python bench/throughput.py exp/data/so762_test/all.jsonl --device cuda --limit 2000 --batch-sizes 32 256

The argument is a JSONL manifest (or a Kaldi data folder). Audio is decoded before timing; each row is the
whole recognition path (``asr.transcribe.transcribe_batch``: features, encoder, decoding and word times) over
the same utterances, sorted by length as the library does. Greedy CTC and joint beam search (``--beam``).
``--json FILE`` writes the rows for ``bench/plots.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.offline_speed import read_utterances  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--model", help="checkpoint (default: models/default.pt)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    p.add_argument("--limit", type=int, default=96, help="utterances (default 96)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    p.add_argument("--json", type=Path, help="write the rows to this JSON file")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    import torch

    from asr import DecodingOptions, load_model
    from asr.audio import SAMPLE_RATE
    from asr.data.dataset import load_utterance
    from asr.transcribe import transcribe_batch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: --device cuda but no GPU is available", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    utts = read_utterances(args.data)[: args.limit]
    waves: list[Any] = [load_utterance(u) for u in utts]
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    model = load_model(args.model, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"{len(waves)} utterances, {seconds:.0f} s of audio; device {args.device}, threads {args.threads}")
    print(f"{'method':<8} | {'batch':>5} | {'audio s / s':>11} | {'CPU s / audio s':>15}")
    rows = []
    for method in args.methods:
        opts = DecodingOptions(method=method, beam_size=args.beam)
        transcribe_batch(model, waves[:4], opts, batch_size=4)  # warm-up
        for bs in args.batch_sizes:
            sync()
            cpu, wall = time.process_time(), time.perf_counter()
            transcribe_batch(model, waves, opts, batch_size=bs)
            sync()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            row = {"method": method, "batch_size": bs, "x_realtime": seconds / wall, "cpu_rtf": cpu / seconds}
            rows.append(row)
            print(
                f"{method:<8} | {bs:>5} | {row['x_realtime']:>10.1f}x | {row['cpu_rtf']:>15.4f}", flush=True
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": args.device, "threads": args.threads, "utterances": len(waves), "seconds": seconds}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
