"""Shared fixtures: speech generated with espeak-ng (no downloads), tiny model configs, shared data."""

from __future__ import annotations

import os

# Tests compare outputs of different code paths exactly: the recurrent products stay float32 (on CPUs with
# AMX or AVX-512 BF16 the default would be bfloat16, whose rounding depends on the batch's shape); the
# servers the tests start as subprocesses inherit it. tests/test_precision.py checks bfloat16 itself.
os.environ.setdefault("ASR_PRECISION", "float32")

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from asr import ModelConfig, Transcriber, precision
from asr.audio import SAMPLE_RATE, load_audio
from asr.decoder import DecoderConfig
from asr.encoder import EncoderConfig
from asr.features import FeatureConfig
from asr.tokenizer import CharTokenizer

precision.set_mode(os.environ["ASR_PRECISION"])  # also if asr was imported before the variable was set

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    """Synthesise ``text`` to a 16 kHz mono WAV at ``path`` with espeak-ng (resampled with sox)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it: apt-get install espeak-ng sox)")
    raw = path.with_suffix(".raw.wav")
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text]
    subprocess.run(cmd, check=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)], check=True)
    raw.unlink()
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few short espeak-ng utterances with transcripts: ``NAME.wav`` + ``NAME.txt``."""
    d = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(["HELLO WORLD", "GOOD MORNING", "OPEN THE DOOR", "THANK YOU VERY MUCH"]):
        espeak(text, d / f"utt{i}.wav")
        (d / f"utt{i}.txt").write_text(text + "\n")
    return d


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> list[np.ndarray]:
    """The four espeak-ng utterances of ``speech_dir`` as 16 kHz float32 arrays."""
    return [load_audio(speech_dir / f"utt{i}.wav") for i in range(4)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="session")
def hello_wav(speech_dir: Path) -> Path:
    return speech_dir / "utt0.wav"


@pytest.fixture(scope="session")
def speech_manifest(speech_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated speech as a JSONL manifest (``audio`` and ``text``), through the folder importer."""
    from asr.data.importers import import_corpus
    from asr.data.manifest import write_manifest

    path = tmp_path_factory.mktemp("manifest") / "speech.jsonl"
    write_manifest(import_corpus("folder", speech_dir), path)
    return path


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "speechocean762").is_dir():
        pytest.skip(f"shared speech data not found at {SHARED_DATA} (it sits beside the checkout in CI)")
    return SHARED_DATA


def read(path: Path) -> np.ndarray:
    return load_audio(path)


def tiny_model(seed: int = 0) -> Transcriber:
    """A small random-weight model (40 mels, 2 BiLSTM layers of 32) for streaming and server tests."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        FeatureConfig(n_mels=40),
        EncoderConfig(
            input_dim=40, conv_channels=8, hidden_size=32, num_layers=2, pyramid_layers=1, dropout=0.0
        ),
        DecoderConfig(
            embed_dim=32,
            hidden_size=64,
            attention_dim=32,
            location_channels=4,
            location_kernel=11,
            dropout=0.0,
        ),
    )
    return Transcriber(cfg, CharTokenizer.default()).eval()
