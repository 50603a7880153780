"""The step contract of the Trainer (a mixin): what one replica does in a train or eval step.

A task overrides `compute_loss` (its loss), `train_step` / `test_step` (a step of
its own: a GAN, a consistency loss) or `update_metrics` (metrics with other
arguments), and keeps the rest: `reduce_loss` averages per-example losses over the
global batch as Keras's compile(loss=...) does, and a custom `train_step` calls
`apply_gradients` (engine/update.py) for accumulation, the non-finite guard, loss
scaling, Lookahead and the EMA. Keras 3's trainer has the same shape
(train_step(data) unpacks (x, y, sample_weight) and calls compute_loss).
These methods run per replica, inside the compiled loops (engine/loops.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from engine import tta
from engine.errors import UserError


def _masked_weight(sample_weight, finite: tf.Tensor, y_pred) -> tf.Tensor:
    """Metric weights [batch]: the sample weights (or ones), zero when the step was not finite."""
    batch = tf.shape(tf.nest.flatten(y_pred)[0])[:1]
    weight = tf.cast(finite, tf.float32) * tf.ones(batch, tf.float32)
    if sample_weight is None:
        return weight
    sample_weight = tf.cast(sample_weight, tf.float32)
    return sample_weight * tf.reshape(weight, [-1] + [1] * (sample_weight.shape.rank - 1))


def _to_float32(outputs):
    """Mixed precision: losses and metrics see float32 outputs."""
    return tf.nest.map_structure(
        lambda o: tf.cast(o, tf.float32) if o.dtype.is_floating and o.dtype != tf.float32 else o, outputs)


class StepMixin:
    """Trainer methods of one replica's step; the state (model, metrics, losses, mode) is the Trainer's."""

    @property
    def metrics(self) -> dict[str, keras.metrics.Metric]:
        """The metrics of the step being traced: `train_metrics` in train_step, `eval_metrics` in test_step."""
        return self.eval_metrics if self._mode == "eval" else self.train_metrics

    def unpack(self, data) -> tuple:
        """Splits one dataset element into (x, y, sample_weight), missing parts None.

        An element may be `x` (a tensor or a dict of tensors), `(x,)`, `(x, y)` or
        `(x, y, sample_weight)`: the rules of `keras.utils.unpack_x_y_sample_weight`.
        """
        if isinstance(data, list):
            data = tuple(data)
        return keras.utils.unpack_x_y_sample_weight(data)

    def compute_loss(self, x, y, y_pred, sample_weight) -> tf.Tensor:
        """Per-example losses of one replica's batch; override for a task's own loss.

        The engine does the rest (`reduce_loss`): it averages the axes after the
        batch axis, weights by `sample_weight`, averages over the global batch
        and adds the model's regularisation losses, so a step's loss equals
        Keras's `compile(loss=...)` value (reduction "sum_over_batch_size").

        Args:
          x: the features; y: the targets (None for data without labels);
          y_pred: the model's outputs on x, float32; sample_weight: None or
            float weights [batch] (or of the losses' shape).

        Returns:
          float losses [batch, ...], not reduced over the batch. The default
          applies the constructor's `loss` (its `eval_loss` in test_step).
        """
        fn = self.eval_loss if self._mode == "eval" else self.loss
        if fn is None:
            raise NotImplementedError(f"{type(self).__name__} has no loss: pass loss= to the Trainer or override "
                                      "compute_loss (or train_step)")
        return fn(y, y_pred)

    def reduce_loss(self, losses: tf.Tensor, sample_weight=None, y_pred=None, *, regularization=()) -> tf.Tensor:
        """The scalar to differentiate on one replica: gradients summed over replicas are the global batch's.

        Args:
          losses: per-example losses [batch, ...] (compute_loss's).
          sample_weight: None, or weights [batch] or of the losses' shape.
          y_pred: the outputs, to check that `losses` is led by their batch size.
          regularization: scalar losses of the model (`model.losses`), added once
            over all replicas.

        Returns:
          Scalar float32: sum(weights * mean over non-batch axes of losses) over
          the global batch (times accumulation_steps), plus the regularisation
          divided over the replicas (tf.nn.compute_average_loss and
          tf.nn.scale_regularization_loss).

        Raises:
          ValueError: at trace time, if `losses` is a scalar or not led by the batch size.
        """
        k = self.accumulation_steps
        loss = tf.nn.compute_average_loss(self._per_example(losses, sample_weight, y_pred),
                                          global_batch_size=self.global_batch_size * k)
        regularization = list(regularization)
        if regularization:
            reg = tf.cast(tf.add_n(regularization), tf.float32)
            loss += tf.nn.scale_regularization_loss(reg) / k
        return loss

    @staticmethod
    def _per_example(losses, sample_weight=None, y_pred=None) -> tf.Tensor:
        """float32 [batch]: the weighted losses averaged over the axes after the batch axis."""
        losses = tf.cast(losses, tf.float32)
        if losses.shape.rank == 0:
            raise UserError(f"compute_loss returned a scalar (shape {losses.shape}); return per-example losses "
                             "[batch, ...] and let the Trainer average them over the global batch")
        reference = tf.nest.flatten(y_pred)[0] if y_pred is not None else None
        if reference is not None and reference.shape.rank:
            message = (f"compute_loss returned losses of shape {losses.shape}, not led by the batch size "
                       f"{reference.shape[0]} of the outputs (shape {reference.shape})")
            if losses.shape[0] is not None and reference.shape[0] is not None:
                if losses.shape[0] != reference.shape[0]:
                    raise UserError(message)
            else:  # A batch size known only when the step runs (e.g. a partial last batch).
                tf.debugging.assert_equal(tf.shape(losses)[0], tf.shape(reference)[0], message=message)
        if sample_weight is not None:
            weight = tf.cast(sample_weight, tf.float32)
            while weight.shape.rank > losses.shape.rank and weight.shape[-1] == 1:
                weight = tf.squeeze(weight, -1)  # [batch, 1] weights of [batch] losses
            while weight.shape.rank < losses.shape.rank:
                weight = weight[..., tf.newaxis]  # [batch] weights of [batch, h, w] losses
            losses = losses * weight
        if losses.shape.rank > 1:
            losses = tf.reduce_mean(losses, axis=list(range(1, losses.shape.rank)))  # [batch]
        return losses

    def forward_backward(self, x, y, sample_weight):
        """The model's pass and its gradients on one replica: (loss, losses, y_pred, gradients).

        `loss` is reduce_loss's scalar, `losses` compute_loss's per-example
        losses, y_pred float32, the gradients those of model.trainable_variables.
        XLA-compiled with jit_compile.
        """
        with tf.GradientTape() as tape:
            y_pred = _to_float32(self.model(x, training=True))
            losses = self.compute_loss(x, y, y_pred, sample_weight)
            loss = self.reduce_loss(losses, sample_weight, y_pred, regularization=self.model.losses)
            # float16: the LossScaleOptimizer scales the loss up (on the tape) and its gradients back down.
            scaled = self.optimizer.scale_loss(loss)
        return loss, losses, y_pred, tape.gradient(scaled, self.model.trainable_variables)

    def train_step(self, data) -> None:
        """One replica's training step; the reference a custom step follows.

        A custom step (a GAN, a consistency loss) computes its gradients and calls
        `apply_gradients`, which brings accumulation, the non-finite guard, loss
        scaling and the weights' moving average with it, then `record_loss` and
        `update_metrics` for what the progress bar and summaries show.
        """
        x, y, sample_weight = self.unpack(data)
        loss, losses, y_pred, gradients = self._gradients(x, y, sample_weight)
        finite = self.apply_gradients(gradients, self.model.trainable_variables, loss=loss)
        # A skipped (non-finite) step leaves the metrics alone, so one NaN does not poison the epoch.
        self.record_loss(losses, sample_weight, y_pred, finite=finite)
        y_pred = tf.nest.map_structure(lambda o: tf.where(finite, o, tf.zeros_like(o)), y_pred)
        self.update_metrics(x, y, y_pred, _masked_weight(sample_weight, finite, y_pred))

    def test_step(self, data) -> None:
        """One replica's evaluation step: the loss and metrics of the model in inference mode."""
        x, y, sample_weight = self.unpack(data)
        y_pred = self._infer(x)
        self.record_loss(self.compute_loss(x, y, y_pred, sample_weight), sample_weight, y_pred)
        self.update_metrics(x, y, y_pred, sample_weight)

    def update_metrics(self, x, y, y_pred, sample_weight) -> None:
        """Updates the task's metrics (all of `self.metrics` but "loss") with one replica's batch.

        The default calls `metric.update_state(y, y_pred, sample_weight)` for each;
        a task whose metrics need other arguments overrides it. In train_step
        the weights are zero for a step the non-finite guard skipped.
        """
        for name, metric in self.metrics.items():
            if name != "loss":
                metric.update_state(y, y_pred, sample_weight=sample_weight)

    def record_loss(self, losses, sample_weight=None, y_pred=None, *, finite=None) -> None:
        """Adds per-example losses to the "loss" metric (the weighted mean over examples, as Keras reports).

        Args:
          losses: per-example losses [batch, ...]; sample_weight, y_pred: as for reduce_loss.
          finite: a bool scalar from apply_gradients; False leaves the metric as it was.
        """
        per_example = self._per_example(losses, sample_weight, y_pred)
        weight = None
        if finite is not None:
            per_example = tf.where(finite, per_example, tf.zeros_like(per_example))
            weight = tf.cast(finite, tf.float32) * tf.ones_like(per_example)
        self.metrics["loss"].update_state(per_example, sample_weight=weight)

    def _infer_fn(self, x):
        return tta.augmented_predictions(lambda images: _to_float32(self.model(images, training=False)), x,
                                         self.test_time_augmentation)
