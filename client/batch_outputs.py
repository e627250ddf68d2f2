"""Where ``asr transcribe`` writes: one file per input, one JSONL file, or stdout, resumable.

Files are written atomically (a temporary file, then a rename), so a killed batch never leaves a half file;
an input whose output exists counts as done. A JSONL file, or stdout appended to a file, holds one record per
line: the ids already there count as done, and a torn last line left by a killed run is cut off.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import uuid
from pathlib import Path
from typing import IO

from client.batch_inputs import Item
from client.cli import CLIError
from client.formats import EXTENSIONS, render
from client.types import Transcript

__all__ = ["Sink", "jsonl_ids", "output_path", "write_atomic"]


def output_path(out_dir: Path, item: Item, fmt: str) -> Path:
    return out_dir / Path(item.id).with_suffix(EXTENSIONS[fmt])


def write_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over: readers never see half a file.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s owner-only 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl_ids(path: Path) -> set[str]:
    """Ids of the complete records in a JSONL file (a torn last line from a killed run is ignored)."""
    ids: set[str] = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                    ids.add(rec["id"])
    except OSError:
        pass
    return ids


def _stdout_file() -> Path | None:
    """The regular file stdout is redirected to (``>> all.jsonl``), if any, to read its records back."""
    try:
        fd = sys.stdout.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            link = Path(f"/proc/self/fd/{fd}")
            return link if link.exists() else None
    except (OSError, ValueError, AttributeError):
        pass
    return None


class Sink:
    """Where results go: one file per input (``output`` a folder), one JSONL file, or stdout (no ``output``).

    ``overwrite`` redoes inputs whose output exists; ``n_inputs`` > 1 marks each txt line on a stream with
    its id, and needs a folder for the formats that do not concatenate (srt, vtt, json).
    """

    def __init__(self, fmt: str, output: str | None, *, overwrite: bool, n_inputs: int) -> None:
        self.fmt = fmt
        self.overwrite = overwrite
        self.out_dir: Path | None = None
        self.stream: IO[str] | None = None
        self.done_ids: set[str] = set()
        self._own_stream = False
        self.multi = n_inputs > 1
        target = Path(output) if output else None
        if target is not None and not (self.fmt == "jsonl" and target.suffix == ".jsonl"):
            if target.is_file():
                raise CLIError(f"--output {target} is a file; give a folder (or a .jsonl file for jsonl)")
            self.out_dir = target
            return
        if self.fmt in ("srt", "vtt", "json") and self.multi:
            raise CLIError(
                f"--format {self.fmt} for several inputs needs an output folder (-o DIR), or use jsonl"
            )
        if target is not None:  # one JSONL file for all records
            if not self.overwrite:
                self.done_ids = jsonl_ids(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(target, "w" if self.overwrite else "a", encoding="utf-8")  # noqa: SIM115
            self._own_stream = True
            self._drop_torn_line(target)
        else:
            self.stream = sys.stdout
            redirected = _stdout_file()
            if self.fmt == "jsonl" and redirected is not None and not self.overwrite:
                self.done_ids = jsonl_ids(redirected)
                self._drop_torn_line(redirected)

    def _drop_torn_line(self, path: Path) -> None:
        """A run killed mid-write may leave a partial last line: cut it off so the file stays valid JSONL."""
        assert self.stream is not None
        try:
            data = path.read_bytes()
        except OSError:
            return
        if data and not data.endswith(b"\n"):
            self.stream.flush()
            os.ftruncate(self.stream.fileno(), data.rfind(b"\n") + 1)

    def check_distinct(self, items: list[Item]) -> None:
        """One output per input: a.wav and a.mp3 would both write a.txt."""
        outputs: dict[str, Path] = {}
        for it in items:
            name = str(output_path(self.out_dir, it, self.fmt)) if self.out_dir else it.id
            if name in outputs:
                raise CLIError(
                    f"{it.path} and {outputs[name]} would both write {name}; transcribe them apart "
                    "(or into one JSONL file: -f jsonl)"
                )
            outputs[name] = it.path

    def is_done(self, item: Item) -> bool:
        if self.overwrite:
            return False
        if self.out_dir is not None:
            return output_path(self.out_dir, item, self.fmt).exists()
        return item.id in self.done_ids

    def write(self, item: Item, transcript: Transcript) -> None:
        text = render(self.fmt, transcript, item.id)
        if self.out_dir is not None:
            write_atomic(output_path(self.out_dir, item, self.fmt), text)
            return
        assert self.stream is not None
        if self.fmt == "txt" and self.multi:
            text = f"{item.id}\t{transcript.text}\n"
        self.stream.write(text)  # one write per record: a kill leaves at most one torn line
        self.stream.flush()

    def close(self) -> None:
        if self._own_stream and self.stream is not None:
            self.stream.close()
