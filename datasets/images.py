"""Image-file pipelines: decode, check, cache, augment, batch.

An ImageIndex (datasets.sources: class folders, CSV index, TFRecord) becomes a
training pipeline in one of three cache modes:

  * "decoded": every image is decoded once, up front, into one uint8 array, and
    training gathers and augments whole batches from memory
    (datasets.in_memory). The fastest on few cores: after the first pass the
    pipeline takes almost no CPU from the model. Needs all images the same size
    (or --image_size) and memory for N x h x w x 3 bytes.
  * "encoded": the files' bytes are held in memory and decoded every epoch.
  * "none": files are read and decoded every epoch; TFRecords read with
    keep_bytes=False are read by record offset, a batch at a time
    (datasets.tfrecord.RecordTable), so sets larger than memory train too.

In every mode the data are addressed by example index (datasets.in_memory.
epoch_batches): the file order is shuffled before anything is read, and each
epoch's order and random choices come from (seed, epoch), so a resumed run sees
the same batches as an uninterrupted one. Every image is decoded once up front in
each mode ("decoded" keeps the pixels; the others only check), so a missing, empty
or undecodable file stops the run before training with a message naming it and
its CSV line, or, with skip_bad=True, is left out and counted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from datasets import augment, in_memory
from datasets.sources import ImageIndex
from engine.errors import UserError

CACHE_MODES = ("decoded", "encoded", "none")


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes one JPEG or PNG (1, 3 or 4 channels) to uint8 [h, w, 3].

    tf.io.decode_jpeg is about 2x faster here than the generic tf.io.decode_image
    (19,600 against 8,700 CIFAR images/s on 2 cores; BUILD_NOTES.md).

    Raises:
      tf.errors.InvalidArgumentError: (when run) on bytes that are neither.
    """
    return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.io.decode_jpeg(encoded, channels=3),
                   lambda: tf.io.decode_png(encoded, channels=3))


