"""How long deleting the Trainer's training iterator takes, with and without tf.data's autotuning model.

    python -m launch.benchmark_teardown --idle=30 --repeats=4

Each measurement is a fresh process: a small Trainer on two replicas (logical
CPU devices) trains 3 steps of a 6-step epoch, so it keeps the epoch's iterator
for the next run (`Trainer.held_iterator`); the iterator sits idle for --idle
seconds, and `Trainer.close()` deletes it. Prints the seconds each `close()`
took, for two settings: "trainer", the Trainer as it is (its pipelines and
tf.distribute's per-device datasets without the autotuning model,
engine/inputs.py), and "tf.data defaults", with both measures undone. All
processes of a run start together, as tests and jobs share this CPU; the slow
deletions (a missed wake-up in TF 2.21, see engine.inputs.without_autotune_model)
come in some processes and not others. This is the measurement behind the
Trainer's default (BUILD_NOTES.md, "Pitfalls").
"""

from __future__ import annotations

import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_float("idle", 30.0, "Seconds the held iterator sits idle before close().", lower_bound=0.0)
flags.DEFINE_integer("repeats", 4, "Processes per setting.", lower_bound=1)
flags.DEFINE_bool("child", False, "Internal: run one measurement in this process.")
flags.DEFINE_bool("tf_defaults", False, "Internal (with --child): undo the Trainer's measures.")
FLAGS = flags.FLAGS


def _measure(idle: float, tf_defaults: bool) -> float:
    """One Trainer run ending inside the epoch, idle seconds, then close(); returns close()'s seconds."""
    import keras
    import numpy as np
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from datasets import in_memory
    from engine import EpochInput, Trainer, inputs, sparse_accuracy
    import engine.trainer

    if tf_defaults:
        inputs.without_autotune_model = lambda dataset: dataset
        engine.trainer.untune_device_datasets = lambda: False

    n, batch = 96, 16
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, n).astype(np.int32)
    dataset_fn = in_memory.train_dataset_fn(images, labels, global_batch_size=batch, seed=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(3)])
        optimizer = keras.optimizers.SGD(0.01)
    trainer = Trainer(model=model, optimizer=optimizer, strategy=strategy, global_batch_size=batch,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      metrics=sparse_accuracy, progress=False)
    trainer.fit(EpochInput(dataset_fn, in_memory.steps_per_epoch(n, batch)), train_steps=3)
    if trainer.held_iterator is None:
        raise RuntimeError("the run kept no iterator; nothing to measure")
    time.sleep(idle)
    start = time.perf_counter()
    trainer.close()
    return time.perf_counter() - start


def main(argv):
    del argv
    if FLAGS.child:
        print(f"{_measure(FLAGS.idle, FLAGS.tf_defaults):.3f}")
        return
    settings = {"trainer": False, "tf.data defaults": True}
    runs = [(name, subprocess.Popen([sys.executable, "-m", "launch.benchmark_teardown", "--child",
                                     f"--idle={FLAGS.idle}", f"--tf_defaults={undo}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
            for _ in range(FLAGS.repeats) for name, undo in settings.items()]
    seconds = {name: [] for name in settings}
    for name, process in runs:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"a {name} measurement failed (exit {process.returncode})")
        seconds[name].append(float(out.strip().splitlines()[-1]))
    for name, values in seconds.items():
        print(f"{name:17s} close() after {FLAGS.idle:g} s idle: " + ", ".join(f"{v:.2f}" for v in values)
              + f" s (max {max(values):.2f})", flush=True)


if __name__ == "__main__":
    app.run(main)
