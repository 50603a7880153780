"""Trainer vs Keras fit vs a bare compiled loop: examples/s on the same model and data.

    python -m launch.benchmark [--model=resnet20] [--steps=100] [--batch_size=128]

One process, one run: ResNet-20, per-replica batch 128, in-memory CIFAR-shaped
data (random, already normalised, no augmentation, so the figures are the loops'
own). Each contestant gets a fresh model with the same initial weights and a
warm-up (tracing); then they take turns for `--rounds` rounds of `--steps` timed
steps, and the median round counts:
  * trainer: engine.Trainer.fit over a tf.data pipeline, steps_per_loop 50, with
    its defaults (non-finite guard on, BatchNorm on the fused kernel, the
    engine's SGD from build_optimizer, whose update is one fused kernel per
    variable), with the guard off, with Keras's own BatchNorm computation
    (fused_batch_norm off), and with keras.optimizers.SGD as the others use;
  * fit: keras Model.fit (jit_compile off, as on CPU) over the same pipeline;
  * bare: a tf.function forward-backward-update step on one constant batch,
    called from Python; once with the Trainer's kernels (engine/batch_norm.py),
    once with Keras's BatchNorm as written;
  * hand loop: what a user writes instead of the engine, a GradientTape step
    over the same tf.data pipeline, 50 steps per tf.function call (in-graph
    tf.range loop); with the fused kernel and with Keras's BatchNorm, so the
    Trainer is compared with the same BatchNorm on both sides.
The line `trainer/hand loop=...` gives the Trainer against the hand loop with the same
BatchNorm. Every ratio is the median over rounds of that round's ratio (the two
contestants of a ratio run back to back in each round, so a slow spell of the
machine moves both). The last line reads `trainer/fit=<ratio> trainer/bare=<ratio>` (Trainer defaults;
the bare loop with the same kernels, so the second ratio is the engine's
overhead). The line before it gives the overhead with Keras's BatchNorm on both
sides and what the fused kernel alone changes.
With --memory, the trainer and fit also run alone, each in a fresh process, and
print their peak resident memory. With --profile_dir, one more round of the
trainer and of the hand loop runs under the TensorFlow profiler and their op
self time per step is printed side by side (where the Trainer's extra time
goes). --peak_flops only measures the matmul and convolution FLOP/s that
TensorFlow's kernels reach here (the ceiling for a step's FLOP rate).
--precision=bfloat16 sets the mixed_bfloat16 policy for every contestant.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", "resnet20", "Network (see models.MODEL_NAMES).")
flags.DEFINE_integer("steps", 100, "Timed steps per contestant.", lower_bound=10)
flags.DEFINE_integer("batch_size", 128, "Batch.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Timed rounds per contestant, taken in turns; medians of rates and of per-round "
                     "ratios are printed.", lower_bound=1)
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute precision of every contestant.")
flags.DEFINE_enum("only", None, ["trainer", "fit", "bare"], "Run one contestant alone and print its peak "
                  "resident memory (used by --memory).")
flags.DEFINE_bool("xla", False, "Also run the Trainer (jit_compile=True) and Keras fit (jit_compile=True) with "
                  "XLA.")
flags.DEFINE_bool("peak_flops", False, "Only measure this CPU's attainable FLOP/s: a 4096^3 matmul and airbench's "
                  "largest convolution (batch 256, 15x15x256 -> 256, 3x3) in float32 and bfloat16; print and exit.")
flags.DEFINE_string("profile_dir", None, "After the rounds, profile one more round of the trainer and of the "
                    "hand loop (same fused BatchNorm) into <dir>/trainer and <dir>/hand_loop and print their op "
                    "time per step side by side (engine/profiling.py).")
flags.DEFINE_bool("memory", False, "Also run the trainer and Keras fit each alone in a fresh process and print "
                  "their peak resident memory (VmHWM).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import models
    from engine import DatasetInput, GuardOptions, KernelOptions, Trainer, batch_norm, sparse_accuracy
    from engine.optimizers import build_optimizer

    if FLAGS.peak_flops:
        for line in peak_flops():
            print(line)
        return
    batch, steps = FLAGS.batch_size, FLAGS.steps
    warmup = 20
    if FLAGS.precision == "bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    rng = np.random.default_rng(0)
    n = batch * 64  # 8,192 examples, cycled
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)

    def dataset():
        ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    def fresh():
        keras.utils.set_random_seed(0)
        return models.build(FLAGS.model), keras.optimizers.SGD(0.1, momentum=0.9)

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    # Each contestant is set up (and traced) once; then the contestants take turns,
    # FLAGS.rounds times, and the median rate counts: on a shared 2-core machine
    # one round can be disturbed, and the first runs of a process pay one-time costs.
    def trainer_contestant(guard: bool = True, fused: bool = True, jit: bool = False, keras_sgd: bool = False):
        model, optimizer = fresh()
        if not keras_sgd:  # The optimizer launch.train builds.
            optimizer = build_optimizer("sgd", 0.1, momentum=0.9)
        trainer = Trainer(model=model, optimizer=optimizer, loss=loss(), metrics=sparse_accuracy,
                          global_batch_size=batch, steps_per_loop=50,
                          guard=GuardOptions(nonfinite_limit=10 if guard else None), progress=False,
                          kernels=KernelOptions(fused_batch_norm=fused, jit_compile=jit))
        data = DatasetInput(dataset(), steps_per_epoch=10**9)  # one endless epoch: no epoch-end work
        trainer.fit(data, train_steps=warmup)

        def run():
            start = time.perf_counter()
            trainer.fit(data, train_steps=trainer.global_step + steps)
            return steps * batch / (time.perf_counter() - start)
        return run

    def fit_contestant(jit: bool = False):
        model, optimizer = fresh()
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=jit)
        model.fit(dataset().take(warmup), epochs=1, verbose=0)

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds = time.perf_counter() - self.start

        def run():
            timer = Timer()
            model.fit(dataset().take(steps), epochs=1, verbose=0, callbacks=[timer])
            return steps * batch / timer.seconds
        return run

    def hand_step(model, optimizer, loss_fn, xb, yb):
        """One forward-backward-update step as written by hand with a GradientTape; returns the loss."""
        with tf.GradientTape() as tape:
            logits = tf.cast(model(xb, training=True), tf.float32)
            value = tf.reduce_mean(loss_fn(yb, logits)) + tf.cast(tf.add_n(model.losses), tf.float32)
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value

    def bare_contestant(fused: bool = True):
        model, optimizer = fresh()
        optimizer.build(model.trainable_variables)
        xb, yb = tf.constant(x[:batch]), tf.constant(y[:batch])
        bare_loss = loss()

        @tf.function
        def step():
            return hand_step(model, optimizer, bare_loss, xb, yb)

        with batch_norm.fused(model) if fused else contextlib.nullcontext():
            step()  # traces
        for _ in range(warmup):
            step()

        def run():
            start = time.perf_counter()
            for _ in range(steps):
                value = step()
            float(value)
            return steps * batch / (time.perf_counter() - start)
        return run

    def hand_loop_contestant(fused: bool = True):
        """A hand-written GradientTape loop as a user would write it: 50 steps in one tf.function, same pipeline."""
        model, optimizer = fresh()
        optimizer.build(model.trainable_variables)
        iterator = iter(dataset())
        hand_loss = loss()

        @tf.function
        def loop(n):
            value = tf.constant(0.0)
            for _ in tf.range(n):
                xb, yb = next(iterator)
                value = hand_step(model, optimizer, hand_loss, xb, yb)
            return value

        with batch_norm.fused(model) if fused else contextlib.nullcontext():
            loop(tf.constant(warmup))  # traces

        def run():
            start = time.perf_counter()
            for _ in range(steps // 50):
                value = loop(tf.constant(50))
            value = loop(tf.constant(steps % 50)) if steps % 50 else value
            float(value)
            return steps * batch / (time.perf_counter() - start)
        return run

    if FLAGS.only:
        run = {"trainer": lambda: trainer_contestant(True), "fit": fit_contestant, "bare": bare_contestant}[
            FLAGS.only]()
        rate = run()
        print(f"{FLAGS.only}: {rate:.1f} examples/s, peak_rss_mib={_peak_rss_mib():.0f}")
        return
    contestants = {"trainer": trainer_contestant(), "trainer, guard off": trainer_contestant(guard=False),
                   "trainer, Keras BN": trainer_contestant(fused=False),
                   "trainer, Keras SGD": trainer_contestant(keras_sgd=True), "keras fit": fit_contestant(),
                   "bare loop": bare_contestant(), "bare loop, Keras BN": bare_contestant(fused=False),
                   "hand loop": hand_loop_contestant(), "hand loop, Keras BN": hand_loop_contestant(fused=False)}
    if FLAGS.xla:
        contestants.update({"trainer, XLA": trainer_contestant(jit=True), "keras fit, XLA": fit_contestant(jit=True)})
    rates = {name: [] for name in contestants}
    for _ in range(FLAGS.rounds):
        for name, run in contestants.items():
            rates[name].append(run())
    results = {name: float(np.median(r)) for name, r in rates.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of a's rate / b's rate in the same round."""
        return float(np.median(np.array(rates[a]) / np.array(rates[b])))

    print(f"{FLAGS.model}, {FLAGS.precision}, batch {batch}, {steps} timed steps x {FLAGS.rounds} rounds "
          f"after {warmup} warm-up steps")
    for name, rate in results.items():
        print(f"  {name:21s} {rate:8.1f} examples/s (median; rounds: {', '.join(f'{r:.0f}' for r in rates[name])})")
    if FLAGS.memory:
        for name in ("trainer", "fit"):
            out = subprocess.run([sys.executable, "-m", "launch.benchmark", f"--only={name}", f"--steps={steps}",
                                  f"--batch_size={batch}", f"--model={FLAGS.model}",
                                  f"--precision={FLAGS.precision}"], capture_output=True, text=True, check=True)
            print(f"  alone in a fresh process: {out.stdout.strip().splitlines()[-1]}")
    print(f"with Keras BatchNorm on both sides: trainer/bare={ratio('trainer, Keras BN', 'bare loop, Keras BN'):.3f}; "
          f"fused kernel alone: bare/bare Keras BN={ratio('bare loop', 'bare loop, Keras BN'):.3f}")
    print(f"trainer/hand loop={ratio('trainer', 'hand loop'):.3f} (both on the fused BatchNorm kernel), "
          f"{ratio('trainer, Keras BN', 'hand loop, Keras BN'):.3f} (both on Keras's BatchNorm), "
          f"{ratio('trainer, Keras SGD', 'hand loop'):.3f} (the Trainer with keras.optimizers.SGD); "
          f"fused SGD update alone: trainer/trainer Keras SGD={ratio('trainer', 'trainer, Keras SGD'):.3f}")
    if FLAGS.profile_dir:
        from engine import profiling

        summaries = {}
        for name, folder in (("trainer", "trainer"), ("hand loop", "hand_loop")):
            logdir = os.path.join(FLAGS.profile_dir, folder)
            tf.profiler.experimental.start(logdir)
            contestants[name]()
            tf.profiler.experimental.stop()
            summaries[name] = profiling.summarize(logdir)
        print(profiling.compare(summaries["trainer"], summaries["hand loop"], steps, names=("trainer", "hand loop")))
    print(f"trainer/fit={ratio('trainer', 'keras fit'):.3f} trainer/bare={ratio('trainer', 'bare loop'):.3f}")


