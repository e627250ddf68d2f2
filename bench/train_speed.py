"""Training throughput: hours of audio per hour of training, and the share of time spent waiting for data.

    python bench/train_speed.py exp/data/so762_test/all.jsonl --steps 6 --batch-size 8 --workers 1
    python bench/train_speed.py MANIFEST --device cuda --steps 30 --batch-size 64 --workers 8 --amp

Runs the real loss, backward pass and Adam step of ``models/default.pt``'s architecture (fresh weights,
nothing saved) on batches read through ``asr.data.SpeechDataset`` and a ``DataLoader`` (audio decoding
included). Data wait is the time the loop blocks on the next batch; the first step is a warm-up and not
counted. Any manifest works: this measures speed only, so the test split is as good as any.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.offline_speed import read_utterances  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--model", help="checkpoint whose architecture to train (default: models/default.pt)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (0: in the loop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    import torch
    from torch.utils.data import DataLoader

    from asr import ASRModel, load_model
    from asr.data.dataset import SpeechDataset, collate

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: --device cuda but no GPU is available", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = load_model(args.model, device="cpu")
    model = ASRModel(ref.config, ref.tokenizer).to(args.device).train()
    utts = read_utterances(args.data)[: (args.steps + 1) * args.batch_size]
    loader = DataLoader(
        SpeechDataset(utts, ref.tokenizer),
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.workers,
        collate_fn=collate,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    data_s = step_s = audio_s = 0.0
    steps = 0
    it = iter(loader)
    t = time.perf_counter()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        got = time.perf_counter()
        batch = batch.to(args.device)
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp):
            feats, feat_lengths = model.features(batch.audio, batch.audio_lengths)
            loss, _ = model(feats, feat_lengths, batch.targets, batch.target_lengths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        done = time.perf_counter()
        if steps > 0:  # the first step is warm-up
            data_s += got - t
            step_s += done - t
            audio_s += float(batch.audio_lengths.sum()) / 16000
        steps += 1
        t = done
    if steps < 2:
        print("skipped: not enough utterances for two steps", file=sys.stderr)
        return 0
    x = audio_s / step_s
    print(
        f"{steps - 1} steps of {args.batch_size} utterances on {args.device} ({args.threads} threads, "
        f"{args.workers} data workers): {audio_s:.0f} s of audio in {step_s:.1f} s"
    )
    print(
        f"throughput {x:.2f} audio hours per hour ({x:.2f}x real time); "
        f"data wait {100 * data_s / step_s:.1f}%"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "x_realtime": x,
                    "data_wait_share": data_s / step_s,
                    "steps": steps - 1,
                    "batch_size": args.batch_size,
                    "device": args.device,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
