"""``asr data prepare CORPUS SRC OUT``: import a corpus into JSONL manifests.

OUT is a ``.jsonl`` file, or a folder that receives ``all.jsonl`` -- or ``train.jsonl`` and ``valid.jsonl``
when part of the data is held out with ``--valid-speakers N`` (whole speakers) or ``--valid-fraction F``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.data.importers import IMPORTERS, import_corpus
from asr.data.manifest import split_by_fraction, split_by_speakers, write_manifest


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="import corpora into JSONL manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="import a corpus into JSONL manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("corpus", choices=sorted(IMPORTERS), help="corpus layout")
    prep.add_argument(
        "src", type=Path, help="corpus folder (for kaldi: the data dir, e.g. speechocean762/train)"
    )
    prep.add_argument("out", type=Path, help="output .jsonl file or folder")
    prep.add_argument(
        "--valid-speakers", type=int, default=0, help="hold out N whole speakers for validation"
    )
    prep.add_argument(
        "--valid-fraction", type=float, default=0.0, help="hold out a random fraction of utterances"
    )
    prep.add_argument("--seed", type=int, default=0, help="seed for choosing the held-out part")
    prep.add_argument("--root", type=Path, help="kaldi: folder that relative wav.scp paths start from")
    prep.add_argument("--speaker", help="arctic/folder: speaker label for every utterance")
    prep.add_argument("--split", default="train", help="commonvoice: which SPLIT.tsv to read")
    prep.add_argument("--min-duration", type=float, default=0.0, help="drop shorter utterances (seconds)")
    prep.add_argument(
        "--max-duration", type=float, default=0.0, help="drop longer utterances (seconds; 0: keep)"
    )
    prep.set_defaults(func=run)
    from asr.data.synth.cli import register as register_synth

    register_synth(sub)


def run(args: argparse.Namespace) -> int:
    if args.valid_speakers and args.valid_fraction:
        raise ValueError("use either --valid-speakers or --valid-fraction, not both")
    utts = import_corpus(args.corpus, args.src, root=args.root, speaker=args.speaker, split=args.split)
    n_all = len(utts)
    utts = [
        u
        for u in utts
        if (u.duration or 0.0) >= args.min_duration
        and (not args.max_duration or (u.duration or 0.0) <= args.max_duration)
    ]
    if len(utts) < n_all:
        print(f"dropped {n_all - len(utts)} utterances outside the duration limits")
    held = args.valid_speakers or args.valid_fraction
    if held:
        if args.valid_speakers:
            train, valid = split_by_speakers(utts, args.valid_speakers, args.seed)
        else:
            train, valid = split_by_fraction(utts, args.valid_fraction, args.seed)
        if args.out.suffix == ".jsonl":
            outs = [(train, args.out), (valid, args.out.with_name(args.out.stem + ".valid.jsonl"))]
        else:
            outs = [(train, args.out / "train.jsonl"), (valid, args.out / "valid.jsonl")]
    else:
        outs = [(utts, args.out if args.out.suffix == ".jsonl" else args.out / "all.jsonl")]
    for part, path in outs:
        n = write_manifest(part, path)
        hours = sum(u.duration or 0.0 for u in part) / 3600
        speakers = len({u.speaker for u in part})
        print(f"{path}: {n} utterances, {hours:.2f} h, {speakers} speakers")
    return 0
