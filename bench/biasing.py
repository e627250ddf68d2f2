"""Phrase hints (contextual biasing) on real speech: error rates with and without hints, side by side.

    python bench/biasing.py exp/data/so762/valid.jsonl --boosts 0.5 1 1.5 --distractors 20

The protocol of the biasing literature (Le et al. 2021, "Contextualized streaming end-to-end speech
recognition with trie-based deep biasing"): each utterance's hint list holds the rare words of its own
reference (``--min-letters`` letters or more, outside the ``--common`` most frequent words of the manifest)
plus ``--distractors`` rare words drawn from other utterances, shuffled. Columns:

* WER / CER over everything;
* B-WER: errors on the hinted words of the references (substitutions and deletions of them, from a word
  alignment), over their count; U-WER: the same for all other words: biasing should lower B-WER without
  raising U-WER much;
* RTF: decoding time over audio (one utterance at a time: each has its own hints).

Row "no hints" is the default decoding. The same files, model and beam for every row.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.tokenizer import normalize_text  # noqa: E402
from bench.offline_speed import read_utterances  # noqa: E402


def hint_lists(
    refs: list[str], min_letters: int, common: int, distractors: int, seed: int = 0
) -> list[tuple[str, ...]]:
    """Per utterance: its rare words plus ``distractors`` rare words of other utterances."""
    counts = Counter(w for r in refs for w in r.split())
    frequent = {w for w, _ in counts.most_common(common)}
    rare = [sorted({w for w in r.split() if len(w) >= min_letters and w not in frequent}) for r in refs]
    pool = sorted({w for words in rare for w in words})
    rng = random.Random(seed)
    out = []
    for words in rare:
        others = [w for w in pool if w not in words]
        hints = words + rng.sample(others, min(distractors, len(others)))
        rng.shuffle(hints)
        out.append(tuple(hints))
    return out


def biased_errors(ref: str, hyp: str, hinted: set[str]) -> tuple[int, int, int, int]:
    """(errors on hinted reference words, hinted words, errors on the others, other words); insertions are
    counted with the other words."""
    import jiwer

    r, h = ref.split(), hyp.split()
    if not h:
        b = sum(w in hinted for w in r)
        return b, b, len(r) - b, len(r) - b
    out = jiwer.process_words(ref, hyp)
    b_err = u_err = 0
    for chunk in out.alignments[0]:
        words = r[chunk.ref_start_idx : chunk.ref_end_idx]
        if chunk.type in ("substitute", "delete"):
            b_err += sum(w in hinted for w in words)
            u_err += sum(w not in hinted for w in words)
        elif chunk.type == "insert":
            u_err += chunk.hyp_end_idx - chunk.hyp_start_idx
    b_all = sum(w in hinted for w in r)
    return b_err, b_all, u_err, len(r) - b_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("data", type=Path, help="JSONL manifest or Kaldi data folder")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--limit", type=int, default=0, help="first N utterances (0: all)")
    p.add_argument("--boosts", type=float, nargs="+", default=[0.5, 1.0, 1.5], help="phrase boosts to try")
    p.add_argument("--distractors", type=int, default=20, help="other utterances' words per hint list")
    p.add_argument("--min-letters", type=int, default=4, help="shortest word that can be a hint")
    p.add_argument("--common", type=int, default=100, help="the most frequent words are never hints")
    p.add_argument("--beam", type=int, default=10, help="beam size")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    if args.limit < 0 or args.threads < 1 or args.distractors < 0 or any(b < 0 for b in args.boosts):
        p.error("--limit, --distractors and --boosts must be >= 0, --threads >= 1")

    import jiwer
    import torch

    from asr.checkpoint import load_model
    from asr.data.dataset import load_utterance
    from asr.decoding import DecodingOptions
    from asr.transcribe import transcribe

    torch.set_num_threads(args.threads)
    utts = [u for u in read_utterances(args.data) if normalize_text(u.text)]
    if args.limit:
        utts = utts[: args.limit]
    if not utts:
        p.error(f"no utterances with text in {args.data}")
    model = load_model(args.model, device="cpu")
    refs = [normalize_text(u.text) for u in utts]
    waves = [load_utterance(u) for u in utts]
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    hints = hint_lists(refs, args.min_letters, args.common, args.distractors)
    n_hinted = sum(len(set(r.split()) & set(h)) for r, h in zip(refs, hints, strict=True))
    print(
        f"{len(utts)} utterances, {audio_s / 60:.1f} min; {n_hinted} hinted reference words; "
        f"hint lists of {sum(map(len, hints)) / len(hints):.1f} words on average",
        file=sys.stderr,
    )
    print("| hints | WER | CER | B-WER | U-WER | RTF |\n|---|---|---|---|---|---|")
    for boost in [None, *args.boosts]:
        hyps = []
        t0 = time.perf_counter()
        for wave, h in zip(waves, hints, strict=True):
            opts = DecodingOptions(beam_size=args.beam, phrases=h if boost else (), phrase_boost=boost or 0.0)
            hyps.append(normalize_text(transcribe(model, wave, opts).text))
        rtf = (time.perf_counter() - t0) / audio_s
        counts = [biased_errors(r, hy, set(h)) for r, hy, h in zip(refs, hyps, hints, strict=True)]
        b_err, b_all, u_err, u_all = (sum(c[i] for c in counts) for i in range(4))
        safe = [h or "<empty>" for h in hyps]
        label = "no hints" if boost is None else f"boost {boost:g}"
        print(
            f"| {label} | {100 * jiwer.wer(refs, safe):.2f} % | {100 * jiwer.cer(refs, safe):.2f} % "
            f"| {100 * b_err / max(1, b_all):.2f} % | {100 * u_err / max(1, u_all):.2f} % | {rtf:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
