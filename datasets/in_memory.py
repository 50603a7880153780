"""Training and evaluation pipelines over in-memory image arrays.

Training data is addressed by example index: each epoch's order is a permutation
drawn from (seed, epoch), and each example's augmentation from (seed, epoch) too,
indexed by the example. So a global batch holds the same examples, augmented the
same way, whatever the number of replicas or workers, and an epoch can start at
any step: a resumed run sees exactly the batches an uninterrupted one would.
No shuffle buffer or iterator state needs saving; the checkpoint's step is enough.
"""

from __future__ import annotations

import functools

from typing import Callable

import numpy as np
import tensorflow as tf

from datasets import augment
from engine.errors import UserError


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps in one epoch; the last partial global batch is dropped."""
    return num_examples // global_batch_size


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def epoch_batches(
    num_examples: int,
    ctx: tf.distribute.InputContext,
    *,
    global_batch_size: int,
    seed: int,
    epoch: int,
    start_step: int,
    sample_fn: Callable[[np.random.Generator, int], tuple] | None = None,
    independent: bool = False,
) -> tf.data.Dataset:
    """One epoch's per-replica batches of example indices (and their random choices).

    Global batch k of `epoch` holds the examples order[k*GB:(k+1)*GB] of a
    permutation drawn from (seed, epoch); replica r takes the r-th slice of
    per-replica examples, and each input pipeline yields only its own replicas'
    slices, in replica order, from step `start_step` on.

    Args:
      num_examples: N; the last partial global batch is dropped.
      ctx: the input context of this pipeline.
      global_batch_size: examples per step over all replicas and workers.
      seed, epoch: key the permutation and, through sample_fn, the random choices.
      start_step: first step of the epoch to yield.
      sample_fn: (rng, N) -> tuple of arrays [N, ...] of per-example random choices
        (e.g. augment.BatchRecipe.sample); rng is keyed by (seed, epoch).
      independent: parameter-server workers: the epoch's batches in an unseeded
        random order, repeated without end.

    Returns:
      tf.data.Dataset of (int64 indices [B], *choices [B, ...]).
    """
    steps = steps_per_epoch(num_examples, global_batch_size)
    pipelines, pipeline_id = ctx.num_input_pipelines, ctx.input_pipeline_id
    per_replica = ctx.get_per_replica_batch_size(global_batch_size)
    replicas_here = ctx.num_replicas_in_sync // pipelines
    order = _epoch_rng(seed, epoch, 0).permutation(num_examples)[: steps * global_batch_size]
    choices = sample_fn(_epoch_rng(seed, epoch, 1), num_examples) if sample_fn else ()
    mine = order.reshape(steps, pipelines, replicas_here * per_replica)[:, pipeline_id]
    rows = mine.reshape(steps * replicas_here, per_replica)[start_step * replicas_here:]  # [M, B]
    ds = tf.data.Dataset.from_tensor_slices((rows, *(c[rows] for c in choices)))
    if independent:
        ds = ds.shuffle(len(rows)).repeat()
    return ds


def train_dataset_fn(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    recipe: augment.BatchRecipe | None = None,
    normalize: Callable[[tf.Tensor], tf.Tensor] | None = augment.normalize,
) -> Callable[[tf.distribute.InputContext, int, int], tf.data.Dataset]:
    """Returns a function building one epoch's training pipeline from any step.

    The pipeline shuffles over the whole training set (see epoch_batches), drops
    the last partial global batch, gathers each batch from memory and applies the
    batch recipe and the normalisation to whole batches.

    Args:
      images: [N, ...] arrays: uint8 images [N, h, w, 3], or any features.
      labels: [N] labels.
      global_batch_size: examples per step over all replicas and workers.
      seed: keys the shuffle and the augmentation.
      recipe: batch augmentation (datasets.augment); default the CIFAR
        pad-crop-flip recipe. augment.BatchRecipe() for none. A recipe with random
        choices sees float32 images in [0, 255].
      normalize: applied to each batch after the recipe; None leaves the features
        as they are (e.g. tabular arrays). Default: CIFAR-10 per-channel
        standardisation.

    Returns:
      dataset_fn(input_context, epoch, start_step, independent=False) ->
      tf.data.Dataset whose elements are per-replica batches (features [B, ...],
      labels [B]) for the replicas fed by this input pipeline, in replica order,
      for steps start_step ... steps_per_epoch - 1 of `epoch`. It is meant for
      `strategy.distribute_datasets_from_function`. independent=True returns the
      epoch's batches in an unseeded random order, repeated (see engine.EpochInput).

    Raises:
      ValueError: if there are fewer examples than one global batch, or the
        lengths differ.
    """
    recipe = augment.PadCropFlip() if recipe is None else recipe
    num_examples = len(images)
    if len(labels) != num_examples:
        raise UserError(f"{num_examples} examples but {len(labels)} labels")
    if steps_per_epoch(num_examples, global_batch_size) == 0:
        raise UserError(f"{num_examples} training examples are fewer than one global batch of {global_batch_size}")
    # One copy of the arrays, captured by reference in every epoch's pipeline.
    images_t = tf.constant(images)
    labels_t = tf.constant(labels)
    random = bool(recipe.sample(np.random.default_rng(0), 0))

    def load(indices, *choices):
        batch = tf.gather(images_t, indices)
        if random:
            batch = recipe.apply(tf.cast(batch, tf.float32), *choices)
        if normalize is not None:
            batch = normalize(batch)
        return batch, tf.gather(labels_t, indices)

    def dataset_fn(ctx: tf.distribute.InputContext, epoch: int, start_step: int,
                   independent: bool = False) -> tf.data.Dataset:
        sample_fn = functools.partial(recipe.sample_epoch, seed=seed, epoch=epoch) if random else None
        ds = epoch_batches(num_examples, ctx, global_batch_size=global_batch_size, seed=seed, epoch=epoch,
                           start_step=start_step, sample_fn=sample_fn, independent=independent)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, global_batch_size: int,
                 mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD,
                 normalize: Callable[[tf.Tensor], tf.Tensor] | None = None) -> tf.data.Dataset:
    """Evaluation pipeline: every example once, in order, the last partial batch kept.

    Args:
      images: uint8 [N, height, width, 3].
      labels: int32 [N].
      global_batch_size: examples per batch over all replicas.
      mean, std: per-channel normalisation (see augment.normalize), used when
        `normalize` is None.
      normalize: batch normalisation function instead of mean/std, e.g.
        augment.normalizer(spec); pass `lambda x: x` for features to leave alone.

    Returns:
      tf.data.Dataset of (float32 [<=GB, h, w, 3], int32 [<=GB]), for
      `strategy.experimental_distribute_dataset`.
    """
    normalize = normalize or (lambda x: augment.normalize(x, mean, std))
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.batch(global_batch_size, drop_remainder=False)
    return ds.map(lambda x, y: (normalize(x), y),
                  num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
