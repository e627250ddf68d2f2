"""Batching of model work across streams and unary requests: asyncio queues in front of model threads.

Callers ``await batcher.decode(stream)``; the batcher takes the streams queued (up to ``max_batch_size``)
and, when only one was (on the model lane), waits up to ``max_wait_ms`` for more, then runs
:meth:`asr.streaming.Recognizer.decode_streams` on a model thread. There are two *lanes*, each a queue and
one thread: streams with a final due (a closed segment or utterance,
:meth:`~asr.streaming.Recognizer.has_final`) go to the finals lane, all other work (interims, a
chunk-streaming model's chunk steps, unary requests) to the model lane, which leaves the finals its chunk
steps bring about (blank endpoints) to the finals lane. So the beam search of finals never holds up other
streams' partials and chunks, and on a CPU the two use two cores (torch releases the GIL inside its ops; the
model's weights are only read). A stream is in one decode at a time (:mod:`server.stream_call`), so its
state is never touched by both lanes at once. With ``finals_threads=0`` both kinds share the model thread,
finals first: a batch in which some stream has a final due decodes only finals, and the interims that were
due wait for the next batch (their callers queue again), so final latency does not grow with other streams'
interims. The finals lane may have several threads (``finals_threads``), each decoding a batch of its own:
under load, finals are most of the work. If a batch fails, each stream is retried alone so that one bad
stream cannot fail the others.

When the finals fall behind (``BEHIND_FINALS`` streams' finals in one batch, or more queued behind it), their
beam search keeps at most ``load_beam_size`` hypotheses until they have caught up: a little accuracy for
finals that keep up with many streams.

While neither lane has anything queued, the finals thread grows the searches of open utterances
(:meth:`asr.streaming.Recognizer.grow_pending`, chunk-streaming models), a slice at a time, so that a final is
mostly searched before its endpoint; under load that work waits for the finals themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time

import torch

from asr.streaming import Recognizer, Stream
from server.metrics import Metrics

log = logging.getLogger(__name__)

# growing-search work per idle turn of the finals thread; a final queued meanwhile waits for the stream being
# grown, not for the rest of the slice
GROW_SLICE_S = 0.02
# the finals are behind when a batch holds this many streams' finals, or more wait behind it: the beam search
# of a chunk-streaming model's stream finals then keeps ``load_beam_size`` hypotheses (32 real-time streams on
# 2 cores: docs/BENCHMARKS.md, session 27; a wait of 1 s as the sign instead came too late to help). Unary
# requests and segment streams keep their beam (Recognizer.decode_streams).
BEHIND_FINALS = 4


class _Lane:
    """A queue of streams and the thread that decodes their batches."""

    def __init__(
        self, name: str, executor: concurrent.futures.ThreadPoolExecutor | None, threads: int = 1
    ) -> None:
        self.name = name
        self.own_executor = executor is None
        self.threads = 1 if executor is not None else threads  # batches in flight at once
        # Every model thread runs torch ops with the server's thread count (a new thread would start with
        # the library's default): a beam final must not depend on which lane happened to decode it.
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            self.threads,
            thread_name_prefix=name,
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self.queue: asyncio.Queue[tuple[Stream, asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.in_flight: set[asyncio.Task[None]] = set()


class Batcher:
    def __init__(
        self,
        recognizer: Recognizer,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        metrics: Metrics | None = None,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        finals_threads: int = 1,
        load_beam_size: int = 0,
    ) -> None:
        self.recognizer = recognizer
        self.load_beam_size = load_beam_size  # the finals' beam while they are behind; 0: never capped
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._model = _Lane("asr-model", executor)
        if finals_threads < 0:
            raise ValueError(f"finals_threads must be 0 (no finals lane) or more, got {finals_threads}")
        self._finals = _Lane("asr-finals", None, finals_threads) if finals_threads else None
        self._lanes = [lane for lane in (self._model, self._finals) if lane is not None]
        self.executor = self._model.executor  # the model thread (warm-up, other model work)
        self._chunks_done = asyncio.Event()  # set after each model-lane batch: there may be searches to grow

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self._lanes:
            if lane.task is None:
                lane.task = loop.create_task(self._run(lane), name=f"asr-batcher-{lane.name}")

    async def stop(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
            for task in list(lane.in_flight):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            while not lane.queue.empty():
                _, fut = lane.queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("server is shutting down"))
        for lane in self._lanes:
            if lane.own_executor:
                lane.executor.shutdown(wait=True, cancel_futures=True)

    async def decode(self, stream: Stream) -> None:
        """Run the stream's due work (finals, interims, chunks) in the next batch of its lane; returns when it
        is done."""
        if self._model.task is None:
            raise RuntimeError("Batcher.start() was not called")
        lane = self._model
        if self._finals is not None and self.recognizer.has_final(stream):
            lane = self._finals
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await lane.queue.put((stream, fut))
        await fut

    async def run_in_executor(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run other model work (warm-up) on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(lane.threads)
        while True:
            await free.acquire()  # a batch forms when a thread is free to decode it
            items = [await self._first(lane)]
            while len(items) < self.max_batch_size and not lane.queue.empty():
                items.append(lane.queue.get_nowait())
            # Only a lone request on the model lane waits (up to max_wait) for company; a backlog goes at
            # once, so that a lane that is busy is never idle. A lone final goes at once too: finals are due
            # at their own endpoints, seldom together, and a lone one waited max_wait for company that
            # seldom came.
            wait = self.max_wait if len(items) == 1 and lane is self._model else 0.0
            deadline = loop.time() + wait
            while len(items) < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(lane.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # streams whose caller went away (cancelled) are skipped
            live = [(s, f) for s, f in items if not f.done()]
            if not live:
                free.release()
                continue
            task = loop.create_task(self._decode_batch(live, lane))
            lane.in_flight.add(task)
            task.add_done_callback(lane.in_flight.discard)
            task.add_done_callback(lambda _: free.release())

    async def _first(self, lane: _Lane) -> tuple[Stream, asyncio.Future[None]]:
        """The lane's next queued stream. The finals lane grows searches while it waits for one."""
        if lane is not self._finals:
            return await lane.queue.get()
        loop = asyncio.get_running_loop()
        failed = False  # growing failed: not again before the next chunks (the finals must go on)

        def queued() -> bool:  # asked by a slice between two streams: a final queued stops it
            return lane.queue.qsize() > 0

        while True:
            if not lane.queue.empty():
                return lane.queue.get_nowait()
            # growing is for spare time: the model thread's chunks and partials come first
            if not failed and self._model.queue.empty() and self.recognizer.has_growth():
                try:
                    await loop.run_in_executor(
                        lane.executor, self.recognizer.grow_pending, GROW_SLICE_S, queued
                    )
                except Exception:
                    log.exception("growing searches failed; their finals will be searched whole")
                    failed = True
                continue
            self._chunks_done.clear()
            get = asyncio.ensure_future(lane.queue.get())
            wake = asyncio.ensure_future(self._chunks_done.wait())
            try:
                await asyncio.wait({get, wake}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # (also when the lane is stopped: no task is left pending, no stream lost)
                wake.cancel()
                if not get.done():
                    get.cancel()
                elif asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    lane.queue.put_nowait(get.result())
            if get.done() and not get.cancelled():
                return get.result()
            failed = False

    def _behind(self, streams: list[Stream], lane: _Lane) -> bool:
        """Whether a batch of finals shows the finals falling behind: ``BEHIND_FINALS`` streams' at once,
        or more queued after it (with ``load_beam_size`` set)."""
        return self.load_beam_size > 0 and (len(streams) >= BEHIND_FINALS or not lane.queue.empty())

    async def _decode_batch(self, items: list[tuple[Stream, asyncio.Future[None]]], lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        executor = lane.executor
        streams = list(dict.fromkeys(s for s, _ in items))  # a stream queued twice is decoded once
        t0 = time.perf_counter()
        finals_only = any(self.recognizer.has_final(s) for s in streams)
        # With a finals lane, the finals that a chunk step brings about (a blank endpoint) are left to it: the
        # stream has a final due when its caller queues it again, and the model thread goes on with chunks.
        finals = self._finals is None or lane is self._finals
        behind = self._behind(streams, lane) if finals and (finals_only or lane is self._finals) else False
        if behind and self.metrics is not None:
            self.metrics.load_beam_batches.inc()
        decode = functools.partial(
            self.recognizer.decode_streams,
            interims=not finals_only,
            finals=finals,
            beam_cap=self.load_beam_size if behind else 0,
        )
        try:
            await loop.run_in_executor(executor, decode, streams)
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
                        await loop.run_in_executor(executor, decode, [s])
                    except Exception as exc:
                        log.exception("decoding failed for one stream")
                        errors[id(s)] = exc
        if lane is self._model:
            self._chunks_done.set()
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
