"""Test-time augmentation: average the model's outputs over mirrored and shifted copies of the input.

As in airbench (Keller Jordan, 2024, "94% on CIFAR-10 in 3.29 seconds"), TTA
levels 1 and 2: "flip" averages the outputs for the image and its left-right
mirror; "flip_translate" gives that average half the weight and the other half to
the same average for the image translated by one pixel up-left and down-right
(reflect padding). Outputs are averaged as they come (logits, for a classifier).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from engine.errors import UserError

TTA_MODES = ("none", "flip", "flip_translate")


def check_mode(mode: str) -> str:
    """Returns `mode`, or raises ValueError naming the known modes."""
    if mode not in TTA_MODES:
        raise UserError(f"test_time_augmentation={mode!r} is not one of {', '.join(TTA_MODES)}")
    return mode


def augmented_predictions(predict: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor, mode: str) -> tf.Tensor:
    """The outputs of `predict` averaged over the views of `mode`.

    Args:
      predict: a function of images [batch, h, w, c] -> outputs [batch, ...].
      images: float [batch, h, w, c] (channels last).
      mode: "none", "flip" or "flip_translate" (TTA_MODES).

    Returns:
      The averaged outputs, shaped as predict's.

    Raises:
      ValueError: on an unknown mode.
    """
    check_mode(mode)
    if mode == "none":
        return predict(images)

    def mirrored(x):
        return 0.5 * (predict(x) + predict(tf.reverse(x, axis=[2])))

    outputs = mirrored(images)
    if mode == "flip":
        return outputs
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    shifted_down_right = padded[:, :height, :width]  # content moves one pixel down and right
    shifted_up_left = padded[:, 2:, 2:]
    return 0.5 * outputs + 0.25 * (mirrored(shifted_down_right) + mirrored(shifted_up_left))
