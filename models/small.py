"""Small reference networks: a CNN and an MLP, for quick runs and tests."""

from __future__ import annotations

import keras
from keras import layers


def small_cnn(*, num_classes: int = 10, input_shape=(32, 32, 3), weight_decay: float = 1e-4,
              name: str = "small_cnn") -> keras.Model:
    """Three conv-BN-ReLU blocks (32, 64, 128 filters, each halving the map) and a dense classifier.

    Args:
      num_classes: output logits.
      input_shape: (height, width, channels), float inputs already normalised.
      weight_decay: weight decay of conv and dense kernels (L2 of weight_decay / 2).

    Returns:
      keras.Model: float32 [batch, h, w, c] -> logits float32 [batch, num_classes].
    """
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"conv{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(layers.BatchNormalization(name=f"bn{i + 1}")(x))
        x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)  # [batch, h/2^(i+1), w/2^(i+1), filters]
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x), name=name)


def mlp(*, num_classes: int = 10, input_shape=(32, 32, 3), hidden=(512, 256), weight_decay: float = 0.0,
        name: str = "mlp") -> keras.Model:
    """Flatten, then dense ReLU layers of the given widths, then logits.

    Returns:
      keras.Model: float32 [batch, *input_shape] -> logits float32 [batch, num_classes].
    """
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    for i, width in enumerate(hidden):
        x = layers.Dense(width, activation="relu", kernel_regularizer=reg, name=f"dense{i + 1}")(x)
    return keras.Model(inputs, layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x), name=name)
