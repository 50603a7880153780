"""The eager half of the non-finite guard: finite checkpoints, rollbacks with a compounding rate, a limit.

The compiled step skips an update whose loss or gradients are NaN/Inf on any
replica (Trainer.apply_gradients) and counts the skips in a row. Between loops
this class decides what follows: after `nonfinite_limit` skips in a row, or when
a variable to be saved is NaN/Inf, the run stops or rolls back to the newest
checkpoint with a lower learning rate; after `max_rollbacks` rollbacks it stops.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from engine.progress import EpochProgress
from engine.schedules import ScaledSchedule


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses, gradients or weights and cannot go on."""


class NonFiniteGuard:
    """Finite-state checks and rollbacks for one Trainer (`trainer.guard`).

    Args:
      trainer: the engine.Trainer it serves; its counters (streak, total,
        rollbacks, learning-rate scale) live there and are checkpointed with it.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self._all_finite = None

    def rollback(self, step: int, where: str) -> int:
        """After a divergence (`where` says what and at which step): stop, or roll back and lower the LR.

        A rollback restores the newest checkpoint (every checkpoint is finite:
        `_save` refuses others) and sets the learning-rate scale to the one the
        run had when it diverged times `rollback_lr_factor`, so the factor
        compounds across rollbacks instead of restarting from the checkpoint's
        scale. The rollback count is kept the same way and saved with later
        checkpoints.

        Returns:
          The step the run goes on from.

        Raises:
          NonFiniteError: with nonfinite_action="stop", without a checkpoint to
            go back to, or after `max_rollbacks` rollbacks.
        """
        t = self.trainer
        latest = t.checkpointer.latest if t.checkpointer else None
        if t.nonfinite_action == "stop" or t.nonfinite_limit is None:
            raise NonFiniteError(f"training diverged: {where}; stopped (last checkpoint: {latest or 'none'})")
        if not latest:
            raise NonFiniteError(f"training diverged: {where}, and there is no checkpoint to roll back to "
                                 "(give a model_dir)")
        done = int(t.state.rollbacks.numpy())
        if t.max_rollbacks is not None and done >= t.max_rollbacks:
            raise NonFiniteError(
                f"training diverged: {where}, after {done} rollback(s) that each lowered the learning rate "
                f"(now {t.learning_rate:.4g}, {t.learning_rate_scale:g} x the schedule); the newest "
                f"checkpoint, {latest}, is finite. Try a lower learning rate, gradient clipping or a warm-up")
        scale, total = t.learning_rate_scale, t.nonfinite_steps
        rates = {name: float(np.asarray(o.learning_rate)) for name, o in t.optimizers.items()}
        path = t.checkpointer.restore_latest()
        if not self.state_finite():  # Written before checkpoints were checked.
            raise NonFiniteError(f"training diverged: {where}, and checkpoint {path} holds NaN/Inf values; "
                                 "remove it to roll back further")
        t.state.lr_scale.assign(scale)
        for name, opt in t.optimizers.items():
            if not isinstance(opt._learning_rate, ScaledSchedule):
                opt.learning_rate = rates[name]  # The checkpoint restored its own rate.
        t.scale_learning_rate(t.rollback_lr_factor)
        t.state.rollbacks.assign(done + 1)
        t.state.nonfinite_steps.assign(total)  # The count covers the whole run, rollbacks included.
        t.state.nonfinite_streak.assign(0)
        if t.is_chief:
            limit = f" of {t.max_rollbacks}" if t.max_rollbacks is not None else ""
            EpochProgress.write(f"{where}: rollback {done + 1}{limit} to {path} (step {t.global_step}), "
                                f"learning rate now {t.learning_rate:.4g}")
        return t.global_step

    def in_streak(self) -> bool:
        """Whether the latest steps were skipped as non-finite (the guard is on)."""
        t = self.trainer
        return t.nonfinite_limit is not None and int(t.state.nonfinite_streak.numpy()) > 0

    def checkpointed_floats(self) -> list[tf.Variable]:
        """The float variables a checkpoint holds: the model's, the optimizers' and the run state's (engine/state.py)."""
        t = self.trainer
        found, seen = [], set()
        for v in [*t.model.variables, *(v for o in t.optimizers.values() for v in o.variables),
                  *t.state.float_variables()]:
            v = v.value if isinstance(v, keras.Variable) else v  # The tf.Variable inside a Keras variable.
            if id(v) not in seen and v.dtype.is_floating:
                seen.add(id(v))
                found.append(v)
        return found

    def state_finite(self) -> bool:
        """Whether every float variable that a checkpoint would hold is finite (one compiled pass)."""
        variables = self.checkpointed_floats()
        if not variables:
            return True
        if self._all_finite is None:
            self._all_finite = tf.function(
                lambda vs: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in vs])))
        return bool(self._all_finite(variables))

    def describe(self, step: int) -> str:
        """Says which variables are NaN/Inf at `step` (the first three)."""
        bad = [v.name for v in self.checkpointed_floats() if not np.all(np.isfinite(np.asarray(v.numpy())))]
        return f"NaN/Inf in {len(bad)} variable(s) ({', '.join(bad[:3])}) at step {step}"
