"""Duration-bucketed batching with a cap on padded audio seconds per batch.

Each epoch the utterances are sorted by duration with a small random jitter (so batches differ between
epochs), cut greedily into batches whose *padded* size ``len(batch) * longest`` stays within
``max_batch_seconds``, and the batch order is shuffled. Everything is a pure function of
``(seed, epoch)``, so a resumed run sees the same batches. Under DDP each rank takes every
``world_size``-th batch of the same list (disjoint shards) and all ranks get the same number of
batches, so no rank waits for a step the others never take.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


class BucketBatchSampler:
    """Yields lists of ``(index, augmentation_seed)`` pairs; see the module docstring.

    An utterance longer than the cap gets a batch of its own (filter long ones out if that is too big).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        *,
        max_batch_size: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        jitter: float = 0.1,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if not durations:
            raise ValueError("cannot batch an empty dataset")
        self.durations = list(durations)
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.jitter = jitter
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's batches; ``skip`` leaves out this rank's first batches (resuming mid-epoch)."""
        self.epoch = epoch
        self.skip = skip

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch`` (all ranks), in the order they are consumed."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            keys = [d * (1.0 + self.jitter * (2 * rng.random() - 1)) for d in self.durations]
        else:
            keys = self.durations
        order = sorted(range(len(self.durations)), key=lambda i: keys[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0.0
        for i in order:
            d = self.durations[i]
            new_longest = max(longest, d)
            full = self.max_batch_size and len(cur) >= self.max_batch_size
            if cur and (new_longest * (len(cur) + 1) > self.max_batch_seconds or full):
                batches.append(cur)
                cur, new_longest = [], d
            cur.append(i)
            longest = new_longest
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self.all_batches(self.epoch)
        n = len(batches) // self.world_size
        if n == 0:
            raise ValueError(
                f"{len(batches)} batches cannot be shared by {self.world_size} ranks; lower the batch size"
            )
        return batches[self.rank : n * self.world_size : self.world_size]

    def __len__(self) -> int:
        return max(0, len(self._rank_batches()) - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        for batch in self._rank_batches()[self.skip :]:
            yield [(i, base + i) for i in batch]
