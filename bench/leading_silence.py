"""Does a model wait for the speech? Where its CTC head fires first, with and without silence put before it.

    python bench/leading_silence.py exp/data/so762/valid.jsonl --models models/default.pt exp/stage6/final.pt

Each utterance is decoded twice with greedy CTC: as recorded, and with ``--pad`` seconds of background at the
recording's own noise floor (``asr.data.augment.pad_silence``) put before it. A model that listens emits its
first token about ``--pad`` seconds later on the padded copy; one that fires on the first frame whatever comes
before (the first-frame spike) emits it inside the padding. Printed per model, side by side: the share of
padded utterances whose first token falls inside the padding (before ``pad - 0.1`` s), the median shift of
the first token (ideal: ``--pad``), and the greedy CER with and without padding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.offline_speed import read_utterances  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--models", nargs="+", default=[None], help="checkpoints (default: the bundled model)")
    p.add_argument("--pad", type=float, default=1.5, help="seconds of background put before the speech")
    p.add_argument("--limit", type=int, default=80, help="utterances (the first N)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print one JSON object, a list of rows, last")
    args = p.parse_args(argv)
    if args.limit < 1 or args.pad < 0:
        p.error("--limit must be >= 1 and --pad >= 0")
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    import jiwer
    import torch

    from asr import load_model
    from asr.data.augment import pad_silence
    from asr.data.dataset import load_utterance
    from asr.decoding import ctc_greedy
    from asr.tokenizer import normalize_text

    torch.set_num_threads(args.threads)
    utts = read_utterances(args.data)[: args.limit]
    if not utts:
        raise SystemExit(f"{args.data}: no utterances")
    waves = [load_utterance(u) for u in utts]
    padded = [pad_silence(w, args.pad, 0.0, np.random.default_rng(i)) for i, w in enumerate(waves)]
    refs = [normalize_text(u.text) for u in utts]
    rows = []
    for name in args.models:
        model = load_model(name, device="cpu").float()
        shift = model.config.encoder_frame_shift
        firsts: dict[str, list[float | None]] = {}
        cers = {}
        for kind, batch in (("plain", waves), ("padded", padded)):
            times: list[float | None] = []
            hyps = []
            for w in batch:
                with torch.inference_mode():
                    audio = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None]
                    feats, lengths = model.features(audio, torch.tensor([audio.shape[1]]))
                    enc, enc_lengths = model.encode(feats, lengths)
                    lp = model.ctc_log_probs(enc)
                best = lp[0, : int(enc_lengths[0])].argmax(-1)
                emitting = (best != model.tokenizer.blank_id).nonzero()
                times.append(float(emitting[0, 0]) * shift if len(emitting) else None)
                tokens = ctc_greedy(lp, enc_lengths, model.tokenizer.blank_id)[0]
                hyps.append(normalize_text(model.tokenizer.decode(tokens)))
            firsts[kind] = times
            cers[kind] = float(jiwer.cer(refs, hyps))
        both = zip(firsts["plain"], firsts["padded"], strict=True)
        pairs = [(a, b) for a, b in both if a is not None and b is not None]
        inside = sum(b < args.pad - 0.1 for _, b in pairs) / max(1, len(pairs))
        shifts = [b - a for a, b in pairs]
        rows.append(
            {
                "model": name or "default",
                "utts": len(utts),
                "first_token_in_padding": inside,
                "median_shift_s": statistics.median(shifts) if shifts else float("nan"),
                "cer_plain": cers["plain"],
                "cer_padded": cers["padded"],
            }
        )
    print(f"{len(utts)} utterances, {args.pad:.2f} s of background put before each", end=" ")
    print(f"(ideal shift {args.pad:.2f} s)")
    print(f"{'model':<40} {'first token in padding':>22} {'median shift':>13} {'CER':>7} {'CER padded':>11}")
    for r in rows:
        print(
            f"{r['model']:<40} {100 * r['first_token_in_padding']:>21.1f}% {r['median_shift_s']:>12.2f}s "
            f"{100 * r['cer_plain']:>6.1f}% {100 * r['cer_padded']:>10.1f}%"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
