"""``asr lm``: train a language model for a model's tokenizer, and measure its perplexity.

    asr lm train TEXTS... -o models/my.lm [--model M] [--order 6] [--valid TEXTS...]
    asr lm train --kind word [TEXTS...] [--counts FILE...] [--oov 0.001] -o models/english.wlm
    asr lm perplexity LM TEXTS... [--model M]

``--kind ngram`` (the default) counts token n-grams; ``--kind word`` builds a word bigram LM that scores one
character at a time (:mod:`asr.word_lm`, character models only) from the words of TEXTS and from count files
(``WORD COUNT`` and ``WORD WORD COUNT`` lines, e.g. the English frequency lists that ship with the PyPI
package ``symspellpy``, made from Google Books n-grams).

TEXTS are JSONL manifests (their ``text`` fields), Kaldi ``text`` files (``--format kaldi``: each line's
first field is an utterance id) or plain text, one sentence per line, normalised as for training.
The LM counts the model's own token ids, so it is tied to that model's tokenizer (checked when it is loaded):
decode with it through ``--lm`` of ``asr transcribe``, ``asr eval`` and ``asr serve``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from asr.checkpoint import load_model
from asr.lm import DEFAULT_LM_WEIGHT, NGramLM, load_lm
from asr.model import ASRModel
from asr.model_decoding import ModelDecoding
from asr.tokenizer import CharTokenizer, SentencePieceTokenizer, normalize_text
from asr.word_lm import Counts, PairCounts, WordLM, WordLMConfig, add_text_counts

Tokenizer = CharTokenizer | SentencePieceTokenizer

FORMATS = ("auto", "text", "jsonl", "kaldi")
TEXTS_HELP = "manifests (.jsonl), Kaldi text or plain text files"


def read_texts(paths: Sequence[str | Path], fmt: str = "auto") -> Iterator[str]:
    """Normalised non-empty sentences from manifests, Kaldi ``text`` files or plain text files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown text format {fmt!r}; expected one of {', '.join(FORMATS)}")
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no such text file: {path}")
        kind = fmt if fmt != "auto" else ("jsonl" if path.suffix == ".jsonl" else "text")
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if kind == "jsonl":
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}:{n}: not a JSON object with a 'text' field") from None
                elif kind == "kaldi":
                    fields = line.split(maxsplit=1)
                    text = fields[1] if len(fields) > 1 else ""
                else:
                    text = line
                text = normalize_text(str(text))
                if text:
                    yield text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm",
        help="train a language model for shallow fusion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="lm_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="count a token n-gram LM from text",
        epilog="Example:\n  asr lm train exp/data/so762/train.jsonl corpus.txt -o models/my.lm --order 6",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("texts", nargs="*", metavar="TEXTS", help=TEXTS_HELP)
    t.add_argument("--kind", choices=("ngram", "word"), default="ngram", help="token n-gram or word LM")
    t.add_argument(
        "--counts",
        nargs="+",
        default=[],
        type=Path,
        metavar="FILE",
        help="word LM: files of 'WORD COUNT' and 'WORD WORD COUNT' lines, added to the counts of TEXTS",
    )
    t.add_argument(
        "-o", "--output", required=True, type=Path, help="where to write the LM (by convention NAME.lm)"
    )
    t.add_argument("--order", type=int, default=6, help="n-gram order in tokens (default: 6)")
    t.add_argument(
        "--oov",
        type=float,
        default=WordLMConfig.oov,
        help="word LM: share of each character's probability left to spellings outside the vocabulary "
        f"(default: {WordLMConfig.oov}; lower keeps the search to known words)",
    )
    t.add_argument("--valid", nargs="+", metavar="TEXTS", help="report perplexity on these texts")
    _common(t)
    t.set_defaults(func=run_train)
    q = sub.add_parser("perplexity", help="per-token perplexity of an LM on text")
    q.add_argument("lm", type=Path, help="the LM file from 'asr lm train'")
    q.add_argument("texts", nargs="+", metavar="TEXTS", help=TEXTS_HELP)
    _common(q)
    q.set_defaults(func=run_perplexity)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model whose tokenizer the LM counts (default: the bundled model)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="how to read TEXTS (default: by suffix)")


def read_counts(paths: Sequence[Path]) -> tuple[Counts, PairCounts]:
    """Word and word-pair counts from ``WORD COUNT`` / ``WORD WORD COUNT`` lines, normalised as for training
    (entries that normalise to nothing or to other word counts are dropped)."""
    unigrams: Counts = defaultdict(float)
    bigrams: PairCounts = defaultdict(float)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such counts file: {path}")
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    count = float(fields[-1])
                except ValueError:
                    raise ValueError(f"{path}:{n}: expected 'WORD COUNT' or 'WORD WORD COUNT'") from None
                words = [normalize_text(w) for w in fields[:-1]]
                if len(words) not in (1, 2) or any(not w or " " in w for w in words):
                    continue
                if len(words) == 1:
                    unigrams[words[0]] += count
                else:
                    bigrams[(words[0], words[1])] += count
    return unigrams, bigrams


