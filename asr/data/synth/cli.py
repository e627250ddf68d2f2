"""``asr data synth OUT``: a many-voice synthetic speech corpus as training manifests.

    asr data synth exp/data/synth --hours espeak-ng=8 pico=5 flite=5 festival=3 rhvoice=5 piper=3 kokoro=1 \\
        --text wordnet --text arctic:../shared/data/cathy/cmuarctic.data \\
        --text kaldi:../shared/data/speechocean762/train --nonspeech-hours 1 \\
        --noise-dir ../shared/data/noise --workers 2

Writes OUT/audio/ENGINE/*.flac, OUT/all.jsonl (one row per utterance: engine, voice, person, tempo, pitch),
then OUT/train.jsonl and OUT/valid.jsonl with whole voices held out. Run it again with the same arguments
after a kill and it synthesises only what is missing. ``make synth-deps`` installs the engines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from asr.data.synth.corpus import (
    SynthConfig,
    engine_stats,
    held_out_voices,
    plan_corpus,
    split_manifest,
    synthesize_corpus,
)
from asr.data.synth.engines import ENGINES, get_engine
from asr.data.synth.text import read_source


def _hours(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(
                f"--hours takes ENGINE=HOURS pairs (engines: {', '.join(ENGINES)}), got {item!r}"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--hours {item!r}: {value!r} is not a number of hours") from None
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthesise a many-voice training corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument(
        "--hours", nargs="+", default=[], metavar="ENGINE=H", help=f"engines: {', '.join(ENGINES)}"
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="SOURCE",
        help="wordnet[:DIR], wordnet-examples[:DIR], arctic:FILE, kaldi:DIR, text:FILE (repeatable)",
    )
    p.add_argument(
        "--nonspeech-hours", type=float, default=0.0, help="clips of silence and noise, empty text"
    )
    p.add_argument("--noise-dir", default="", help="background recordings for the non-speech clips")
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(
        hours=_hours(args.hours),
        nonspeech_hours=args.nonspeech_hours,
        noise_dir=args.noise_dir,
        seed=args.seed,
    )
    engines = [get_engine(name) for name, h in config.hours.items() if h > 0]
    for engine in engines:
        engine.check()  # EngineUnavailable names the package to install
    sentences = list(
        dict.fromkeys(s for spec in args.text for s in read_source(spec, args.min_words, args.max_words))
    )
    words = {w for s in sentences for w in s.split()}
    print(f"{len(sentences)} sentences, {len(words)} distinct words from {len(args.text)} source(s)")
    jobs = plan_corpus(config, sentences)
    start, done, failed = time.monotonic(), 0, 0
    for row, error in synthesize_corpus(jobs, args.out, args.noise_dir, workers=args.workers):
        if row is None:
            failed += 1
            print(f"skipped {error}", file=sys.stderr)
            continue
        done += 1
        if done % 500 == 0:
            print(f"{done} new utterances in {time.monotonic() - start:.0f} s", flush=True)
    held = held_out_voices({e.name: e.voices() for e in engines}, config)
    split = split_manifest(args.out, held)
    print(f"{done} new, {failed} skipped; planned {len(jobs)}")
    print(f"{'engine':<10} {'utts':>7} {'hours':>7} {'voices':>6} {'audio s per CPU s':>18}")
    for name, st in engine_stats(args.out).items():
        print(f"{name:<10} {st.utterances:>7} {st.hours:>7.2f} {len(st.voices):>6} {st.speed:>18.1f}")
    for name, (n, hours) in split.items():
        print(f"{args.out / (name + '.jsonl')}: {n} utterances, {hours:.2f} h")
    return 0
