"""Per-example losses the Trainer averages over the global batch."""

from __future__ import annotations

import tensorflow as tf

from engine.errors import UserError


def sparse_categorical_crossentropy(*, from_logits: bool = True, label_smoothing: float = 0.0):
    """Cross-entropy of integer labels, per example, with optional label smoothing.

    With smoothing e, the target of an example of class c over K classes is
    (1 - e) on c plus e / K on every class (Szegedy et al., "Rethinking the
    Inception Architecture", 2016, sec. 7). Keras's SparseCategoricalCrossentropy
    has no smoothing, so the labels are made one-hot here.

    Args:
      from_logits: outputs are logits (True) or probabilities.
      label_smoothing: e in [0, 1).

    Returns:
      loss(labels int [B] (or [B, 1]), outputs float [B, K]) -> float32 [B].

    Raises:
      ValueError: if label_smoothing is outside [0, 1).
    """
    if not 0 <= label_smoothing < 1:
        raise UserError(f"label_smoothing={label_smoothing} must be in [0, 1)")

    def loss(labels, outputs):
        outputs = tf.cast(outputs, tf.float32)
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        if label_smoothing == 0:
            if from_logits:
                return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs)
            return -tf.math.log(tf.clip_by_value(tf.gather(outputs, labels, batch_dims=1), 1e-7, 1.0))
        k = tf.shape(outputs)[-1]
        targets = tf.one_hot(labels, k) * (1.0 - label_smoothing) + label_smoothing / tf.cast(k, tf.float32)
        if from_logits:
            return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=outputs)
        return -tf.reduce_sum(targets * tf.math.log(tf.clip_by_value(outputs, 1e-7, 1.0)), axis=-1)

    return loss
