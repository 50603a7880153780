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
import threading
import time
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


_deleters: set[threading.Thread] = set()
_deleters_lock = threading.Lock()
_exiting = False
# How long a deleting thread keeps a retired iterator before dropping it: the caller's
# own reference (`it = retire(it)`) is gone microseconds after the call.
_HANDOFF_SECONDS = 1.0
# At interpreter exit, how long to wait for the deletions under way.
_EXIT_WAIT_SECONDS = 120.0


def retire(iterator) -> None:
    """Drops the last reference to a dataset iterator on a background thread of its own.

    Deleting a used distributed tf.data iterator blocks for seconds here (2.7-3.9 s
    for an exhausted epoch iterator, about 16 s for an endless one; TF 2.21, see
    BUILD_NOTES.md), waiting in tf.data's thread-pool teardown without using the
    CPU. On a background thread the next loop runs meanwhile; one thread per
    iterator, so that deletions overlap instead of queueing behind each other (one
    deleting thread for all built a backlog over a test suite, drained at exit: 123 s
    for 265 tests). The thread keeps the iterator `_HANDOFF_SECONDS` before dropping
    it, so that the caller, who passes the iterator and then drops its own
    reference, is not the one left deleting it. At interpreter exit the deletions
    under way finish first (a deletion cut off by the exit aborts the process); an
    iterator retired after that is deleted by its caller. Returns None so callers
    can write `it = retire(it)`.
    """
    if iterator is None or _exiting:
        return None
    box = [iterator]
    del iterator
    thread = threading.Thread(target=_delete_later, args=(box,), name="iterator-retire", daemon=True)
    with _deleters_lock:
        _deleters.add(thread)
    thread.start()
    return None


def _delete_later(box: list) -> None:
    try:
        time.sleep(_HANDOFF_SECONDS)
        box.clear()  # The last reference: deleted here, on this thread.
    finally:
        with _deleters_lock:
            _deleters.discard(threading.current_thread())


@atexit.register
def _finish_retiring() -> None:
    """At exit: waits for the deletions under way (together, up to _EXIT_WAIT_SECONDS)."""
    global _exiting
    _exiting = True
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    with _deleters_lock:
        threads = list(_deleters)
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


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
