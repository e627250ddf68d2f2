"""Synthetic speech for training: text sources, offline synthesisers, and the corpus builder behind
``asr data synth``."""

from asr.data.synth.corpus import Job, SynthConfig, plan_corpus, split_manifest, synthesize_corpus
from asr.data.synth.engines import ENGINES, Engine, EngineUnavailable, Voice, get_engine

__all__ = [
    "ENGINES",
    "Engine",
    "EngineUnavailable",
    "Job",
    "SynthConfig",
    "Voice",
    "get_engine",
    "plan_corpus",
    "split_manifest",
    "synthesize_corpus",
]
