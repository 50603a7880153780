"""The airbench network: a small VGG-like CIFAR-10 net built for time-to-accuracy.

Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024,
arXiv:2404.00498), airbench94: a frozen 2x2 patch-whitening convolution
initialised from the training images, then three blocks of
conv-pool-BN-GELU-conv-BN-GELU (widths 64, 256, 256), a 3x3 max-pool, a linear
classifier without bias and logits scaled by 1/9. BatchNorm has no learned scale
(its gamma is fixed at 1, as airbench freezes it) and fast statistics (momentum
0.6). The network descends from hlb-cifar10 (tysam-code) and Page's "How to train
your ResNet" (the DAWNBench entries).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


class PatchWhitening(keras.layers.Layer):
    """A frozen conv whose filters whiten the input's k x k patches; only its bias trains.

    The filters are set by `initialize_from_images` (the recipe of airbench, after
    hlb-cifar10): with C the covariance of the k*k*c-dimensional patches of
    training images and C = V diag(l) V^T, the filters are the eigenvectors scaled
    by 1/sqrt(l + eps), each with its negation (2 k^2 c filters, so that a ReLU-like
    activation after it keeps both signs). The outputs of the first k^2 c filters
    then have covariance diag(l / (l + eps)), about the identity.

    Input: float [batch, h, w, c]; output: [batch, h - k + 1, w - k + 1, 2 k^2 c]
    ("valid" convolution).

    Args:
      patch_size: k, the patch height and width.
      eps: added to the eigenvalues (in the input's squared units).
    """

    def __init__(self, patch_size: int = 2, eps: float = 5e-4, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.eps = patch_size, eps

    def build(self, input_shape):
        channels = int(input_shape[-1])
        dim = self.patch_size * self.patch_size * channels
        self.kernel = self.add_weight(name="kernel", shape=(self.patch_size, self.patch_size, channels, 2 * dim),
                                      initializer="glorot_uniform", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(2 * dim,), initializer="zeros")

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        return ops.conv(inputs, kernel, strides=1, padding="valid") + ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        k = self.patch_size
        dims = [None if d is None else d - k + 1 for d in input_shape[1:3]]
        return (input_shape[0], *dims, 2 * k * k * int(input_shape[-1]))

    def initialize_from_images(self, images: np.ndarray) -> np.ndarray:
        """Sets the filters from `images` (float [n, h, w, c], normalised as the model's inputs).

        Returns:
          The eigenvalues of the patch covariance, largest first (float64 [k*k*c]).

        Raises:
          ValueError: if the layer is not built or the channels differ.
        """
        if not self.built:
            raise ValueError(f"{self.name}: build the model before initialising its whitening")
        k = self.patch_size
        images = np.asarray(images, np.float64)
        n, h, w, c = images.shape
        if c != self.kernel.shape[2]:
            raise ValueError(f"{self.name}: images have {c} channels, the layer {self.kernel.shape[2]}")
        # Every k x k patch as a row, ordered (dy, dx, channel) like the kernel's first three axes.
        patches = np.stack([images[:, dy:h - k + 1 + dy, dx:w - k + 1 + dx, :]
                            for dy in range(k) for dx in range(k)], axis=3).reshape(-1, k * k * c)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
        filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0) + self.eps)  # [k*k*c, k*k*c], one per column
        kernel = np.concatenate([filters, -filters], axis=1).reshape(k, k, c, 2 * k * k * c)
        self.kernel.assign(kernel.astype(np.float32))
        return eigenvalues

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "eps": self.eps}


def _bn(name: str, momentum: float) -> layers.BatchNormalization:
    # epsilon 1e-5 (airbench: 1e-12) keeps the layer on TensorFlow's fused kernel.
    return layers.BatchNormalization(momentum=momentum, epsilon=1e-5, scale=False, name=name)


def airbench(*, num_classes: int = 10, input_shape=(32, 32, 3), widths=(64, 256, 256),
             weight_decay: float = 0.0, batch_norm_momentum: float = 0.6, logit_scale: float = 1 / 9,
             name: str = "airbench") -> keras.Model:
    """airbench94's network (see the module docstring).

    Args:
      num_classes: output logits.
      input_shape: (height, width, channels) of normalised float images.
      widths: channels of the three blocks.
      weight_decay: L2 of weight_decay / 2 on the conv and dense kernels (the
        whitening filters are frozen and not decayed).
      batch_norm_momentum: Keras momentum of the moving statistics (airbench's
        PyTorch momentum 0.4 is Keras's 0.6).
      logit_scale: factor of the classifier's output.
      name: model name.

    Returns:
      keras.Model: float [batch, 32, 32, 3] -> logits [batch, num_classes]. Call
      `initialize_whitening(model, images)` before training.
    """
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape, name="images")
    x = PatchWhitening(name="whiten")(inputs)  # [b, 31, 31, 24]
    x = layers.Activation("gelu", name="whiten_gelu")(x)
    for i, width in enumerate(widths):
        p = f"block{i + 1}"
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{p}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"{p}_pool")(x)  # 31 -> 15 -> 7 -> 3
        x = layers.Activation("gelu", name=f"{p}_gelu1")(_bn(f"{p}_bn1", batch_norm_momentum)(x))
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{p}_conv2")(x)
        x = layers.Activation("gelu", name=f"{p}_gelu2")(_bn(f"{p}_bn2", batch_norm_momentum)(x))
    x = layers.GlobalMaxPooling2D(name="pool")(x)  # airbench's MaxPool2d(3) over the last 3x3 map
    x = layers.Dense(num_classes, use_bias=False, kernel_regularizer=reg, name="logits")(x)
    outputs = layers.Rescaling(logit_scale, name="logit_scale")(x)
    return keras.Model(inputs, outputs, name=name)


def initialize_whitening(model: keras.Model, images: np.ndarray) -> int:
    """Initialises every PatchWhitening layer of `model` from `images` (normalised float [n, h, w, c]).

    Returns:
      The number of layers initialised (0 for a model without one).
    """
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, PatchWhitening):
            layer.initialize_from_images(images)
            count += 1
    return count
