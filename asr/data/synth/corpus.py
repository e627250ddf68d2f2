"""A many-voice synthetic speech corpus as training manifests: plan (seeded), synthesise (parallel,
resumable), split (whole people held out).

Each utterance is planned from the seed alone, so a run killed half-way and started again with the same
arguments plans the same utterances and synthesises only those its manifest lacks. The manifest records
everything that made an utterance: engine, voice, the person behind it, tempo, pitch shift, source sentence.

    plan = plan_corpus(SynthConfig(hours={"espeak-ng": 2.0, "pico": 1.0}), sentences)
    synthesize_corpus(plan, Path("exp/data/synth"), workers=2)   # -> all.jsonl, train.jsonl, valid.jsonl

Non-speech (``nonspeech_hours``): digital silence, quiet hiss, and stretches of background recordings
(dishes, a cat, a tap...) at a random level, each with an empty transcript, so the model learns that
silence and noise are no words.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asr.audio import SAMPLE_RATE, load_audio, resample
from asr.data.synth.engines import Engine, Voice, get_engine

WORDS_PER_SECOND = 2.6  # planning estimate of read speech; the manifest holds the real durations


@dataclass(frozen=True)
class SynthConfig:
    hours: dict[str, float] = field(default_factory=dict)  # engine -> hours of speech to plan
    nonspeech_hours: float = 0.0
    noise_dir: str = ""  # background recordings for the non-speech clips (empty: silence and hiss only)
    valid_people: tuple[str, ...] = ("arctic-rms", "arctic-clb")  # speakers held out whole (Voice.speaker)
    valid_voices_per_engine: int = 1  # and this many more voices of each engine with more than four
    speed: tuple[float, float] = (0.8, 1.25)  # tempo range, uniform
    pitch: tuple[float, float] = (-3.0, 3.0)  # semitones, uniform; 40 % of utterances keep the voice's own
    seed: int = 0

    def __post_init__(self) -> None:
        for engine, hours in self.hours.items():
            get_engine(engine)  # names the choices when unknown
            if hours < 0:
                raise ValueError(f"hours for {engine} must be >= 0, got {hours}")
        if not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed must be a range of positive tempo factors, got {self.speed}")


@dataclass(frozen=True)
class Job:
    id: str
    engine: str  # "nonspeech" for the empty-transcript clips
    voice: str
    speaker: str
    text: str
    speed: float = 1.0
    pitch: float = 0.0
    seconds: float = 0.0  # nonspeech: the clip's length
    source: str = ""  # nonspeech: "silence", "hiss" or a noise file's name
    level_db: float = 0.0  # nonspeech: the clip's RMS in dBFS


def held_out_voices(voices_by_engine: dict[str, list[Voice]], config: SynthConfig) -> set[str]:
    """The speakers (``Voice.speaker``) of the validation split: the named people, plus a few voices drawn
    from each engine with more than four."""
    rng = random.Random(f"{config.seed}-valid")
    held = set(config.valid_people)
    for voices in voices_by_engine.values():
        if len(voices) > 4:
            held.update(v.speaker for v in rng.sample(voices, config.valid_voices_per_engine))
    return held


def plan_speech(engine: Engine, hours: float, sentences: Sequence[str], config: SynthConfig) -> list[Job]:
    """Enough utterances of ``engine`` for about ``hours`` of speech, each with a random voice, tempo and
    pitch."""
    rng = random.Random(f"{config.seed}-{engine.name}")
    order = list(range(len(sentences)))
    rng.shuffle(order)
    voices = engine.voices()
    jobs: list[Job] = []
    budget = hours * 3600
    while budget > 0 and order:
        for i in order:
            text = sentences[i]
            voice = rng.choice(voices)
            speed = round(rng.uniform(*config.speed), 3)
            pitch = 0.0 if rng.random() < 0.4 else round(rng.uniform(*config.pitch), 2)
            jobs.append(
                Job(
                    f"{engine.name}-{len(jobs):07d}",
                    engine.name,
                    voice.name,
                    voice.speaker,
                    text,
                    speed,
                    pitch,
                )
            )
            budget -= len(text.split()) / WORDS_PER_SECOND / speed
            if budget <= 0:
                break
    return jobs


def plan_nonspeech(config: SynthConfig) -> list[Job]:
    """Clips of 0.5-20 s with empty transcripts: silence, hiss, and the background recordings."""
    rng = random.Random(f"{config.seed}-nonspeech")
    noises = (
        sorted(
            p.name for p in Path(config.noise_dir).glob("*") if p.suffix in (".opus", ".wav", ".flac", ".ogg")
        )
        if config.noise_dir
        else []
    )
    sources = ["silence", "hiss", *noises, *noises]  # recordings twice as often as each synthetic kind
    jobs: list[Job] = []
    budget = config.nonspeech_hours * 3600
    while budget > 0:
        seconds = round(math.exp(rng.uniform(math.log(0.5), math.log(20.0))), 2)
        source = rng.choice(sources)
        level = round(rng.uniform(-70.0, -40.0) if source == "hiss" else rng.uniform(-50.0, -15.0), 1)
        jobs.append(
            Job(
                f"nonspeech-{len(jobs):06d}",
                "nonspeech",
                source,
                "nonspeech",
                "",
                seconds=seconds,
                source=source,
                level_db=level,
            )
        )
        budget -= seconds
    return jobs


def plan_corpus(config: SynthConfig, sentences: Sequence[str]) -> list[Job]:
    """Every engine's utterances and the non-speech clips, interleaved (seeded) so that a run stopped early
    still holds a mix of all of them."""
    if not sentences and any(h > 0 for h in config.hours.values()):
        raise ValueError("no sentences to read: name at least one text source that yields sentences")
    jobs = [
        j
        for name, h in config.hours.items()
        if h > 0
        for j in plan_speech(get_engine(name), h, sentences, config)
    ]
    jobs += plan_nonspeech(config)
    random.Random(f"{config.seed}-order").shuffle(jobs)
    return jobs


# ------------------------------------------------------------------------------------------ synthesis

_ENGINES: dict[str, Engine] = {}


def _render_nonspeech(job: Job, noise_dir: str) -> np.ndarray:
    rng = np.random.default_rng(int(job.id.rsplit("-", 1)[1]))
    n = round(job.seconds * SAMPLE_RATE)
    if job.source == "silence":
        return np.zeros(n, np.float32)
    if job.source == "hiss":
        audio = rng.standard_normal(n).astype(np.float32)
    else:
        noise = load_audio(str(Path(noise_dir) / job.source), SAMPLE_RATE)
        if len(noise) < n:
            noise = np.tile(noise, math.ceil(n / len(noise)))
        start = int(rng.integers(0, len(noise) - n + 1))
        audio = noise[start : start + n].astype(np.float32)
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    return np.clip(audio * (10 ** (job.level_db / 20) / rms), -1.0, 1.0).astype(np.float32)


def render(job: Job, noise_dir: str = "") -> np.ndarray:
    """The job's audio at 16 kHz, float32 mono; speech peak-normalised to -1 dBFS (the loader varies the
    gain)."""
    if job.engine == "nonspeech":
        return _render_nonspeech(job, noise_dir)
    engine = _ENGINES.setdefault(job.engine, get_engine(job.engine))
    audio, rate = engine.synthesize(job.text, job.voice, job.speed, job.pitch)
    if job.pitch and not engine.native_pitch:
        import librosa

        audio = librosa.effects.pitch_shift(audio, sr=rate, n_steps=job.pitch)
    audio = resample(audio, rate, SAMPLE_RATE)
    peak = float(np.abs(audio).max()) or 1.0
    return (audio * (0.89 / peak)).astype(np.float32)


def cpu_seconds() -> float:
    """CPU time of this process and of the programs it ran (the command-line engines), user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _work(args: tuple[Job, str, str]) -> tuple[dict[str, Any] | None, str]:
    job, out_dir, noise_dir = args
    start = cpu_seconds()
    try:
        audio = render(job, noise_dir)
    except Exception as exc:  # one bad sentence or voice must not stop a 30-hour run
        return None, f"{job.id} ({job.engine} {job.voice}): {exc}"
    path = Path(out_dir) / "audio" / job.engine / f"{job.id}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.flac")
    sf.write(tmp, audio, SAMPLE_RATE)
    os.replace(tmp, path)
    row: dict[str, Any] = {
        "id": job.id,
        "audio": str(path.relative_to(out_dir)),
        "text": job.text,
        "speaker": job.speaker,
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        "engine": job.engine,
        "voice": job.voice,
        "synth_cpu_seconds": round(cpu_seconds() - start, 3),  # for the engines' speed, whatever the load
    }
    if job.engine == "nonspeech":
        row.update(source=job.source, level_db=job.level_db)
    else:
        row.update(speed=job.speed, pitch=job.pitch)
    return row, ""


