"""Finals searched while the utterance is heard against finals searched whole, offline (issue 30).

Each utterance of MANIFEST is one final of a chunk-streaming model: its chunked encoder runs over the
recording once, then the joint CTC/attention beam search runs twice over the same encoder frames: whole, as
at an endpoint (``asr.decoding.beam_search``), and growing chunk by chunk with the token limits a stream uses
(``asr.growing_search.UtteranceSearch``, as ``asr.online`` runs it). Prints each one's WER and CER and the
paired difference, resampling speakers where the manifest names them (``asr.significance``); ``--json``
keeps every transcript. No server and no clock: this is the accuracy of the two searches, nothing else.

    python bench/growing_finals.py exp/data/so762/valid.jsonl --model streaming
    python bench/growing_finals.py exp/data/so762_test/all.jsonl --beam 8 --json grown.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asr.checkpoint import load_model  # noqa: E402
from asr.data.dataset import load_utterance  # noqa: E402
from asr.data.manifest import Utterance, read_manifest  # noqa: E402
from asr.decoding import DecodingOptions, beam_search  # noqa: E402
from asr.evaluate import UtteranceResult, score_utterances  # noqa: E402
from asr.growing_search import UtteranceSearch  # noqa: E402
from asr.significance import format_comparison, paired_bootstrap  # noqa: E402
from asr.tokenizer import normalize_text  # noqa: E402
from asr.transcribe import encode_waveforms  # noqa: E402

SEARCHES = ("whole", "grown")


def token_frames(model: Any, enc: torch.Tensor) -> list[int]:
    """The frame of each greedy CTC token of one utterance's encoder frames ``(T, D)``, as a stream notes
    them chunk by chunk."""
    labels = model.ctc_log_probs(enc[None])[0].argmax(-1).tolist()
    frames, last, blank = [], -1, model.tokenizer.blank_id
    for i, label in enumerate(labels):
        if label != blank and label != last:
            frames.append(i)
        last = label
    return frames


@torch.inference_mode()
def decode_both(model: Any, utts: Sequence[Utterance], options: DecodingOptions) -> dict[str, list[str]]:
    """Each utterance's transcript searched whole and grown over its chunked encoder output."""
    chunk = model.config.encoder.chunk_frames
    if chunk <= 0:
        raise SystemExit("the model's encoder is not chunked (encoder.chunk_frames is 0): nothing grows")
    out: dict[str, list[str]] = {name: [] for name in SEARCHES}
    tok = model.tokenizer
    for u in utts:
        enc, lengths, _ = encode_waveforms(model, [load_utterance(u)])
        frames = enc[0, : int(lengths[0])]
        whole = beam_search(model, frames[None], lengths, options)[0][0]
        search = UtteranceSearch(model, options, None, (), None, 0)
        chunks = list(frames.split(chunk))
        grown = search.finish(chunks, token_frames(model, frames), frames.size(0))[0]
        out["whole"].append(tok.decode(whole.tokens))
        out["grown"].append(tok.decode(grown.tokens))
    return out


def score(utts: Sequence[Utterance], hyps: dict[str, list[str]]) -> dict[str, list[UtteranceResult]]:
    refs = [normalize_text(u.text) for u in utts]
    kept = [i for i, r in enumerate(refs) if r]  # an empty reference has no word error rate
    pick = [utts[i] for i in kept]
    return {
        name: score_utterances(pick, [refs[i] for i in kept], [normalize_text(h[i]) for i in kept])
        for name, h in hyps.items()
    }


def rate(rows: Sequence[UtteranceResult], chars: bool = False) -> float:
    errors = sum(r.char_errors if chars else r.word_errors for r in rows)
    total = sum(r.chars if chars else r.words for r in rows)
    return 100.0 * errors / max(total, 1)


def report(scored: dict[str, list[UtteranceResult]]) -> str:
    lines = [f"{len(scored['whole'])} utterances"]
    for name in SEARCHES:
        rows = scored[name]
        lines.append(f"{name:6s} WER {rate(rows):6.2f} %  CER {rate(rows, chars=True):6.2f} %")
    for metric in ("wer", "cer"):
        comparison = paired_bootstrap(scored["whole"], scored["grown"], metric)  # type: ignore[arg-type]
        lines.append(format_comparison(comparison, SEARCHES))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("manifest", type=Path, help="JSONL manifest (audio, text; speaker for paired intervals)")
    p.add_argument("--model", default="streaming", help="a chunk-streaming model: name or checkpoint")
    p.add_argument("--beam", type=int, default=DecodingOptions.beam_size, help="beam size of both searches")
    p.add_argument("--limit", type=int, default=0, help="every k-th utterance, this many (0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, help="write every transcript and error count here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    utts = read_manifest(args.manifest)
    if args.limit:
        utts = utts[:: max(1, len(utts) // args.limit)][: args.limit]
    model = load_model(args.model, device="cpu")
    scored = score(utts, decode_both(model, utts, DecodingOptions(beam_size=args.beam)))
    print(report(scored))
    if args.json:
        rows = {name: [asdict(r) for r in results] for name, results in scored.items()}
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
