"""Example: a new task by subclassing Trainer (regression with mean squared error).

    python -m launch.regression_example

The subclass changes what a task changes (the loss and the metrics) and nothing
else: the loop, distribution, checkpoints and summaries are the Trainer's.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from engine import Trainer  # noqa: E402


class RegressionTrainer(Trainer):
    """Trains a model with one output per example on mean squared error.

    Labels: float32 [batch] or [batch, 1]; outputs: float32 [batch, 1]. Reports
    "loss" (MSE) and "mae".
    """

    def __init__(self, **kwargs):
        super().__init__(loss=self.squared_error, metrics=lambda: {"mae": keras.metrics.MeanAbsoluteError()},
                         **kwargs)

    @staticmethod
    def squared_error(labels, outputs):
        """Per-example squared error, float32 [batch]."""
        labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
        return tf.square(tf.reshape(outputs, [-1]) - labels)


def synthetic_data(n=512, features=8, noise=0.1, seed=0):
    """y = x . w + noise, for x ~ N(0, 1); returns (x float32 [n, f], y float32 [n], w)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=features).astype(np.float32)
    return x, (x @ w + noise * rng.normal(size=n)).astype(np.float32), w


def main() -> None:
    x, y, _ = synthetic_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=True)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    trainer = RegressionTrainer(model=model, optimizer=keras.optimizers.SGD(0.05), global_batch_size=32,
                                progress=False)
    history = trainer.fit(ds, ds, epochs=10)
    print(f"eval MSE {history['eval_loss'][-1]:.4f}, MAE {history['eval_mae'][-1]:.4f} (noise variance 0.01)")


if __name__ == "__main__":
    main()
