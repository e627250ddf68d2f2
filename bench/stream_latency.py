"""Streaming latency and cost side by side (issue 30): today's segment streaming against a streaming model.

    python bench/stream_latency.py                                   # default,streaming; every measure
    python bench/stream_latency.py --json exp/stream_latency.json
    python bench/stream_latency.py --models default --measures latency --utterances 3 --streams 1
    python bench/stream_latency.py --models default,streaming,streaming@480 --measures latency  # blank 480
    python bench/stream_latency.py --models streaming@160/whole,streaming@160 --measures latency
    python bench/stream_latency.py --models streaming@160,streaming@160/chunk160 --measures latency
    python bench/stream_latency.py --models streaming,streaming/finals=default   # two-pass finals
    python bench/stream_latency.py --models streaming/finals=default/budget300   # ... within 300 ms
    python bench/stream_latency.py --models streaming,streaming/late --measures load  # --early-lookahead off
    python bench/stream_latency.py --models streaming,streaming/auto --measures load  # --early-lookahead auto

For each of ``--models`` (names under models/ or checkpoint paths) the bench starts ``asr serve --model NAME``
on loopback with ``--server-threads`` torch threads per model thread (default: the server's own choice), one
server at a time so that the models never share the CPU, and plays real speech to it through the SDK
(:class:`client.Client`) in 100 ms chunks at wall-clock pace, interim results on, each server's default
endpointing (segments: 800 ms of energy silence; chunked models also a run of CTC blanks, ``blank_ms``) and
interim interval (``--interim-ms`` sets the segment path's).

Test audio, from ``--data`` (default cathy/ and commonvoice-sample/ of /work/shared/data, in turn): 2-8 s
recordings, each trimmed to its voiced span (asr.alignment.voiced_span) with 0.1 s either side, streamed with
0.5 s of silence before and 1.5 s after, so that the endpointer can fire before the stream ends. Reference
times are fixed before any server starts, the same for every model:

* a word's end: the forced CTC alignment of the reference transcript by ``--align-model`` (the offline
  default; asr.alignment.align_words), kept within the voiced span (asr.alignment.clamp_to_voiced);
* the end of speech: the end of the voiced span, i.e. the last 20 ms frame clearly above the recording's noise
  floor (the acoustics, not a model); the last aligned word's end when the recording has no quieter part.

Latencies run from the moment the 100 ms chunk holding that instant was sent (bench.load.sent_at); a
microphone that delivers 100 ms chunks adds up to 100 ms to each. Measures (``--measures``, all by default):

latency  *final*: the arrival of the stream's last final - the end of speech. *word partial*: for each
         reference word, the first result whose words (the stream's earlier finals, then its text) contain it
         in order (difflib alignment of the word lists; an interim, or the final when no interim had it) - the
         word's end; *words seen*: the share of reference words that ever appear; *WER of the finals*: the
         streams' finals, joined, against the references; *word covered*: the first
         result whose audio reaches the word's end (its ``end``), whatever its text - the word's end (how
         closely results follow the audio, apart from accuracy). p50/p95 at each of ``--streams`` concurrent
         real-time streams (default 1 and 8), over the same ``--utterances`` recordings at every level
         (default 48, half from each source; a level that does not divide them replays the first ones, which
         weights them twice). Twelve recordings were the default until session 29, and they flattered every
         latency: final p95 358 ms against 453 over 48, word partial p50 263 against 429 ms (1 stream).
cpu      server CPU time (user + system of its process, less its idle rate) per second of audio sent, for
         one stream of continuous speech (recordings joined at their voiced spans, no pause long enough for an
         endpoint) of each of ``--cpu-seconds`` (default 5 and 60; with the silence before and after). The
         target is a cost independent of length: the ratio of the longest to the shortest. Every clip carries
         the same 2 s of silence, 29 % of a 5 s clip's audio and 3 % of a 60 s one's; so the measure also
         plays clips of that silence alone and gives the CPU *per second of speech*: each clip's CPU less
         what its silence costs alone, over its seconds of speech, and that ratio.
load     ``--load-streams`` (default 32) concurrent real-time streams of about ``--load-seconds`` (default 20)
         each, several utterances 1.5 s apart: final (each stream's last utterance), word partial and word
         covered latency, *interim lag*: audio sent by an interim's arrival - the audio it covers (its
         ``end``), *lag growth*: how much a stream's median interim lag grew from the first to the last third
         of its interims (worst stream), *send delay*: the worst delay of a chunk's send against its schedule
         (the SDK's send blocked), server CPU in cores (and the bench's own), and *behind*: streams with an
         error, no final, a final over 2 s after the end of speech, a median interim lag over 1 s, lag growth
         or send delay over 0.5 s.

The table has one column per model and, for each later model, its ratio to the first. ``--json`` writes every
number. The bench's own clients share the 2 cores with the server, and so does anything else running.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE  # noqa: E402
from asr.tokenizer import normalize_text  # noqa: E402
from bench.load import CHUNK_S, paced_chunks, percentiles, sent_at, start_server  # noqa: E402
from bench.offline_speed import read_utterances, subsample  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_DATA = (DATA / "cathy", DATA / "commonvoice-sample")
MEASURES = ("latency", "cpu", "load")
LEAD_S, TRAIL_S = 0.5, 1.5  # silence before and after each utterance
MARGIN_S = 0.1  # kept either side of a recording's voiced span
MIN_S, MAX_S = 2.0, 8.0  # recordings used
BEHIND_S = 0.5  # lag growth or send delay that counts as falling behind
BEHIND_LAG_S = 1.0  # so does a stream's median interim lag over this
BEHIND_FINAL_S = 2.0  # or a final this long after the end of speech
STAGGER_S = 0.037  # clients do not all start on the same millisecond (as bench/load.py)
CPU_AUDIO_S = 15.0  # least audio per length in the CPU measure (short ones are played several times)
SILENT_CLIPS = 4  # clips of only the lead and trail silence, whose CPU the measure takes off per clip
IDLE_S = 3.0  # how long the idle server's CPU rate is measured
LOOKAHEAD_VARIANTS = {"late": "off", "early": "on", "auto": "auto"}  # NAME/VARIANT: --early-lookahead

Words = tuple[tuple[str, float], ...]  # (word, end in seconds)


@dataclass(frozen=True)
class Piece:
    """One recording trimmed to its voiced span; times in seconds from the start of ``audio``."""

    audio: np.ndarray
    words: Words
    speech_end: float


@dataclass(frozen=True)
class Clip:
    """What one stream plays; times in seconds from the start of the stream."""

    audio: np.ndarray
    words: Words
    speech_end: float  # end of the last utterance's speech

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class StreamLog:
    sent: list[float] = field(default_factory=list)  # perf_counter() at which each chunk left
    results: list[tuple[float, bool, str, float]] = field(default_factory=list)  # arrival, final, text, end
    error: str | None = None


@dataclass(frozen=True)
class TestAudio:
    latency: list[Clip]
    cpu: dict[int, list[Clip]]  # seconds of speech -> streams played one after another
    load: list[Clip]


# ---- pure helpers (tests/test_bench_stream_latency.py) ----


def end_of_speech(span: tuple[float, float] | None, words: Words, duration: float) -> float:
    """The voiced span's end; else the last word's end; else the whole recording."""
    if span is not None:
        return span[1]
    return words[-1][1] if words else duration


def trim_bounds(span: tuple[float, float] | None, duration: float) -> tuple[float, float]:
    """The voiced span with ``MARGIN_S`` either side, within the recording; all of it without a span."""
    if span is None:
        return 0.0, duration
    return max(0.0, span[0] - MARGIN_S), min(duration, span[1] + MARGIN_S)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def compose(pieces: Sequence[Piece], gap_s: float, lead_s: float = LEAD_S, trail_s: float = TRAIL_S) -> Clip:
    """``pieces`` played ``gap_s`` apart, with silence before and after; their times moved to stream time."""
    parts, words = [silence(lead_s)], []
    at = len(parts[0])  # samples so far
    end = 0.0
    for i, p in enumerate(pieces):
        if i:
            parts.append(silence(gap_s))
            at += len(parts[-1])
        t = at / SAMPLE_RATE
        words += [(w, t + e) for w, e in p.words]
        end = t + p.speech_end
        parts.append(p.audio)
        at += len(p.audio)
    parts.append(silence(trail_s))
    return Clip(np.concatenate(parts), tuple(words), end)


def continuous(pieces: Sequence[Piece], seconds: float) -> Clip:
    """``seconds`` of speech without pauses (``pieces`` back to back, cut at ``seconds``), no word times."""
    speech = np.concatenate([p.audio for p in pieces])[: round(seconds * SAMPLE_RATE)]
    clip = compose([Piece(speech, (), len(speech) / SAMPLE_RATE)], 0.0)
    return Clip(clip.audio, (), clip.speech_end)


def first_seen(ref: Sequence[str], hyps: Iterable[tuple[float, Sequence[str]]]) -> list[float | None]:
    """For each reference word, the time of the first hypothesis that holds it in order (``None``: never)."""
    seen: list[float | None] = [None] * len(ref)
    for t, hyp in hyps:
        matcher = difflib.SequenceMatcher(None, list(ref), list(hyp), autojunk=False)
        for block in matcher.get_matching_blocks():
            for i in range(block.a, block.a + block.size):
                if seen[i] is None:
                    seen[i] = t
    return seen


def hypotheses(results: Sequence[tuple[float, bool, str, float]]) -> list[tuple[float, list[str]]]:
    """The stream's words at each result's arrival: its finals so far, then the result's own text."""
    finals: list[str] = []
    out = []
    for arrival, is_final, text, _ in results:
        words = normalize_text(text).split()
        out.append((arrival, finals + words))
        if is_final:
            finals = finals + words
    return out


