"""Speed of each speech synthesiser of `asr data synth`: seconds of 16 kHz audio per CPU second.

    python bench/synth_speed.py --utterances 12
    python bench/synth_speed.py --engines espeak-ng pico --utterances 40 --json

Each engine reads the same sentences (WordNet examples when installed, else a fixed set) one at a
time, in this process, with the corpus builder's own rendering (resampling, pitch shift where the engine
has none). CPU time counts this process and the engine programs it runs, so the number holds on a loaded
machine, where wall time would not; the first utterance of each engine (model loading) is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.data.synth.corpus import Job, cpu_seconds, render  # noqa: E402
from asr.data.synth.engines import ENGINES, EngineUnavailable, get_engine  # noqa: E402
from asr.data.synth.text import WORDNET, wordnet_sentences  # noqa: E402

FALLBACK = [
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "SHE SELLS SEA SHELLS BY THE SEA SHORE",
    "A MEMBER OF THE GENUS CANIS THAT HAS BEEN DOMESTICATED SINCE PREHISTORIC TIMES",
    "WE CALL IT BEAR",
]


def measure(engine_name: str, sentences: list[str]) -> dict[str, float | int | str]:
    engine = get_engine(engine_name)
    engine.check()
    voices = engine.voices()
    audio_s = cpu_s = 0.0
    for i, text in enumerate([sentences[0], *sentences]):
        voice = voices[i % len(voices)]
        start = cpu_seconds()
        audio = render(Job(f"{engine_name}-{i:07d}", engine_name, voice.name, voice.speaker, text, 1.0, 1.0))
        if i:  # the first one loads the model
            audio_s += len(audio) / 16000
            cpu_s += cpu_seconds() - start
    return {
        "engine": engine_name,
        "utterances": len(sentences),
        "audio_s": round(audio_s, 1),
        "cpu_s": round(cpu_s, 2),
        "speed": round(audio_s / cpu_s, 1) if cpu_s else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--utterances", type=int, default=12)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sentences = (
        wordnet_sentences(WORDNET, 6, 16, glosses=False)[::97] if (WORDNET / "data.noun").is_file() else []
    )
    sentences = (sentences or FALLBACK * args.utterances)[: args.utterances]
    rows = []
    for name in args.engines:
        try:
            rows.append(measure(name, sentences))
        except EngineUnavailable as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'engine':<10} {'utts':>5} {'audio s':>8} {'CPU s':>7} {'audio s per CPU s':>18}")
        for r in rows:
            print(
                f"{r['engine']:<10} {r['utterances']:>5} {r['audio_s']:>8} {r['cpu_s']:>7} {r['speed']:>18}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
