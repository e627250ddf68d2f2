"""How sure is an error rate? Bootstrap confidence intervals and paired comparisons of two systems.

An error rate measured on a few hundred utterances moves by points from one sample of speakers to the next,
so a difference between two models needs an interval, not a guess at "the noise of this set". Both
statistics here resample the test set with replacement (Bisani & Ney 2004, "Bootstrap estimates for
confidence intervals in ASR performance evaluation"):

* :func:`bootstrap_interval` -- the interval that holds the error rate in ``confidence`` of the resamples;
* :func:`paired_bootstrap` -- two systems scored on the same utterances: the interval of their difference
  and the share of resamples in which the second one makes fewer errors ("probability of improvement").

Utterances of one speaker are not independent (one speaker is hard for every model), so when every
utterance names its speaker the resampling draws whole speakers (a block bootstrap); otherwise it draws
utterances. The rows are :class:`asr.evaluate.UtteranceResult` or the JSONL that ``asr eval --errors``
writes; ``asr compare A.jsonl B.jsonl`` runs the paired test on two such files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

METRICS = ("wer", "cer")
DEFAULT_SAMPLES = 2000
Metric = Literal["wer", "cer"]


@dataclass(frozen=True)
class Counts:
    """One utterance's errors and reference length, in words and in characters."""

    id: str
    speaker: str
    word_errors: int
    words: int
    char_errors: int
    chars: int

    @classmethod
    def from_row(cls, row: Any) -> Counts:
        """From an :class:`~asr.evaluate.UtteranceResult` (a dataclass) or a dict (an ``--errors`` line)."""
        if isinstance(row, Counts):
            return row
        d: dict[str, Any] = dict(row) if isinstance(row, Mapping) else asdict(row)
        missing = [k for k in ("id", "word_errors", "words", "char_errors", "chars") if d.get(k) is None]
        if missing:
            raise ValueError(f"an error row lacks {missing}: expected the lines 'asr eval --errors' writes")
        return cls(
            str(d["id"]),
            str(d.get("speaker") or ""),
            int(d["word_errors"]),
            int(d["words"]),
            int(d["char_errors"]),
            int(d["chars"]),
        )


@dataclass(frozen=True)
class Interval:
    """An error rate and its bootstrap confidence interval (fractions, not percent)."""

    value: float
    low: float
    high: float
    confidence: float
    blocks: int  # speakers (or utterances) resampled
    by: str  # "speaker" or "utterance"


@dataclass(frozen=True)
class Comparison:
    """System B against system A on the same utterances; ``delta`` is B - A (negative: B is better)."""

    metric: str
    a: float
    b: float
    delta: float
    low: float  # the confidence interval of delta
    high: float
    p_b_better: float  # share of resamples in which B makes fewer errors than A
    confidence: float
    utts: int
    blocks: int
    by: str

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.high < 0 or self.low > 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def load_counts(path: str | Path) -> list[Counts]:
    """The rows of an ``asr eval --errors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such error file: {path} (write one: asr eval MANIFEST --errors FILE)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(Counts.from_row(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    if not rows:
        raise ValueError(f"{path} holds no utterances")
    return rows


def _block_index(rows: Sequence[Counts]) -> tuple[np.ndarray, int, str]:
    """Each row's resampling block ``(N,)``, the number of blocks and what a block is."""
    by = "speaker" if rows and all(r.speaker for r in rows) else "utterance"
    keys = [r.speaker if by == "speaker" else r.id for r in rows]
    where = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.array([where[k] for k in keys], dtype=np.int64), len(where), by


def _sums(
    rows: Sequence[Counts], index: np.ndarray, blocks: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Errors and reference length per block, ``(K,)`` each."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    errors = [r.word_errors if metric == "wer" else r.char_errors for r in rows]
    length = [r.words if metric == "wer" else r.chars for r in rows]
    return np.bincount(index, errors, blocks), np.bincount(index, length, blocks)


def _draws(blocks: int, samples: int, seed: int) -> np.ndarray:
    if samples < 100:
        raise ValueError(f"samples must be at least 100 for a usable interval, got {samples}")
    return np.random.default_rng(seed).integers(0, blocks, size=(samples, blocks))  # (S, K)


def _check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}; e.g. 0.95")


