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
import sys
import threading
import time
import weakref
from typing import Callable

import tensorflow as tf


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
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch} must be at least 1")

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
                raise ValueError(f"the training dataset's length is {kind}; pass steps_per_epoch")
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


def retire(iterator) -> None:
    """Drops the last reference to a dataset iterator on a background thread.

    Deleting a used tf.data iterator blocks for seconds here (2.7-3.9 s for an
    exhausted epoch iterator, about 16 s for an endless one; TF 2.21, see
    BUILD_NOTES.md), without using the CPU; on a background thread the next loop
    runs meanwhile. At interpreter exit the thread finishes its deletions first
    (a deletion cut off by the exit aborts the process). Returns None so callers
    can write `it = retire(it)`.
    """
    if iterator is None:
        return None
    _reaper_queue().put(iterator)
    return None


def _reaper_queue() -> queue.SimpleQueue:
    """The queue of the thread that deletes retired iterators (started on first use)."""
    global _reaper
    if _reaper is None:
        pending = queue.SimpleQueue()

        def reap():
            while True:
                item = pending.get()
                if item is _REAPER_DONE:
                    return
                # Wait until the caller has dropped its own reference, so the slow
                # deletion happens here and not in the caller's thread.
                deadline = time.monotonic() + 60
                while sys.getrefcount(item) > 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                del item

        thread = threading.Thread(target=reap, name="iterator-reaper", daemon=True)
        thread.start()
        _reaper = (pending, thread)
        atexit.register(_finish_retiring)
    return _reaper[0]


def _finish_retiring() -> None:
    """At exit: lets the reaper thread delete what it holds (held iterators too), then stops it."""
    pending, thread = _reaper
    for owner_id in list(_held):
        pending.put(_held.pop(owner_id)[2])
    pending.put(_REAPER_DONE)
    thread.join(timeout=120)


# Iterators kept between runs: id(owner) -> (weak reference to the owner, where the
# iterator stands, iterator).
_held: "dict[int, tuple[weakref.ref, tuple, object]]" = {}


def hold(owner, position: tuple, iterator) -> None:
    """Keeps `owner`'s training iterator for its next run, with where it stands.

    A run that ends inside an epoch leaves its iterator at the next step's batch;
    `take` hands it back to a run that starts there on the same input, so the
    pipeline is neither rebuilt nor skipped through again (a skip produces every
    batch it passes) and a shuffled DatasetInput's epoch goes on in the same order.
    One iterator per owner: holding another retires the first. When the owner is
    garbage-collected, or at exit, its iterator is retired.

    Args:
      owner: the object whose runs share the iterator (a Trainer); held weakly.
      position: (input, epoch, step): the EpochInput or DatasetInput, the epoch
        and the global step of the iterator's next batch.
      iterator: the distributed iterator.
    """
    owner_id = id(owner)
    _retire_held(owner_id)
    _reaper_queue()  # Registers the exit handler that retires held iterators.
    ref = weakref.ref(owner, lambda _: _retire_held(owner_id))
    _held[owner_id] = (ref, position, iterator)


def take(owner, position: tuple):
    """Returns `owner`'s held iterator if it stands at `position` (see `hold`), else None.

    The held iterator leaves the owner either way; one that stands elsewhere
    (another input, epoch or step: a restore or rollback moved the step) is retired.
    """
    entry = _held.pop(id(owner), None)
    if entry is None:
        return None
    _, held_at, iterator = entry
    if _same_position(held_at, position):
        return iterator
    return retire(iterator)


def _retire_held(owner_id: int) -> None:
    """Retires the iterator held for the owner with this id, if any."""
    entry = _held.pop(owner_id, None)
    if entry is not None:
        retire(entry[2])


def _same_position(a: tuple, b: tuple) -> bool:
    """Same (input, epoch, step); the inputs' fields must be the same objects (or equal ints)."""
    (input_a, *rest_a), (input_b, *rest_b) = a, b
    if rest_a != rest_b or type(input_a) is not type(input_b):
        return False
    for field in dataclasses.fields(input_a):
        u, v = getattr(input_a, field.name), getattr(input_b, field.name)
        if u is not v and not (isinstance(u, int) and u == v):
            return False
    return True