def _train(args: argparse.Namespace, tokenizer: Tokenizer) -> tuple[NGramLM | WordLM, int]:
    texts = list(read_texts(args.texts, args.format))
    if args.kind == "ngram":
        if args.counts or args.oov != WordLMConfig.oov:
            raise ValueError("--counts and --oov build a word LM: add --kind word")
        if not texts:
            raise ValueError(f"no text in {' '.join(args.texts) or '(no TEXTS given)'}")
        return NGramLM.train(texts, tokenizer, order=args.order), len(texts)
    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError("--kind word scores characters: the model must have a character tokenizer")
    unigrams, bigrams = read_counts(args.counts)
    add_text_counts(texts, unigrams, bigrams)
    if not unigrams:
        raise ValueError("no words: give TEXTS or --counts")
    return WordLM.from_counts(unigrams, bigrams, tokenizer, WordLMConfig(oov=args.oov)), len(texts)


def run_train(args: argparse.Namespace) -> int:
    if args.order < 1:
        raise ValueError(f"--order must be at least 1, got {args.order}")
    tokenizer = load_model(args.model, device="cpu").tokenizer
    t0 = time.perf_counter()
    lm, sentences = _train(args, tokenizer)
    seconds = time.perf_counter() - t0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    lm.save(args.output)
    print(
        f"{args.output}: {lm.describe()} from {sentences:,} sentences in {seconds:.1f} s, "
        f"{args.output.stat().st_size / 1e6:.1f} MB",
        file=sys.stderr,
    )
    if args.valid:
        print(f"perplexity  {lm.perplexity(read_texts(args.valid, args.format), tokenizer):.3f}")
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    tokenizer = load_model(args.model, device="cpu").tokenizer
    lm = load_lm(args.lm, tokenizer)
    texts = list(read_texts(args.texts, args.format))
    if not texts:
        raise ValueError(f"no text in {' '.join(args.texts)}")
    print(f"perplexity  {lm.perplexity(texts, tokenizer):.3f}  ({len(texts):,} sentences)")
    return 0


def add_lm_arguments(group: argparse._ActionsContainer) -> None:
    """``--lm`` and ``--lm-weight`` for the commands that decode."""
    group.add_argument(
        "--lm",
        type=Path,
        metavar="PATH",
        help="language model from 'asr lm train' for shallow fusion (default: the model's own, from "
        "NAME.decoding.json beside its checkpoint, if it has one)",
    )
    group.add_argument(
        "--lm-weight",
        type=float,
        help=f"weight of the language model in beam search (default: {DEFAULT_LM_WEIGHT} with --lm, the "
        "model's own without; 0 turns an LM off)",
    )


def lm_from_args(args: argparse.Namespace, model: ASRModel) -> tuple[NGramLM | WordLM | None, float]:
    """The LM named by ``--lm`` (checked against ``model``) and the weight to decode with; without ``--lm``,
    the model's own (``NAME.decoding.json`` beside ``args.model``'s checkpoint), which ``--lm-weight 0``
    turns off."""
    if args.lm is None:
        own = ModelDecoding.of(getattr(args, "model", None))
        if own.lm is not None and args.lm_weight != 0:
            weight = own.lm_weight if args.lm_weight is None else args.lm_weight
            if weight < 0:
                raise ValueError(f"--lm-weight must be >= 0, got {weight}")
            return own.load_lm(model.tokenizer), weight
        if args.lm_weight:
            raise ValueError("--lm-weight needs a language model: add --lm PATH (from 'asr lm train')")
        return None, 0.0
    weight = DEFAULT_LM_WEIGHT if args.lm_weight is None else args.lm_weight
    if weight < 0:
        raise ValueError(f"--lm-weight must be >= 0, got {weight}")
    return load_lm(args.lm, model.tokenizer), weight


def ctc_weight_from_args(args: argparse.Namespace, default: float) -> float:
    """``--ctc-weight``, else the model's own (``NAME.decoding.json``), else ``default``."""
    if args.ctc_weight is not None:
        return float(args.ctc_weight)
    own = ModelDecoding.of(getattr(args, "model", None)).ctc_weight
    return default if own is None else own


def beam_from_args(args: argparse.Namespace, default: int) -> int:
    """``--beam``, else the model's own (``NAME.decoding.json``), else ``default``."""
    if args.beam is not None:
        return int(args.beam)
    own = ModelDecoding.of(getattr(args, "model", None)).beam_size
    return default if own is None else own