def done_ids(manifest: Path) -> set[str]:
    """The ids a (possibly killed) run already wrote; a torn last line is ignored."""
    if not manifest.is_file():
        return set()
    ids = set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue
    return ids


def synthesize_corpus(
    jobs: Sequence[Job], out_dir: Path, noise_dir: str = "", workers: int = 1, progress: bool = True
) -> Iterator[tuple[dict[str, Any] | None, str]]:
    """Synthesise the jobs that ``out_dir/all.jsonl`` lacks, appending each finished row to it as it comes.
    Yields ``(row, error)`` per job (``row`` None on failure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "all.jsonl"
    done = done_ids(manifest)
    todo = [(j, str(out_dir), noise_dir) for j in jobs if j.id not in done]
    if manifest.is_file() and not manifest.read_bytes().endswith(b"\n") and manifest.stat().st_size:
        with manifest.open("a") as f:
            f.write("\n")  # a torn last line stays torn; the next row starts cleanly
    with manifest.open("a", encoding="utf-8") as out:
        if workers <= 1:
            results: Iterator[tuple[dict[str, Any] | None, str]] = map(_work, todo)
            yield from _append(results, out)
            return
        with Pool(workers) as pool:
            yield from _append(pool.imap_unordered(_work, todo, chunksize=4), out)


def _append(
    results: Iterator[tuple[dict[str, Any] | None, str]], out: Any
) -> Iterator[tuple[dict[str, Any] | None, str]]:
    for row, error in results:
        if row is not None:
            out.write(json.dumps(row) + "\n")
            out.flush()
        yield row, error


def split_manifest(out_dir: Path, held: set[str]) -> dict[str, tuple[int, float]]:
    """Write ``train.jsonl`` and ``valid.jsonl`` from ``all.jsonl``: the held-out speakers' utterances in
    ``valid``, everything else in ``train``. Returns ``{name: (utterances, hours)}``."""
    rows = [
        json.loads(line)
        for line in (out_dir / "all.jsonl").read_text().splitlines()
        if line.strip().endswith("}")
    ]
    parts: dict[str, list[dict[str, Any]]] = {"train": [], "valid": []}
    for row in sorted(rows, key=lambda r: r["id"]):
        parts["valid" if row["speaker"] in held else "train"].append(row)
    stats = {}
    for name, part in parts.items():
        tmp = out_dir / f"{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in part))
        os.replace(tmp, out_dir / f"{name}.jsonl")
        stats[name] = (len(part), sum(r["duration"] for r in part) / 3600)
    return stats


@dataclass
class EngineStats:
    utterances: int = 0
    hours: float = 0.0
    synth_hours: float = 0.0  # CPU time of the synthesis
    voices: set[str] = field(default_factory=set)

    @property
    def speed(self) -> float:
        """Seconds of audio per CPU second (rows written before CPU times were recorded count as 0)."""
        return self.hours / self.synth_hours if self.synth_hours else 0.0


def engine_stats(out_dir: Path) -> dict[str, EngineStats]:
    """Utterances, hours, speed and voices of each engine in ``all.jsonl``."""
    table: dict[str, EngineStats] = {}
    for line in (out_dir / "all.jsonl").read_text().splitlines():
        if not line.strip().endswith("}"):
            continue
        row = json.loads(line)
        entry = table.setdefault(row["engine"], EngineStats())
        entry.utterances += 1
        entry.hours += row["duration"] / 3600
        entry.synth_hours += row.get("synth_cpu_seconds", 0.0) / 3600
        entry.voices.add(row["voice"])
    return dict(sorted(table.items()))
