"""Fused batch normalization for the Keras BatchNormalization layers of a model.

Keras 3's `BatchNormalization` on the TensorFlow backend computes the batch
moments and the normalisation as separate ops (mean, squared difference, mean,
rsqrt, multiply, add, and their gradients), each one pass over the activation.
tf.keras 2 called TensorFlow's fused kernel (FusedBatchNormV3, `fused=True` by
default), which does the forward pass in one op and the backward pass in one
more. On this machine's CPU, routing ResNet-20's 19 BatchNorm layers through the
fused kernel raises a training step from ~505 to ~705 examples/s (BUILD_NOTES.md,
"Fused BatchNorm").

`fused(model)` is a context manager that, while open, routes each eligible
BatchNormalization layer of `model` through the fused kernel; the Trainer opens
it around the tracing of its compiled steps, so the graphs it builds use the
kernel while the model's own `call` (in `predict`, `fit`, SavedModel export) is
left as Keras wrote it. The result is the Keras layer's, to float rounding:

  * training (training=True and layer.trainable): normalise with the batch's
    mean and biased variance; moving_mean and moving_variance are updated with
    Keras's rule, `moving = moving * momentum + batch * (1 - momentum)`, with
    the *biased* batch variance as Keras uses (the kernel returns the unbiased
    one, n / (n - 1) times larger, which tf.keras 2 used; it is scaled back);
  * inference (training=False, or a frozen layer): normalise with the moving
    statistics.

With float16/bfloat16 inputs the kernel computes the statistics in float32, as
Keras does after casting, and returns the input's precision.

A layer keeps the Keras computation where the kernel does not give the same
result or cannot run: a subclass that overrides `call`, `synchronized=True`
(cross-replica moments), `renorm=True`, a normalised axis other than the last,
epsilon below cuDNN's floor of 1e-5 (cuDNN would raise it silently),
float64 inputs, and any call with a mask.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import keras
import tensorflow as tf

# On GPU the kernel is cuDNN's, which raises a smaller epsilon to
# CUDNN_BN_MIN_EPSILON = 1e-5; 1e-5 itself (2.5e-13 below it as float32) is served.
_MIN_EPSILON = 1e-5
_KERAS_CALL = keras.layers.BatchNormalization.call
_open: dict[int, int] = {}  # id(layer) -> how many open contexts route it.


def ineligible_reason(layer: keras.layers.Layer) -> str | None:
    """Why `layer` keeps the Keras computation under `fused`, or None if it is routed.

    A layer not built yet is routed if its settings allow; its input rank is
    checked when it is called (and the call falls back to Keras if need be).

    Args:
      layer: any Keras layer.

    Returns:
      None for a BatchNormalization layer the fused kernel serves; otherwise a
      short reason ("not BatchNormalization", "renorm", ...).
    """
    if not isinstance(layer, keras.layers.BatchNormalization):
        return "not BatchNormalization"
    if type(layer).call is not _KERAS_CALL:
        return f"{type(layer).__name__} overrides call"
    if layer.synchronized:
        return "synchronized"
    if layer.renorm:
        return "renorm"
    if layer.epsilon < _MIN_EPSILON:
        return f"epsilon {layer.epsilon} < {_MIN_EPSILON}"
    if layer.built:
        rank = layer.input_spec.ndim if layer.input_spec is not None else None
        if rank is not None and _axis_reason(layer, rank):
            return _axis_reason(layer, rank)
        if layer.moving_mean.dtype != "float32":
            return f"{layer.moving_mean.dtype} statistics"
    return None


def _axis_reason(layer: keras.layers.BatchNormalization, rank: int | None) -> str | None:
    if rank is None or rank < 2 or layer.axis % rank != rank - 1:
        return f"normalises axis {layer.axis} of rank-{rank} inputs, not the last"
    return None


@contextlib.contextmanager
def fused(model: keras.layers.Layer) -> Iterator[list[keras.layers.Layer]]:
    """Routes the eligible BatchNormalization layers of `model` through the fused kernel.

    Use around the first call (the tracing) of a tf.function that runs the
    model; the graph keeps the kernel after the context closes. Contexts nest
    (a loop function traced inside another is fine) and are visible to all
    threads, as MirroredStrategy traces each replica in its own thread.

    Args:
      model: a built Keras model or layer; its nested layers are searched.

    Yields:
      The layers routed through the kernel (possibly none).
    """
    routed = [layer for layer in model._flatten_layers(include_self=True) if ineligible_reason(layer) is None]
    for layer in routed:
        count = _open.get(id(layer), 0)
        if not count:
            # An instance attribute shadows the class's call for this layer only.
            object.__setattr__(layer, "call", types.MethodType(_fused_call, layer))
        _open[id(layer)] = count + 1
    try:
        yield routed
    finally:
        for layer in routed:
            _open[id(layer)] -= 1
            if not _open[id(layer)]:
                del _open[id(layer)]
                object.__delattr__(layer, "call")


@contextlib.contextmanager
def synchronized(model: keras.layers.Layer) -> Iterator[list[keras.layers.Layer]]:
    """Sets `synchronized=True` on the BatchNormalization layers of `model` while open.

    Keras's synchronized BatchNormalization computes the batch mean and variance
    over the global batch (an all-reduce of the per-replica sums in each
    training call) instead of each replica's share; with one replica it changes
    nothing. Open it around the tracing of a tf.function, like `fused`; the
    layers' setting is put back when it closes, so the model's config and its
    own calls elsewhere are unchanged.

    Reference: Peng et al., "MegDet: A Large Mini-Batch Object Detector", 2018
    (cross-GPU batch normalization); Keras `BatchNormalization(synchronized=True)`.

    Args:
      model: a Keras model or layer; its nested layers are searched.

    Yields:
      The layers switched (those not synchronized already).
    """
    switched = [layer for layer in model._flatten_layers(include_self=True)
                if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized]
    for layer in switched:
        layer.synchronized = True
    try:
        yield switched
    finally:
        for layer in switched:
            layer.synchronized = False


def _fused_call(layer: keras.layers.BatchNormalization, inputs, training=None, mask=None):
    """BatchNormalization.call through FusedBatchNormV3; Keras's own call where it cannot serve."""
    inputs = tf.convert_to_tensor(inputs)
    if (mask is not None or inputs.dtype == tf.float64 or _axis_reason(layer, inputs.shape.rank)
            or layer.moving_mean.dtype != "float32"):
        return _KERAS_CALL(layer, inputs, training=training, mask=mask)
    # Keras casts float16/bfloat16 inputs to float32 (the statistics overflow in half
    # precision); the kernel takes them as they are and computes in float32 itself,
    # which saves two casts per layer (bfloat16 ResNet-20 steps 2x faster here).
    x = inputs if inputs.dtype in (tf.float16, tf.bfloat16) else tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    if x.shape.rank != 4:  # The kernel takes NHWC; any other rank is folded into it.
        x = tf.reshape(x, [-1, 1, 1, channels])  # [examples * positions, 1, 1, channels]
    scale = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels], tf.float32)
    offset = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels], tf.float32)
    if training and layer.trainable:
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, epsilon=layer.epsilon, is_training=True)[:3]
        # The kernel's variance is unbiased (divides by n - 1, or 1 when n = 1);
        # Keras averages the biased one into moving_variance.
        n = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * (tf.maximum(n - 1.0, 1.0) / n)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    else:
        y = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean=tf.convert_to_tensor(layer.moving_mean),
            variance=tf.convert_to_tensor(layer.moving_variance), epsilon=layer.epsilon, is_training=False)[0]
    if inputs.shape.rank != 4:
        y = tf.reshape(y, tf.shape(inputs))  # back to the input's shape
    return tf.cast(y, layer.compute_dtype)
