"""The engines of ``asr transcribe``: each yields one :class:`Outcome` per input, in any order.

:func:`remote_outcomes` sends the inputs to a server with a :class:`~client.sdk.Client`, several at once;
:func:`local_outcomes` decodes them in this process, a batch of recordings at a time. A file that fails
becomes an Outcome with its error and the others go on.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from client import errors
from client.audio import audio_duration
from client.batch_inputs import Item
from client.types import Alternative, RecognitionConfig, Segment, Transcript, WordInfo

if TYPE_CHECKING:
    from asr.decoding import DecodingOptions, LanguageModel
    from asr.model import ASRModel
    from asr.transcribe import Transcript as LocalTranscript
    from client.sdk import Client

__all__ = ["FATAL", "Outcome", "from_local", "local_outcomes", "remote_outcomes"]

# Errors that would hit every file the same way: stop the batch instead of failing each file.
FATAL = (errors.Unauthenticated, errors.PermissionDenied, errors.Unavailable)


@dataclass(frozen=True)
class Outcome:
    item: Item
    transcript: Transcript | None
    error: Exception | None
    seconds: float  # audio duration


def remote_outcomes(
    client: Client, items: list[Item], config: RecognitionConfig, jobs: int
) -> Generator[Outcome, None, None]:
    """``client.recognize`` on every item, ``jobs`` at a time; closing the iterator early closes ``client``
    (the calls in flight end at once, CANCELLED) instead of waiting for them."""
    with ThreadPoolExecutor(jobs) as pool:

        def one(item: Item) -> Outcome:
            try:
                t = client.recognize(item.path, config)
                return Outcome(item, t, None, t.duration)
            except FATAL:
                raise
            except (errors.ASRError, OSError, ValueError) as exc:
                return Outcome(item, None, exc, audio_duration(item.path))

        pending: set[Future[Outcome]] = set()
        queue = iter(items)
        try:
            # Keep at most 2 x jobs requests in flight, so a huge folder does not read every file up front.
            for item in queue:
                pending.add(pool.submit(one, item))
                if len(pending) >= 2 * jobs:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            while pending:  # the rest as they finish, not in submission order
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            if pending:  # stopped early (Ctrl-C, or the consumer closed): do not wait for requests in flight
                for f in pending:
                    f.cancel()
                client.close()  # the running calls end now, CANCELLED
                pool.shutdown(wait=False, cancel_futures=True)


def from_local(t: LocalTranscript, model: str = "local") -> Transcript:
    """The SDK's :class:`~client.types.Transcript` of a local :class:`asr.transcribe.Transcript`."""
    words = tuple(WordInfo(w.word, w.start, w.end, w.confidence) for w in t.words)
    alts = tuple(
        Alternative(a.text, a.confidence, words if i == 0 else ()) for i, a in enumerate(t.alternatives)
    ) or (Alternative(t.text, 0.0, words),)
    return Transcript(t.text, (Segment(0.0, t.duration, alts),), t.duration, model=model)


def local_outcomes(
    model: ASRModel,
    items: list[Item],
    options: DecodingOptions,
    *,
    batch_size: int,
    lm: LanguageModel | None = None,
    name: str = "local",
) -> Generator[Outcome, None, None]:
    """Decode the items with ``model``, ``batch_size`` recordings together; ``name`` names the model in the
    transcripts. A recording that breaks its batch is found by decoding that batch one by one."""
    import asr
    from asr.audio import SAMPLE_RATE, AudioError
    from asr.transcribe import transcribe_batch

    for k in range(0, len(items), batch_size):
        batch = items[k : k + batch_size]
        loaded = []
        for item in batch:
            try:
                loaded.append((item, asr.load_audio(item.path)))
            except (AudioError, OSError) as exc:
                yield Outcome(item, None, exc, 0.0)
        if not loaded:
            continue
        try:
            results = transcribe_batch(model, [w for _, w in loaded], options, batch_size=batch_size, lm=lm)
        except Exception:  # isolate the recording that breaks the batch
            for item, wave in loaded:
                try:
                    t = transcribe_batch(model, [wave], options, lm=lm)[0]
                    yield Outcome(item, from_local(t, name), None, len(wave) / SAMPLE_RATE)
                except Exception as exc:
                    yield Outcome(item, None, exc, len(wave) / SAMPLE_RATE)
            continue
        for (item, wave), t in zip(loaded, results, strict=True):
            yield Outcome(item, from_local(t, name), None, len(wave) / SAMPLE_RATE)
