"""Optimizers by name, with decoupled weight decay, global-norm clipping and mixed precision.

Keras 3's optimizers are used as they are (they are well kept; the loop is ours),
except that SGD's per-variable update runs as one fused kernel (`SGD` below).
Decoupled weight decay is their `weight_decay` argument, which subtracts
learning_rate x weight_decay x variable after each update (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", 2019), and clipping by global norm is
their `global_clipnorm` (Pascanu et al. 2013). Gradient accumulation and the
weight average are the Trainer's (accumulation_steps, ema_decay), because they
must be right under distribution and in checkpoints.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from engine.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "nadam")
PRECISIONS = ("float32", "bfloat16", "float16")


def build_optimizer(
    name: str,
    learning_rate,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float | None = None,
    clip_norm: float | None = None,
    loss_scale: bool = False,
    exclude_from_weight_decay: tuple[str, ...] = ("bias", "gamma", "beta"),
) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name. Build it under strategy.scope().

    Args:
      name: "sgd" (momentum, optionally Nesterov), "adam", "adamw", "rmsprop"
        (momentum as its momentum), or "nadam".
      learning_rate: float, or a LearningRateSchedule of optimizer steps.
      momentum: SGD/RMSprop momentum in [0, 1).
      nesterov: SGD with Nesterov momentum (Sutskever et al. 2013).
      weight_decay: decoupled weight decay per step (times the learning rate);
        None or 0 for none. "adamw" is Adam with it (default 0.004 when None, the
        Keras default). Variables whose names contain an `exclude_from_weight_decay`
        part (biases, BatchNorm) are not decayed.
      clip_norm: clip the gradients so their global L2 norm is at most this; None
        for no clipping.
      loss_scale: wrap in keras.optimizers.LossScaleOptimizer (float16 training).

    Raises:
      ValueError: on an unknown name or an out-of-range value, naming the flag.
    """
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")
    if not 0 <= momentum < 1:
        raise UserError(f"momentum={momentum} must be in [0, 1)")
    if clip_norm is not None and clip_norm <= 0:
        raise UserError(f"clip_norm={clip_norm} must be positive")
    if weight_decay is not None and weight_decay < 0:
        raise UserError(f"decoupled_weight_decay={weight_decay} must not be negative")
    if nesterov and name != "sgd":
        raise UserError(f"nesterov applies to optimizer=sgd, not {name}")
    common = dict(learning_rate=learning_rate, global_clipnorm=clip_norm)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=0.004 if weight_decay is None else weight_decay, **common)
    else:
        common["weight_decay"] = weight_decay or None
        if name == "sgd":
            optimizer = SGD(momentum=momentum, nesterov=nesterov, **common)
        elif name == "adam":
            optimizer = keras.optimizers.Adam(**common)
        elif name == "rmsprop":
            optimizer = keras.optimizers.RMSprop(momentum=momentum, **common)
        else:
            optimizer = keras.optimizers.Nadam(**common)
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(exclude_from_weight_decay))
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer


@keras.saving.register_keras_serializable(package="engine")
class SGD(keras.optimizers.SGD):
    """Keras's SGD (momentum, Nesterov) with each variable's update in one fused kernel.

    Keras 3 computes SGD's update with separate ops per variable (read, two
    multiplies, a subtraction, two assignments: about 9 ops, 598 for ResNet-20's
    65 variables); TensorFlow's ResourceApplyKerasMomentum and
    ResourceApplyGradientDescent kernels compute the same update in one op:
    accum = momentum * accum - lr * grad; var += accum (Nesterov: var +=
    momentum * accum - lr * grad), Keras's own formula. Everything around the
    update stays Keras's: the sum of gradients over replicas, clipping, decoupled
    weight decay, its iterations and its checkpointed momentum slots (a checkpoint
    of keras.optimizers.SGD restores into it and back). Sparse gradients
    (tf.IndexedSlices), non-float32 variables and variables without a resource
    handle take Keras's own update.

    Same arguments as keras.optimizers.SGD. Results equal Keras's to float32
    rounding (the kernel may fuse a multiply-add), not bit for bit.
    """

    def update_step(self, gradient, variable, learning_rate):
        handle = _handle(variable)
        if handle is None or isinstance(gradient, tf.IndexedSlices) or tf.as_dtype(variable.dtype) != tf.float32:
            return super().update_step(gradient, variable, learning_rate)
        lr = tf.cast(learning_rate, tf.float32)
        gradient = tf.cast(gradient, tf.float32)
        if self.momentum == 0:
            tf.raw_ops.ResourceApplyGradientDescent(var=handle, alpha=lr, delta=gradient)
            return
        momentum = self.momentums[self._get_variable_index(variable)]  # created like `variable`: a handle too
        tf.raw_ops.ResourceApplyKerasMomentum(var=handle, accum=_handle(momentum), lr=lr, grad=gradient,
                                              momentum=tf.constant(self.momentum, tf.float32),
                                              use_nesterov=bool(self.nesterov))


def _handle(variable) -> tf.Tensor | None:
    """The resource handle of a Keras or tf.Variable (this device's copy under a strategy's update).

    None for a variable without one (e.g. a ShardedVariable of a parameter-server
    partitioner), which then takes Keras's own update.
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return getattr(variable, "handle", None)


def set_precision(precision: str) -> None:
    """Sets Keras's global dtype policy before models are built.

    "float32"; "bfloat16" -> mixed_bfloat16 (bfloat16 compute, float32 weights;
    CPUs with AMX/AVX512-BF16 and TPUs); "float16" -> mixed_float16 (GPUs; pair
    with build_optimizer(loss_scale=True)).

    Raises:
      ValueError: on another name.
    """
    policies = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    if precision not in policies:
        raise UserError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_dtype_policy(policies[precision])
