"""Training and evaluation pipelines over in-memory image arrays.

Training data is addressed by example index: each epoch's order is a permutation
drawn from (seed, epoch), and each example's augmentation from (seed, epoch) too,
indexed by the example. So a global batch holds the same examples, augmented the
same way, whatever the number of replicas or workers, and an epoch can start at
any step: a resumed run sees exactly the batches an uninterrupted one would.
No shuffle buffer or iterator state needs saving; the checkpoint's step is enough.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from datasets import augment


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps in one epoch; the last partial global batch is dropped."""
    return num_examples // global_batch_size


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def train_dataset_fn(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    pad: int = 4,
) -> Callable[[tf.distribute.InputContext, int, int], tf.data.Dataset]:
    """Returns a function building one epoch's training pipeline from any step.

    The pipeline shuffles over the whole training set, drops the last partial
    global batch, and applies pad-crop-flip and normalisation to whole batches.

    Args:
      images: uint8 [N, height, width, 3].
      labels: int32 [N].
      global_batch_size: examples per step over all replicas and workers.
      seed: keys the shuffle and the augmentation.
      pad: pixels of padding for the random crop.

    Returns:
      dataset_fn(input_context, epoch, start_step, independent=False) ->
      tf.data.Dataset whose
      elements are per-replica batches (float32 [B, h, w, 3], int32 [B]) for the
      replicas fed by this input pipeline, in replica order, for steps
      start_step ... steps_per_epoch - 1 of `epoch`. It is meant for
      `strategy.distribute_datasets_from_function`. independent=True returns the
      epoch's batches in an unseeded random order, repeated (see engine.EpochInput).

    Raises:
      ValueError: if there are fewer examples than one global batch.
    """
    num_examples = len(images)
    steps = steps_per_epoch(num_examples, global_batch_size)
    if steps == 0:
        raise ValueError(f"{num_examples} training examples are fewer than one global batch of {global_batch_size}")
    # One copy of the arrays, captured by reference in every epoch's pipeline.
    images_t = tf.constant(images)
    labels_t = tf.constant(labels, tf.int32)

    def load(indices, offsets, flips):
        batch = tf.gather(images_t, indices)  # [B, h, w, 3] uint8
        batch = augment.pad_crop_flip(batch, offsets, flips, pad)
        return augment.normalize(batch), tf.gather(labels_t, indices)

    def dataset_fn(ctx: tf.distribute.InputContext, epoch: int, start_step: int,
                   independent: bool = False) -> tf.data.Dataset:
        pipelines, pipeline_id = ctx.num_input_pipelines, ctx.input_pipeline_id
        per_replica = ctx.get_per_replica_batch_size(global_batch_size)
        replicas_here = ctx.num_replicas_in_sync // pipelines
        order = _epoch_rng(seed, epoch, 0).permutation(num_examples)[: steps * global_batch_size]
        offsets, flips = augment.sample_pad_crop_flip(_epoch_rng(seed, epoch, 1), num_examples, pad)
        # Global batch k is order[k*GB:(k+1)*GB]; replica r of it takes the r-th
        # slice of per_replica examples, and each pipeline feeds its own replicas.
        mine = order.reshape(steps, pipelines, replicas_here * per_replica)[:, pipeline_id]
        rows = mine.reshape(steps * replicas_here, per_replica)[start_step * replicas_here:]  # [M, B]
        ds = tf.data.Dataset.from_tensor_slices((rows, offsets[rows], flips[rows]))
        if independent:  # Parameter-server workers: own random batch order (unseeded), endless.
            ds = ds.shuffle(len(rows)).repeat()
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, global_batch_size: int,
                 mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD) -> tf.data.Dataset:
    """Evaluation pipeline: every example once, in order, the last partial batch kept.

    Args:
      images: uint8 [N, height, width, 3].
      labels: int32 [N].
      global_batch_size: examples per batch over all replicas.
      mean, std: per-channel normalisation (see augment.normalize).

    Returns:
      tf.data.Dataset of (float32 [<=GB, h, w, 3], int32 [<=GB]), for
      `strategy.experimental_distribute_dataset`.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.batch(global_batch_size, drop_remainder=False)
    return ds.map(lambda x, y: (augment.normalize(x, mean, std), y),
                  num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