def resize(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Bilinear resize of uint8 [h, w, 3] to uint8 [size[0], size[1], 3] (no-op when equal)."""
    size = tf.constant(size, tf.int32)
    return tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image,
                   lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size)), 0, 255), tf.uint8))


def _reader(index: ImageIndex) -> Callable[[tf.Tensor], tf.Tensor]:
    """i -> the encoded bytes of example i, from memory or from its file (streamed TFRecords: _with_encoded)."""
    if index.encoded is not None:
        encoded = tf.constant(list(index.encoded), tf.string)
        return lambda i: tf.gather(encoded, i)
    paths = tf.constant([os.fspath(p) for p in index.paths], tf.string)
    return lambda i: tf.io.read_file(tf.gather(paths, i))


def _read_one(index: ImageIndex, i: int) -> tf.Tensor:
    """The encoded bytes of example i, eagerly (without building _reader's tensor of all N)."""
    if index.encoded is not None:
        return tf.constant(index.encoded[i])
    if index.records is not None:
        return index.records.encoded_images(tf.constant([i], tf.int64))[0]
    return tf.io.read_file(os.fspath(index.paths[i]))


def read_encoded(index: ImageIndex) -> ImageIndex:
    """The index with every file's bytes read into memory (for cache="encoded")."""
    if index.encoded is not None:
        return index
    if index.records is not None:
        ds = tf.data.Dataset.range(len(index)).batch(4096).map(index.records.encoded_images)
        return dataclasses.replace(index, encoded=[b for batch in ds.as_numpy_iterator() for b in batch], records=None)
    ds = tf.data.Dataset.from_tensor_slices([os.fspath(p) for p in index.paths]).map(
        tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096)
    return dataclasses.replace(index, encoded=[b for batch in ds.as_numpy_iterator() for b in batch])


def _why_bad(index: ImageIndex, i: int, shape: Sequence[int] | None) -> str:
    """Why example i cannot be used, for the error message."""
    if index.encoded is None and index.records is None:
        path = index.paths[i]
        if not os.path.isfile(path):
            return "the file does not exist"
        if os.path.getsize(path) == 0:
            return "the file is empty"
    raw = _read_one(index, i)
    if int(tf.strings.length(raw)) == 0:
        return "the image is empty"
    try:
        image = decode(raw)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return f"not a decodable JPEG/PNG image ({detail})"
    if shape is not None and tuple(image.shape) != tuple(shape):
        return (f"it is {image.shape[0]}x{image.shape[1]} but the other images are {shape[0]}x{shape[1]}; "
                "set image_size (--image_size) to resize them all")
    return "it could not be read"


def scan(
    index: ImageIndex,
    *,
    image_size: Sequence[int] | None = None,
    keep_pixels: bool = True,
    check_size: bool = True,
    skip_bad: bool = False,
    progress: bool = True,
    what: str = "images",
) -> tuple[np.ndarray | None, ImageIndex, list[str]]:
    """Decodes every image once, in parallel, finding the ones that cannot be used.

    Args:
      index: the images to decode.
      image_size: (height, width) to resize every image to; None requires all
        images to have the size of the first readable one (unless check_size is
        False).
      keep_pixels: return the decoded images (cache "decoded"); False only checks.
      check_size: with image_size None, treat an image of another size as bad.
        False (with keep_pixels False) accepts any size.
      skip_bad: leave out unusable images instead of raising.
      progress: show a progress bar.
      what: words for the progress bar.

    Returns:
      (uint8 [M, h, w, 3] images or None, the index of the M usable examples, one
      line per example left out naming it and why).

    Raises:
      ValueError: naming the first image that is missing, empty, undecodable or of
        another size (and its CSV line), unless skip_bad; or if no image is usable.
    """
    n = len(index)
    shape = tuple(image_size) + (3,) if image_size else None
    if shape is None and check_size:
        for i in range(n):  # The size every image must have: that of the first readable one.
            try:
                shape = tuple(decode(_read_one(index, i)).shape)
                break
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
                continue

    def one(i, encoded):
        image = decode(encoded)
        if image_size:
            image = resize(image, image_size)
        elif shape is not None:
            tf.debugging.assert_equal(tf.shape(image), tf.constant(shape, tf.int32), message="size")
            image = tf.ensure_shape(image, shape)
        # Without pixels, return the shape: an output must depend on the decode, or
        # tf.data's graph optimisation could prune it and check nothing.
        return i, (image if keep_pixels else tf.shape(image))

    ds = _with_encoded(index, tf.data.Dataset.range(n).batch(256), one).ignore_errors().batch(2048)
    good, chunks = [], []
    with tqdm(total=n, desc=f"decoding {what}", unit="img", disable=not progress, leave=False) as bar:
        for batch in ds:
            ids = batch[0].numpy()
            good.append(ids)
            if keep_pixels:
                chunks.append(batch[1].numpy())
            bar.update(int(ids[-1]) + 1 - bar.n)  # Up to the last example decoded.
    good = np.concatenate(good) if good else np.zeros(0, np.int64)
    bad = np.setdiff1d(np.arange(n), good)
    lines = [f"{index.describe(i)}: {_why_bad(index, i, shape)}" for i in bad[:20]]
    lines += [f"... and {len(bad) - 20} more"] if len(bad) > 20 else []
    if len(bad) and not skip_bad:
        more = f" ({len(bad) - 1} more bad images; skip them with --skip_bad_examples)" if len(bad) > 1 else \
            " (skip bad images with --skip_bad_examples)"
        raise UserError(f"{lines[0]}{more}")
    if not len(good):
        raise UserError(f"none of the {n} {what} could be used; first: {lines[0] if lines else '?'}")
    images = np.concatenate(chunks) if keep_pixels else None
    return images, (index.subset(good) if len(bad) else index), lines


@dataclasses.dataclass(frozen=True)
class ImagePipelines:
    """The training and evaluation pipelines of an image classification run.

    Attributes:
      train_fn: dataset_fn(input_context, epoch, start_step, independent=False)
        for engine.EpochInput: per-replica batches (float32 [B, h, w, 3], int32 [B]).
      steps_per_epoch: training steps per epoch (last partial global batch dropped).
      eval_data: tf.data.Dataset of global batches of the eval index (last partial
        batch kept), or None.
      image_shape: (h, w, 3) of the model's input.
      normalize: the normalisation spec (see augment.normalizer), for run.json.
      class_names: class names of the training index.
      num_train, num_eval: examples used.
      skipped: one line per bad example left out (train and eval).
      train_images: the decoded uint8 training images [n, h, w, 3] when they are
        held in memory whole and unaugmented (CIFAR-10 from --data_dir), else None.
    """

    train_fn: Callable
    steps_per_epoch: int
    eval_data: tf.data.Dataset | None
    image_shape: tuple[int, int, int]
    normalize: dict
    class_names: tuple[str, ...]
    num_train: int
    num_eval: int
    skipped: list[str]
    train_images: np.ndarray | None = None


def _channel_stats(images: np.ndarray) -> dict:
    pixels = images.reshape(-1, images.shape[-1])
    mean = pixels.mean(axis=0, dtype=np.float64)
    std = pixels.std(axis=0, dtype=np.float64)
    return {"kind": "channel", "mean": [round(float(m), 2) for m in mean], "std": [round(float(s), 2) for s in std]}


def build(
    train: ImageIndex,
    eval_index: ImageIndex | None = None,
    *,
    global_batch_size: int,
    seed: int = 0,
    augment_names: str = "cifar",
    image_size: Sequence[int] | None = None,
    cache: str = "decoded",
    normalize: str | dict = "channel",
    skip_bad: bool = False,
    progress: bool = True,
) -> ImagePipelines:
    """Builds the pipelines of an image classification run from image indexes.

    Args:
      train: training images.
      eval_index: evaluation images, or None.
      global_batch_size: examples per step over all replicas (and per eval batch).
      seed: keys the shuffle and the augmentation.
      augment_names: --augment value (see augment.parse_recipe): e.g. "cifar",
        "cifar,jitter", "affine", "imagenet", "none".
      image_size: (height, width) to resize images to; with "imagenet", the crop
        size (square, default 224).
      cache: "decoded", "encoded" or "none" (this module's docstring).
      normalize: "channel" (per-channel mean and std of the training images),
        "per_image", "imagenet", "unit", or a spec dict (augment.normalizer).
        The "imagenet" recipe defaults to "imagenet" means when "channel" is asked
        with cache other than "decoded" (no pass over the pixels to measure).
      skip_bad: leave out unusable images (counted in `skipped`) instead of
        raising.
      progress: progress bars while decoding.

    Raises:
      ValueError: a bad cache, recipe or normalisation name; an unusable image
        (see scan); "imagenet" with cache="decoded"; or fewer training examples
        than one global batch.
    """
    if cache not in CACHE_MODES:
        raise UserError(f"--cache={cache!r} must be one of {', '.join(CACHE_MODES)}")
    recipe, per_image = augment.parse_recipe(augment_names)
    if per_image and cache == "decoded":
        raise UserError("--augment=imagenet resizes each image at random; use --cache=encoded or --cache=none")
    if isinstance(normalize, str) and normalize not in augment.NORMALIZATIONS:
        raise UserError(f"--normalize={normalize!r} must be one of {', '.join(augment.NORMALIZATIONS)}")
    crop = None
    if per_image:
        crop = tuple(image_size or (224, 224))
        if crop[0] != crop[1]:
            raise UserError(f"--image_size={crop[0]},{crop[1]}: the imagenet recipe crops squares")
    skipped: list[str] = []

    if cache == "decoded":
        images, train, lines = scan(train, image_size=image_size, skip_bad=skip_bad, progress=progress,
                                    what="training images")
        skipped += lines
        spec = _channel_stats(images) if normalize == "channel" else (
            normalize if isinstance(normalize, dict) else {"kind": normalize})
        norm = augment.normalizer(spec)
        train_fn = in_memory.train_dataset_fn(images, train.labels, global_batch_size=global_batch_size,
                                              seed=seed, recipe=recipe, normalize=norm)
        image_shape = images.shape[1:]
        eval_data = None
        if eval_index is not None:
            eval_images, eval_index, lines = scan(eval_index, image_size=image_shape[:2], skip_bad=skip_bad,
                                                  progress=progress, what="eval images")
            skipped += lines
            eval_data = in_memory.eval_dataset(eval_images, eval_index.labels, global_batch_size=global_batch_size,
                                               normalize=norm)
        return ImagePipelines(train_fn, in_memory.steps_per_epoch(len(train), global_batch_size), eval_data,
                              tuple(image_shape), spec, train.class_names, len(train),
                              len(eval_index) if eval_index is not None else 0, skipped)

    # Streaming modes: check every image once (decoding, keeping no pixels); the
    # imagenet recipe takes images of any size.
    _, train, lines = scan(train, image_size=None if per_image else image_size, keep_pixels=False,
                           check_size=not per_image, skip_bad=skip_bad, progress=progress,
                           what="training images (check)")
    skipped += lines
    if cache == "encoded":
        train = read_encoded(train)
    first = decode(_read_one(train, 0))
    image_shape = (*crop, 3) if per_image else (*(image_size or first.shape[:2]), 3)
    if normalize == "channel" and per_image:
        normalize = "imagenet"
    if normalize == "channel":
        sample = np.stack([resize(decode(_read_one(train, int(i))), image_shape[:2]).numpy()
                           for i in np.random.default_rng(seed).permutation(len(train))[:500]])
        spec = _channel_stats(sample)
    else:
        spec = normalize if isinstance(normalize, dict) else {"kind": normalize}
    norm = augment.normalizer(spec)
    train_fn = _streaming_train_fn(train, global_batch_size=global_batch_size, seed=seed, recipe=recipe,
                                   per_image=per_image, image_shape=image_shape, normalize=norm)
    eval_data = None
    num_eval = 0
    if eval_index is not None:
        _, eval_index, lines = scan(eval_index, image_size=None if per_image else image_shape[:2],
                                    keep_pixels=False, check_size=not per_image, skip_bad=skip_bad,
                                    progress=progress, what="eval images (check)")
        skipped += lines
        if cache == "encoded":
            eval_index = read_encoded(eval_index)
        eval_data = _streaming_eval(eval_index, global_batch_size=global_batch_size, per_image=per_image,
                                    image_shape=image_shape, normalize=norm)
        num_eval = len(eval_index)
    steps = in_memory.steps_per_epoch(len(train), global_batch_size)
    if steps == 0:
        raise UserError(f"{len(train)} training examples are fewer than one global batch of {global_batch_size}")
    return ImagePipelines(train_fn, steps, eval_data, tuple(image_shape), spec, train.class_names, len(train),
                          num_eval, skipped)


def check(index: ImageIndex, skip_bad: bool = False, progress: bool = True):
    """Decodes each image once (any size), keeping nothing; finds the unusable ones.

    Returns:
      (None, the index of the usable examples, one line per example left out).

    Raises:
      ValueError: naming the first missing, empty or undecodable image (and its
        CSV line), unless skip_bad; or if no image is usable.
    """
    return scan(index, keep_pixels=False, check_size=False, skip_bad=skip_bad, progress=progress,
                what="images (check)")


def _with_encoded(index: ImageIndex, ds: tf.data.Dataset, load: Callable) -> tf.data.Dataset:
    """Batches of (ids [B], *rest) -> load(id, encoded bytes, *rest) per example, in order.

    TFRecords streamed from disk are read a batch at a time (one Python call per
    batch: 23k records/s here, against 7.4k one at a time); files and bytes in
    memory are read per example inside the parallel map.
    """
    if index.records is not None:
        fetch = index.records.encoded_images
        ds = ds.map(lambda i, *rest: (i, fetch(i), *rest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.unbatch().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    read = _reader(index)
    return ds.unbatch().map(lambda i, *rest: load(i, read(i), *rest), num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)


def _streaming_train_fn(index: ImageIndex, *, global_batch_size, seed, recipe, per_image, image_shape, normalize):
    labels_t = tf.constant(index.labels, tf.int32)
    n = len(index)
    has_choices = bool(recipe.sample(np.random.default_rng(0), 0))
    per_image_count = 3 if per_image else 0

    def sample(rng, count, epoch):
        drawn = augment.sample_imagenet(rng, count, min_side=round(image_shape[0] * 256 / 224),
                                        max_side=round(image_shape[0] * 512 / 224)) if per_image else ()
        return (*drawn, *recipe.sample_epoch(rng, count, seed=seed, epoch=epoch))

    def load_one(i, encoded, *choices):
        image = decode(encoded)
        if per_image:
            side, corner, flip = choices[:per_image_count]
            image = augment.imagenet_train(image, side, corner, flip, crop=image_shape[0])
        else:
            image = tf.cast(tf.ensure_shape(resize(image, image_shape[:2]), image_shape), tf.float32)
        return (image, tf.gather(labels_t, i), *choices[per_image_count:])

    def finish(images, labels, *choices):
        if has_choices:
            images = recipe.apply(images, *choices)
        return normalize(images), labels

    def dataset_fn(ctx, epoch, start_step, independent=False):
        per_replica = ctx.get_per_replica_batch_size(global_batch_size)
        sample_fn = functools.partial(sample, epoch=epoch) if (per_image or has_choices) else None
        ds = in_memory.epoch_batches(n, ctx, global_batch_size=global_batch_size, seed=seed, epoch=epoch,
                                     start_step=start_step, sample_fn=sample_fn, independent=independent)
        ds = _with_encoded(index, ds, load_one).batch(per_replica, drop_remainder=True)
        return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def _streaming_eval(index: ImageIndex, *, global_batch_size, per_image, image_shape, normalize):
    labels_t = tf.constant(index.labels, tf.int32)

    def load_one(i, encoded):
        image = decode(encoded)
        if per_image:
            image = augment.imagenet_eval(image, crop=image_shape[0], side=round(image_shape[0] * 256 / 224))
        else:
            image = tf.cast(tf.ensure_shape(resize(image, image_shape[:2]), image_shape), tf.float32)
        return image, tf.gather(labels_t, i)

    ds = _with_encoded(index, tf.data.Dataset.range(len(index)).batch(global_batch_size), load_one)
    return ds.batch(global_batch_size).map(lambda x, y: (normalize(x), y)).prefetch(tf.data.AUTOTUNE)