def word_latencies(clip: Clip, log: StreamLog) -> tuple[list[float], int]:
    """Seconds from each reference word's end to its first appearance, and how many words appeared."""
    seen = first_seen([w for w, _ in clip.words], hypotheses(log.results))
    out = [t - sent_at(log.sent, end) for t, (_, end) in zip(seen, clip.words, strict=True) if t is not None]
    return out, len(out)


def covered_latencies(clip: Clip, log: StreamLog) -> list[float]:
    """Seconds from each reference word's end to the first result whose audio reaches it (its ``end``),
    whatever its text: how closely results follow the audio, apart from the model's accuracy."""
    out = []
    for _, end in clip.words:
        arrival = next((a for a, _, _, covered in log.results if covered >= end), None)
        if arrival is not None:
            out.append(arrival - sent_at(log.sent, end))
    return out


def final_latency(clip: Clip, log: StreamLog) -> float | None:
    """Seconds from the end of speech to the stream's last final; ``None`` without a final."""
    finals = [arrival for arrival, is_final, _, _ in log.results if is_final]
    return finals[-1] - sent_at(log.sent, clip.speech_end) if finals and log.sent else None


def send_delay(sent: Sequence[float]) -> float:
    """The worst lateness of a chunk against its schedule (chunk k due ``k * CHUNK_S`` after the first)."""
    return max((t - sent[0] - k * CHUNK_S for k, t in enumerate(sent)), default=0.0)