def peak_flops(reps: int = 5) -> list[str]:
    """Attainable FLOP/s of this machine's TensorFlow kernels, one line per kernel and dtype.

    A square 4096 matmul (2 x 4096^3 FLOP) and the forward convolution of
    airbench's block 2/3 (batch 256, 15x15x256 -> 256 channels, 3x3, "same":
    2 x 256 x 15 x 15 x 256 x 256 x 9 FLOP), each timed `reps` times in a
    tf.function after one warm-up call; the median counts. This is the ceiling a
    training step's kernels can reach here, not the chip's data-sheet peak.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    lines = []
    cases = {"matmul 4096^3": ((4096, 4096), (4096, 4096), lambda a, b: tf.linalg.matmul(a, b), 2 * 4096 ** 3),
             "conv 3x3 256->256 @15x15, batch 256": (
                 (256, 15, 15, 256), (3, 3, 256, 256),
                 lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), 2 * 256 * 15 * 15 * 256 * 256 * 9)}
    for name, (shape_a, shape_b, op, flop) in cases.items():
        for dtype in (tf.float32, tf.bfloat16):
            a = tf.cast(rng.normal(size=shape_a).astype(np.float32), dtype)
            b = tf.cast(rng.normal(size=shape_b).astype(np.float32), dtype)
            fn = tf.function(lambda a, b, op=op: tf.reduce_sum(tf.cast(op(a, b)[..., :1], tf.float32)))
            float(fn(a, b))
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                float(fn(a, b))
                times.append(time.perf_counter() - start)
            seconds = float(np.median(times))
            lines.append(f"{name:38s} {dtype.name:9s} {flop / seconds / 1e9:7.0f} GFLOP/s "
                         f"({seconds * 1e3:.0f} ms, median of {reps})")
    return lines


def _peak_rss_mib() -> float:
    """Peak resident set size of this process since it started, MiB.

    From VmHWM in /proc/self/status (Linux). Not getrusage's ru_maxrss: Linux
    carries that across fork and exec, so a child started by the benchmark after
    its own contestants ran reported the parent's peak (BUILD_NOTES.md, Pitfalls).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status; peak memory needs Linux")


if __name__ == "__main__":
    app.run(main)
