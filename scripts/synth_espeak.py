"""Synthetic training speech: general-English sentences read by espeak-ng in many voices, as a manifest.

An experiment of session 17 (docs/TRAINING_LOG.md, "Synthetic speech"): the speechocean762 training
transcripts hold 2,340 sentences and 1,815 words, and 97.9 % of the test sentences are not among them, so the
model hears few words. This reads the example sentences of WordNet's glosses (Debian ``wordnet-base``) with
espeak-ng's English accents and voice variants at random pitch and rate, resamples them to 16 kHz, adds white
noise at a random SNR and writes FLAC files with a JSONL manifest that ``asr train`` can mix in.

    python scripts/synth_espeak.py exp/data/synth --hours 2.0 --seed 17
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import SAMPLE_RATE, decode_audio
from asr.tokenizer import normalize_text

WORDNET = Path("/usr/share/wordnet")
ACCENTS = "en-us en-us en-us en-gb en-gb-x-rp en-gb-scotland en-gb-x-gbclan en-gb-x-gbcwmd en-029 en-us-nyc"
VARIANTS = (
    "f1 f2 f3 f4 f5 m1 m2 m3 m4 m5 m6 m7 klatt klatt2 klatt3 klatt4 anika linda steph aunty belinda shelby "
    "annie alicia andy john max paul rob zac travis quincy victor adam david"
)


def wordnet_examples(root: Path, min_words: int, max_words: int) -> list[str]:
    """The quoted example sentences of WordNet's glosses, normalised, without repeats, in a fixed order."""
    seen: dict[str, None] = {}
    for part in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{part}"
        if not path.is_file():
            continue
        text = path.read_text(encoding="latin-1")
        for quoted in re.findall(r'"([^"]+)"', text):
            if re.search(r"[0-9]", quoted):  # digits would be read out in words the transcript lacks
                continue
            norm = normalize_text(quoted)
            if min_words <= len(norm.split()) <= max_words:
                seen.setdefault(norm, None)
    return list(seen)


def synthesize(job: tuple[int, str, str, int, int, float, str]) -> dict | None:
    index, text, voice, pitch, rate, snr_db, out_dir = job
    proc = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", text.lower()],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        return None
    wave = decode_audio(proc.stdout, SAMPLE_RATE)  # espeak-ng's 22.05 kHz WAV, resampled as any input is
    rng = np.random.default_rng(index)
    power = float(np.mean(wave**2)) or 1e-8
    wave = wave + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), wave.shape).astype(np.float32)
    wave = np.clip(wave, -1.0, 1.0)
    path = Path(out_dir) / "audio" / f"synth{index:06d}.flac"
    sf.write(path, wave, SAMPLE_RATE)
    return {
        "id": f"synth{index:06d}",
        "audio": str(path.resolve()),
        "text": text,
        "speaker": voice,
        "duration": round(len(wave) / SAMPLE_RATE, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output folder: audio/ and all.jsonl")
    parser.add_argument("--hours", type=float, default=2.0, help="stop after this much audio (default 2.0)")
    parser.add_argument("--min-words", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=14)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--wordnet", type=Path, default=WORDNET, help=f"WordNet's dict folder (default {WORDNET})"
    )
    args = parser.parse_args(argv)
    sentences = wordnet_examples(args.wordnet, args.min_words, args.max_words)
    if not sentences:
        sys.exit(
            f"no example sentences in {args.wordnet}: install Debian's wordnet-base, or pass --wordnet DIR"
        )
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed: apt-get install espeak-ng")
    rng = random.Random(args.seed)
    rng.shuffle(sentences)
    (args.out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = []
    for index, text in enumerate(sentences):
        child = rng.random() < 0.4  # speechocean762 is largely children: high pitch, slow reading
        voice = f"{rng.choice(ACCENTS.split())}+{rng.choice(VARIANTS.split())}"
        pitch = rng.randint(65, 99) if child else rng.randint(25, 75)
        rate = rng.randint(105, 150) if child else rng.randint(120, 180)
        jobs.append((index, text, voice, pitch, rate, rng.uniform(15.0, 40.0), str(args.out)))
    total, rows = 0.0, []
    with Pool(args.workers) as pool, (args.out / "all.jsonl").open("w") as manifest:
        for row in pool.imap(synthesize, jobs, chunksize=8):
            if row is None:
                continue
            manifest.write(json.dumps(row) + "\n")
            rows.append(row)
            total += row["duration"]
            if total >= args.hours * 3600:
                pool.terminate()
                break
    kept = {Path(r["audio"]).name for r in rows}
    for path in (args.out / "audio").glob("synth*.flac"):  # read ahead by the pool after the last kept one
        if path.name not in kept:
            path.unlink()
    words = {w for r in rows for w in r["text"].split()}
    print(
        f"{len(rows)} utterances, {total / 3600:.2f} h, {len(words)} distinct words, "
        f"from {len(sentences)} sentences -> {args.out / 'all.jsonl'}"
    )


if __name__ == "__main__":
    main()
