"""Training inputs the Trainer can distribute and restart at any step.

Two kinds:
  * EpochInput: a function building one epoch's pipeline from a given step, fed
    to `strategy.distribute_datasets_from_function`. Each pipeline yields
    per-replica batches. With a deterministic function (as
    datasets.in_memory.train_dataset_fn is), a resumed run sees exactly the
    batches an uninterrupted one would.
  * DatasetInput: a finite tf.data.Dataset of global batches (one pass = one
    epoch), fed to `strategy.experimental_distribute_dataset`. A resume skips the
    epoch's first batches, which is exact only if the dataset's order is fixed.
"""

from __future__ import annotations

import atexit
import dataclasses
import queue
import threading
from typing import Callable

import tensorflow as tf

from engine.errors import UserError


@dataclasses.dataclass(frozen=True)
class EpochInput:
    """Per-epoch training input built by a function of (input context, epoch, start step).

    Attributes:
      dataset_fn: (tf.distribute.InputContext, epoch: int, start_step: int,
        independent: bool = False) -> tf.data.Dataset of per-replica batches for
        the steps start_step ... steps_per_epoch - 1 of that epoch, for the
        replicas of this pipeline. With independent=True (parameter-server
        workers, which cannot be told apart when the dataset is built) it returns
        the epoch's batches in a random order drawn when each worker starts
        reading, repeated without end.
      steps_per_epoch: training steps (global batches) in one epoch, >= 1.
    """

    dataset_fn: Callable[[tf.distribute.InputContext, int, int], tf.data.Dataset]
    steps_per_epoch: int

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise UserError(f"steps_per_epoch={self.steps_per_epoch} must be at least 1")

    @property
    def element_spec(self):
        """The spec of one per-replica batch (builds the first epoch's pipeline, reads nothing)."""
        return self.dataset_fn(tf.distribute.InputContext(), 0, 0).element_spec

    def distribute(self, strategy: tf.distribute.Strategy, epoch: int, start_step: int, coordinator=None):
        """Returns the distributed dataset of `epoch` from `start_step` on.

        With a ClusterCoordinator (parameter-server training), returns a per-worker
        dataset instead: each worker reads the epoch's batches in its own random
        order, repeated, since steps go to whichever worker is free.
        """
        if coordinator is None:
            return strategy.distribute_datasets_from_function(lambda ctx: self.dataset_fn(ctx, epoch, start_step))
        return coordinator.create_per_worker_dataset(strategy.distribute_datasets_from_function(
            lambda ctx: self.dataset_fn(ctx, epoch, 0, independent=True)))


@dataclasses.dataclass(frozen=True)
class DatasetInput:
    """A finite dataset of global batches; one pass is one epoch.

    Attributes:
      dataset: tf.data.Dataset of (features, labels) global batches, finite.
      steps_per_epoch: batches in one pass; taken from the dataset's cardinality
        when None.

    Raises:
      ValueError: if steps_per_epoch is None and the dataset's cardinality is
        infinite or unknown (pass steps_per_epoch then).
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int | None = None

    def __post_init__(self):
        if self.steps_per_epoch is None:
            n = int(self.dataset.cardinality())
            if n < 1:
                kind = "infinite" if n == tf.data.INFINITE_CARDINALITY else "unknown or empty"
                raise UserError(f"the training dataset's length is {kind}; pass steps_per_epoch")
            object.__setattr__(self, "steps_per_epoch", n)

    @property
    def element_spec(self):
        """The spec of one global batch."""
        return self.dataset.element_spec

    def distribute(self, strategy: tf.distribute.Strategy, epoch: int, start_step: int, coordinator=None):
        del epoch  # The dataset's own shuffling, if any, decides each epoch's order.
        if coordinator is not None:
            return coordinator.create_per_worker_dataset(lambda: self.dataset.repeat())
        return strategy.experimental_distribute_dataset(self.dataset.skip(start_step))


_reaper: "tuple[queue.SimpleQueue, threading.Thread] | None" = None
_REAPER_DONE = object()
_exiting = False
# How long the deleting thread keeps a retired iterator before dropping it: the
# caller's own reference (`it = retire(it)`) is gone microseconds after the call.
_HANDOFF_SECONDS = 1.0


def retire(iterator) -> None:
    """Drops the last reference to a dataset iterator on a background thread.

    Deleting a used tf.data iterator blocks for seconds here (2.7-3.9 s for an
    exhausted epoch iterator, about 16 s for an endless one; TF 2.21, see
    BUILD_NOTES.md), without using the CPU; on a background thread the next loop
    runs meanwhile. The thread keeps each iterator `_HANDOFF_SECONDS` (or until
    the next one comes) before dropping it, so that the caller, who passes the
    iterator and then drops its own reference, is not the one left deleting it.
    At interpreter exit the thread finishes its deletions first (a deletion cut
    off by the exit aborts the process); an iterator retired after that is
    deleted by its caller. Returns None so callers can write `it = retire(it)`.
    """
    if iterator is None or _exiting:
        return None
    _reaper_queue().put(iterator)
    return None


def _reaper_queue() -> queue.SimpleQueue:
    """The queue of the thread that deletes retired iterators (started on first use)."""
    global _reaper
    if _reaper is None:
        pending = queue.SimpleQueue()

        def reap():
            kept = []
            while True:
                try:
                    item = pending.get(timeout=_HANDOFF_SECONDS if kept else None)
                except queue.Empty:
                    kept.clear()  # Deleted here, on this thread.
                    continue
                if item is _REAPER_DONE:
                    kept.clear()
                    return
                kept.append(item)
                del item

        thread = threading.Thread(target=reap, name="iterator-reaper", daemon=True)
        thread.start()
        _reaper = (pending, thread)
        atexit.register(_finish_retiring)
    return _reaper[0]


def _finish_retiring() -> None:
    """At exit: lets the reaper thread delete what it holds, then stops it."""
    global _exiting
    _exiting = True
    pending, thread = _reaper
    pending.put(_REAPER_DONE)
    thread.join(timeout=120)


def same_position(a: tuple, b: tuple) -> bool:
    """Same (input, epoch, step); the inputs' fields must be the same objects (or equal ints)."""
    (input_a, *rest_a), (input_b, *rest_b) = a, b
    if rest_a != rest_b or type(input_a) is not type(input_b):
        return False
    for field in dataclasses.fields(input_a):
        u, v = getattr(input_a, field.name), getattr(input_b, field.name)
        if u is not v and not (isinstance(u, int) and u == v):
            return False
    return True
