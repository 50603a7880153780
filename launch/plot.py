"""Draws a run's loss, accuracy and learning-rate curves into a PNG.

    python -m launch.plot --model_dir=/tmp/cifar10_fast [--output=curves.png]

Reads <model_dir>/history.json (one row per epoch, written by the Trainer's
HistoryLogger) and, for a learning rate per loop, the learning_rate scalars of
<model_dir>/train. Needs matplotlib (pip install -e ".[plot]").
"""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from engine.errors import UserError

flags.DEFINE_string("model_dir", None, "A launch.train --model_dir.")
flags.DEFINE_string("output", None, "PNG path; default <model_dir>/curves.png.")
FLAGS = flags.FLAGS


def read_history(model_dir: str) -> list[dict]:
    """The rows of <model_dir>/history.json.

    Raises:
      ValueError: if the file is missing, unreadable or empty.
    """
    path = os.path.join(model_dir, "history.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: is --model_dir a launch.train folder with an epoch done?")
    try:
        with open(path) as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not rows:
        raise UserError(f"{path} holds no epochs")
    return rows


def read_learning_rates(model_dir: str) -> tuple[list[int], list[float]]:
    """(steps, learning rates) logged per loop in <model_dir>/train; empty if none."""
    import tensorflow as tf

    points = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    points[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                        else value.simple_value
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot(model_dir: str, output: str) -> str:
    """Writes the PNG; returns its path.

    Raises:
      ValueError: if the history is missing; ImportError (with the install line)
        if matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError('launch.plot needs matplotlib: pip install -e ".[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(model_dir)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"eval_{metric}", "eval")):
            if any(key in r for r in rows):
                ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    steps, rates = read_learning_rates(model_dir)
    steps_per_epoch = rows[0]["step"] / rows[0]["epoch"] if rows[0]["epoch"] else 1.0
    if steps:
        axes[2].plot([s / steps_per_epoch for s in steps], rates)
    else:
        axes[2].plot(epochs, [r["learning_rate"] for r in rows], marker="o")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate")
    axes[2].grid(alpha=0.3)
    fig.suptitle(model_dir)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model_dir:
        sys.exit("launch.plot: error: --model_dir is required")
    try:
        path = plot(FLAGS.model_dir, FLAGS.output or os.path.join(FLAGS.model_dir, "curves.png"))
    except (ValueError, ImportError) as e:
        sys.exit(f"launch.plot: error: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
