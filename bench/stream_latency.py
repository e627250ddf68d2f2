"""Streaming latency under load: N concurrent real-time streams against an `asr serve` server.

Each stream sends 100 ms LINEAR16 chunks at wall-clock pace: 0.5 s of silence, an utterance, 1.5 s of silence.
Per stream it records

* first partial: first interim result received - the chunk holding the speech onset sent;
* final after end of speech: the final received - the chunk holding the last speech sample sent
  (includes the endpointer's silence wait, ``silence_ms``);
* final after endpoint: the final received - the chunk holding the final's ``result_end_offset`` sent
  (the server's processing delay alone).

    python bench/stream_latency.py --streams 1 8                     # starts a server on a random-weight
                                                                     # default-size model (or --model PATH)
    python bench/stream_latency.py --server host:50051 --streams 8   # an existing server

Random weights never emit <eos>, so their beam search runs to the length cap: finals are pessimistic next
to a trained model (whose hypotheses end with the transcript).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asr.audio import SAMPLE_RATE, float_to_pcm16, load_audio  # noqa: E402
from client.proto.asr.v1 import asr_pb2, asr_pb2_grpc  # noqa: E402

CHUNK_S = 0.1
TEXT = "the quick brown fox jumps over the lazy dog"
DECODING = asr_pb2.DecodingConfig()  # finals; set from the command line


def speech_audio(text: str = TEXT) -> tuple[np.ndarray, float, float]:
    """Silence + espeak-ng speech + silence; returns audio and the onset and end of speech in seconds."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("needs espeak-ng and sox (make sysdeps)")
    with tempfile.TemporaryDirectory() as d:
        raw, wav = Path(d) / "raw.wav", Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav)], check=True)
        speech = load_audio(wav)
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    lead, tail = 0.5, 1.5
    onset = lead + loud[0] / SAMPLE_RATE
    end = lead + loud[-1] / SAMPLE_RATE
    sil = np.zeros(int(SAMPLE_RATE * lead), np.float32)
    return np.concatenate([sil, speech, np.zeros(int(SAMPLE_RATE * tail), np.float32)]), onset, end


def one_stream(
    address: str, audio: np.ndarray, onset: float, end: float, out: list[dict], token: str
) -> None:
    step = int(CHUNK_S * SAMPLE_RATE)
    sent: list[float] = []  # wall time each chunk was sent
    cfg = asr_pb2.StreamingRecognitionConfig(
        config=asr_pb2.RecognitionConfig(
            encoding=asr_pb2.LINEAR16, sample_rate_hertz=SAMPLE_RATE, decoding=DECODING
        ),
        interim_results=True,
    )

    def requests() -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=cfg)
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, len(audio), step)):
            delay = t0 + k * CHUNK_S - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent.append(time.perf_counter())
            yield asr_pb2.StreamingRecognizeRequest(audio_content=float_to_pcm16(audio[i : i + step]))

    def sent_at(seconds: float) -> float:
        return sent[min(len(sent) - 1, int(seconds / CHUNK_S - 1e-9))]

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    stub = asr_pb2_grpc.RecognizerStub(grpc.insecure_channel(address))
    first_partial = final_eos = final_ep = None
    for resp in stub.StreamingRecognize(requests(), metadata=metadata, timeout=120):
        now = time.perf_counter()
        for r in resp.results:
            if not r.is_final and first_partial is None:
                first_partial = now - sent_at(onset)
            if r.is_final and final_eos is None:
                final_eos = now - sent_at(end)
                e = r.result_end_offset
                final_ep = now - sent_at(e.seconds + e.nanos / 1e9)
    out.append(
        {"first_partial": first_partial, "final_after_speech": final_eos, "final_after_endpoint": final_ep}
    )


def run_load(
    address: str, n: int, rounds: int, audio: np.ndarray, onset: float, end: float, token: str
) -> dict:
    rows: list[dict] = []
    for _ in range(rounds):
        threads = [
            threading.Thread(target=one_stream, args=(address, audio, onset, end, rows, token))
            for _ in range(n)
        ]
        for i, t in enumerate(threads):
            time.sleep(0.037 * (i > 0))  # stagger starts a little, as real clients are
            t.start()
        for t in threads:
            t.join()
    summary: dict = {"streams": n, "samples": len(rows)}
    for key in ("first_partial", "final_after_speech", "final_after_endpoint"):
        vals = np.array([r[key] for r in rows if r[key] is not None])
        summary[key] = (
            {
                "p50_ms": round(1000 * float(np.percentile(vals, 50))),
                "p95_ms": round(1000 * float(np.percentile(vals, 95))),
            }
            if vals.size
            else None
        )
    return summary


def start_server(model: str | None, threads: int) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "ASR_PORT": "0",
        "ASR_METRICS_PORT": "-1",
        "ASR_HOST": "127.0.0.1",
        "ASR_LOG_FORMAT": "json",
    }
    if threads:
        env["ASR_CPU_THREADS"] = str(threads)
    if model is None:  # a random-weight model of the default size
        import torch

        from asr import ASRModel, ModelConfig, save_checkpoint
        from asr.tokenizer import CharTokenizer

        torch.manual_seed(0)
        model = str(Path(tempfile.mkdtemp()) / "random-default.pt")
        save_checkpoint(ASRModel(ModelConfig(), CharTokenizer.default()), model)
    env["ASR_MODEL"] = model
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("msg") == "serving":
            port = json.loads(line)["port"]
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, f"127.0.0.1:{port}"
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--server", help="address of a running server (default: start one)")
    p.add_argument("--model", help="checkpoint for the server this script starts (default: random weights)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=3, help="repetitions per concurrency level")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the started server")
    p.add_argument("--token", default=os.environ.get("ASR_TOKEN", ""))
    p.add_argument("--json", action="store_true", help="print one JSON object per level")
    p.add_argument("--beam-size", type=int, default=0, help="beam of the finals (0: the server's default)")
    p.add_argument("--greedy", action="store_true", help="greedy CTC finals (a lower bound on final latency)")
    args = p.parse_args(argv)
    DECODING.beam_size = args.beam_size
    if args.greedy:
        DECODING.method = asr_pb2.DecodingConfig.GREEDY
    audio, onset, end = speech_audio()
    proc = None
    address = args.server
    if address is None:
        proc, address = start_server(args.model, args.threads)
    try:
        one_stream(address, audio, onset, end, [], args.token)  # warm the path once
        for n in args.streams:
            s = run_load(address, n, args.rounds, audio, onset, end, args.token)
            if args.json:
                print(json.dumps(s), flush=True)
            else:
                parts = [f"{n:2d} stream(s), {s['samples']} samples:"]
                for key in ("first_partial", "final_after_speech", "final_after_endpoint"):
                    v = s[key]
                    parts.append(f"{key} p50 {v['p50_ms']} ms p95 {v['p95_ms']} ms" if v else f"{key} -")
                print("  ".join(parts), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
