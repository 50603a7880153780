"""Learning-rate schedules counted in optimizer steps, set in epochs."""

from __future__ import annotations

from typing import Sequence

import keras


def piecewise_constant_by_epoch(
    base_learning_rate: float,
    boundaries: Sequence[float],
    multipliers: Sequence[float],
    steps_per_epoch: int,
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """The step schedule of the TF2 CIFAR-10 tutorial: base LR, times m_i from epoch b_i.

    The learning rate of optimizer step k (0-based) is base * multipliers[i] for the
    last i with k >= round(boundaries[i] * steps_per_epoch), and base before the
    first boundary. The schedule reads the optimizer's own step counter, so a
    restored checkpoint resumes with the right rate.

    Args:
      base_learning_rate: learning rate before the first boundary.
      boundaries: epochs (floats allowed: 1.5 is half-way through the second
        epoch), strictly increasing, > 0.
      multipliers: one factor of the base rate per boundary.
      steps_per_epoch: optimizer steps per epoch.

    Returns:
      A keras PiecewiseConstantDecay over step counts; the float base rate itself
      when there are no boundaries.

    Raises:
      ValueError: if the lengths differ, boundaries do not increase, or two
        boundaries fall on the same step.

    Reference: the TF2 CIFAR-10 tutorial (x0.1 at epoch 30, x0.01 at epoch 45 of 60).
    """
    boundaries, multipliers = list(boundaries), list(multipliers)
    if len(boundaries) != len(multipliers):
        raise ValueError(f"--lr_boundaries has {len(boundaries)} values but --lr_multipliers has "
                         f"{len(multipliers)}: give one multiplier per boundary")
    if any(b <= 0 for b in boundaries) or any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"--lr_boundaries={','.join(map(str, boundaries))} must be positive and increasing")
    if not boundaries:
        return base_learning_rate
    steps = [round(b * steps_per_epoch) for b in boundaries]
    if len(set(steps)) != len(steps) or steps and steps[0] < 1:
        raise ValueError(f"--lr_boundaries={','.join(map(str, boundaries))} fall on steps {steps} "
                         f"with {steps_per_epoch} steps per epoch; they must be distinct and >= 1")
    values = [base_learning_rate] + [base_learning_rate * m for m in multipliers]
    # PiecewiseConstantDecay switches to values[i+1] once step > boundaries[i], so
    # boundary step s becomes s - 1 for the new rate to start at step s.
    return keras.optimizers.schedules.PiecewiseConstantDecay([s - 1 for s in steps], values)


class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule times a scale held in a variable (lowered after a rollback).

    Args:
      schedule: the wrapped LearningRateSchedule.
      scale: scalar float32 tf.Variable; checkpoint it with the run so that a
        lowered learning rate survives a restart.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, scale):
        self.schedule = schedule
        self.scale = scale
        self.step = None  # A step variable to read instead of the optimizer's, if set.

    def __call__(self, step):
        return self.schedule(step if self.step is None else self.step) * self.scale

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "scale": float(self.scale.numpy())}
