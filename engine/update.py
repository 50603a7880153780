"""The update a train step applies: `apply_gradients` and what it brings (a Trainer mixin).

Gradient accumulation, the non-finite guard agreed across replicas, the
LossScaleOptimizer's unscaling and overflow skip, Lookahead's slow weights and
the exponential moving average of the weights. Any custom `train_step` that
calls `apply_gradients` keeps all of them; engine/loops.py raises at the
first trace of a step that bypasses it while one of them is on.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from engine.errors import UserError


class UpdateMixin:
    """Trainer methods of the update; the state (accumulators, EMA pairs, counters) is the Trainer's."""

    def apply_gradients(self, gradients, variables, optimizer=None, *, loss=None) -> tf.Tensor:
        """Applies one replica's gradients with every feature of the engine; call it in train_step.

        It brings: gradient accumulation (accumulation_steps), the non-finite
        guard (a step whose loss or gradients are NaN/Inf on any replica is
        skipped on every replica and counted), and the LossScaleOptimizer's
        unscaling and overflow skip. The optimizer sums the gradients over the
        replicas.

        The moving average (ema_decay) and Lookahead's sync follow every update
        this applies, but they are not run here: the loop runs them
        (engine/loops.py, `_train_loop_fn`) once `strategy.run` of the step has
        returned, in the cross-replica context, when the optimizers' iteration
        count says an update was applied. Two reasons: the shadows must follow
        the weights after the replicas' BatchNorm statistics were averaged, which
        happens after train_step; and they are one copy per model, not per
        replica. A train_step that calls this gets both with no further code.

        Args:
          gradients: one per variable (None for a variable without one).
          variables: the variables to update.
          optimizer: None for the Trainer's optimizer (the first of a dict), a
            name of `optimizers`, or an optimizer object of them.
          loss: the scalar loss, checked by the guard with the gradients.

        Returns:
          bool scalar: whether this replica's loss and gradients were finite
          (True with the guard off), to mask its metrics.

        Raises:
          ValueError: at trace time, for an unknown optimizer, or accumulation of
            other variables than the model's trainable ones.
        """
        optimizer = self._optimizer_named(optimizer)
        self._apply_calls += 1
        gradients, variables = list(gradients), list(variables)
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        finite = tf.constant(True) if loss is None else tf.reduce_all(tf.math.is_finite(loss))
        due = None
        if self.state.accumulators:
            if optimizer is not self.optimizer or [id(v) for v in variables] != \
                    [id(v) for v in self.model.trainable_variables]:
                raise UserError("accumulation_steps > 1 accumulates the main optimizer's update of "
                                 "model.trainable_variables only; apply other updates without accumulation")
            for acc, g in zip(self.state.accumulators, gradients):
                if g is not None:
                    acc.assign_add(g)
            gradients = [acc.read_value() for acc in self.state.accumulators]
            due = tf.equal(self.state.step % self.accumulation_steps, self.accumulation_steps - 1)
        # With loss scaling, overflowing gradients are the LossScaleOptimizer's to skip
        # (it lowers its scale and skips the update).
        guard = self.nonfinite_limit is not None and not loss_scaled
        if guard:
            grads_finite = [tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None]
            finite = tf.logical_and(finite, tf.reduce_all(grads_finite))
        if due is None and not guard:
            self._apply(gradients, variables, optimizer)  # The optimizer sums gradients over replicas.
        else:
            self._apply_when(due, finite if guard else tf.constant(True), gradients, variables, optimizer)
        return finite if (guard or loss_scaled) else tf.constant(True)

    def _optimizer_named(self, optimizer) -> keras.optimizers.Optimizer:
        if optimizer is None:
            return self.optimizer
        if isinstance(optimizer, str):
            if optimizer not in self.optimizers:
                raise UserError(f"no optimizer {optimizer!r}; the Trainer has {', '.join(self.optimizers)}")
            return self.optimizers[optimizer]
        if not any(optimizer is o for o in self.optimizers.values()):
            raise UserError("apply_gradients was given an optimizer the Trainer does not hold; pass it to the "
                             "Trainer (optimizer={name: optimizer}) so it is built, checkpointed and scaled")
        return optimizer

    def _apply_when(self, due, finite: tf.Tensor, grads, variables, optimizer) -> None:
        """Applies the update on every replica when due (None: every step) and finite on every replica."""
        ctx = tf.distribute.get_replica_context()
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            # Collective strategies: agree through an all-reduce, branch per replica.
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))

            def update():
                tf.cond(bad == 0, lambda: self._apply(grads, variables, optimizer), self._skip)

            if due is None:
                update()
            else:
                tf.cond(due, update, lambda: None)
            return

        def cross_replica(distribution, finite, grads):
            # apply_gradients calls merge_call, which may not sit in a cond inside a
            # replica context; so the cond is taken here, as Keras's
            # LossScaleOptimizer does.
            all_finite = tf.reduce_all(tf.stack(distribution.experimental_local_results(finite)))

            def apply():
                distribution.extended.call_for_each_replica(self._apply, args=(grads, variables, optimizer))

            def update():
                tf.cond(all_finite, apply, self._skip)

            if due is None:
                update()
            else:
                tf.cond(due, update, lambda: None)

        ctx.merge_call(cross_replica, args=(finite, grads))

    def _apply(self, grads, variables, optimizer) -> None:
        optimizer.apply_gradients(zip(grads, variables))
        self.state.nonfinite_streak.assign(0)
        for acc in self.state.accumulators:
            acc.assign(tf.zeros_like(acc))

    def _update_ema(self) -> None:
        """Cross-replica context, after an applied update: shadow = decay * shadow + (1 - decay) * weight."""
        decay = self.ema_decay
        for weight, shadow in self.state.ema_pairs:
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(tf.convert_to_tensor(weight), shadow.dtype))

    def _update_lookahead(self) -> None:
        """Cross-replica context, after an applied update: Lookahead's sync when due (LookaheadOptions)."""
        options = self.lookahead
        update = self._updates_applied()
        due = tf.equal(update % options.every_steps, 0)
        if options.ramp_steps is not None:
            due = tf.logical_or(due, tf.equal(update, options.ramp_steps))

        def sync():
            alpha = options.alpha_at(update)
            for weight, slow in self.state.slow_pairs:
                value = tf.convert_to_tensor(weight)
                moved = slow + tf.cast(alpha, slow.dtype) * (tf.cast(value, slow.dtype) - slow)
                slow.assign(moved)
                weight.assign(tf.cast(moved, value.dtype))

        tf.cond(due, sync, lambda: None)

    def _skip(self) -> None:
        self.state.nonfinite_steps.assign_add(1)
        self.state.nonfinite_streak.assign_add(1)
        for acc in self.state.accumulators:
            acc.assign(tf.zeros_like(acc))

    def _updates_applied(self) -> tf.Tensor:
        """int64: updates applied by all optimizers so far (their iterations, summed)."""
        return tf.add_n([tf.identity(tf.convert_to_tensor(o.iterations, tf.int64))
                         for o in self.optimizers.values()])

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the model holds the moving averages (no-op without ema_decay)."""
        if not self.state.ema_pairs:
            yield
            return
        saved = [tf.identity(tf.convert_to_tensor(v)) for v, _ in self.state.ema_pairs]
        for v, shadow in self.state.ema_pairs:
            v.assign(tf.convert_to_tensor(shadow))
        try:
            yield
        finally:
            for (v, _), value in zip(self.state.ema_pairs, saved):
                v.assign(value)