def interim_lags(log: StreamLog) -> list[float]:
    """Each interim's lag: the audio sent by its arrival - the audio it covers (its ``end``), seconds."""
    sent = np.array(log.sent)
    return [
        float(np.searchsorted(sent, arrival, side="right") * CHUNK_S - end)
        for arrival, is_final, _, end in log.results
        if not is_final
    ]


def lag_growth(lags: Sequence[float]) -> float | None:
    """Median lag of the last third of a stream's interims less that of the first third; ``None`` with
    fewer than three."""
    if len(lags) < 3:
        return None
    third = len(lags) // 3
    return float(np.median(lags[-third:]) - np.median(lags[:third]))


def fell_behind(log: StreamLog, final: float | None) -> bool:
    """An error, no final, a final more than ``BEHIND_FINAL_S`` after the end of speech, interims more than
    ``BEHIND_LAG_S`` behind the audio (median) or ``BEHIND_S`` further behind at the end than at the start,
    or a chunk sent ``BEHIND_S`` late."""
    lags = interim_lags(log)
    return (
        log.error is not None
        or final is None
        or final > BEHIND_FINAL_S
        or send_delay(log.sent) > BEHIND_S
        or (lag_growth(lags) or 0.0) > BEHIND_S
        or (bool(lags) and float(np.median(lags)) > BEHIND_LAG_S)
    )


# ---- test audio ----


