"""The Trainer's options, grouped: checkpoints, the non-finite guard, the kernels of the compiled step.

Each group is a frozen dataclass validated once, where it is built; errors
name the argument and the value.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from engine.errors import UserError

NONFINITE_ACTIONS = ("rollback", "stop")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Where a run's checkpoints come from (they go to the Trainer's model_dir).

    Attributes:
      every_steps: also checkpoint every this many steps (checkpoints are always
        written at each epoch end); None for epoch ends only.
      keep: how many recent checkpoints to keep, >= 1.
      best_metric: eval metric to keep the best checkpoint of, in
        `<model_dir>/best` (e.g. "eval_accuracy", "eval_loss"); None keeps none.
    """

    every_steps: int | None = None
    keep: int = 3
    best_metric: str | None = None

    def __post_init__(self):
        if self.every_steps is not None and self.every_steps < 1:
            raise UserError(f"checkpoint every_steps={self.every_steps} must be at least 1 (or None)")
        if self.keep < 1:
            raise UserError(f"checkpoint keep={self.keep} must be at least 1")


@dataclasses.dataclass(frozen=True)
class GuardOptions:
    """The non-finite guard: skip NaN/Inf updates, roll back after a streak of them, stop after a few rollbacks.

    Attributes:
      nonfinite_limit: a step whose loss or gradients are NaN/Inf on any replica
        is skipped on all of them and counted; after this many in a row,
        `action` applies. None turns the guard off (non-finite values then
        reach the weights; no checkpoint is ever written with them).
      action: "rollback" (restore the newest checkpoint with a lower learning
        rate, go on) or "stop" (raise NonFiniteError).
      rollback_lr_factor: learning-rate factor of each rollback, in (0, 1]; it
        compounds over the rollbacks of a run.
      max_rollbacks: rollbacks allowed over the run (saved with checkpoints);
        the next divergence raises NonFiniteError. None: no limit.
    """

    nonfinite_limit: int | None = 10
    action: str = "rollback"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int | None = 3

    def __post_init__(self):
        if self.nonfinite_limit is not None and self.nonfinite_limit < 1:
            raise UserError(f"nonfinite_limit={self.nonfinite_limit} must be at least 1 (or None)")
        if self.action not in NONFINITE_ACTIONS:
            raise UserError(f"guard action={self.action!r} must be one of {', '.join(NONFINITE_ACTIONS)}")
        if not 0 < self.rollback_lr_factor <= 1:
            raise UserError(f"rollback_lr_factor={self.rollback_lr_factor} must be in (0, 1]")
        if self.max_rollbacks is not None and self.max_rollbacks < 0:
            raise UserError(f"max_rollbacks={self.max_rollbacks} must be at least 0 (or None)")


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """How the compiled step computes (same results, other speed or statistics).

    Attributes:
      fused_batch_norm: run Keras BatchNormalization layers through TensorFlow's
        fused kernel in the compiled steps (engine/batch_norm.py; same results
        to float rounding). Keras 3 computes BatchNorm as separate ops; here the
        kernel makes a ResNet-20 step 1.36x faster in float32, 2x in bfloat16.
      sync_batch_norm: batch statistics over the global batch (all replicas),
        Keras's `synchronized=True` set while the steps are traced; such layers
        keep Keras's computation. Either way the moving statistics are averaged
        over the replicas after every step.
      jit_compile: compile each replica's forward-backward pass (and the eval
        forward pass) with XLA; the update, guard and metrics stay outside.
        Slower on this machine's CPU (BUILD_NOTES.md); measure on GPUs.
    """

    fused_batch_norm: bool = True
    sync_batch_norm: bool = False
    jit_compile: bool = False


@dataclasses.dataclass(frozen=True)
class LookaheadOptions:
    """Lookahead: slow weights that every k updates move toward the model's, which then restart from them.

    After every `every_steps`-th applied update (and the last one, `ramp_steps`,
    when given), every float weight of the model (trainable and BatchNorm
    statistics) follows

        slow <- slow + alpha_u * (weight - slow);   weight <- slow

    (Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step
    back", NeurIPS 2019). With `ramp_steps` = T, alpha_u = 1 - (1 - alpha) *
    min(u / T, 1)^3 at update u: no pull early on, alpha at the end (airbench94,
    Keller Jordan 2024: k = 5, alpha = 1 - 0.95^5 over the run's T updates, whose
    last update also syncs). The optimizer's own state (momentum) is left as is.

    Attributes:
      every_steps: k >= 1, updates between syncs.
      alpha: slow-weight step size in (0, 1]; 1 makes lookahead a no-op.
      ramp_steps: T >= 1 for airbench's cubic ramp of alpha over T updates;
        None for a constant alpha.
    """

    every_steps: int = 5
    alpha: float = 0.5
    ramp_steps: int | None = None

    def __post_init__(self):
        if self.every_steps < 1:
            raise UserError(f"lookahead every_steps={self.every_steps} must be at least 1")
        if not 0 < self.alpha <= 1:
            raise UserError(f"lookahead alpha={self.alpha} must be in (0, 1]")
        if self.ramp_steps is not None and self.ramp_steps < 1:
            raise UserError(f"lookahead ramp_steps={self.ramp_steps} must be at least 1 (or None)")

    def alpha_at(self, update: tf.Tensor) -> tf.Tensor:
        """alpha_u (float32 scalar) at update u (an integer scalar tensor)."""
        if self.ramp_steps is None:
            return tf.constant(self.alpha, tf.float32)
        frac = tf.minimum(tf.cast(update, tf.float32) / float(self.ramp_steps), 1.0)
        return 1.0 - (1.0 - self.alpha) * frac ** 3
