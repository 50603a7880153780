"""Learning-rate schedules counted in optimizer steps, set in epochs."""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from engine.errors import UserError

SCHEDULES = ("piecewise", "constant", "cosine", "onecycle", "triangle")


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
        raise UserError(f"lr_boundaries has {len(boundaries)} values but lr_multipliers has "
                         f"{len(multipliers)}: give one multiplier per boundary")
    if any(b <= 0 for b in boundaries) or any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise UserError(f"lr_boundaries={','.join(map(str, boundaries))} must be positive and increasing")
    if not boundaries:
        return base_learning_rate
    steps = [round(b * steps_per_epoch) for b in boundaries]
    if len(set(steps)) != len(steps) or steps and steps[0] < 1:
        raise UserError(f"lr_boundaries={','.join(map(str, boundaries))} fall on steps {steps} "
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


class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """A constant learning rate, as a schedule (so warm-up and plateau scaling apply)."""

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        del step
        return tf.constant(self.learning_rate, tf.float32)

    def get_config(self):
        return {"learning_rate": self.learning_rate}


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up into another schedule (Goyal et al., "Accurate, Large Minibatch SGD", 2017).

    Step k < warmup_steps has rate schedule(warmup_steps) x (k + 1) / warmup_steps;
    from warmup_steps on, schedule(k).

    Args:
      schedule: the schedule after warm-up (a LearningRateSchedule).
      warmup_steps: optimizer steps of warm-up, >= 1.
    """

    def __init__(self, schedule, warmup_steps: int):
        if warmup_steps < 1:
            raise UserError(f"warm-up of {warmup_steps} steps must be at least 1 step")
        self.schedule, self.warmup_steps = schedule, int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.cast(self.schedule(self.warmup_steps), tf.float32)
        warm = peak * (step + 1.0) / self.warmup_steps
        return tf.where(step < self.warmup_steps, warm, tf.cast(self.schedule(step), tf.float32))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "warmup_steps": self.warmup_steps}


class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear up, then linear down to exactly 0 at the last step (airbench's triangular schedule).

    From start_factor x peak at step 0 up to the peak at pct_start x total_steps,
    then straight down to 0 at total_steps (Keller Jordan's airbench94, 2024:
    0.2 -> 1 over the first 20% of the steps -> 0; Smith's triangular policy).

    Args:
      peak: the highest rate.
      total_steps: optimizer steps of the whole run (the rate is 0 from there on).
      pct_start: fraction of the steps spent rising, in (0, 1).
      start_factor: the first step's rate as a fraction of the peak.
    """

    def __init__(self, peak: float, total_steps: int, pct_start: float = 0.2, start_factor: float = 0.2):
        if total_steps < 2:
            raise UserError(f"triangle schedule over {total_steps} steps: need at least 2")
        if not 0 < pct_start < 1:
            raise UserError(f"triangle pct_start={pct_start} must be in (0, 1)")
        self.peak, self.total_steps = float(peak), int(total_steps)
        self.pct_start, self.start_factor = pct_start, start_factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rise = max(1.0, round(self.pct_start * self.total_steps))
        up = self.peak * (self.start_factor + (1.0 - self.start_factor) * step / rise)
        down = self.peak * tf.maximum(0.0, (self.total_steps - step) / (self.total_steps - rise))
        return tf.where(step < rise, up, down)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "start_factor": self.start_factor}


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle policy (Smith & Topin, "Super-Convergence", 2018), cosine-annealed.

    From max/div_factor up to max over the first pct_start of total_steps, then
    down to max/(div_factor x final_div_factor) at total_steps, both halves along a
    cosine (as torch.optim.lr_scheduler.OneCycleLR's default).

    Args:
      max_learning_rate: the peak rate.
      total_steps: optimizer steps of the whole run.
      pct_start: fraction of the steps spent rising, in (0, 1).
      div_factor: initial rate = max / div_factor.
      final_div_factor: final rate = initial / final_div_factor.
    """

    def __init__(self, max_learning_rate: float, total_steps: int, pct_start: float = 0.25,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        if total_steps < 2:
            raise UserError(f"one-cycle schedule over {total_steps} steps: need at least 2")
        if not 0 < pct_start < 1:
            raise UserError(f"one-cycle pct_start={pct_start} must be in (0, 1)")
        self.peak, self.total_steps, self.pct_start = float(max_learning_rate), int(total_steps), pct_start
        self.div_factor, self.final_div_factor = div_factor, final_div_factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rise = max(1.0, round(self.pct_start * self.total_steps))
        initial = self.peak / self.div_factor
        final = initial / self.final_div_factor

        def anneal(start, end, fraction):
            return end + (start - end) * 0.5 * (1.0 + tf.cos(math.pi * tf.clip_by_value(fraction, 0.0, 1.0)))

        up = anneal(initial, self.peak, step / rise)
        down = anneal(self.peak, final, (step - rise) / max(1.0, self.total_steps - rise))
        return tf.where(step < rise, up, down)

    def get_config(self):
        return {"max_learning_rate": self.peak, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}


def build_schedule(
    name: str,
    base_learning_rate: float,
    *,
    steps_per_epoch: int,
    total_steps: int,
    boundaries: Sequence[float] = (),
    multipliers: Sequence[float] = (),
    warmup_epochs: float = 0.0,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """A learning-rate schedule by name, counted in optimizer steps, set in epochs.

    Args:
      name: "piecewise" (piecewise_constant_by_epoch), "constant", "cosine" (to 0
        at total_steps), "onecycle" or "triangle" (peak = base_learning_rate; the
        triangle reaches 0 at total_steps).
      base_learning_rate: the base (piecewise, constant, cosine) or peak
        (onecycle) rate.
      steps_per_epoch: optimizer steps per epoch.
      total_steps: optimizer steps of the whole run.
      boundaries, multipliers: for "piecewise".
      warmup_epochs: linear warm-up over this many epochs first (not with
        onecycle, which rises by itself); 0 for none.

    Raises:
      ValueError: naming the flag of a bad value.
    """
    if name not in SCHEDULES:
        raise UserError(f"lr_schedule={name!r} is not one of {', '.join(SCHEDULES)}")
    if warmup_epochs < 0:
        raise UserError(f"warmup_epochs={warmup_epochs} must not be negative")
    if name == "piecewise":
        schedule = piecewise_constant_by_epoch(base_learning_rate, boundaries, multipliers, steps_per_epoch)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = Constant(schedule)
    elif name == "constant":
        schedule = Constant(base_learning_rate)
    elif name == "cosine":
        # Keras's own: linear warm-up from 0 to the base rate, then cosine decay to 0 at the
        # last step (Loshchilov & Hutter, SGDR, 2017; Goyal et al. 2017 for the warm-up).
        warmup_steps = round(warmup_epochs * steps_per_epoch)
        if warmup_steps >= total_steps:
            raise UserError(f"warmup_epochs={warmup_epochs:g} ({warmup_steps} steps) leaves none of the "
                             f"{total_steps} steps to decay")
        if not warmup_steps:
            return keras.optimizers.schedules.CosineDecay(base_learning_rate, total_steps, alpha=0.0)
        return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps, alpha=0.0,
                                                      warmup_target=base_learning_rate, warmup_steps=warmup_steps)
    else:
        if warmup_epochs:
            raise UserError(f"warmup_epochs does not apply to lr_schedule={name} (it warms up itself)")
        return (OneCycle if name == "onecycle" else Triangle)(base_learning_rate, total_steps)
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    return LinearWarmup(schedule, warmup_steps) if warmup_steps else schedule
