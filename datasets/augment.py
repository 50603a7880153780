"""Image transforms for CIFAR-style training: pad-crop-flip and normalisation.

The random choices (crop offsets, flips) are drawn up front per example with
`sample_pad_crop_flip` and passed in, so the transforms themselves are pure
functions: the same (image, offsets, flip) always gives the same output, in eager
code, inside `Dataset.map`, on one replica or many, before and after a resume.

Reference: He et al., "Deep Residual Learning for Image Recognition", 2016, sec.
4.2 (pad 4 pixels, random 32x32 crop, random horizontal flip), as in the TF2
CIFAR-10 tutorial's `augmentation` function.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from engine.errors import UserError

# Per-channel mean and standard deviation of the CIFAR-10 training images, in
# uint8 units, measured on ../shared/data/cifar10 (JPEG) with
# `datasets.cifar10.load(...).train.images.mean/std(axis=(0, 1, 2))`; the original
# arrays differ by under 1.1. Per-channel standardisation (rather than the
# tutorial's per_image_standardization) keeps the relative brightness of images
# and costs one multiply-add per pixel.
CIFAR10_MEAN = (124.14, 122.96, 112.57)
CIFAR10_STD = (62.50, 61.85, 66.42)


def normalize(images: tf.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> tf.Tensor:
    """Standardises each channel with the training set's mean and std.

    Args:
      images: uint8 or float [..., height, width, 3], values in [0, 255].
      mean: per-channel means, uint8 units.
      std: per-channel standard deviations, uint8 units.

    Returns:
      float32 tensor of the same shape, about zero mean and unit variance.
    """
    images = tf.cast(images, tf.float32)
    return (images - tf.constant(mean, tf.float32)) * tf.constant([1.0 / s for s in std], tf.float32)


def sample_pad_crop_flip(rng: np.random.Generator, num_examples: int, pad: int = 4):
    """Draws the random choices of pad-crop-flip for `num_examples` examples.

    Args:
      rng: numpy generator; the caller keys it (for example by seed and epoch).
      num_examples: how many examples to draw for.
      pad: pixels of padding on each side; offsets lie in [0, 2 * pad].

    Returns:
      (offsets int32 [num_examples, 2] as (row, column), flips bool [num_examples]).
    """
    offsets = rng.integers(0, 2 * pad + 1, size=(num_examples, 2), dtype=np.int32)
    flips = rng.random(num_examples) < 0.5
    return offsets, flips


def pad_crop_flip(images: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor, pad: int = 4,
                  mode: str = "CONSTANT") -> tf.Tensor:
    """Pads (with zeros, or mirrored edges for mode="REFLECT"), crops back to the original size at `offsets`, and flips.

    Works on a whole batch at once (two gathers and a select), which on a CPU is
    several times faster than mapping `tf.image.random_crop` over single images.

    Args:
      images: [batch, height, width, channels], any dtype.
      offsets: int32 [batch, 2], (row, column) of each crop's top-left corner in the
        padded image, each in [0, 2 * pad].
      flips: bool [batch], whether to mirror each image left-right.
      pad: pixels of padding added on each side before cropping.
      mode: tf.pad's mode: "CONSTANT" (zeros) or "REFLECT".

    Returns:
      Tensor of the same shape and dtype as `images`.
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)  # [b, h+2p, w+2p, c]
    rows = offsets[:, :1] + tf.range(height)  # [b, h]
    cols = offsets[:, 1:] + tf.range(width)  # [b, w]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [b, h, w+2p, c]
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)  # [b, h, w, c]
    return tf.where(flips[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


# --- Normalisations, by name ----------------------------------------------------------

# The transfer tutorial's (and VGG/ResNet-caffe's) RGB means, subtracted from [0, 255] pixels.
IMAGENET_MEAN = (123.68, 116.78, 103.94)
NORMALIZATIONS = ("channel", "per_image", "imagenet", "unit")


def per_image_standardize(images: tf.Tensor) -> tf.Tensor:
    """tf.image.per_image_standardization of each image: zero mean, unit variance.

    Args:
      images: [..., height, width, channels] in [0, 255].

    Returns:
      float32, same shape.
    """
    return tf.image.per_image_standardization(tf.cast(images, tf.float32))


def normalizer(spec: dict):
    """The normalisation a run recorded: a function of uint8/float [..., h, w, 3] -> float32.

    Args:
      spec: {"kind": "channel", "mean": [3], "std": [3]} (per-channel standardisation;
        a spec without "kind" is read as this), {"kind": "per_image"}
        (per_image_standardize), {"kind": "imagenet"} (subtract IMAGENET_MEAN), or
        {"kind": "unit"} (divide by 255).

    Raises:
      ValueError: on an unknown kind.
    """
    kind = spec.get("kind", "channel")
    if kind == "channel":
        mean, std = tuple(spec["mean"]), tuple(spec["std"])
        return lambda images: normalize(images, mean, std)
    if kind == "per_image":
        return per_image_standardize
    if kind == "imagenet":
        return lambda images: tf.cast(images, tf.float32) - tf.constant(IMAGENET_MEAN, tf.float32)
    if kind == "unit":
        return lambda images: tf.cast(images, tf.float32) * (1.0 / 255.0)
    raise UserError(f"normalisation {kind!r} is not one of {', '.join(NORMALIZATIONS)}")


# --- Batch recipes: random choices drawn up front, applied to whole batches -------------

class BatchRecipe:
    """An augmentation applied to whole batches, its random choices drawn up front.

    `sample(rng, n)` draws the choices of n examples as numpy arrays [n, ...] (the
    caller keys rng by seed and epoch and indexes the arrays by example), and
    `apply(images, *params)` transforms a float32 batch [B, h, w, 3] in [0, 255]
    with the batch's rows of those arrays. Pure: same inputs, same output.
    """

    name = "none"

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        del rng, n
        return ()

    def apply(self, images: tf.Tensor, *params: tf.Tensor) -> tf.Tensor:
        return images

    def sample_epoch(self, rng: np.random.Generator, n: int, *, seed: int, epoch: int) -> tuple[np.ndarray, ...]:
        """The choices of `epoch` (what pipelines call): `sample` unless a recipe depends on the epoch itself."""
        del seed, epoch
        return self.sample(rng, n)


class Flip(BatchRecipe):
    """Random left-right flip with probability 1/2."""

    name = "flip"

    def sample(self, rng, n):
        return (rng.random(n) < 0.5,)

    def apply(self, images, flips):
        return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


class PadCropFlip(BatchRecipe):
    """The CIFAR recipe: pad, random crop back to size, random flip (He et al. 2016, sec. 4.2)."""

    name = "cifar"

    def __init__(self, pad: int = 4, mode: str = "CONSTANT"):
        self.pad, self.mode = pad, mode

    def sample(self, rng, n):
        return sample_pad_crop_flip(rng, n, self.pad)

    def apply(self, images, offsets, flips):
        return pad_crop_flip(images, offsets, flips, self.pad, self.mode)


class Translate2Flip(PadCropFlip):
    """airbench's recipe: translate by up to 2 pixels (reflect padding, random crop), random flip.

    Keller Jordan, airbench94 (2024): `translate=2` with reflect padding, and flip.
    """

    name = "translate2"

    def __init__(self):
        super().__init__(pad=2, mode="REFLECT")


class Translate2AlternatingFlip(Translate2Flip):
    """airbench94's training augmentation: translate by up to 2 pixels, and alternating flips.

    Each example gets a random flip bit once per run (from the seed); on even
    epochs it is flipped where the bit is set, on odd epochs where it is not, so
    every example is seen mirrored every other epoch instead of at random.
    Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024,
    arXiv:2404.00498), section 3.6 "Alternating flip" (derandomised flipping).
    """

    name = "translate2_alternating"

    def sample_epoch(self, rng, n, *, seed, epoch):
        offsets, _ = self.sample(rng, n)
        first = np.random.default_rng([seed, 0xA17F]).random(n) < 0.5  # the same bits every epoch
        return offsets, first ^ bool(epoch % 2)


class ColorJitter(BatchRecipe):
    """Random brightness and contrast, as tf.image.random_brightness / random_contrast.

    Brightness adds delta * 255 with delta uniform in [-brightness, brightness];
    contrast scales each image's deviation from its mean by a factor uniform in
    [1 - contrast, 1 + contrast]. The result is clipped to [0, 255], as the
    tf.image functions clip to the image's range.
    """

    name = "jitter"

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2):
        if not 0 <= brightness <= 1 or not 0 <= contrast < 1:
            raise UserError(f"brightness={brightness} must be in [0, 1] and contrast={contrast} in [0, 1)")
        self.brightness, self.contrast = brightness, contrast

    def sample(self, rng, n):
        return (rng.uniform(-self.brightness, self.brightness, n).astype(np.float32),
                rng.uniform(1 - self.contrast, 1 + self.contrast, n).astype(np.float32))

    def apply(self, images, deltas, factors):
        images = images + 255.0 * deltas[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factors[:, None, None, None] + mean
        return tf.clip_by_value(images, 0.0, 255.0)


class Affine(BatchRecipe):
    """Rotation, shift, shear, zoom and flip, as Keras's ImageDataGenerator draws them.

    Per example: angle uniform in [-rotation, rotation] degrees; shifts uniform in
    [-shift, shift] x the height and width; shear angle uniform in [-shear, shear]
    degrees; zoom factors for x and y drawn independently in [1 - zoom, 1 + zoom];
    a left-right flip with probability 1/2 when `flip`. Points outside the image
    take the nearest edge pixel (ImageDataGenerator's fill_mode="nearest");
    bilinear interpolation. All examples of a batch are warped by one op
    (ImageProjectiveTransformV3).
    """

    name = "affine"

    def __init__(self, rotation: float = 15.0, shift: float = 0.1, shear: float = 10.0, zoom: float = 0.1,
                 flip: bool = True):
        self.rotation, self.shift, self.shear, self.zoom, self.flip = rotation, shift, shear, zoom, flip

    def sample(self, rng, n):
        z = lambda: rng.uniform(1 - self.zoom, 1 + self.zoom, n)  # noqa: E731
        return (np.deg2rad(rng.uniform(-self.rotation, self.rotation, n)).astype(np.float32),
                rng.uniform(-self.shift, self.shift, (n, 2)).astype(np.float32),
                np.deg2rad(rng.uniform(-self.shear, self.shear, n)).astype(np.float32),
                np.stack([z(), z()], axis=1).astype(np.float32),
                (rng.random(n) < 0.5) & self.flip)

    def apply(self, images, angles, shifts, shears, zooms, flips):
        height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        cy, cx = (height - 1) / 2, (width - 1) / 2
        cos, sin = tf.cos(angles), tf.sin(angles)
        zx, zy = zooms[:, 0], zooms[:, 1]
        # Output (x, y) -> input (x', y'), about the centre: rotation R, shear S,
        # zoom Z, then shift; the 8 numbers per image of ImageProjectiveTransformV3.
        # M = R @ S @ Z with R = [[c, -s], [s, c]], S = [[1, -sin(sh)], [0, cos(sh)]],
        # Z = diag(zx, zy).
        ssh, csh = tf.sin(shears), tf.cos(shears)
        m00, m01 = cos * zx, (-cos * ssh - sin * csh) * zy
        m10, m11 = sin * zx, (-sin * ssh + cos * csh) * zy
        tx = shifts[:, 1] * width
        ty = shifts[:, 0] * height
        b0 = cx - m00 * cx - m01 * cy + tx
        b1 = cy - m10 * cx - m11 * cy + ty
        zeros = tf.zeros_like(m00)
        transforms = tf.stack([m00, m01, b0, m10, m11, b1, zeros, zeros], axis=1)
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST")
        return tf.where(flips[:, None, None, None], tf.reverse(out, axis=[2]), out)


class Compose(BatchRecipe):
    """Several batch recipes applied in order."""

    def __init__(self, recipes):
        self.recipes = list(recipes)
        self.name = ",".join(r.name for r in self.recipes) or "none"
        self._sizes = [len(r.sample(np.random.default_rng(0), 0)) for r in self.recipes]

    def sample(self, rng, n):
        # One flat tuple (tf.data slices flat tuples best); apply splits it again.
        return tuple(a for r in self.recipes for a in r.sample(rng, n))

    def sample_epoch(self, rng, n, *, seed, epoch):
        return tuple(a for r in self.recipes for a in r.sample_epoch(rng, n, seed=seed, epoch=epoch))

    def apply(self, images, *params):
        start = 0
        for recipe, size in zip(self.recipes, self._sizes):
            images = recipe.apply(images, *params[start:start + size])
            start += size
        return images


BATCH_RECIPES = {"none": BatchRecipe, "flip": Flip, "cifar": PadCropFlip, "translate2": Translate2Flip,
                 "translate2_alternating": Translate2AlternatingFlip, "jitter": ColorJitter, "affine": Affine}
# Recipes that work per image on files of any size (the streaming pipeline only).
PER_IMAGE_RECIPES = ("imagenet",)
RECIPE_NAMES = (*BATCH_RECIPES, *PER_IMAGE_RECIPES)


def parse_recipe(names: str) -> tuple[BatchRecipe, str | None]:
    """Parses an --augment value: comma-separated recipe names applied in order.

    Args:
      names: e.g. "cifar", "cifar,jitter", "affine", "imagenet", "imagenet,jitter"
        or "none". "imagenet" (at most once, first) is a per-image recipe; the rest
        are batch recipes.

    Returns:
      (batch recipe, "imagenet" or None).

    Raises:
      ValueError: naming an unknown recipe or a misplaced "imagenet".
    """
    parts = [n.strip() for n in names.split(",") if n.strip()] or ["none"]
    per_image = None
    if parts[0] in PER_IMAGE_RECIPES:
        per_image, parts = parts[0], parts[1:]
    recipes = []
    for name in parts:
        if name not in BATCH_RECIPES:
            where = " (it must come first)" if name in PER_IMAGE_RECIPES else ""
            raise UserError(f"--augment: {name!r} is not a known recipe{where}; choose from "
                             f"{', '.join(RECIPE_NAMES)}")
        if name != "none":
            recipes.append(BATCH_RECIPES[name]())
    return Compose(recipes), per_image


# --- The ImageNet recipe of the transfer tutorial, per image ----------------------------

def sample_imagenet(rng: np.random.Generator, n: int, min_side: int = 256, max_side: int = 512):
    """Random choices of imagenet_train for n examples: (sides int32 [n], corners float32 [n, 2], flips bool [n])."""
    return (rng.integers(min_side, max_side + 1, n, dtype=np.int32), rng.random((n, 2)).astype(np.float32),
            rng.random(n) < 0.5)


def _resize_shorter(image: tf.Tensor, side) -> tf.Tensor:
    """Aspect-preserving resize so the shorter side is `side` pixels; float32 out."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    size = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(tf.cast(image, tf.float32), size)


def imagenet_train(image: tf.Tensor, side, corner, flip, crop: int = 224) -> tf.Tensor:
    """The transfer tutorial's training transform of one image.

    Resizes the shorter side to `side` (drawn in [256, 512]) keeping the aspect,
    crops crop x crop at the relative position `corner` (each in [0, 1)), flips when
    `flip`. Reference: Simonyan & Zisserman 2015 (scale jittering), as in the
    tutorial's ImageNet preprocessing.

    Args:
      image: uint8 [h, w, 3], any size.
      side: int32 scalar >= crop. corner: float32 [2]. flip: bool scalar.

    Returns:
      float32 [crop, crop, 3] in [0, 255].
    """
    image = _resize_shorter(image, side)
    room = tf.cast(tf.shape(image)[:2] - crop + 1, tf.float32)
    top_left = tf.cast(tf.floor(corner * room), tf.int32)
    image = tf.image.crop_to_bounding_box(image, top_left[0], top_left[1], crop, crop)
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def imagenet_eval(image: tf.Tensor, crop: int = 224, side: int = 256) -> tf.Tensor:
    """The tutorial's evaluation transform: shorter side to 256, central 224 x 224 crop.

    Returns:
      float32 [crop, crop, 3] in [0, 255].
    """
    image = _resize_shorter(image, side)
    shape = tf.shape(image)[:2]
    return tf.image.crop_to_bounding_box(image, (shape[0] - crop) // 2, (shape[1] - crop) // 2, crop, crop)
