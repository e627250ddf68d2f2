"""Corpus importers: each reads one corpus layout and returns :class:`Utterance` records with absolute paths.

    kaldi        data dir with wav.scp, text, utt2spk (and optional segments)
    librispeech  SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt beside SPEAKER-CHAPTER-NNNN.flac
    arctic       one transcript .txt per audio file (cathy/data), or wav/ + etc/txt.done.data (CMU ARCTIC)
    ljspeech     metadata.csv (ID|text|normalised text) + wavs/ID.wav
    commonvoice  SPLIT.tsv (client_id, path, sentence) + clips/
    folder       any folder tree of audio files with same-name .txt or .lab transcripts

Durations come from ``soundfile.info`` (read in threads; only headers are touched).
Utterances whose transcript normalises to nothing are dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

from asr.audio import AUDIO_EXTENSIONS
from asr.data.manifest import Utterance
from asr.tokenizer import normalize_text

log = logging.getLogger(__name__)

Importer = Callable[..., list[Utterance]]


def _audio_duration(path: str) -> float:
    info = sf.info(path)
    return float(info.frames) / float(info.samplerate)


def with_durations(utts: list[Utterance], threads: int = 16) -> list[Utterance]:
    """Fill in missing durations from the audio headers."""
    todo = [u for u in utts if u.duration is None]
    if not todo:
        return utts
    with ThreadPoolExecutor(threads) as pool:
        found = pool.map(lambda u: _audio_duration(u.audio), todo)
        durs = dict(zip((u.id for u in todo), found, strict=True))
    return [
        u if u.duration is not None else dataclasses.replace(u, duration=durs[u.id] - u.offset) for u in utts
    ]


def _keep_nonempty(utts: list[Utterance], corpus: str) -> list[Utterance]:
    kept = [u for u in utts if normalize_text(u.text)]
    if len(kept) < len(utts):
        log.warning("%s: dropped %d utterances with empty transcripts", corpus, len(utts) - len(kept))
    if not kept:
        raise ValueError(f"no utterances found for corpus {corpus!r}")
    return kept


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi ``key value...`` table."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def _resolve(rel: str, bases: list[Path]) -> Path:
    p = Path(rel)
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    tried = ", ".join(str(b / p) for b in bases)
    raise FileNotFoundError(f"audio {rel!r} not found (tried {tried}); pass --root to say where paths start")


# recording id, start, end in seconds; end None: to the end of the recording (Kaldi writes -1)
Segment = tuple[str, float, float | None]


def _parse_segment(line: str, where: str) -> tuple[str, Segment, int] | None:
    """One ``segments`` line -> ``(utterance, (recording, start, end), channel)``; None for an empty or
    inverted segment, which Kaldi also warns about and skips. Malformed lines raise ``ValueError``."""
    fields = line.split()
    if len(fields) not in (4, 5):
        raise ValueError(
            f"{where}: expected 'utterance recording start end [channel]' (4 or 5 fields), got {line!r}"
        )
    try:
        start, end = float(fields[2]), float(fields[3])
        channel = int(fields[4]) if len(fields) == 5 else 0
    except ValueError:
        raise ValueError(
            f"{where}: start and end must be seconds and the channel a whole number, got {line!r}"
        ) from None
    if channel < 0:
        raise ValueError(f"{where}: the channel must be 0 or more, got {line!r}")
    if end == -1:
        return fields[0], (fields[1], start, None), channel
    if start < 0 or end <= start:
        log.warning("%s: skipping empty or inverted segment %r (end must be after start, or -1)", where, line)
        return None
    return fields[0], (fields[1], start, end), channel


def _read_segments(path: Path) -> dict[str, Segment]:
    """A Kaldi ``segments`` file. The optional 5th field (channel) is checked but not used: audio is always
    mixed down to mono when loaded."""
    out: dict[str, Segment] = {}
    other_channel = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parsed = _parse_segment(line, f"{path}:{n}") if line.strip() else None
        if parsed is not None:
            key, segment, channel = parsed
            out[key] = segment
            other_channel += channel > 0
    if other_channel:
        log.warning(
            "%s: %d segments name a channel other than 0; channels are ignored (audio is mixed to mono)",
            path,
            other_channel,
        )
    return out


def _segment_utterances(
    src: Path, texts: dict[str, str], segments: dict[str, Segment], paths: dict[str, str], spk: dict[str, str]
) -> list[Utterance]:
    """Utterances of a data dir with ``segments``; those whose recording is not in wav.scp are skipped."""
    utts, no_recording = [], []
    for key, text in texts.items():
        if key not in segments:
            continue
        reco, start, end = segments[key]
        if reco not in paths:
            no_recording.append(f"{key} -> {reco}")
            continue
        duration = None if end is None else end - start  # None: filled in from the audio header
        utts.append(Utterance(key, paths[reco], text, spk.get(key, reco), start, duration))
    if no_recording:
        log.warning(
            "%s: skipped %d segments whose recording is not in wav.scp (e.g. %s)",
            src,
            len(no_recording),
            ", ".join(no_recording[:3]),
        )
    return utts


def import_kaldi(src: Path, root: Path | None = None) -> list[Utterance]:
    """A Kaldi data dir. Relative wav.scp paths are resolved against ``root``, else the first of the data dir,
    its parent and its grandparent where the file exists (speechocean762's paths start at the corpus root)."""
    for name in ("wav.scp", "text"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src} is not a Kaldi data dir: {name} is missing")
    wavs = _read_table(src / "wav.scp")
    texts = _read_table(src / "text")
    spk = _read_table(src / "utt2spk") if (src / "utt2spk").is_file() else {}
    bases = [root] if root is not None else [src, src.parent, src.parent.parent, Path.cwd()]
    paths: dict[str, str] = {}
    for key, value in wavs.items():
        if value.rstrip().endswith("|"):
            raise ValueError(
                f"{src}/wav.scp: piped commands are not supported ({key} {value!r}); convert to files"
            )
        paths[key] = str(_resolve(value.strip(), bases))
    segments = _read_segments(src / "segments") if (src / "segments").is_file() else {}
    if segments:
        utts = _segment_utterances(src, texts, segments, paths, spk)
        missing = sum(key not in segments for key in texts)
    else:
        utts = [
            Utterance(key, paths[key], text, spk.get(key, key)) for key, text in texts.items() if key in paths
        ]
        missing = len(texts) - len(utts)
    if missing:
        log.warning("%s: %d transcripts have no audio", src, missing)
    return with_durations(_keep_nonempty(utts, "kaldi"))


def import_librispeech(src: Path) -> list[Utterance]:
    utts = []
    for trans in sorted(src.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            key, text = line.split(maxsplit=1)
            audio = next(
                (
                    trans.parent / f"{key}{ext}"
                    for ext in (".flac", ".wav", ".opus")
                    if (trans.parent / f"{key}{ext}").is_file()
                ),
                None,
            )
            if audio is None:
                log.warning("%s: no audio for %s", trans, key)
                continue
            utts.append(Utterance(key, str(audio.resolve()), text, key.split("-")[0]))
    if not utts:
        raise ValueError(f"no *.trans.txt files under {src}: not a LibriSpeech layout")
    return with_durations(_keep_nonempty(utts, "librispeech"))


_DONE_DATA = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def _audio_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in it if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _default_speaker(src: Path) -> str:
    src = src.resolve()
    return src.parent.name if src.name in ("data", "wav", "wavs", "audio") else src.name


def import_arctic(src: Path, speaker: str | None = None) -> list[Utterance]:
    """One ``.txt`` per audio file (in ``src`` or ``src/data``), or ARCTIC's
    ``wav/`` + ``etc/txt.done.data``."""
    speaker = speaker or _default_speaker(src)
    folder = src / "data" if (src / "data").is_dir() else src
    utts = [
        Utterance(
            a.stem, str(a.resolve()), a.with_suffix(".txt").read_text(encoding="utf-8").strip(), speaker
        )
        for a in _audio_files(folder, recursive=False)
        if a.with_suffix(".txt").is_file()
    ]
    done = src / "etc" / "txt.done.data"
    if not utts and done.is_file():
        wav_dir = src / "wav" if (src / "wav").is_dir() else src
        audio = {a.stem: a for a in _audio_files(wav_dir, recursive=False)}
        for line in done.read_text(encoding="utf-8").splitlines():
            m = _DONE_DATA.match(line.strip())
            if m and m.group(1) in audio:
                utts.append(Utterance(m.group(1), str(audio[m.group(1)].resolve()), m.group(2), speaker))
    if not utts:
        raise ValueError(f"no audio files with .txt transcripts (nor etc/txt.done.data) in {src}")
    return with_durations(_keep_nonempty(utts, "arctic"))


def import_ljspeech(src: Path) -> list[Utterance]:
    meta = src / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{src} is not an LJSpeech layout: metadata.csv is missing")
    utts = []
    for line in meta.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) < 2:
            continue
        text = parts[2] if len(parts) > 2 and parts[2].strip() else parts[1]
        audio = src / "wavs" / f"{parts[0]}.wav"
        if audio.is_file():
            utts.append(Utterance(parts[0], str(audio.resolve()), text.strip(), "LJ"))
    return with_durations(_keep_nonempty(utts, "ljspeech"))


def import_commonvoice(src: Path, split: str = "train") -> list[Utterance]:
    tsv = src / f"{split}.tsv"
    if not tsv.is_file():
        found = sorted(p.stem for p in src.glob("*.tsv"))
        raise FileNotFoundError(f"{tsv} not found; splits here: {found}")
    durations: dict[str, float] = {}
    if (src / "clip_durations.tsv").is_file():
        with (src / "clip_durations.tsv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                durations[row["clip"]] = float(row["duration[ms]"]) / 1000.0
    utts = []
    with tsv.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            audio = src / "clips" / row["path"]
            if audio.is_file():
                utts.append(
                    Utterance(
                        Path(row["path"]).stem,
                        str(audio.resolve()),
                        row["sentence"],
                        row.get("client_id", ""),
                        0.0,
                        durations.get(row["path"]),
                    )
                )
    return with_durations(_keep_nonempty(utts, "commonvoice"))


def import_folder(src: Path, speaker: str | None = None) -> list[Utterance]:
    """Audio files anywhere under ``src`` with a same-name ``.txt`` or ``.lab``; the speaker is ``speaker``
    or the parent folder's name. Ids are paths relative to ``src``, so same-named files in different
    folders stay apart."""
    utts = []
    for a in _audio_files(src, recursive=True):
        trans = next((a.with_suffix(s) for s in (".txt", ".lab") if a.with_suffix(s).is_file()), None)
        if trans is None:
            continue
        key = str(a.relative_to(src).with_suffix("")).replace("/", "_")
        utts.append(
            Utterance(
                key, str(a.resolve()), trans.read_text(encoding="utf-8").strip(), speaker or a.parent.name
            )
        )
    if not utts:
        raise ValueError(f"no audio files with .txt/.lab transcripts under {src}")
    return with_durations(_keep_nonempty(utts, "folder"))


IMPORTERS: dict[str, Importer] = {
    "kaldi": import_kaldi,
    "librispeech": import_librispeech,
    "arctic": import_arctic,
    "ljspeech": import_ljspeech,
    "commonvoice": import_commonvoice,
    "folder": import_folder,
}


def import_corpus(corpus: str, src: str | Path, **options: object) -> list[Utterance]:
    """Run the importer named ``corpus`` on ``src``; options the importer does not take are ignored."""
    if corpus not in IMPORTERS:
        raise ValueError(f"unknown corpus kind {corpus!r}; choose from {sorted(IMPORTERS)}")
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {src}")
    fn = IMPORTERS[corpus]
    accepted = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return fn(src, **kwargs)