def bootstrap_interval(
    rows: Iterable[Any],
    metric: Metric = "wer",
    *,
    confidence: float = 0.95,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> Interval:
    """The error rate of ``rows`` and its percentile bootstrap interval."""
    _check_confidence(confidence)
    counts = [Counts.from_row(r) for r in rows]
    index, blocks, by = _block_index(counts)
    errors, length = _sums(counts, index, blocks, metric)
    if length.sum() == 0:
        raise ValueError("the references hold no words: no error rate to bound")
    draws = _draws(len(errors), samples, seed)
    rates = errors[draws].sum(1) / np.maximum(length[draws].sum(1), 1)  # (S,)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return Interval(float(errors.sum() / length.sum()), float(low), float(high), confidence, len(errors), by)


def paired_bootstrap(
    a: Iterable[Any],
    b: Iterable[Any],
    metric: Metric = "wer",
    *,
    confidence: float = 0.95,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compare system B with system A on the utterances both were scored on (matched by id).

    Each resample draws the same blocks for both systems, so what the speakers share (a hard speaker is
    hard for both) cancels out and only the systems' difference varies.
    """
    _check_confidence(confidence)
    rows_a = {c.id: c for c in map(Counts.from_row, a)}
    rows_b = {c.id: c for c in map(Counts.from_row, b)}
    only_a, only_b = rows_a.keys() - rows_b.keys(), rows_b.keys() - rows_a.keys()
    if only_a or only_b:
        raise ValueError(
            f"the two systems were not scored on the same utterances: {len(only_a)} only in A "
            f"(e.g. {sorted(only_a)[:3]}), {len(only_b)} only in B (e.g. {sorted(only_b)[:3]}); "
            "run both with the same manifest and --limit"
        )
    for k, ra in rows_a.items():
        rb = rows_b[k]
        if (ra.words, ra.chars) != (rb.words, rb.chars):
            raise ValueError(f"utterance {k!r} has different references in A and B: not the same test set")
    ordered_a = [rows_a[k] for k in sorted(rows_a)]
    ordered_b = [rows_b[r.id] for r in ordered_a]
    index, blocks, by = _block_index(ordered_a)  # both systems in A's blocks: the same utterances
    err_a, length = _sums(ordered_a, index, blocks, metric)
    err_b, _ = _sums(ordered_b, index, blocks, metric)
    if length.sum() == 0:
        raise ValueError("the references hold no words: nothing to compare")
    draws = _draws(len(length), samples, seed)
    n = np.maximum(length[draws].sum(1), 1)
    delta = (err_b[draws].sum(1) - err_a[draws].sum(1)) / n  # (S,)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(delta, [tail, 100 - tail])
    rate_a, rate_b = err_a.sum() / length.sum(), err_b.sum() / length.sum()
    return Comparison(
        metric,
        float(rate_a),
        float(rate_b),
        float(rate_b - rate_a),
        float(low),
        float(high),
        float((delta < 0).mean()),
        confidence,
        len(ordered_a),
        blocks,
        by,
    )


def format_comparison(c: Comparison, names: tuple[str, str] = ("A", "B")) -> str:
    pct = 100.0
    verdict = (
        f"{names[1]} is {'better' if c.delta < 0 else 'worse'}"
        if c.significant
        else f"no significant difference at {c.confidence:.0%}"
    )
    return (
        f"{c.metric.upper()}  {names[0]} {pct * c.a:.2f} %  {names[1]} {pct * c.b:.2f} %  "
        f"{names[1]} - {names[0]} {pct * c.delta:+.2f} points, {c.confidence:.0%} interval "
        f"[{pct * c.low:+.2f}, {pct * c.high:+.2f}]; {names[1]} better in {c.p_b_better:.1%} of resamples: "
        f"{verdict}"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="is one system's error rate really lower? (paired bootstrap of two 'asr eval --errors' files)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  asr eval valid.jsonl --errors a.jsonl\n"
        "  asr eval valid.jsonl --model exp/new/final.pt --errors b.jsonl\n  asr compare a.jsonl b.jsonl",
    )
    p.add_argument("a", type=Path, help="per-utterance errors of system A (asr eval --errors)")
    p.add_argument("b", type=Path, help="per-utterance errors of system B, on the same utterances")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default: 0.95)")
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help=f"resamples (default: {DEFAULT_SAMPLES})"
    )
    p.add_argument("--seed", type=int, default=0, help="resampling seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object (wer, cer comparisons) last")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = load_counts(args.a), load_counts(args.b)
    kw: dict[str, Any] = {"confidence": args.confidence, "samples": args.samples, "seed": args.seed}
    results = {m: paired_bootstrap(a, b, m, **kw) for m in METRICS}  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({m: c.to_dict() for m, c in results.items()}))
        return 0
    first = results["wer"]
    print(f"A: {args.a}\nB: {args.b}")
    print(f"{first.utts} utterances in both, {args.samples} resamples of {first.blocks} {first.by}s")
    for c in results.values():
        print(format_comparison(c))
    return 0


def describe(interval: Interval) -> str:
    """An interval as text: ``52.00 % [49.1, 54.9]``."""
    return f"{100 * interval.value:.2f} % [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"
