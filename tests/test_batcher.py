"""server.batcher on its own: finals go to their own lane (a second model thread), so a slow beam search does
not hold up another stream's partials; without that lane they share the model thread; batches still form."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.batcher import BEHIND_FINALS, GROW_SLICE_S, Batcher


class FakeRecognizer:
    """Streams are strings; ``"final..."`` streams have a final due. A final's decode blocks until
    ``release`` is set; every decode call is recorded with its thread."""

    def __init__(self, growth: int = 0, grow_error: bool = False, stream_s: float = 0.0) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[list[str], str]] = []
        self.finals: list[bool] = []  # each call's ``finals``
        self.caps: list[int] = []  # each call's ``beam_cap``
        self.growth = growth  # slices of growing-search work pending
        self.grow_error = grow_error
        self.grown: list[str] = []  # the thread of each slice grown
        self.stream_s = stream_s  # with it, a slice grows streams of this many seconds each, as budget allows
        self.stopped = 0  # slices cut short by ``stop``

    def has_final(self, stream: Any) -> bool:
        return str(stream).startswith("final")

    def has_growth(self) -> bool:
        return self.growth > 0

    def grow_pending(self, budget_s: float, stop: Callable[[], bool] | None = None) -> int:
        self.grown.append(threading.current_thread().name)
        if self.grow_error:
            raise RuntimeError("a bug in growing")
        self.growth -= 1
        if not self.stream_s:
            time.sleep(budget_s)
            return 1
        deadline, served = time.perf_counter() + budget_s, 0
        while time.perf_counter() < deadline:
            if stop is not None and stop():
                self.stopped += 1
                break
            time.sleep(self.stream_s)
            served += 1
        return served

    def decode_streams(
        self, streams: list[Any], *, interims: bool = True, finals: bool = True, beam_cap: int = 0
    ) -> None:
        self.calls.append((list(streams), threading.current_thread().name))
        self.finals.append(finals)
        self.caps.append(beam_cap)
        if any(self.has_final(s) for s in streams):
            assert self.release.wait(10), "the test never released the final"


async def _partial_while_final_decodes(finals_lane: bool) -> tuple[bool, FakeRecognizer]:
    rec = FakeRecognizer()
    batcher = Batcher(rec, max_wait_ms=1.0, finals_threads=int(finals_lane))  # type: ignore[arg-type]
    batcher.start()
    try:
        final = asyncio.ensure_future(batcher.decode("final-a"))
        while not rec.calls:  # the final's beam search has started
            await asyncio.sleep(0.01)
        partial = asyncio.ensure_future(batcher.decode("chunk-b"))
        done, _ = await asyncio.wait({partial}, timeout=1.0)
        partial_first = partial in done
        rec.release.set()
        await asyncio.wait_for(asyncio.gather(final, partial), 10)
        return partial_first, rec
    finally:
        rec.release.set()
        await batcher.stop()


def test_a_partial_does_not_wait_behind_another_streams_final() -> None:
    partial_first, rec = asyncio.run(_partial_while_final_decodes(finals_lane=True))
    assert partial_first
    (final_streams, final_thread), (chunk_streams, chunk_thread) = rec.calls
    assert final_streams == ["final-a"] and chunk_streams == ["chunk-b"]
    assert final_thread.startswith("asr-finals") and chunk_thread.startswith("asr-model")
    assert rec.finals == [True, False]  # a final a chunk step brings about is left for the finals lane


def test_without_the_finals_lane_everything_waits_for_the_model_thread() -> None:
    partial_first, rec = asyncio.run(_partial_while_final_decodes(finals_lane=False))
    assert not partial_first
    assert {t.split("_")[0] for _, t in rec.calls} == {"asr-model"}
    assert all(rec.finals)


@pytest.mark.parametrize("finals_lane", [True, False])
def test_streams_queued_together_are_decoded_in_one_batch(finals_lane: bool) -> None:
    async def run() -> FakeRecognizer:
        rec = FakeRecognizer()
        rec.release.set()
        batcher = Batcher(rec, max_wait_ms=50.0, max_batch_size=3, finals_threads=int(finals_lane))  # type: ignore[arg-type]
        batcher.start()
        try:
            await asyncio.gather(*(batcher.decode(f"chunk-{i}") for i in range(5)))
        finally:
            await batcher.stop()
        return rec

    rec = asyncio.run(run())
    assert [len(streams) for streams, _ in rec.calls] == [3, 2]


def test_a_lone_final_goes_at_once_and_a_lone_chunk_waits_for_company() -> None:
    """``max_wait_ms`` is the model lane's: a lone chunk step waits that long for other streams' (a batch
    costs less than its steps alone), a lone final does not (finals come at their own endpoints)."""

    async def run() -> tuple[float, float, FakeRecognizer]:
        rec = FakeRecognizer()
        rec.release.set()
        batcher = Batcher(rec, max_wait_ms=300.0, finals_threads=1)  # type: ignore[arg-type]
        batcher.start()
        try:
            t0 = time.perf_counter()
            await batcher.decode("final-a")
            final_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            await batcher.decode("chunk-b")
            chunk_s = time.perf_counter() - t0
        finally:
            await batcher.stop()
        return final_s, chunk_s, rec

    final_s, chunk_s, rec = asyncio.run(run())
    assert final_s < 0.15 <= 0.3 <= chunk_s
    assert [t.split("_")[0] for _, t in rec.calls] == ["asr-finals", "asr-model"]


def test_finals_threads_decode_batches_side_by_side() -> None:
    """Two threads in the finals lane: a second final is decoded while the first still runs (each call blocks
    until released), on another thread."""

    async def run() -> FakeRecognizer:
        rec = FakeRecognizer()
        batcher = Batcher(rec, max_wait_ms=1.0, finals_threads=2)  # type: ignore[arg-type]
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.decode("final-a"))
            while len(rec.calls) < 1:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(batcher.decode("final-b"))
            for _ in range(100):  # the second starts although the first has not returned
                if len(rec.calls) == 2:
                    break
                await asyncio.sleep(0.01)
            assert len(rec.calls) == 2 and not first.done()
            rec.release.set()
            await asyncio.wait_for(asyncio.gather(first, second), 10)
        finally:
            rec.release.set()
            await batcher.stop()
        return rec

    rec = asyncio.run(run())
    assert [streams for streams, _ in rec.calls] == [["final-a"], ["final-b"]]
    assert len({thread for _, thread in rec.calls}) == 2
    with pytest.raises(ValueError, match="finals_threads must be 0"):
        Batcher(rec, finals_threads=-1)  # type: ignore[arg-type]


async def _final_while_growing(rec: FakeRecognizer, slices: int, pause_s: float = 0.0) -> float:
    """A chunk wakes the finals thread, which grows searches; after ``slices`` slices have started (and
    ``pause_s`` more), how long a final waits to be decoded."""
    rec.release.set()
    batcher = Batcher(rec, max_wait_ms=1.0, finals_threads=1)  # type: ignore[arg-type]
    batcher.start()
    try:
        await batcher.decode("chunk-a")  # the model lane's chunks wake the finals thread
        while len(rec.grown) < slices:
            await asyncio.sleep(0.01)
        await asyncio.sleep(pause_s)
        t0 = time.perf_counter()
        await batcher.decode("final-b")
        return time.perf_counter() - t0
    finally:
        await batcher.stop()


def test_the_finals_thread_grows_searches_while_idle_and_a_final_waits_at_most_a_slice() -> None:
    rec = FakeRecognizer(growth=1000)
    waited = asyncio.run(_final_while_growing(rec, slices=3))
    assert rec.grown and all(name.startswith("asr-finals") for name in rec.grown)
    assert waited < GROW_SLICE_S + 0.5  # one slice, then the final


def test_a_final_queued_during_a_slice_waits_for_one_streams_growth_not_the_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slice asks between its streams whether a final is queued, and gives the thread to it: with slices of
    2 s (40 streams of 50 ms), a final still starts within a stream's growth or two."""
    monkeypatch.setattr("server.batcher.GROW_SLICE_S", 2.0)
    rec = FakeRecognizer(growth=1000, stream_s=0.05)
    waited = asyncio.run(_final_while_growing(rec, slices=1, pause_s=0.2))  # well inside the slice
    assert rec.stopped >= 1 and waited < 0.5


