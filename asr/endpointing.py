"""Endpointing for streams: where speech starts and where an utterance ends, from the audio alone.

An energy VAD: each 20 ms frame's RMS energy (dB) is compared with an adaptive noise floor, which follows
quieter frames down at once and louder non-speech frames up slowly. :class:`Endpointer` counts the runs of
speech and silence frames and answers the questions :class:`asr.stream_state.Stream` asks of them: has an
utterance started (``min_speech_ms`` of speech), has it ended (``silence_ms`` of silence), is its tail of
silence in (``final_tail_ms``: its final can be decoded early). :func:`quietest_cut` picks where a segment
that reached ``max_segment_seconds`` is cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from asr.audio import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms VAD frame
CUT_WINDOW = SAMPLE_RATE // 10  # forced cuts land in the middle of the quietest 100 ms


@dataclass(frozen=True)
class EndpointConfig:
    """Where an utterance ends. All times in milliseconds except ``max_segment_seconds``."""

    silence_ms: int = 800  # silence after speech that ends an utterance
    # silence kept at the end of an utterance's segment; once this much has passed the final is decoded early
    # (at most silence_ms; equal to it, finals are decoded only after the endpoint)
    final_tail_ms: int = 300
    # longer segments are cut at the quietest point near their end; 10 s, as offline decoding cuts long audio
    # (asr.transcribe.PIECE_SECONDS): streamed recordings of joined utterances, 20 s against 10 s: LibriSpeech
    # 47.06 against 46.54 % WER, Common Voice 50.54 against 48.81 %, a third less CPU (docs/BENCHMARKS.md)
    max_segment_seconds: float = 10.0
    speech_threshold_db: float = 10.0  # frame energy above the noise floor that counts as speech
    min_speech_ms: int = 60  # consecutive speech that opens an utterance (ignores clicks)
    pre_speech_ms: int = 300  # audio kept before the speech onset
    min_level_db: float = -55.0  # frames quieter than this (dBFS) are never speech
    # Models with a chunked encoder (asr.online): this long a run of CTC blank frames after the utterance's
    # first token ends it, before silence_ms of silence (which still applies); 0 (the default) disables it.
    # Off by default: each final is decoded without the rest of its sentence, and speakers who pause between
    # words lose accuracy to it (speechocean762 validation, streamed: 67.8 % WER with the energy rule alone,
    # 79.6 % at 480 ms, 92.0 % at 240 ms; fluent commonvoice-sample 88.8 -> 89.1 % at 240 ms; BENCHMARKS.md).
    blank_ms: int = 0
    # ... and only where the energy VAD heard no speech over the run's last blank_quiet_ms (0: no check): a
    # chunked model emits blanks over long vowels and the voiced tails of words (slow speakers, children),
    # and a cut there splits them between two finals (speechocean762 validation, 160 ms blank runs, the
    # bundled streaming model: 5.27 utterances per recording and 103.4 % WER without the check, 2.15 and
    # 75.8 % with 80 ms of quiet, 1.90 and 73.6 % with 160 ms; bench/stream_wer.py. Finals after the end
    # of speech, 8 streams, p50 / p95: 269 / 391, 289 / 395 and 364 / 449 ms; bench/stream_latency.py;
    # session 33)
    blank_quiet_ms: int = 80

    def __post_init__(self) -> None:
        if not 100 <= self.silence_ms <= 10_000:
            raise ValueError(f"silence_ms must be in [100, 10000], got {self.silence_ms}")
        if not 1.0 <= self.max_segment_seconds <= 60.0:
            raise ValueError(f"max_segment_seconds must be in [1, 60], got {self.max_segment_seconds}")
        if not 3.0 <= self.speech_threshold_db <= 40.0:
            raise ValueError(f"speech_threshold_db must be in [3, 40], got {self.speech_threshold_db}")
        if self.min_speech_ms < 0 or self.pre_speech_ms < 0:
            raise ValueError("min_speech_ms and pre_speech_ms must be >= 0")
        if not 0 <= self.blank_ms <= 10_000:
            raise ValueError(f"blank_ms must be in [0, 10000] (0 disables), got {self.blank_ms}")
        if not 0 <= self.blank_quiet_ms <= 10_000:
            raise ValueError(f"blank_quiet_ms must be in [0, 10000] (0: no check), got {self.blank_quiet_ms}")
        if self.final_tail_ms < 20:
            raise ValueError(f"final_tail_ms must be at least one 20 ms frame, got {self.final_tail_ms}")

    @property
    def tail_frames(self) -> int:
        """20 ms frames of silence a segment keeps after its speech."""
        return min(self.final_tail_ms, self.silence_ms) // 20


class Endpointer:
    """Speech or not, frame by frame, and how long each has lasted; the state of one stream's VAD."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.noise_floor: float | None = None  # dB; None before the first frame
        self.speech_run = 0  # consecutive speech frames
        self.silence_run = 0  # consecutive non-speech frames since the last speech frame

    def push(self, frame: np.ndarray) -> tuple[float, bool]:
        """Look at one ``FRAME``-sample frame: its energy in dB, and whether it is speech."""
        ep = self.config
        energy = 10.0 * math.log10(float(np.mean(frame.astype(np.float64) ** 2)) + 1e-10)
        floor = energy if self.noise_floor is None else self.noise_floor
        speech = energy > max(floor + ep.speech_threshold_db, ep.min_level_db)
        if not speech:  # track the floor down at once, up slowly, and never below digital silence
            floor = energy if energy < floor else floor + 0.05 * (energy - floor)
            self.noise_floor = max(floor, -100.0)
        elif self.noise_floor is None:
            self.noise_floor = -100.0
        if speech:
            self.speech_run += 1
            self.silence_run = 0
        else:
            self.speech_run = 0
            self.silence_run += 1
        return energy, speech

    @property
    def onset(self) -> bool:
        """Speech has lasted ``min_speech_ms``: an utterance starts."""
        return self.speech_run * 20 >= self.config.min_speech_ms

    @property
    def endpoint(self) -> bool:
        """Silence has lasted ``silence_ms``: the utterance is over."""
        return self.silence_run * 20 >= self.config.silence_ms

    @property
    def tail_complete(self) -> bool:
        """The silence after the speech has just reached the tail a segment keeps."""
        return self.silence_run == self.config.tail_frames

    @property
    def context_frames(self) -> int:
        """Frames to keep before an utterance has started: some audio before the speech, and the speech."""
        return self.config.pre_speech_ms // 20 + self.speech_run

    def utterance_ended(self) -> None:
        self.silence_run = 0
        self.speech_run = 0


def quietest_cut(energies: list[float]) -> int:
    """Sample offset in a segment (given its frame energies) of the quietest 100 ms in its last third."""
    e = np.asarray(energies)
    per = CUT_WINDOW // FRAME
    lo = (2 * len(e)) // 3
    windows = [float(np.mean(e[i : i + per])) for i in range(lo, len(e) - per + 1)]
    best = lo + int(np.argmin(windows)) if windows else len(e)
    return (best + per // 2) * FRAME  # frame-aligned, so the energies stay in step with the samples
