"""Test-time augmentation against the plain decoding: error rates and decoding time, side by side.

    python bench/tta.py exp/data/so762/valid.jsonl --speeds 0.9,1.1 [--model M] [--limit N] [--json]

The same utterances are decoded with the default beam search and with ``DecodingOptions(tta_speeds=...)``
(``asr.tta``: the audio also played at each speed, the views' best hypotheses pooled and rescored under
every view). Printed per decoding: WER, CER, word errors, real-time factor, and the ratios to the plain
decoding (error rates: TTA / plain, below 1 is better; time: how many times slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.offline_speed import read_utterances  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    import asr
    from asr.decoding import DecodingOptions
    from asr.evaluate import evaluate
    from asr.tta import RECOMMENDED, parse_speeds

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--speeds", type=parse_speeds, default=RECOMMENDED, help="extra views (default 0.9,1.1)")
    p.add_argument("--beam", type=int, default=DecodingOptions.beam_size)
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print one JSON object, a list of rows, last")
    args = p.parse_args(argv)
    if not args.speeds:
        p.error("--speeds must name at least one speed besides 1.0")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if not args.data.exists():
        p.error(f"{args.data} does not exist")
    torch.set_num_threads(args.threads)
    utts = read_utterances(args.data)[: args.limit]
    model = asr.load_model(args.model, device="cpu")
    plain = DecodingOptions(beam_size=args.beam)
    runs = [
        ("plain", plain),
        (f"tta 1.0+{','.join(map(str, args.speeds))}", dataclasses.replace(plain, tta_speeds=args.speeds)),
    ]
    rows = []
    for name, opts in runs:
        r = evaluate(model, utts, opts)
        rows.append(
            {
                "decoding": name,
                "utts": r.utts,
                "words": r.words,
                "wer": r.wer,
                "cer": r.cer,
                "rtf": r.rtf,
                "word_errors": r.substitutions + r.deletions + r.insertions,
            }
        )
    base = rows[0]
    for row in rows:
        row["wer_ratio"] = row["wer"] / base["wer"] if base["wer"] else float("nan")
        row["cer_ratio"] = row["cer"] / base["cer"] if base["cer"] else float("nan")
        row["time_ratio"] = row["rtf"] / base["rtf"] if base["rtf"] else float("nan")
    print(f"{len(utts)} utterances, {base['words']} words, beam {args.beam}, {args.threads} threads")
    head = f"{'decoding':<22} {'WER':>8} {'CER':>8} {'errors':>7} {'RTF':>7}"
    print(f"{head}   {'WER x':>6} {'CER x':>6} {'time x':>6}")
    for row in rows:
        print(
            f"{row['decoding']:<22} {100 * row['wer']:7.2f}% {100 * row['cer']:7.2f}% "
            f"{row['word_errors']:7d} "
            f"{row['rtf']:7.4f}   {row['wer_ratio']:6.3f} {row['cer_ratio']:6.3f} {row['time_ratio']:6.2f}"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
