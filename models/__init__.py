"""Keras model builders: config in, keras.Model out, looked up by name."""

from __future__ import annotations

import keras

from models.airbench import airbench, initialize_whitening
from models.resnet_cifar import DEPTHS, resnet_cifar
from models.small import mlp, small_cnn
from engine.errors import UserError

# airbench's networks differ only in their three blocks' widths (airbench93, airbench94
# = "airbench", airbench95; github.com/KellerJordan/cifar10-airbench, lib_airbench93.py and
# legacy/airbench95.py).
AIRBENCH_WIDTHS = {"airbench93": (64, 128, 128), "airbench": (64, 256, 256), "airbench95": (128, 384, 384)}
MODEL_NAMES = (*DEPTHS, *AIRBENCH_WIDTHS, "small_cnn", "mlp")


def build(name: str, *, num_classes: int = 10, input_shape=(32, 32, 3),
          weight_decay: float = 1e-4) -> keras.Model:
    """Builds a registered model by name.

    Args:
      name: one of MODEL_NAMES ("resnet20" ... "resnet110", "airbench93", "airbench"
        (airbench94's widths), "airbench95", "small_cnn", "mlp").
      num_classes: number of output logits.
      input_shape: (height, width, channels) of one example.
      weight_decay: weight decay of conv and dense kernels (see resnet_cifar).

    Returns:
      A keras.Model producing float32 logits [batch, num_classes].

    Raises:
      ValueError: if the name is unknown; the message lists the known names.
    """
    if name in DEPTHS:
        return resnet_cifar(DEPTHS[name], num_classes=num_classes, input_shape=input_shape,
                            weight_decay=weight_decay)
    if name in AIRBENCH_WIDTHS:
        return airbench(num_classes=num_classes, input_shape=input_shape, widths=AIRBENCH_WIDTHS[name],
                        weight_decay=weight_decay, name=name)
    if name == "small_cnn":
        return small_cnn(num_classes=num_classes, input_shape=input_shape, weight_decay=weight_decay)
    if name == "mlp":
        return mlp(num_classes=num_classes, input_shape=input_shape, weight_decay=weight_decay)
    raise UserError(f"--model={name!r} is not a known model; choose one of {', '.join(MODEL_NAMES)}")


__all__ = ["MODEL_NAMES", "build", "airbench", "initialize_whitening", "resnet_cifar", "small_cnn", "mlp"]