def test_a_failure_to_grow_leaves_the_finals_lane_working() -> None:
    async def run() -> FakeRecognizer:
        rec = FakeRecognizer(growth=5, grow_error=True)
        rec.release.set()
        batcher = Batcher(rec, max_wait_ms=1.0, finals_threads=1)  # type: ignore[arg-type]
        batcher.start()
        try:
            await batcher.decode("chunk-a")
            await asyncio.wait_for(batcher.decode("final-b"), 5.0)
            return rec
        finally:
            await batcher.stop()

    rec = asyncio.run(run())
    assert rec.grown and any(s == ["final-b"] for s, _ in rec.calls)


@pytest.mark.parametrize("finals_lane", [True, False])
def test_finals_that_fall_behind_are_searched_with_the_load_beam(finals_lane: bool) -> None:
    """A batch of finals with ``BEHIND_FINALS`` streams, or one with more finals queued behind it, searches
    with ``load_beam_size``; a lone final, chunk steps and a server without a load beam keep the full beam."""

    async def run(load_beam: int) -> FakeRecognizer:
        rec = FakeRecognizer()
        batcher = Batcher(rec, max_wait_ms=1.0, finals_threads=int(finals_lane), load_beam_size=load_beam)  # type: ignore[arg-type]
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.decode("final-a"))  # alone: full beam
            while not rec.calls:
                await asyncio.sleep(0.01)
            # while it runs, more finals than one batch's worth come in, and a stream's chunks
            more = [asyncio.ensure_future(batcher.decode(f"final-{i}")) for i in range(BEHIND_FINALS + 2)]
            chunk = asyncio.ensure_future(batcher.decode("chunk-x"))
            await asyncio.sleep(0.05)
            rec.release.set()
            await asyncio.wait_for(asyncio.gather(first, chunk, *more), 10)
        finally:
            rec.release.set()
            await batcher.stop()
        return rec

    rec = asyncio.run(run(4))
    calls = [(streams, cap) for (streams, _), cap in zip(rec.calls, rec.caps, strict=True)]
    assert calls[0] == (["final-a"], 0)
    assert all(cap == 0 for streams, cap in calls if not any(rec.has_final(s) for s in streams))
    later = [cap for streams, cap in calls[1:] if any(rec.has_final(s) for s in streams)]
    assert later and all(cap == 4 for cap in later)
    assert set(asyncio.run(run(0)).caps) == {0}
