"""Prints where a profiled run's time went: TensorFlow op self time by op type.

    python -m launch.train --flagfile=launch/cifar_94.flags --data_dir=../shared/data/cifar10-bin \\
        --model_dir=/tmp/p --train_steps=12 --profile_steps=6,10
    python -m launch.profile_report --logdir=/tmp/p/train --steps=4

Reads the newest profiler trace (*.xplane.pb) under --logdir (engine/profiling.py);
no TensorBoard plugin needed. With --flop_per_step, also prints the rate that
many floating-point operations per step make over the op span.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("logdir", None, "A directory holding a profiler trace (e.g. <model_dir>/train), or the "
                    ".xplane.pb file.", required=True)
flags.DEFINE_integer("steps", None, "Steps the trace covers: times are then per step.", lower_bound=1)
flags.DEFINE_integer("top", 20, "Op types to list.", lower_bound=1)
flags.DEFINE_float("flop_per_step", None, "Floating-point operations of one step (e.g. 2 x multiply-adds "
                   "x 3 x global batch for a forward + backward pass): prints FLOP/s over the op span; "
                   "needs --steps.", lower_bound=0)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.flop_per_step is not None and FLAGS.steps is None:
        sys.exit("launch.profile_report: error: --flop_per_step needs --steps")
    from engine import profiling

    try:
        summary = profiling.summarize(FLAGS.logdir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"launch.profile_report: error: {e}")
    print(summary.table(top=FLAGS.top, steps=FLAGS.steps))
    if FLAGS.flop_per_step is not None:
        span = summary.span_seconds / FLAGS.steps
        print(f"{FLAGS.flop_per_step / 1e9:.1f} GFLOP per step over {span * 1e3:.1f} ms of op span: "
              f"{FLAGS.flop_per_step / span / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    app.run(main)