def read_sources(sources: Sequence[Path], count: int) -> list[Any]:
    """Utterances spread over each existing source, the sources taken in turn; says which are missing."""
    found = [s for s in sources if s.exists()]
    for s in sources:
        if not s.exists():
            print(f"note: {s} not found, left out", file=sys.stderr)
    lists = [subsample(read_utterances(s), limit=4 * count) for s in found]
    return [u for group in itertools.zip_longest(*lists) for u in group if u is not None]


def align_reference(model: Any, wave: np.ndarray, text: str) -> tuple[Words, tuple[float, float] | None]:
    """Reference words and their ends (forced CTC alignment, kept within the voiced span), and the span."""
    import torch

    from asr.alignment import align_words, clamp_to_voiced, voiced_span
    from asr.transcribe import encode_waveforms

    with torch.inference_mode():
        enc, lengths, _ = encode_waveforms(model, [wave])
        log_probs = model.ctc_log_probs(enc)[0, : int(lengths[0])]
    tokens = model.tokenizer.encode(text)
    words = align_words(log_probs, tokens, model.tokenizer, model.config.encoder_frame_shift)
    span = voiced_span(wave)
    return tuple((w.word, w.end) for w in clamp_to_voiced(words, span)), span


def load_pieces(sources: Sequence[Path], count: int, align_model: str) -> list[Piece]:
    """``count`` recordings of ``MIN_S``-``MAX_S`` seconds, trimmed and aligned."""
    from asr.checkpoint import load_model
    from asr.data.dataset import load_utterance

    model = load_model(align_model, device="cpu")
    pieces = []
    for u in read_sources(sources, count):
        wave = load_utterance(u)
        if not MIN_S <= len(wave) / SAMPLE_RATE <= MAX_S or not normalize_text(u.text):
            continue
        words, span = align_reference(model, wave, u.text)
        start, stop = trim_bounds(span, len(wave) / SAMPLE_RATE)
        kept = tuple((w, e - start) for w, e in words)
        end = end_of_speech(span, words, len(wave) / SAMPLE_RATE) - start
        pieces.append(Piece(wave[round(start * SAMPLE_RATE) : round(stop * SAMPLE_RATE)], kept, end))
        if len(pieces) == count:
            break
    return pieces


def take(pieces: Sequence[Piece], start: int, seconds: float, gap_s: float) -> list[Piece]:
    """Pieces from ``start`` on (cycling) until they and their gaps last ``seconds``."""
    out: list[Piece] = []
    total = 0.0
    while total < seconds and len(out) < 10 * len(pieces):
        p = pieces[(start + len(out)) % len(pieces)]
        total += len(p.audio) / SAMPLE_RATE + gap_s * bool(out)
        out.append(p)
    return out


def prepare(args: argparse.Namespace) -> TestAudio:
    import torch

    torch.set_num_threads(1)  # alignment only; more threads spin against each other on a busy machine
    count = (
        args.utterances if set(args.measures) == {"latency"} else max(args.utterances, args.load_streams, 24)
    )
    pieces = load_pieces(args.data, count, args.align_model)
    if not pieces:
        raise SystemExit(f"skipped: no {MIN_S:g}-{MAX_S:g} s recordings with a transcript in {args.data}")
    latency = [compose([p], 0.0) for p in pieces[: args.utterances]]
    cpu = {
        s: [continuous(take(pieces, 5 * k, s, 0.0), s) for k in range(math.ceil(CPU_AUDIO_S / s))]
        for s in args.cpu_seconds
    }
    load = [
        compose(take(pieces, 7 * k, args.load_seconds, TRAIL_S), TRAIL_S) for k in range(args.load_streams)
    ]
    return TestAudio(latency, cpu, load)


# ---- playing streams ----


OWN_CONNECTIONS = False  # --own-connections: each stream's client on a connection of its own


def _client_class() -> Any:
    """The SDK's ``Client``, or with ``--own-connections`` one whose channel does not share gRPC's connection
    to the target with the other clients'."""
    from client import Client

    if not OWN_CONNECTIONS:
        return Client

    class OwnConnection(Client):
        def _open_channel(self, kind: Any) -> Any:
            self._channel_options = [*self._channel_options, ("grpc.use_local_subchannel_pool", 1)]
            return super()._open_channel(kind)

    return OwnConnection


