"""Time to accuracy: runs a recipe end to end and prints one line against its target.

    python -m launch.benchmark_accuracy --recipe=launch/cifar_94.flags --data_dir=../shared/data/cifar10-bin

Runs `python -m launch.train --flagfile=<recipe>` in a fresh process (a fresh
--model_dir under --work_dir, --noprogress) and times it from the command's start
to its exit, data loading and evaluations included. The recipe's header states
its target in a line `# target: <accuracy>% in <minutes> min`; the printed line
reads

    <recipe>: accuracy=<final eval accuracy> wall=<s> examples/s=<median epoch rate>
    target=<accuracy>% in <minutes> min: holds|misses

and each epoch's training accuracy, and test accuracy where it was evaluated
(--eval_every_epochs), comes before it. The accuracy is the last epoch's
(the run's end), not the best one. Exit status 1 if the run fails.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from engine.errors import UserError

flags.DEFINE_string("recipe", None, "A launch/*.flags recipe with a '# target: <accuracy>% in <minutes> min' line.")
flags.DEFINE_string("data_dir", "../shared/data/cifar10-bin", "CIFAR-10 folder (see launch.train); the lossless copy "
                    "for every accuracy figure.")
flags.DEFINE_string("work_dir", None, "Where the run's model_dir goes (default: a new temporary folder).")
flags.DEFINE_list("extra", [], "More launch.train flags, e.g. --extra=--epochs=2 (they override the recipe's).")
flags.mark_flag_as_required("recipe")
FLAGS = flags.FLAGS

_TARGET = re.compile(r"^#\s*target:\s*([\d.]+)%\s+in\s+([\d.]+)\s*min", re.M)


def read_target(recipe: str) -> tuple[float, float]:
    """(accuracy as a fraction, minutes) from the recipe's '# target:' line.

    Raises:
      ValueError: naming the file if it has no such line.
    """
    with open(recipe) as f:
        match = _TARGET.search(f.read())
    if not match:
        raise UserError(f"--recipe={recipe} has no '# target: <accuracy>% in <minutes> min' line")
    return float(match.group(1)) / 100, float(match.group(2))


def main(argv: list[str]) -> None:
    del argv
    try:
        accuracy_target, minutes = read_target(FLAGS.recipe)
    except (OSError, ValueError) as e:
        sys.exit(f"launch.benchmark_accuracy: error: {e}")
    model_dir = os.path.join(FLAGS.work_dir or tempfile.mkdtemp(prefix="benchmark_accuracy-"),
                             os.path.splitext(os.path.basename(FLAGS.recipe))[0])
    command = [sys.executable, "-m", "launch.train", f"--flagfile={FLAGS.recipe}", f"--data_dir={FLAGS.data_dir}",
               f"--model_dir={model_dir}", "--noprogress", *FLAGS.extra]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.stderr.write(result.stderr[-3000:])
        sys.exit(f"launch.benchmark_accuracy: error: the run exited with status {result.returncode}")
    with open(os.path.join(model_dir, "history.json")) as f:
        rows = json.load(f)
    for row in rows:  # Epochs without an evaluation (--eval_every_epochs) have no eval_accuracy.
        evaluated = f" eval_accuracy={row['eval_accuracy']:.4f}" if "eval_accuracy" in row else ""
        print(f"  epoch {row['epoch']:g}:{evaluated} accuracy={row.get('accuracy', float('nan')):.4f} "
              f"examples/s={row.get('examples_per_second', float('nan')):.0f}")
    if "eval_accuracy" not in rows[-1]:
        sys.exit("launch.benchmark_accuracy: error: the run's last epoch has no evaluation")
    accuracy = rows[-1]["eval_accuracy"]
    rate = statistics.median(r["examples_per_second"] for r in rows if "examples_per_second" in r)
    holds = accuracy >= accuracy_target and wall <= minutes * 60
    print(f"{FLAGS.recipe}: accuracy={accuracy:.4f} wall={wall:.0f}s examples/s={rate:.0f} "
          f"target={accuracy_target * 100:g}% in {minutes:g} min: {'holds' if holds else 'misses'}")


if __name__ == "__main__":
    app.run(main)
