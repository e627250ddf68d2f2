"""Batching of model work across streams and unary requests (an asyncio queue in front of one worker thread).

Callers ``await batcher.decode(stream)``; the batcher collects streams until it has ``max_batch_size`` of
them or the first has waited ``max_wait_ms``, then runs :meth:`asr.streaming.Recognizer.decode_streams`
on its executor (one thread: the model is called by one thread at a time, on the GPU when there is one). If a
batch fails, each stream is retried alone so that one bad stream cannot fail the others. Finals come first:
a batch in which some stream has a closed utterance decodes only finals, and the interims that were due wait
for the next batch (their callers queue again), so final latency does not grow with other streams' interims.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time

from asr.streaming import Recognizer, Stream
from server.metrics import Metrics

log = logging.getLogger(__name__)


class Batcher:
    def __init__(
        self,
        recognizer: Recognizer,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        metrics: Metrics | None = None,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr-model")
        self._queue: asyncio.Queue[tuple[Stream, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="asr-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("server is shutting down"))
        if self._own_executor:
            self.executor.shutdown(wait=True, cancel_futures=True)

    async def decode(self, stream: Stream) -> None:
        """Run the stream's due work (finals, interims) in the next batch; returns when it is done."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((stream, fut))
        await fut

    async def run_in_executor(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run other model work (warm-up) on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # streams whose caller went away (cancelled) are skipped
            live = [(s, f) for s, f in items if not f.done()]
            if not live:
                continue
            await self._decode_batch(live)

    async def _decode_batch(self, items: list[tuple[Stream, asyncio.Future[None]]]) -> None:
        loop = asyncio.get_running_loop()
        streams = list(dict.fromkeys(s for s, _ in items))  # a stream queued twice is decoded once
        t0 = time.perf_counter()
        finals_only = any(self.recognizer.has_final(s) for s in streams)
        decode = functools.partial(self.recognizer.decode_streams, interims=not finals_only)
        try:
            await loop.run_in_executor(self.executor, decode, streams)
            errors: dict[int, BaseException] = {}
        except Exception:
            if len(streams) == 1:
                log.exception("decoding failed", extra={"streams": 1})
                errors = {id(streams[0]): RuntimeError("decoding failed")}
            else:  # isolate the bad stream(s)
                log.warning("batch of %d failed; retrying one by one", len(streams))
                errors = {}
                for s in streams:
                    try:
                        await loop.run_in_executor(self.executor, decode, [s])
                    except Exception as exc:
                        log.exception("decoding failed for one stream")
                        errors[id(s)] = exc
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(streams))
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        for s, fut in items:
            if fut.done():
                continue
            if id(s) in errors:
                fut.set_exception(errors[id(s)])
            else:
                fut.set_result(None)