def play(target: str, clip: Clip, config: Any) -> StreamLog:
    """One real-time stream through the SDK; every result with its arrival time."""
    from client import ASRError

    log = StreamLog()
    try:
        with _client_class()(target, timeout=60 + clip.seconds, retries=0) as client:
            for r in client.stream(paced_chunks(clip.audio, log.sent), config):
                log.results.append((time.perf_counter(), r.is_final, r.text, r.end))
    except ASRError as exc:
        log.error = f"{exc.code}: {exc}"
    return log


def play_together(target: str, clips: Sequence[Clip], config: Any) -> list[StreamLog]:
    with ThreadPoolExecutor(len(clips)) as pool:
        futures = []
        for i, clip in enumerate(clips):
            time.sleep(STAGGER_S * (i > 0))
            futures.append(pool.submit(play, target, clip, config))
        return [f.result() for f in futures]


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process and of its live children (``--workers``), and of those reaped."""
    import psutil

    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that has just exited
            c = child.cpu_times()
            total += c.user + c.system
    return total


def finals_wer(clips: Sequence[Clip], logs: Sequence[StreamLog]) -> float | None:
    """WER (%) of the streams' finals, joined per stream, against the clips' reference words."""
    import jiwer

    pairs = [
        (" ".join(w for w, _ in c.words), " ".join(t for _, final, t, _ in log.results if final))
        for c, log in zip(clips, logs, strict=True)
        if c.words
    ]
    if not pairs:
        return None
    return 100 * jiwer.wer([r for r, _ in pairs], [normalize_text(h) or "-" for _, h in pairs])


def summarise(clips: Sequence[Clip], logs: Sequence[StreamLog]) -> dict[str, Any]:
    finals = [final_latency(c, log) for c, log in zip(clips, logs, strict=True)]
    words = [word_latencies(c, log) for c, log in zip(clips, logs, strict=True)]
    total = sum(len(c.words) for c in clips)
    return {
        "streams": len(logs),
        "final": percentiles([f for f in finals if f is not None]),
        "word_partial": percentiles([x for w, _ in words for x in w]),
        "word_covered": percentiles(
            [x for c, log in zip(clips, logs, strict=True) for x in covered_latencies(c, log)]
        ),
        "words_seen_pct": 100 * sum(n for _, n in words) / total if total else None,
        "finals_wer_pct": finals_wer(clips, logs),
        "errors": sum(log.error is not None for log in logs),
        "no_final": sum(f is None for f in finals),
        "error_samples": sorted({log.error for log in logs if log.error})[:3],
    }


# ---- the measures ----


def measure_latency(target: str, clips: Sequence[Clip], levels: Sequence[int], config: Any) -> dict:
    """Each level plays every clip (cycled to fill the last group), ``n`` streams at a time."""
    out = {}
    for n in levels:
        played = [clips[i % len(clips)] for i in range(math.ceil(len(clips) / n) * n)]
        logs = []
        for g in range(0, len(played), n):
            logs += play_together(target, played[g : g + n], config)
        out[str(n)] = summarise(played, logs)
        print(f"  {n} stream(s): {out[str(n)]}", file=sys.stderr, flush=True)
    return out


def speech_ms_per_s(used_s: float, clips: int, silence_s: float, speech_s: float) -> float:
    """CPU per second of speech: the clips' CPU less what their lead and trail silence costs alone."""
    return 1000 * (used_s - clips * silence_s) / speech_s


