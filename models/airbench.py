"""The airbench network: a small VGG-like CIFAR-10 net built for time-to-accuracy.

Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024,
arXiv:2404.00498), airbench94: a frozen 2x2 patch-whitening convolution
initialised from the training images, then three blocks of
conv-pool-BN-GELU-conv-BN-GELU (widths 64, 256, 256), a 3x3 max-pool, a linear
classifier without bias and logits scaled by 1/9. BatchNorm has no learned scale
(its gamma is fixed at 1, as airbench freezes it) and fast statistics (momentum
0.6); its bias learns 64 times faster than the other weights (`ScaledBias`).
Each conv starts as a partial identity (`PartialIdentity`, airbench's dirac
initialisation of the first in_channels filters). The network descends from
hlb-cifar10 (tysam-code) and Page's "How to train your ResNet" (the DAWNBench
entries).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from engine.errors import UserError


@keras.saving.register_keras_serializable(package="airbench")
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

    def initialize_from_images(self, images: np.ndarray, eps: float | None = None) -> np.ndarray:
        """Sets the filters from `images` (float [n, h, w, c], normalised as the model's inputs).

        Args:
          images: the training images to estimate the patch covariance from.
          eps: replaces the layer's eps (kept in its config) when given.

        Returns:
          The eigenvalues of the patch covariance, largest first (float64 [k*k*c]).

        Raises:
          ValueError: if the layer is not built or the channels differ.
        """
        if not self.built:
            raise UserError(f"{self.name}: build the model before initialising its whitening")
        if eps is not None:
            if eps <= 0:
                raise UserError(f"{self.name}: whitening eps={eps} must be positive")
            self.eps = eps
        k = self.patch_size
        images = np.asarray(images, np.float64)
        n, h, w, c = images.shape
        if c != self.kernel.shape[2]:
            raise UserError(f"{self.name}: images have {c} channels, the layer {self.kernel.shape[2]}")
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


@keras.saving.register_keras_serializable(package="airbench")
class ScaledBias(keras.layers.Layer):
    """Adds a per-channel bias that plain SGD moves `lr_multiplier` times faster; its decay is not scaled.

    airbench scales the learning rate of the BatchNorm biases by 64 ("bias_scaler")
    and keeps their weight decay per step as the other weights'. This layer gets the
    same update from any optimizer step without per-variable learning rates, by
    reparametrisation: it stores `raw` = bias / s with s = sqrt(lr_multiplier) and
    outputs x + s * raw. A gradient step of rate lr on `raw` (gradient s * dL/dbias)
    moves the bias by s * lr * s * dL/dbias = lr_multiplier * lr * dL/dbias; an L2
    loss of weight_decay / 2 * raw^2 decays it by lr * weight_decay * bias per step,
    as the kernels' L2 decays them. (For adaptive optimizers such as Adam, which
    normalise the gradient's scale, the bias moves about s times faster instead.)

    Input: [..., channels]; output: the same shape and dtype.

    Args:
      lr_multiplier: > 0; 1 is a plain bias.
      weight_decay: coefficient of the L2 loss on the bias (0 for none).
    """

    def __init__(self, lr_multiplier: float = 64.0, weight_decay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if lr_multiplier <= 0:
            raise UserError(f"{self.name}: lr_multiplier={lr_multiplier} must be positive")
        self.lr_multiplier, self.weight_decay = lr_multiplier, weight_decay

    def build(self, input_shape):
        reg = keras.regularizers.L2(self.weight_decay / 2) if self.weight_decay else None
        self.raw = self.add_weight(name="raw_bias", shape=(int(input_shape[-1]),), initializer="zeros",
                                   regularizer=reg)

    @property
    def bias(self):
        """The bias the layer adds (float32 [channels])."""
        return ops.sqrt(float(self.lr_multiplier)) * self.raw

    def call(self, inputs):
        return inputs + ops.cast(float(self.lr_multiplier) ** 0.5 * self.raw, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "lr_multiplier": self.lr_multiplier, "weight_decay": self.weight_decay}


@keras.saving.register_keras_serializable(package="airbench")
class PartialIdentity(keras.initializers.Initializer):
    """Conv kernel [kh, kw, in, out] whose first min(in, out) filters are identities (dirac).

    Filter i < min(in, out) is 1 at its centre tap of input channel i and 0
    elsewhere, so those output channels start as copies of the input channels;
    the other filters are drawn from `rest`. airbench's `Conv.reset_parameters`
    (torch.nn.init.dirac_ on the first in_channels filters), after Page's and
    hlb-cifar10's identity initialisations.

    Args:
      rest: initializer of the other filters (default: PyTorch's conv default,
        uniform in +-1/sqrt(fan_in), which airbench keeps).
    """

    def __init__(self, rest=None):
        self.rest = keras.initializers.get(rest) if rest is not None else _torch_default()

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        kernel = np.array(self.rest(shape, dtype="float32"))
        n = min(cin, cout)
        kernel[..., :n] = 0.0
        kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"rest": keras.initializers.serialize(self.rest)}


def _torch_default():
    """PyTorch's default conv/linear initialisation: uniform in +-1/sqrt(fan_in)."""
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def _bn(name: str, momentum: float, bias_lr_multiplier: float, weight_decay: float):
    # epsilon 1e-5 (airbench: 1e-12) keeps the layer on TensorFlow's fused kernel;
    # the bias is a ScaledBias after it (center=False), for its learning-rate multiplier.
    norm = layers.BatchNormalization(momentum=momentum, epsilon=1e-5, scale=False, center=False, name=name)
    bias = ScaledBias(bias_lr_multiplier, weight_decay, name=f"{name}_bias")
    return lambda x: bias(norm(x))


def airbench(*, num_classes: int = 10, input_shape=(32, 32, 3), widths=(64, 256, 256),
             weight_decay: float = 0.0, batch_norm_momentum: float = 0.6, logit_scale: float = 1 / 9,
             bias_lr_multiplier: float = 64.0, identity_init: bool = True,
             name: str = "airbench") -> keras.Model:
    """airbench94's network (see the module docstring).

    Args:
      num_classes: output logits.
      input_shape: (height, width, channels) of normalised float images.
      widths: channels of the three blocks.
      weight_decay: L2 of weight_decay / 2 on the conv and dense kernels and the
        BatchNorm biases (airbench decays both; the whitening filters are frozen
        and not decayed).
      batch_norm_momentum: Keras momentum of the moving statistics (airbench's
        PyTorch momentum 0.4 is Keras's 0.6).
      logit_scale: factor of the classifier's output.
      bias_lr_multiplier: how much faster SGD moves the BatchNorm biases than
        the other weights (airbench's bias_scaler 64; see ScaledBias).
      identity_init: start each conv as a partial identity (PartialIdentity);
        False draws every filter from PyTorch's default.
      name: model name.

    Returns:
      keras.Model: float [batch, 32, 32, 3] -> logits [batch, num_classes]. Call
      `initialize_whitening(model, images)` before training.
    """
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    conv_init = PartialIdentity() if identity_init else _torch_default()
    inputs = keras.Input(input_shape, name="images")
    # Always float32: the filters of the smallest eigenvalues are large (~16) and their
    # outputs small, so in bfloat16 they drown in rounding (15-20% relative noise on
    # real CIFAR-10, BUILD_NOTES.md "Issue 16"); the layer is ~0.1% of the compute.
    x = PatchWhitening(name="whiten", dtype="float32")(inputs)  # [b, 31, 31, 24]
    x = layers.Activation("gelu", name="whiten_gelu")(x)
    for i, width in enumerate(widths):
        p = f"block{i + 1}"
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=conv_init,
                          kernel_regularizer=reg, name=f"{p}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"{p}_pool")(x)  # 31 -> 15 -> 7 -> 3
        x = _bn(f"{p}_bn1", batch_norm_momentum, bias_lr_multiplier, weight_decay)(x)
        x = layers.Activation("gelu", name=f"{p}_gelu1")(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=conv_init,
                          kernel_regularizer=reg, name=f"{p}_conv2")(x)
        x = _bn(f"{p}_bn2", batch_norm_momentum, bias_lr_multiplier, weight_decay)(x)
        x = layers.Activation("gelu", name=f"{p}_gelu2")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)  # airbench's MaxPool2d(3) over the last 3x3 map
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=_torch_default(),
                     kernel_regularizer=reg, name="logits")(x)
    outputs = layers.Rescaling(logit_scale, name="logit_scale")(x)
    return keras.Model(inputs, outputs, name=name)


def initialize_whitening(model: keras.Model, images: np.ndarray, eps: float | None = None) -> int:
    """Initialises every PatchWhitening layer of `model` from `images` (normalised float [n, h, w, c]).

    `eps`, when given, replaces each layer's eps (see PatchWhitening).

    Returns:
      The number of layers initialised (0 for a model without one).
    """
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, PatchWhitening):
            layer.initialize_from_images(images, eps)
            count += 1
    return count
