"""Plots for docs/BENCHMARKS.md (PNG): throughput against batch size, latency against concurrent streams.

    python bench/throughput.py MANIFEST --json exp/bench/throughput.json
    python bench/load.py MANIFEST --greedy --json exp/bench/load_greedy.json
    python bench/load.py MANIFEST --json exp/bench/load_beam.json
    python bench/plots.py --throughput exp/bench/throughput.json \
        --load "greedy=exp/bench/load_greedy.json" "beam 8=exp/bench/load_beam.json" --out docs/img

Either input may be left out; each given one makes one PNG in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_throughput(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["method"] == method]
        label = "greedy CTC" if method == "greedy" else "joint CTC/attention beam search"
        ax.plot([r["batch_size"] for r in rows], [r["x_realtime"] for r in rows], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (recordings)")
    ax.set_ylabel("seconds of audio per second (x real time)")
    ax.set_title(f"Offline throughput, {data['device']} ({data['threads']} threads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_load(runs: dict[str, dict], path: Path) -> None:
    """``runs``: label -> JSON of one ``bench/load.py`` run (e.g. greedy and beam finals)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, data in runs.items():
        levels = data["levels"]
        n = [lv["streams"] for lv in levels]
        line = None
        for key, q, style, what in (
            ("final_after_endpoint", "p95_ms", "o-", "final after endpoint p95"),
            ("final_after_endpoint", "p50_ms", "o:", "final after endpoint p50"),
            ("first_partial", "p95_ms", "^--", "first partial p95"),
        ):
            ys = [lv[key][q] if lv[key] else float("nan") for lv in levels]
            color: Any = line.get_color() if line is not None else None
            (line,) = ax.plot(n, ys, style, color=color, label=f"{label}: {what}")
    ax.axhline(500, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Streaming latency on loopback, 2-core CPU")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--throughput", type=Path, help="JSON from bench/throughput.py --json")
    p.add_argument(
        "--load", nargs="+", default=[], metavar="LABEL=JSON", help="runs of bench/load.py --json, labelled"
    )
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    made = []
    if args.throughput is not None:
        if args.throughput.is_file():
            plot_throughput(json.loads(args.throughput.read_text()), args.out / "throughput.png")
            made.append(str(args.out / "throughput.png"))
        else:
            print(f"skipped throughput.png: {args.throughput} not found", file=sys.stderr)
    runs = {}
    for item in args.load:
        label, _, src = item.rpartition("=")
        if not Path(src).is_file():
            print(f"skipped {src}: not found", file=sys.stderr)
            continue
        runs[label or Path(src).stem] = json.loads(Path(src).read_text())
    if runs:
        plot_load(runs, args.out / "latency.png")
        made.append(str(args.out / "latency.png"))
    print("\n".join(made) or "nothing to plot (give --throughput and/or --load)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