def measure_cpu(target: str, pid: int, cpu: dict[int, list[Clip]], config: Any, idle: float) -> dict:
    def used_by(clips: Sequence[Clip]) -> tuple[float, int]:
        c0, w0 = cpu_seconds(pid), time.perf_counter()
        logs = [play(target, c, config) for c in clips]
        return cpu_seconds(pid) - c0 - idle * (time.perf_counter() - w0), sum(
            log.error is not None for log in logs
        )

    # Each clip has LEAD_S + TRAIL_S of silence whatever its length: a larger share of a short clip's audio.
    # What that silence costs alone is taken off to give the cost per second of speech.
    quiet = [Clip(silence(LEAD_S + TRAIL_S), (), 0.0)] * SILENT_CLIPS
    used, _ = used_by(quiet)
    out: dict[str, Any] = {"silence_ms_per_clip": 1000 * used / len(quiet)}
    for seconds, clips in cpu.items():
        used, errors = used_by(clips)
        audio = sum(c.seconds for c in clips)
        speech = audio - len(clips) * (LEAD_S + TRAIL_S)
        out[str(seconds)] = {
            "cpu_ms_per_s": 1000 * used / audio,
            "speech_cpu_ms_per_s": speech_ms_per_s(
                used, len(clips), out["silence_ms_per_clip"] / 1000, speech
            ),
            "audio_s": audio,
            "errors": errors,
        }
        print(f"  cpu {seconds} s: {out[str(seconds)]}", file=sys.stderr, flush=True)
    longest, shortest = out[str(max(cpu))], out[str(min(cpu))]
    out["longest_over_shortest"] = ratio(longest["cpu_ms_per_s"], shortest["cpu_ms_per_s"])
    out["speech_longest_over_shortest"] = ratio(
        longest["speech_cpu_ms_per_s"], shortest["speech_cpu_ms_per_s"]
    )
    return out


def measure_load(target: str, pid: int, clips: Sequence[Clip], config: Any) -> dict:
    c0, w0, own = cpu_seconds(pid), time.perf_counter(), time.process_time()
    logs = play_together(target, clips, config)
    wall = time.perf_counter() - w0
    cores, client_cores = (cpu_seconds(pid) - c0) / wall, (time.process_time() - own) / wall
    out = summarise(clips, logs)
    lags = [interim_lags(log) for log in logs]
    growth = [g for g in map(lag_growth, lags) if g is not None]
    finals = [final_latency(c, log) for c, log in zip(clips, logs, strict=True)]
    out.update(
        server_cpu_cores=cores,
        client_cpu_cores=client_cores,
        interim_lag=percentiles([x for stream in lags for x in stream]),
        lag_growth_ms=1000 * max(growth, default=float("nan")),
        send_delay_ms=1000 * max((send_delay(log.sent) for log in logs), default=0.0),
        behind=sum(fell_behind(log, f) for log, f in zip(logs, finals, strict=True)),
    )
    print(f"  load: {out}", file=sys.stderr, flush=True)
    return out


def run_model(name: str, args: argparse.Namespace, audio: TestAudio, config: Any) -> dict[str, Any]:
    """Start a server for ``name``, run the chosen measures on it, stop it. ``NAME@MS``: the server's
    default blank endpoint (``--blank-ms``) set to MS, e.g. ``streaming@480``; a ``/whole`` suffix
    searches finals whole at their endpoint (``--no-growing-finals``), e.g. ``streaming@160/whole``; a
    ``/chunkMS`` suffix runs the model with MS-millisecond chunks (``--chunk-ms``), e.g.
    ``streaming@160/chunk160``; a ``/finals=OTHER`` suffix serves OTHER beside it and has it decode each
    utterance's final again (``--streaming-finals``), e.g. ``streaming/finals=default``; ``/quietMS`` asks the
    energy VAD for MS ms of quiet at the end of a blank run (``--blank-quiet-ms``; ``/quiet0``: no check);
    ``/budgetMS`` gives the second pass a budget (``--second-pass-budget-ms``); ``/late`` reads each chunk's
    look-ahead from the whole next block of a Whisper front end (``--early-lookahead off``), ``/early`` always
    early (``on``), ``/auto`` early unless that block has already arrived (``auto``); ``/workersN`` runs N
    server processes (``--workers``; with ``--own-connections`` the kernel spreads the streams over them);
    ``/nogate`` encodes silence too (``--no-silence-gate``)."""
    from asr.checkpoint import resolve_model_path

    spec, *variants = name.split("/")
    model, _, blank = spec.partition("@")
    env = {"ASR_BLANK_MS": blank} if blank else {}
    served = [model]
    for variant in variants:
        if variant == "whole":
            env["ASR_GROWING_FINALS"] = "false"
        elif variant.startswith("chunk") and variant[5:].isdigit():
            env["ASR_CHUNK_MS"] = variant[5:]
        elif variant.startswith("quiet") and variant[5:].isdigit():
            env["ASR_BLANK_QUIET_MS"] = variant[5:]
        elif variant.startswith("budget") and variant[6:].isdigit():
            env["ASR_SECOND_PASS_BUDGET_MS"] = variant[6:]
        elif variant.startswith("workers") and variant[7:].isdigit():
            env["ASR_WORKERS"] = variant[7:]
        elif variant == "nogate":
            env["ASR_SILENCE_GATE"] = "0"
        elif variant in LOOKAHEAD_VARIANTS:
            env["ASR_EARLY_LOOKAHEAD"] = LOOKAHEAD_VARIANTS[variant]
        elif variant.startswith("finals=") and variant[7:]:
            served.append(variant[7:])
            env["ASR_STREAMING_FINALS"] = Path(variant[7:]).stem  # its served name
        else:
            known = "whole, chunkMS, quietMS, finals=MODEL, budgetMS, late, early, auto, workersN, nogate"
            raise SystemExit(f"{name}: unknown variant {variant!r} (known: {known})")
    try:
        for m in served:
            resolve_model_path(m)
        proc, target = start_server(",".join(served), args.server_threads, env)
    except (FileNotFoundError, SystemExit) as exc:
        print(f"  {name}: {exc}", file=sys.stderr)
        return {"error": str(exc)}
    out: dict[str, Any] = {}
    try:
        play(target, audio.latency[0], config)  # warm the path once
        c0 = cpu_seconds(proc.pid)
        time.sleep(IDLE_S)
        out["idle_cpu_cores"] = idle = (cpu_seconds(proc.pid) - c0) / IDLE_S
        if "latency" in args.measures:
            out["latency"] = measure_latency(target, audio.latency, args.streams, config)
        if "cpu" in args.measures:
            out["cpu"] = measure_cpu(target, proc.pid, audio.cpu, config, idle)
        if "load" in args.measures:
            out["load"] = measure_load(target, proc.pid, audio.load, config)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


