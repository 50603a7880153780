"""Keeping the replicas' copies of a model's non-trainable state equal.

Keras 3 creates the variables a layer updates in `call` (BatchNormalization's
`moving_mean` and `moving_variance`, any `add_weight(trainable=False)` that the
layer `assign`s) with aggregation "none". Under MirroredStrategy and
MultiWorkerMirroredStrategy such a variable is a MirroredVariable with one copy
per replica, and an `assign` in a replica context updates that replica's copy
alone: the copies drift apart (measured: up to 0.0022 after 8 steps on 2
replicas, 0.22 with different data per replica), while a checkpoint saves the
first replica's copy only, so evaluation in process and evaluation of the
restored checkpoint disagree. tf.keras 2 created BatchNorm's statistics with
aggregation MEAN, which averages each update over the replicas.

`average(variables)` does that once per step, after the step's updates: one
batched all-reduce of the variables' values, then each replica assigns the mean.
For the updates these variables get (moving averages, counters: affine in the
variable's old value, which is equal on every replica before the step) the mean
of the updated copies equals the mean of the updates, i.e. aggregation MEAN.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def local_state(model: keras.Model, strategy: tf.distribute.Strategy) -> list[keras.Variable]:
    """The float variables of `model` that each replica updates on its own copy.

    Those of `updated_state` for which tf.distribute keeps one copy per replica
    that an assign in a replica context updates alone (synchronization ON_WRITE
    or AUTO, aggregation NONE).

    Args:
      model: a Keras model whose variables exist (built).
      strategy: the strategy the model's variables were created under.

    Returns:
      The variables, each once, in model order; [] with one replica in sync or
      under parameter-server training (one copy on the ps tasks).
    """
    if strategy.num_replicas_in_sync <= 1 or \
            isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return []
    return [v for v in updated_state(model) if isinstance(_tf_variable(v), tf.distribute.DistributedValues)]


def updated_state(model: keras.Model) -> list[keras.Variable]:
    """The float variables a trainable layer of `model` may update in `call`.

    Those its layers created with `trainable=False` (BatchNormalization's moving
    statistics, counters), for the layers that are trainable (a frozen layer,
    e.g. a BatchNormalization of a frozen backbone, runs in inference mode),
    whose assign in a replica context writes that replica's copy alone: plain
    variables, and distributed ones with aggregation NONE (Keras's default)
    that are not ON_READ. Variables a user created with another aggregation
    are tf.distribute's to combine.

    Args:
      model: a Keras model whose variables exist (built).

    Returns:
      The variables, each once, in model order.
    """
    seen, found = set(), []
    for layer in model._flatten_layers(include_self=True):
        if not layer.trainable:
            continue
        for v in layer._non_trainable_variables:
            if id(v) in seen or not tf.as_dtype(v.dtype).is_floating:
                continue
            tf_var = _tf_variable(v)
            if isinstance(tf_var, tf.distribute.DistributedValues) and (
                    tf_var.aggregation != tf.VariableAggregation.NONE
                    or tf_var.synchronization == tf.VariableSynchronization.ON_READ):
                continue
            seen.add(id(v))
            found.append(v)
    return found


def keep_finite(variables: list[keras.Variable], before: list[tf.Tensor]) -> None:
    """Puts back the values `before` if any of `variables` became NaN or Inf (per replica).

    A step whose activations overflow feeds NaN/Inf batch statistics into
    BatchNorm's moving averages; the non-finite guard skips the step's weight
    update, and this keeps its state update out too, so no later evaluation or
    checkpoint inherits it. One check over all of them (a concatenation).

    Args:
      variables: from `updated_state`.
      before: their values read before the step, in the same order.
    """
    if not variables:
        return
    finite = tf.reduce_all(tf.math.is_finite(
        tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0)))

    def put_back():
        for v, value in zip(variables, before):
            v.assign(value)
        return tf.constant(True)

    tf.cond(finite, lambda: tf.constant(False), put_back)


def average(variables: list[keras.Variable]) -> None:
    """In a replica context: sets each replica's copy of `variables` to their mean over replicas.

    The variables are flattened into one float32 vector and all-reduced once (one
    collective per step, whatever the number of layers), then split back. Reads
    come after the step's updates of the same variables: stateful ops on one
    resource keep program order inside a tf.function.

    Args:
      variables: from `local_state`; nothing happens for [].
    """
    if not variables:
        return
    ctx = tf.distribute.get_replica_context()
    # Placed on the replica's device: with merge_call (MultiWorkerMirroredStrategy on
    # CPUs), the all-reduce sends the value back to the device it names.
    with tf.device(_tf_variable(variables[0]).device):
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0)  # [total size]
    mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, flat)
    sizes = [int(np.prod(v.shape)) for v in variables]
    for v, part in zip(variables, tf.split(mean, sizes)):
        v.assign(tf.cast(tf.reshape(part, v.shape), v.dtype))


def _tf_variable(v) -> tf.Variable:
    """The tf.Variable (possibly distributed) inside a Keras variable, or `v` itself."""
    return v.value if isinstance(v, keras.Variable) else v
