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

import dataclasses
import functools
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
            return strategy.distribute_datasets_from_function(
                lambda ctx: without_autotune_model(self.dataset_fn(ctx, epoch, start_step)))
        return coordinator.create_per_worker_dataset(strategy.distribute_datasets_from_function(
            lambda ctx: without_autotune_model(self.dataset_fn(ctx, epoch, 0, independent=True))))


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
            return coordinator.create_per_worker_dataset(lambda: without_autotune_model(self.dataset.repeat()))
        return strategy.experimental_distribute_dataset(without_autotune_model(self.dataset.skip(start_step)))


def without_autotune_model(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Returns `dataset` with tf.data's autotuning model off, unless its options already decide.

    The Trainer passes every dataset it distributes through this, and
    tf.distribute's per-device datasets too (`untune_device_datasets`). Why: an
    iterator with the model on owns an optimisation thread that wakes at
    intervals doubling from 10 ms to a minute, and deleting the iterator joins
    that thread. TF 2.21 can miss the wake-up that cancellation sends (it sets
    "cancelled" only after running the callbacks), and the deletion then waits
    for the next interval: 10.5 s for a held iterator idle for 30 s, 41.7 s after
    40 s, in some runs and not in others (BUILD_NOTES.md, "Pitfalls";
    `python -m launch.benchmark_teardown`). Without the model, an `AUTOTUNE`
    parallelism is min(16, the CPU cores) (tf.data's GetAutotuneDefaultParallelism)
    and `prefetch(AUTOTUNE)` buffers are sized by tf.data's legacy prefetch
    autotuner. A dataset whose options set `autotune.enabled` (True or False) is
    returned as it is.

    Args:
      dataset: any tf.data.Dataset.

    Returns:
      The same elements, with `options().autotune.enabled` False unless it was set.
    """
    if dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def untune_device_datasets() -> bool:
    """Builds tf.distribute's per-device datasets without the autotuning model; returns whether it could.

    A distributed iterator reads the input pipeline through a MultiDeviceIterator
    that feeds each replica's device from a small dataset of its own (a
    `prefetch(1)`, fixed: nothing to tune), each with an autotuning model whose
    thread makes its deletion wait as `without_autotune_model` explains. TF has
    no option for them, so this wraps the private function that builds them
    (`multi_device_iterator_ops._create_device_dataset`, TF 2.21); it is called
    once, when the Trainer is built. If a TF version no longer has that function,
    nothing changes and it returns False.
    """
    from tensorflow.python.data.ops import multi_device_iterator_ops as device_ops

    build = getattr(device_ops, "_create_device_dataset", None)
    if build is None:
        return False
    if getattr(build, "untuned", False):
        return True

    @functools.wraps(build)  # Keeps TF's function as __wrapped__.
    def create_device_dataset(*args, **kwargs):
        return without_autotune_model(build(*args, **kwargs))

    create_device_dataset.untuned = True
    device_ops._create_device_dataset = create_device_dataset
    return True


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