# ---- the table ----

WHATS = (
    ("final", "final after end of speech"),
    ("word_partial", "word partial"),
    ("word_covered", "word covered"),
)
Row = tuple[str, tuple[str, ...]]  # label, and the keys to the number in a model's results


def dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def table_rows(args: argparse.Namespace) -> list[Row]:
    """The rows of the chosen measures."""
    rows: list[Row] = []
    if "latency" in args.measures:
        for n in map(str, args.streams):
            for key, what in WHATS:
                rows += [
                    (f"{what}, {n} stream(s), p{q} ms", ("latency", n, key, f"p{q}_ms")) for q in (50, 95)
                ]
            rows.append((f"words seen, {n} stream(s), %", ("latency", n, "words_seen_pct")))
            rows.append((f"WER of the finals, {n} stream(s), %", ("latency", n, "finals_wer_pct")))
    if "cpu" in args.measures:
        for s in map(str, args.cpu_seconds):
            rows.append((f"server CPU per s of audio, {s} s speech, ms", ("cpu", s, "cpu_ms_per_s")))
        if len(args.cpu_seconds) > 1:
            lo, hi = min(args.cpu_seconds), max(args.cpu_seconds)
            rows.append((f"  CPU per s, {hi} s / {lo} s (target 1)", ("cpu", "longest_over_shortest")))
        rows.append(
            (f"server CPU per {LEAD_S + TRAIL_S:g} s of silence alone, ms", ("cpu", "silence_ms_per_clip"))
        )
        for s in map(str, args.cpu_seconds):
            rows.append((f"server CPU per s of speech, {s} s speech, ms", ("cpu", s, "speech_cpu_ms_per_s")))
        if len(args.cpu_seconds) > 1:
            rows.append((f"  CPU per s of speech, {hi} s / {lo} s", ("cpu", "speech_longest_over_shortest")))
    if "load" in args.measures:
        for keys, label in (
            (("final", "p50_ms"), "final after end of speech, p50 ms"),
            (("final", "p95_ms"), "final after end of speech, p95 ms"),
            (("word_partial", "p50_ms"), "word partial, p50 ms"),
            (("word_partial", "p95_ms"), "word partial, p95 ms"),
            (("word_covered", "p50_ms"), "word covered, p50 ms"),
            (("word_covered", "p95_ms"), "word covered, p95 ms"),
            (("interim_lag", "p50_ms"), "interim lag, p50 ms"),
            (("interim_lag", "p95_ms"), "interim lag, p95 ms"),
            (("lag_growth_ms",), "interim lag growth, worst stream, ms"),
            (("send_delay_ms",), "send delay, worst chunk, ms"),
            (("server_cpu_cores",), "server CPU, cores"),
            (("client_cpu_cores",), "the bench's clients' CPU, cores"),
            (("errors",), "errors"),
            (("behind",), "streams behind"),
        ):
            rows.append((f"{args.load_streams} streams: {label}", ("load", *keys)))
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b) else a / b


def cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int) or abs(x) >= 20:
        return f"{x:.0f}"
    return f"{x:.2f}"


def print_table(args: argparse.Namespace, results: dict[str, dict]) -> None:
    names = list(results)
    first = names[0]
    rows = table_rows(args)
    width = max(len(label) for label, _ in rows)
    heads = [*names, *(f"{n}/{first}" for n in names[1:])]
    widths = [max(10, len(h)) for h in heads]
    print(" | ".join([f"{'measure':<{width}}", *(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True))]))
    for label, keys in rows:
        values = [dig(results[n], *keys) for n in names]
        ratios = [ratio(v, values[0]) for v in values[1:]]
        cells = [cell(v) for v in values] + [cell(x) for x in ratios]
        print(" | ".join([f"{label:<{width}}", *(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))]))
    for n in names:
        if "error" in results[n]:
            print(f"{n}: not measured: {results[n]['error']}")
        for sample in dig(results[n], "load", "error_samples") or []:
            print(f"{n}: load error: {sample}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]) if __doc__ else None,
    )
    names = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--models", type=names, default=["default", "streaming"], help="comma-separated models")
    p.add_argument("--measures", type=names, default=list(MEASURES), help=f"any of {','.join(MEASURES)}")
    p.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA), help="speech sources")
    p.add_argument("--utterances", type=int, default=48, help="recordings in the latency measure")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8], help="concurrent streams (latency)")
    p.add_argument("--cpu-seconds", type=int, nargs="+", default=[5, 60], help="speech lengths (cpu)")
    p.add_argument("--load-streams", type=int, default=32, help="concurrent streams (load)")
    p.add_argument("--load-seconds", type=float, default=20.0, help="audio per stream (load)")
    p.add_argument(
        "--own-connections",
        action="store_true",
        help="each stream on a connection of its own, as separate callers' would be (default: the streams "
        "share one, as gRPC's channels to one target in one process do)",
    )
    p.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="torch threads of each server's model threads (default 0: the server's own choice, the cores "
        "shared among its model threads)",
    )
    p.add_argument("--align-model", default="default", help="offline model of the reference word times")
    p.add_argument("--interim-ms", type=int, help="interim interval (default: each server's own)")
    p.add_argument("--json", type=Path, help="write every number to this file")
    args = p.parse_args(argv)
    unknown = sorted(set(args.measures) - set(MEASURES))
    if unknown or not args.measures or not args.models:
        p.error(
            f"--measures takes some of {','.join(MEASURES)} (got {unknown or 'none'}); --models at least one"
        )
    if args.utterances < 1 or min(args.streams + args.cpu_seconds) < 1 or args.load_streams < 1:
        p.error("--utterances, --streams, --cpu-seconds and --load-streams must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    global OWN_CONNECTIONS
    args = parse_args(argv)
    OWN_CONNECTIONS = args.own_connections
    if not any(d.exists() for d in args.data):
        print(f"skipped: no speech found ({', '.join(map(str, args.data))} missing)", file=sys.stderr)
        return 0
    from client import RecognitionConfig, StreamingConfig

    audio = prepare(args)
    config = StreamingConfig(RecognitionConfig(), interim_results=True, interim_interval_ms=args.interim_ms)
    load_before = os.getloadavg()[0]
    results = {}
    for name in args.models:
        print(f"{name}: starting asr serve", file=sys.stderr, flush=True)
        results[name] = run_model(name, args, audio, config)
    load_after = os.getloadavg()[0]
    print(
        f"{len(audio.latency)} utterances from {', '.join(d.name for d in args.data if d.exists())}; "
        f"asr serve on loopback, {args.server_threads} torch threads, one model at a time; 100 ms chunks in "
        f"real time; machine load average {load_before:.1f} before, {load_after:.1f} after, "
        f"{os.cpu_count()} cores"
    )
    print_table(args, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"data": list(map(str, args.data)), "json": str(args.json)},
                    "models": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
