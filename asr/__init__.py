"""las-asr: Listen-Attend-Spell speech recognition with joint CTC/attention decoding.

>>> import asr
>>> model = asr.load_model()                      # the bundled default model
>>> result = model.transcribe("speech.wav")       # any of WAV, FLAC, Ogg/Opus, MP3
>>> result.text, [(w.word, w.start, w.end) for w in result.words]
"""

from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.checkpoint import load_model, save_checkpoint
from asr.decoding import DecodingOptions, Hypothesis
from asr.lm import NGramLM, load_lm
from asr.model import ASRModel, ModelConfig
from asr.transcribe import Alternative, Transcriber, Transcript, Word

__all__ = [
    "SAMPLE_RATE",
    "ASRModel",
    "Alternative",
    "AudioError",
    "DecodingOptions",
    "Hypothesis",
    "ModelConfig",
    "NGramLM",
    "Transcriber",
    "Transcript",
    "Word",
    "load_audio",
    "load_lm",
    "load_model",
    "save_checkpoint",
]
__version__ = "0.1.0"
