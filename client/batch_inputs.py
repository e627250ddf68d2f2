"""The inputs of ``asr transcribe``: files named on the command line and audio files found under folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Item", "collect", "extension_list"]


@dataclass(frozen=True)
class Item:
    path: Path
    id: str  # path relative to the folder it was found in (or the file name); names its output and record


def extension_list(text: str) -> tuple[str, ...]:
    """``"wav,.FLAC"`` -> ``(".wav", ".flac")`` for ``--extensions``."""
    return tuple(e if e.startswith(".") else f".{e}" for e in text.lower().split(",") if e)


def collect(paths: list[str], extensions: tuple[str, ...]) -> tuple[list[Item], list[str]]:
    """Files named on the command line (any extension) and audio files found under folders, sorted; and the
    arguments that name nothing.

    Hidden files and everything under hidden folders (``.git``, ``.cache``...) are left out. A file reached
    again through another argument is transcribed once; inside one folder every name is kept (a symlink and
    the file it points to each get their output)."""
    items: list[Item] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            found = sorted(
                p for p in root.rglob("*")
                if p.is_file()
                and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            pairs = [(p, p.relative_to(root).as_posix()) for p in found]
        elif root.is_file():
            pairs = [(root, root.name)]
        else:
            missing.append(arg)
            continue
        keys = {p.resolve() for p, _ in pairs}
        items.extend(Item(p, rel) for p, rel in pairs if p.resolve() not in seen)
        seen |= keys
    return items, missing
