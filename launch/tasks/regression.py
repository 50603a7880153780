"""Regression: the seeds' linear model, y = 2x + 1.2, learned by a Trainer subclass.

    python -m launch.train --task=regression --model_dir=/tmp/regression --optimizer=rmsprop \
        --learning_rate=0.04 --batch_size=32 --epochs=20 --lr_boundaries= --lr_multipliers= --best_metric=

The TF2 examples' in-memory linear regression (x in [0, 10), y = 2x + 1.2, one
Dense unit, mean squared error, RMSprop): the kernel reaches 2.0 and the bias
1.2. Only the loss and the metrics differ from the Trainer's defaults.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from datasets import augment, in_memory
from engine import Trainer
from launch.config import NON_NEGATIVE, Section, setting
from launch.tasks.base import Task, TaskData
from engine.errors import UserError

SLOPE, INTERCEPT = 2.0, 1.2


def linear_data(n: int, seed: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [n, 1] uniform in [0, 10); y = 2x + 1.2 (+ Gaussian noise of stddev `noise`), float32 [n, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, size=(n, 1)).astype(np.float32)
    return x, (SLOPE * x + INTERCEPT + noise * rng.normal(size=(n, 1))).astype(np.float32)


class RegressionTrainer(Trainer):
    """Squared error on one output per example; reports "loss" (MSE) and "mae".

    Targets y float [batch, 1], outputs float [batch, 1]; compute_loss returns
    the per-example squared errors and the engine averages them.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("metrics", lambda: {"mae": keras.metrics.MeanAbsoluteError(name="mae")})
        super().__init__(**kwargs)

    def compute_loss(self, x, y, y_pred, sample_weight):
        return tf.square(y_pred - tf.cast(y, y_pred.dtype))  # [batch, 1]


@dataclasses.dataclass(frozen=True)
class RegressionOptions(Section):
    """The regression task's own settings (flags)."""

    regression_examples: int = setting(512, "--task=regression: training examples (eval: a quarter as many, "
                                       "another draw).", positive=True)
    regression_noise: float = setting(0.0, "--task=regression: stddev of noise added to y.", rule=NON_NEGATIVE)


class Regression(Task):
    name = "regression"
    options_class = RegressionOptions
    metrics = ("mae",)

    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        n, noise = config.option("regression_examples"), config.option("regression_noise")
        if n < global_batch:
            raise UserError(f"--regression_examples={n} is smaller than the global batch {global_batch}")
        x, y = linear_data(n, config.run.seed, noise)
        ex, ey = linear_data(max(1, n // 4), config.run.seed + 1, noise)
        return TaskData(
            train_fn=in_memory.train_dataset_fn(x, y, global_batch_size=global_batch, seed=config.run.seed,
                                                recipe=augment.BatchRecipe(), normalize=None),
            steps_per_epoch=in_memory.steps_per_epoch(n, global_batch),
            eval_data=in_memory.eval_dataset(ex, ey, global_batch_size=global_batch, normalize=lambda v: v),
            input_shape=(1,), num_train=n, num_eval=len(ey), source=f"y = {SLOPE:g}x + {INTERCEPT:g}, x in [0, 10)",
            info={"slope": SLOPE, "intercept": INTERCEPT})

    def model(self, config, data: TaskData) -> keras.Model:
        return linear_model()

    def trainer(self, config, *, model, optimizer, data, **kwargs) -> Trainer:
        return RegressionTrainer(model=model, optimizer=optimizer, **kwargs)


def linear_model() -> keras.Model:
    """One Dense unit on one feature: y_pred = kernel * x + bias."""
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="linear")], name="linear_regression")


TASK = Regression()
