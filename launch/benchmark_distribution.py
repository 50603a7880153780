"""Throughput of 1 vs 2 replicas and 1 vs 2 workers, same global batch, one machine.

    python -m launch.benchmark_distribution --data_dir=../shared/data/cifar10 [--train_steps=100]

Runs launch.train (and launch.cluster for the workers) on ResNet-20 with a global
batch of 128 (2 replicas also with --sync_batch_norm: batch statistics over both), each configuration in fresh processes and a fresh model_dir, and
prints the examples/s that the run reports for its steps after the first loop
(the first loop also traces the step function).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile

from absl import app, flags

flags.DEFINE_string("data_dir", "../shared/data/cifar10", "CIFAR-10 folder (see launch.train).")
flags.DEFINE_integer("train_steps", 100, "Steps per configuration.")
flags.DEFINE_string("model", "resnet20", "Network.")
flags.DEFINE_list("only", [], "Run only the configurations whose names start with one of these.")
FLAGS = flags.FLAGS

GLOBAL_BATCH = 128
CONFIGS = [
    ("1 replica", "train", ["--strategy=default", f"--batch_size={GLOBAL_BATCH}"]),
    ("2 replicas (mirrored, 2 logical CPUs)", "train",
     ["--strategy=mirrored", "--num_cpu_devices=2", f"--batch_size={GLOBAL_BATCH // 2}"]),
    ("2 replicas, synchronized BatchNorm", "train",
     ["--strategy=mirrored", "--num_cpu_devices=2", f"--batch_size={GLOBAL_BATCH // 2}", "--sync_batch_norm"]),
    ("1 worker (multi_worker_mirrored)", "cluster1", [f"--batch_size={GLOBAL_BATCH}"]),
    ("2 workers x 1 replica (multi_worker_mirrored)", "cluster2", [f"--batch_size={GLOBAL_BATCH // 2}"]),
]


def measure(kind: str, extra: list[str], model_dir: str) -> float:
    """Runs one configuration; returns the examples/s of its final summary line."""
    train = ["--flagfile=launch/cifar.flags", f"--data_dir={FLAGS.data_dir}", f"--model={FLAGS.model}",
             f"--model_dir={model_dir}", f"--train_steps={FLAGS.train_steps}", "--steps_per_loop=25",
             "--checkpoint_every_steps=100000", "--best_metric=", "--noprogress", *extra]
    if kind == "train":
        args = [sys.executable, "-m", "launch.train", *train]
    else:
        args = [sys.executable, "-m", "launch.cluster", f"--num_workers={kind[-1]}", "--", *train]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    rates = re.findall(rf"step {FLAGS.train_steps}: .*?examples_per_second=(\d+)", result.stderr)
    return float(rates[-1])


def main(argv: list[str]) -> None:
    del argv
    print(f"{FLAGS.model}, global batch {GLOBAL_BATCH}, {FLAGS.train_steps} steps each, real data from "
          f"{FLAGS.data_dir}")
    results = {}
    for name, kind, extra in CONFIGS:
        if FLAGS.only and not any(name.startswith(prefix) for prefix in FLAGS.only):
            continue
        with tempfile.TemporaryDirectory() as model_dir:
            results[name] = measure(kind, extra, model_dir)
        print(f"{name:48s} {results[name]:8.0f} examples/s", flush=True)
    base = results[CONFIGS[0][0]]
    ratios = ", ".join(f"{name.split(' (')[0]}={rate / base:.2f}" for name, rate in results.items())
    print(f"ratios to 1 replica: {ratios}")


if __name__ == "__main__":
    app.run(main)
