"""Manifests: one JSON object per line, one utterance per object.

    {"id": "000010011", "audio": "/a/b.opus", "text": "WE CALL IT BEAR", "speaker": "0001", "duration": 2.1}

``offset`` and ``duration`` (seconds) are optional; with ``offset`` only that segment of the file is used.
Only ``audio`` and ``text`` are required to read a manifest (``id`` defaults to the line number).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str
    text: str
    speaker: str = ""
    offset: float = 0.0
    duration: float | None = None  # seconds; None when unknown (then the whole file from offset)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "audio": self.audio, "text": self.text}
        if self.speaker:
            d["speaker"] = self.speaker
        if self.offset:
            d["offset"] = round(self.offset, 4)
        if self.duration is not None:
            d["duration"] = round(self.duration, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_id: str = "") -> Utterance:
        missing = [k for k in ("audio", "text") if k not in d]
        if missing:
            raise ValueError(f"manifest entry {d!r} lacks required field(s) {missing}")
        dur = d.get("duration")
        return cls(
            id=str(d.get("id", default_id)),
            audio=str(d["audio"]),
            text=str(d["text"]),
            speaker=str(d.get("speaker", "")),
            offset=float(d.get("offset", 0.0)),
            duration=None if dur is None else float(dur),
        )


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are taken relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON: {exc}") from exc
            utt = Utterance.from_dict(d, default_id=f"{path.stem}-{n}")
            if not os.path.isabs(utt.audio):
                utt = dataclasses.replace(utt, audio=str((path.parent / utt.audio).resolve()))
            out.append(utt)
    return out


def read_manifests(paths: Iterable[str | os.PathLike]) -> list[Utterance]:
    return [u for p in paths for u in read_manifest(p)]


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike) -> int:
    """Write utterances as JSONL (atomically); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for u in utts:
            f.write(json.dumps(u.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def split_by_speakers(
    utts: Sequence[Utterance], num_speakers: int, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Hold out ``num_speakers`` whole speakers (chosen by ``seed``): ``(rest, held_out)``."""
    speakers = sorted({u.speaker for u in utts})
    if num_speakers >= len(speakers):
        raise ValueError(
            f"cannot hold out {num_speakers} speakers: the corpus has {len(speakers)} "
            "(use --valid-fraction for single-speaker corpora)"
        )
    held = set(random.Random(seed).sample(speakers, num_speakers))
    return [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]


def split_by_fraction(
    utts: Sequence[Utterance], fraction: float, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Hold out a random ``fraction`` of utterances: ``(rest, held_out)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"valid fraction must be in (0, 1), got {fraction}")
    idx = list(range(len(utts)))
    random.Random(seed).shuffle(idx)
    held = set(idx[: max(1, round(fraction * len(utts)))])
    return [u for i, u in enumerate(utts) if i not in held], [u for i, u in enumerate(utts) if i in held]
