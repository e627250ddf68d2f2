"""Evaluation: ``asr eval MANIFEST [--model M] [--json]`` -> WER, CER, real-time factor, utterance count.

The WER and CER come with 95 % bootstrap intervals (by speaker when the manifest names them,
:mod:`asr.significance`); ``--errors FILE`` keeps the per-utterance counts, and ``asr compare A B`` tells
whether one system's errors are really fewer than another's on the same utterances.
Both references and hypotheses go through :func:`asr.tokenizer.normalize_text` before scoring (jiwer).
The real-time factor is decoding time (features, encoder, search, word alignment) over audio duration;
reading and decoding the audio files is timed separately (``load_seconds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from tqdm import tqdm

from asr.audio import SAMPLE_RATE
from asr.checkpoint import load_model
from asr.data.dataset import load_utterance
from asr.data.manifest import Utterance, read_manifest
from asr.decoding import DecodingOptions, LanguageModel
from asr.lm_cli import add_lm_arguments, beam_from_args, ctc_weight_from_args, lm_from_args
from asr.model import ASRModel
from asr.significance import Interval, Metric, bootstrap_interval, describe
from asr.tokenizer import normalize_text
from asr.transcribe import transcribe_batch
from asr.tta import add_tta_argument


@dataclass(frozen=True)
class UtteranceResult:
    id: str
    ref: str
    hyp: str
    word_errors: int
    words: int
    char_errors: int
    chars: int
    speaker: str = ""


@dataclass(frozen=True)
class EvalResult:
    wer: float
    cer: float
    rtf: float
    utts: int
    audio_seconds: float
    decode_seconds: float
    load_seconds: float
    skipped: int  # utterances whose reference normalises to nothing
    substitutions: int
    deletions: int
    insertions: int
    words: int
    per_utterance: tuple[UtteranceResult, ...] = ()

    def by_speaker(self) -> list[dict[str, Any]]:
        """WER and CER of each speaker (utterances without one count as speaker ""), worst WER first."""
        groups: dict[str, list[UtteranceResult]] = {}
        for r in self.per_utterance:
            groups.setdefault(r.speaker, []).append(r)
        rows = [
            {
                "speaker": spk,
                "utts": len(rs),
                "words": sum(r.words for r in rs),
                "wer": sum(r.word_errors for r in rs) / max(1, sum(r.words for r in rs)),
                "cer": sum(r.char_errors for r in rs) / max(1, sum(r.chars for r in rs)),
            }
            for spk, rs in groups.items()
        ]
        return sorted(rows, key=lambda d: (-d["wer"], d["speaker"]))

    def interval(self, metric: Metric = "wer", confidence: float = 0.95) -> Interval:
        """The bootstrap confidence interval of the WER or CER (resampling speakers when known)."""
        return bootstrap_interval(self.per_utterance, metric, confidence=confidence)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["per_utterance"]
        if self.per_utterance:
            wer, cer = self.interval("wer"), self.interval("cer")
            d["wer_ci95"], d["cer_ci95"] = [wer.low, wer.high], [cer.low, cer.high]
            d["ci_by"] = wer.by
        return d


def _counts(refs: Sequence[str], hyps: Sequence[str]) -> tuple[Any, Any]:
    return jiwer.process_words(list(refs), list(hyps)), jiwer.process_characters(list(refs), list(hyps))


def score_utterances(
    utts: Sequence[Utterance], refs: Sequence[str], hyps: Sequence[str]
) -> list[UtteranceResult]:
    """Per-utterance word and character errors of normalised ``hyps`` against normalised ``refs``."""
    out = []
    for u, ref, hyp in zip(utts, refs, hyps, strict=True):
        w, c = _counts([ref], [hyp])
        word_errors = w.substitutions + w.deletions + w.insertions
        char_errors = c.substitutions + c.deletions + c.insertions
        out.append(
            UtteranceResult(u.id, ref, hyp, word_errors, len(ref.split()), char_errors, len(ref), u.speaker)
        )
    return out


def evaluate(
    model: ASRModel,
    utts: Sequence[Utterance],
    options: DecodingOptions | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
    lm: LanguageModel | None = None,
) -> EvalResult:
    """Decode ``utts`` with ``model`` (fusing ``lm`` if given) and score them against their transcripts."""
    options = options or DecodingOptions()
    kept = [u for u in utts if normalize_text(u.text)]
    if not kept:
        raise ValueError("nothing to evaluate: no utterance has a non-empty transcript")
    order = sorted(
        range(len(kept)), key=lambda i: -(kept[i].duration or 0.0)
    )  # long first: memory peaks early
    hyps: dict[int, str] = {}
    audio_seconds = decode_seconds = load_seconds = 0.0
    chunk = max(1, batch_size) * 4
    bar = tqdm(total=len(kept), desc="decoding", disable=not progress, file=sys.stderr)
    for k in range(0, len(order), chunk):
        idx = order[k : k + chunk]
        t0 = time.perf_counter()
        waves: list[np.ndarray] = [load_utterance(kept[i]) for i in idx]
        t1 = time.perf_counter()
        results = transcribe_batch(model, list(waves), options, batch_size=batch_size, lm=lm)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t2 = time.perf_counter()
        load_seconds += t1 - t0
        decode_seconds += t2 - t1
        audio_seconds += sum(len(w) for w in waves) / SAMPLE_RATE
        hyps.update((i, normalize_text(r.text)) for i, r in zip(idx, results, strict=True))
        bar.update(len(idx))
    bar.close()
    refs = [normalize_text(u.text) for u in kept]
    hyp_list = [hyps[i] for i in range(len(kept))]
    words, chars = _counts(refs, hyp_list)
    per_utt = score_utterances(kept, refs, hyp_list)
    return EvalResult(
        wer=float(words.wer),
        cer=float(chars.cer),
        rtf=decode_seconds / max(audio_seconds, 1e-9),
        utts=len(kept),
        audio_seconds=audio_seconds,
        decode_seconds=decode_seconds,
        load_seconds=load_seconds,
        skipped=len(utts) - len(kept),
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        words=sum(len(r.split()) for r in refs),
        per_utterance=tuple(per_utt),
    )


def write_errors(result: EvalResult | Sequence[UtteranceResult], path: str | Path) -> None:
    """Per-utterance results as JSONL, worst first (what ``asr compare`` reads)."""
    results = result.per_utterance if isinstance(result, EvalResult) else result
    rows = sorted(results, key=lambda r: (-r.word_errors, -r.char_errors, r.id))
    with Path(path).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="word/character error rate and real-time factor on a manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  asr eval exp/data/so762_test/all.jsonl --model exp/default/final.pt --json",
    )
    p.add_argument("manifest", type=Path, help="JSONL manifest (fields audio and text are enough)")
    p.add_argument("--model", help="checkpoint path or model name (default: the bundled default model)")
    p.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--method", choices=("greedy", "beam"), help="decoding method (default: beam)")
    p.add_argument("--beam", type=int, help="beam size")
    p.add_argument("--ctc-weight", type=float, help="CTC weight in joint decoding")
    add_tta_argument(p)
    add_lm_arguments(p)
    p.add_argument("--batch-size", type=int, default=16, help="utterances decoded together (default: 16)")
    p.add_argument("--limit", type=int, help="only the first N utterances of the manifest")
    p.add_argument(
        "--errors", type=Path, help="write per-utterance results (JSONL, worst first) to this file"
    )
    p.add_argument(
        "--by-speaker",
        action="store_true",
        help="also report each speaker's WER and CER (the manifest's speaker field), worst first",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (wer, cer, rtf, utts, ...) last"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    utts = read_manifest(args.manifest)
    if args.limit is not None:
        utts = utts[: args.limit]
    options = DecodingOptions()
    changes: dict[str, Any] = {}
    if args.method:
        changes["method"] = args.method
    changes["beam_size"] = beam_from_args(args, options.beam_size)
    changes["ctc_weight"] = ctc_weight_from_args(args, options.ctc_weight)
    if args.tta_speeds is not None:
        changes["tta_speeds"] = args.tta_speeds
    model = load_model(args.model, device=args.device)
    lm, changes["lm_weight"] = lm_from_args(args, model)
    options = dataclasses.replace(options, **changes)
    result = evaluate(model, utts, options, batch_size=args.batch_size, progress=sys.stderr.isatty(), lm=lm)
    if args.errors:
        write_errors(result, args.errors)
    speakers = result.by_speaker() if args.by_speaker else []
    if args.json:
        print(json.dumps({**result.to_dict(), **({"speakers": speakers} if args.by_speaker else {})}))
        return 0
    if speakers:
        print(f"{'speaker':<16} {'utts':>5} {'words':>6} {'WER':>8} {'CER':>8}")
        for d in speakers:
            name = d["speaker"] or "(none)"
            print(f"{name:<16} {d['utts']:5d} {d['words']:6d} {100 * d['wer']:7.2f}% {100 * d['cer']:7.2f}%")
    print(
        f"utterances  {result.utts}" + (f" ({result.skipped} without text skipped)" if result.skipped else "")
    )
    print(f"audio       {result.audio_seconds / 3600:.2f} h")
    wer = result.interval("wer")
    print(
        f"WER         {describe(wer)}  ({result.substitutions} sub, {result.deletions} del, "
        f"{result.insertions} ins of {result.words} words)"
    )
    print(f"CER         {describe(result.interval('cer'))}")
    print(f"            [95 % bootstrap intervals over {wer.blocks} {wer.by}s]")
    print(
        f"RTF         {result.rtf:.4f}  ({result.decode_seconds:.1f} s decoding on {model.device}, "
        f"{'greedy' if options.method == 'greedy' else f'beam {options.beam_size}'}"
        f"{f', speeds 1.0 + {options.tta_speeds}' if options.tta_speeds else ''}"
        f"{f', LM weight {options.lm_weight}' if lm is not None else ''})"
    )
    return 0
