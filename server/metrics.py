"""Prometheus metrics, in a registry of their own so that several servers (tests) can live in one process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "asr_requests", "Finished RPCs by method and status code", ["method", "code"], registry=r
        )
        self.errors = Counter(
            "asr_errors", "RPCs that ended with an error, by method and code", ["method", "code"], registry=r
        )
        self.active_streams = Gauge("asr_active_streams", "Open StreamingRecognize calls", registry=r)
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio received", ["method"], registry=r)
        self.latency = Histogram(
            "asr_request_latency_seconds", "Recognize: request to response", buckets=_LATENCY, registry=r
        )
        self.result_latency = Histogram(
            "asr_stream_result_latency_seconds",
            "Streams: arrival of the last audio a result covers (finals: what closed the utterance) "
            "to the result sent",
            ["kind"],
            buckets=_LATENCY,
            registry=r,
        )
        self.early_finals = Counter(
            "asr_early_finals",
            "Finals decoded before their endpoint: sent at it, or wasted when speech resumed",
            ["outcome"],
            registry=r,
        )
        self.load_beam_batches = Counter(
            "asr_load_beam_batches",
            "Batches of finals searched with the --load-beam-size beam because the finals were behind",
            registry=r,
        )
        self.batch_size = Histogram(
            "asr_batch_size", "Streams per model batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.batch_seconds = Histogram(
            "asr_batch_seconds", "Model time per batch", buckets=_LATENCY, registry=r
        )
        self._http: Any = None
        self._finals: _FinalsCollector | None = None

    def watch_finals(self, model: str, recognizer: Any) -> None:
        """Export how a chunk-streaming model's finals were searched (its recognizer's ``finals_grown`` and
        ``finals_whole``, read at each scrape) as ``asr_stream_finals_total{model,search}``."""
        if self._finals is None:
            self._finals = _FinalsCollector()
            self.registry.register(self._finals)
        self._finals.recognizers[model] = recognizer

    def count(self, method: str, code: str) -> None:
        """One finished RPC; ``code`` is its status code's name ("OK", "INVALID_ARGUMENT", ...)."""
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(method, code).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint on a daemon thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        log.info("metrics listening", extra={"port": server.server_port})
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            server, _ = self._http
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()
            self._http = None


class _FinalsCollector(Collector):
    """``asr_stream_finals_total{model,search=grown|whole|second_pass}`` from the recognizers' counters."""

    def __init__(self) -> None:
        self.recognizers: dict[str, Any] = {}

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "asr_stream_finals",
            "Finals of chunk-streaming models by how their beam search ran: grown while the utterance was "
            "heard, whole at the endpoint (growing off, or its search fell behind under load), or by the "
            "final model (--streaming-finals) from the utterance's audio",
            labels=["model", "search"],
        )
        for model, rec in self.recognizers.items():
            family.add_metric([model, "grown"], rec.finals_grown)
            family.add_metric([model, "whole"], rec.finals_whole)
            family.add_metric([model, "second_pass"], rec.finals_second_pass)
        yield family
