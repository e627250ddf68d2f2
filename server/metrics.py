"""Prometheus metrics, in a registry of their own so that several servers (tests) can live in one process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.batch_size = Histogram(
            "asr_batch_size", "Streams per model batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.batch_seconds = Histogram(
            "asr_batch_seconds", "Model time per batch", buckets=_LATENCY, registry=r
        )
        self._http: Any = None

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
