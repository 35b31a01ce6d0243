"""Deterministic, sharded, resumable batches of examples (pretraining or classification).

A stream is indexed by step: `Batches.batch_at(step)` is a pure function of (seed, step, host). Step s is
batch s mod steps_per_epoch of epoch s div steps_per_epoch; an epoch is a seeded permutation of all examples
cut into global batches (the last one topped up with padding examples of weight 0, so no example is
dropped or repeated), optionally grouped by padded length. Each host lays out only its own slice of the
global batch, and an example's content depends only on (seed, epoch, index), whatever the host count.
Iterating counts steps; the position is `{'step': int}` (`get_state` / `set_state`), so a resumed run
continues with exactly the next batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from typing import Protocol

import numpy as np


class Examples(Protocol):
    """What the pipeline batches: `PretrainingExamples` and `ClassificationExamples`."""

    max_seq_length: int
    pad_lengths: np.ndarray | None  # (examples,) the length each pads to alone; None: max_seq_length

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Examples `indices` (batch,), -1 for a padding example of weight 0, padded to `length`."""


def epoch_order(
    num_examples: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool, pad_lengths: np.ndarray | None
) -> np.ndarray:
    """The global batches of one epoch: (batches, batch_size) example indices, -1 padding the last batch.

    With `shuffle`, a permutation seeded by (seed, epoch). With `pad_lengths`, examples are grouped by
    padded length before being cut into batches (whose order is then shuffled), so that a batch needs little
    padding; a batch on the border of two groups pads to the longer.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle else np.arange(num_examples)
    if pad_lengths is not None:
        order = order[np.argsort(pad_lengths[order], kind="stable")]
    num_batches = -(-num_examples // batch_size)
    order = np.pad(order, (0, num_batches * batch_size - num_examples), constant_values=-1)
    order = order.reshape(num_batches, batch_size)  # (batches, batch_size)
    if shuffle and pad_lengths is not None:
        order = order[np.random.default_rng([seed, epoch, 1]).permutation(num_batches)]
    return order


class Batches:
    """One host's batches, by step, and an iterator over them whose position is a small state.

    batch_size is global (all hosts); each host gets batch_size // process_count examples per step.
    num_epochs None: an infinite stream (training); 1 with shuffle False: one ordered pass (evaluation).
    prefetch: batches prepared ahead in a background thread.
    """

    def __init__(
        self,
        examples: Examples,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 0,
    ):
        if batch_size % process_count:
            raise ValueError(f"global batch size {batch_size} is not divisible by {process_count} hosts")
        if len(examples) == 0:
            raise ValueError("no examples to batch")
        self.examples, self.batch_size, self.seed, self.shuffle = examples, batch_size, seed, shuffle
        self.local_batch_size = batch_size // process_count
        self._local = slice(process_index * self.local_batch_size, (process_index + 1) * self.local_batch_size)
        self.steps_per_epoch = -(-len(examples) // batch_size)
        self.num_steps = None if num_epochs is None else num_epochs * self.steps_per_epoch
        self._order: tuple[int, np.ndarray | None] = (-1, None)
        self._step = 0
        self._prefetch = prefetch
        self._ahead: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        """epoch_order of `epoch`, remembered for the epoch in progress."""
        cached_epoch, order = self._order
        if cached_epoch != epoch:
            order = epoch_order(
                len(self.examples), self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                pad_lengths=self.examples.pad_lengths,
            )
            self._order = (epoch, order)
        return order

    def global_indices(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, example indices of the whole global batch (batch_size,), -1 for padding) of `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return epoch, self._epoch(epoch)[within]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's part of global batch `step`: arrays with leading dimension local_batch_size."""
        epoch, indices = self.global_indices(step)
        pad_lengths = self.examples.pad_lengths
        valid = indices[indices >= 0]
        length = int(pad_lengths[valid].max()) if pad_lengths is not None else self.examples.max_seq_length
        return self.examples.batch(indices[self._local], epoch, length)

    def get_state(self) -> dict[str, int]:
        return {"step": self._step}

    def set_state(self, state: dict[str, int]) -> None:
        for _, future in self._ahead:
            future.cancel()
        self._ahead.clear()
        self._step = int(state["step"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_steps is not None and self._step >= self.num_steps:
            raise StopIteration
        if self._prefetch:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxlm-batches")
            end = self._step + self._prefetch
            if self.num_steps is not None:
                end = min(end, self.num_steps)
            for step in range(self._step + len(self._ahead), end):
                self._ahead.append((step, self._executor.submit(self.batch_at, step)))
            _, future = self._ahead.popleft()
            batch = future.result()
        else:
            batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def close(self) -> None:
        """Stops the prefetch thread."""
        self.set_state(self.get_state())
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def eval_batches(
    examples: Examples, batch_size: int, *, process_index: int = 0, process_count: int = 1, prefetch: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over every example exactly once, in order (grouped by length where the examples have
    buckets); the last batch padded with weight-0 examples. Pretraining examples are read at epoch 0, so
    their masks are the same on every pass."""
    batches = Batches(
        examples, batch_size, seed=0, shuffle=False, num_epochs=1,
        process_index=process_index, process_count=process_count, prefetch=prefetch,
    )
    try:
        yield from batches
    finally:
        batches.close()
