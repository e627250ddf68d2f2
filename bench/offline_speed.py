"""Offline decoding speed and accuracy, ours against PocketSphinx, on the same files in the same run.

    python bench/offline_speed.py exp/data/so762_test/all.jsonl --limit 500
    python bench/offline_speed.py /work/shared/data/speechocean762/test --limit 150 --threads 1 --json
    python bench/offline_speed.py exp/data/so762_test/all.jsonl --model models/default.pt exp/a.pt

The argument is a JSONL manifest or a Kaldi data folder (``wav.scp`` + ``text``). Audio is decoded to 16 kHz
before timing starts, so only recognition is timed: our greedy CTC, our joint CTC/attention beam search
(``--beam``, default 10) and PocketSphinx 5 with its bundled US English acoustic model, language model and
dictionary. Several ``--model`` checkpoints get their rows in the same run, against the same PocketSphinx
pass. PocketSphinx is single-threaded; ours runs with ``--threads`` torch threads (default 1, the fair
comparison). Times are process CPU seconds and wall seconds per second of audio (real-time factor, RTF);
the speed-up is PocketSphinx's RTF over ours, in CPU time (other jobs on a shared machine inflate wall time
but not CPU time). WER uses the project's text normalisation for all systems. Each of ours is then compared
with PocketSphinx on the same utterances by a paired bootstrap over speakers (``asr.significance``): the
95 % interval of the WER difference and the share of resamples in which ours makes fewer errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE, float_to_pcm16  # noqa: E402
from asr.data.manifest import Utterance, read_manifest  # noqa: E402
from asr.tokenizer import normalize_text  # noqa: E402


def read_utterances(source: Path) -> list[Utterance]:
    """A JSONL manifest, or a Kaldi folder read through the project's importer (into a temporary manifest)."""
    if source.is_file():
        return read_manifest(source)
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp())
    cmd = [sys.executable, "-m", "client.cli", "data", "prepare", "kaldi", str(source), str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return [u for m in sorted(out.glob("*.jsonl")) for u in read_manifest(m)]


@dataclasses.dataclass
class Row:
    system: str
    cpu_rtf: float
    wall_rtf: float
    wer: float
    # against PocketSphinx on the same utterances (paired bootstrap): WER difference and its 95 % interval
    delta_vs_ps: float = 0.0
    delta_low: float = 0.0
    delta_high: float = 0.0
    p_better_than_ps: float = 0.0


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def run_ours(model: Any, waves: list[Any], options: Any, batch_size: int) -> list[str]:
    from asr.transcribe import transcribe_batch

    return [normalize_text(t.text) for t in transcribe_batch(model, waves, options, batch_size=batch_size)]


def run_pocketsphinx(waves: list[np.ndarray]) -> list[str]:
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")
    out = []
    for w in waves:
        decoder.start_utt()
        decoder.process_raw(float_to_pcm16(w), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        out.append(normalize_text(hyp.hypstr) if hyp is not None else "")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder (e.g. speechocean762/test)")
    p.add_argument(
        "--model", nargs="+", default=[None], metavar="CKPT",
        help="checkpoint(s), each with its own rows (default: models/default.pt)",
    )
    p.add_argument(
        "--limit", type=int,
        help="only N utterances, spread evenly over the set (every k-th: all speakers, not the first few)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; PocketSphinx uses 1)")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--ctc-weight", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=1, help="recordings per model call (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (give a manifest or a Kaldi data folder)", file=sys.stderr)
        return 0
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        print("skipped: pocketsphinx is not installed (pip install pocketsphinx)", file=sys.stderr)
        return 0

    import torch

    from asr import DecodingOptions, load_model
    from asr.data.dataset import load_utterance
    from asr.evaluate import score_utterances
    from asr.significance import paired_bootstrap

    torch.set_num_threads(args.threads)
    utts = [u for u in read_utterances(args.data) if normalize_text(u.text)]
    if args.limit and args.limit < len(utts):
        step = len(utts) / args.limit
        utts = [utts[int(i * step)] for i in range(args.limit)]
    waves: list[Any] = [load_utterance(u) for u in utts]
    refs = [normalize_text(u.text) for u in utts]
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    greedy = DecodingOptions(method="greedy")
    beam = DecodingOptions(method="beam", beam_size=args.beam, ctc_weight=args.ctc_weight)
    paths = [m or "models/default.pt" for m in args.model]
    systems: list[tuple[str, Any, tuple[Any, ...]]] = [("pocketsphinx 5 (en-us)", run_pocketsphinx, (waves,))]
    for i, path in enumerate(paths):
        model = load_model(path, device="cpu")
        ours = "ours" if len(paths) == 1 else f"ours {i + 1}"
        systems.append((f"{ours}, greedy CTC", run_ours, (model, waves, greedy, args.batch_size)))
        systems.append((f"{ours}, joint beam {args.beam}", run_ours, (model, waves, beam, args.batch_size)))
        run_ours(model, waves[:2], greedy, 2)  # warm-up
    run_pocketsphinx(waves[:1])

    rows, scored = [], []
    for name, fn, fargs in systems:
        hyps, cpu, wall = timed(fn, *fargs)
        per_utt = score_utterances(utts, refs, hyps)
        errors, words = sum(r.word_errors for r in per_utt), sum(r.words for r in per_utt)
        rows.append(Row(name, cpu / seconds, wall / seconds, errors / max(1, words)))
        scored.append(per_utt)
        print(f"  {name}: done ({wall:.0f} s)", file=sys.stderr)
    for row, per_utt in zip(rows[1:], scored[1:], strict=True):
        c = paired_bootstrap(scored[0], per_utt)
        row.delta_vs_ps, row.delta_low, row.delta_high = c.delta, c.low, c.high
        row.p_better_than_ps = c.p_b_better

    ps = rows[0]
    print(f"data: {args.data}, {len(waves)} utterances, {seconds:.0f} s of audio")
    labels = paths if len(paths) == 1 else [f"{i + 1}: {m}" for i, m in enumerate(paths)]
    print(f"model: {', '.join(labels)}; torch threads {args.threads}, batch {args.batch_size}")
    print(
        f"{'system':<24} | {'CPU RTF':>8} | {'wall RTF':>8} | {'x PS (CPU)':>10} | {'WER':>6} | "
        f"{'WER - PS [95 % interval]':>25} | {'better than PS':>14}"
    )
    for r in rows:
        vs = (
            f"{100 * r.delta_vs_ps:+6.1f} [{100 * r.delta_low:+6.1f}, {100 * r.delta_high:+6.1f}] | "
            f"{r.p_better_than_ps:13.1%}"
            if r is not ps
            else f"{'':>25} | {'':>14}"
        )
        print(
            f"{r.system:<24} | {r.cpu_rtf:8.4f} | {r.wall_rtf:8.4f} | {ps.cpu_rtf / r.cpu_rtf:9.1f}x | "
            f"{100 * r.wer:5.1f}% | {vs}"
        )
    print("(WER - PS: paired bootstrap over speakers; better than PS: share of resamples with fewer errors)")
    if args.json:
        print(
            json.dumps(
                {
                    "utterances": len(waves),
                    "audio_seconds": seconds,
                    "threads": args.threads,
                    "batch_size": args.batch_size,
                    "models": paths,
                    "rows": [dataclasses.asdict(r) for r in rows],
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
