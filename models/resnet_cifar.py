"""ResNet v1 for CIFAR-10, depth 6n+2 (ResNet-20, 32, 44, 56, 110).

Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
sec. 4.2: a 3x3 conv with 16 filters, then three stages of n basic blocks with
16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average pooling and a
dense classifier. Shortcuts are identities; where the shape changes, option A of
the paper: subsample by 2 and pad the new channels with zeros (no parameters), so
the parameter counts match the paper's table 6 (0.27M for ResNet-20, 0.85M for
ResNet-56, 1.7M for ResNet-110).
"""

from __future__ import annotations

import keras
from keras import layers

from engine.errors import UserError

# BatchNorm settings of TensorFlow's official Keras ResNet for CIFAR (the tutorial
# adapts it): a momentum of 0.9 lets the moving statistics follow the fast-moving
# weights of short runs, where Keras's default 0.99 lags behind.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5

DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


@keras.saving.register_keras_serializable(package="models")
class ZeroPadShortcut(layers.Layer):
    """Option-A shortcut: spatial subsampling by 2 and zero-padding of channels.

    Input float [batch, h, w, c_in]; output [batch, ceil(h/2), ceil(w/2), c_out].
    It has no weights, which is why the CIFAR ResNets keep the paper's counts.
    """

    def __init__(self, out_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels

    def call(self, x):
        x = x[:, ::2, ::2, :]  # [batch, h/2, w/2, c_in]
        extra = self.out_channels - x.shape[-1]
        pad_front = extra // 2
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [pad_front, extra - pad_front]])

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        half = lambda d: None if d is None else (d + 1) // 2  # noqa: E731
        return (b, half(h), half(w), self.out_channels)

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels}


def _conv(filters: int, strides: int, weight_decay: float, name: str) -> layers.Conv2D:
    # Keras's L2 regulariser adds c * sum(w^2), whose gradient is 2c * w; the paper's
    # weight decay d adds d * w to the gradient, so c = d / 2.
    return layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(weight_decay / 2) if weight_decay else None,
        name=name)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name)


def resnet_cifar(
    depth: int,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    weight_decay: float = 1e-4,
    name: str | None = None,
) -> keras.Model:
    """Builds ResNet v1 of depth 6n+2 for CIFAR with the functional API.

    Args:
      depth: total number of weighted layers, 6n+2 (20, 32, 44, 56, 110, ...).
      num_classes: size of the output layer.
      input_shape: (height, width, channels) of one image; float inputs, already
        normalised (see datasets.augment.normalize).
      weight_decay: the paper's weight decay (1e-4 there), applied to conv and dense
        kernels as an L2 penalty of weight_decay / 2 * sum(w^2), so the gradient
        gains weight_decay * w.
      name: model name; defaults to "resnet{depth}".

    Returns:
      A keras.Model mapping float32 [batch, 32, 32, 3] to float32 logits
      [batch, num_classes] (no softmax; use a loss with from_logits=True).

    Raises:
      ValueError: if depth is not of the form 6n+2 with n >= 1.

    Reference: He et al., "Deep Residual Learning for Image Recognition", 2016, sec. 4.2.
    """
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"ResNet depth {depth} is not of the form 6n+2 (20, 32, 44, 56, 110)")
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(16, 1, weight_decay, "conv1")(inputs)
    x = layers.ReLU(name="conv1_relu")(_bn("conv1_bn")(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            prefix = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = ZeroPadShortcut(filters, name=f"{prefix}_shortcut")(x) if strides == 2 else x
            y = _conv(filters, strides, weight_decay, f"{prefix}_conv1")(x)
            y = layers.ReLU(name=f"{prefix}_relu1")(_bn(f"{prefix}_bn1")(y))
            y = _conv(filters, 1, weight_decay, f"{prefix}_conv2")(y)
            y = _bn(f"{prefix}_bn2")(y)
            x = layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # [batch, 64]
    outputs = layers.Dense(
        num_classes, kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(weight_decay / 2) if weight_decay else None,
        name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")
