"""Throughput of the image input pipelines alone, and input wait when feeding the Trainer.

    python -m launch.benchmark_pipelines --data_dir=../shared/data/cifar10
    python -m launch.benchmark_pipelines --data_dir=../shared/data/cifar10 --source=folders,tfrecord --train_steps=200

For each form of the shared CIFAR-10 (class folders, CSV index, TFRecord shards
written to a temporary folder unless --tfrecord is given) and each --cache mode it
prints: the time to list and check the index, the first pass (decoding every
image once), and examples/s of whole training epochs of the pipeline (decode when
streaming, pad-crop-flip, normalise, batch 128). With --train_steps it also trains
ResNet-20 through the Trainer on the pipeline and on in-memory tensors and prints
examples/s and the input wait as a share of step time.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data_dir", "../shared/data/cifar10", "CIFAR-10 folder with train/, test/, train.csv, test.csv.")
flags.DEFINE_list("source", ["folders", "csv", "tfrecord"],
                  "Forms to measure, comma-separated: folders, csv, tfrecord.")
flags.DEFINE_list("caches", ["decoded", "none"], "Cache modes to measure: decoded, encoded, none.")
flags.DEFINE_string("tfrecord", None, "Glob of CIFAR-10 training TFRecords; default: write them to a temp folder.")
flags.DEFINE_string("augment", "cifar", "Recipe (--augment of launch.train).")
flags.DEFINE_integer("batch_size", 128, "Global batch.")
flags.DEFINE_integer("epochs", 2, "Pipeline epochs to time per (source, cache) after the first pass.")
flags.DEFINE_integer("train_steps", 0, "Also train ResNet-20 this many steps on each pipeline (0: skip).")
FLAGS = flags.FLAGS


def _epoch_rate(train_fn, epoch: int) -> float:
    """Examples/s of one whole training epoch of the pipeline alone."""
    import tensorflow as tf

    ctx = tf.distribute.InputContext()
    ds = train_fn(ctx, epoch, 0)
    start = time.perf_counter()
    n = 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def _train_rate(pipelines, steps: int) -> tuple[float, float]:
    """Trains ResNet-20 `steps` steps after a warm-up loop; returns (examples/s, input wait %)."""
    import keras

    import models
    from engine import EpochInput, GuardOptions, Trainer, sparse_accuracy

    keras.utils.set_random_seed(0)
    model = models.build("resnet20")
    trainer = Trainer(model=model, optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=sparse_accuracy,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      global_batch_size=FLAGS.batch_size, steps_per_loop=50, progress=False,
                      guard=GuardOptions(nonfinite_limit=None))
    history = {}

    def record(logs):
        history.setdefault("rate", []).append(logs["examples_per_second"])
        history.setdefault("wait", []).append(logs["input_wait_percent"])

    trainer.add_hook("loop_end", lambda t, logs: record(logs))
    trainer.fit(EpochInput(pipelines.train_fn, pipelines.steps_per_epoch), train_steps=50 + steps)
    rates, waits = history["rate"][1:], history["wait"][1:]  # The first loop traces.
    return sum(rates) / len(rates), sum(waits) / len(waits)


def main(argv):
    del argv
    import tensorflow as tf

    from datasets import augment, cifar10, images, in_memory, sources, tfrecord

    tfrecord_glob = FLAGS.tfrecord
    tmp = None
    if "tfrecord" in FLAGS.source and not tfrecord_glob:
        tmp = tempfile.TemporaryDirectory()
        t = time.perf_counter()
        tfrecord.write(sources.class_folders(os.path.join(FLAGS.data_dir, "train")),
                       os.path.join(tmp.name, "train"), 8, progress=False)
        print(f"wrote 8 TFRecord shards in {time.perf_counter() - t:.1f} s")
        tfrecord_glob = os.path.join(tmp.name, "train-*.tfrecord")
    forms = {"folders": lambda cache: sources.class_folders(os.path.join(FLAGS.data_dir, "train")),
             "csv": lambda cache: sources.image_csv(os.path.join(FLAGS.data_dir, "train.csv")),
             # --cache=none streams the records from disk by offset, as launch.train does.
             "tfrecord": lambda cache: tfrecord.read_index(tfrecord_glob, keep_bytes=cache != "none")}
    print(f"TF {tf.__version__}, batch {FLAGS.batch_size}, augment {FLAGS.augment}, "
          f"{os.cpu_count()} CPUs")
    results = []
    for form in FLAGS.source:
        for cache in FLAGS.caches:
            t = time.perf_counter()
            index = forms[form](cache)
            t_index = time.perf_counter() - t
            t = time.perf_counter()
            # The CIFAR-10 constants: no pass over the pixels to measure them.
            spec = {"kind": "channel", "mean": list(augment.CIFAR10_MEAN), "std": list(augment.CIFAR10_STD)}
            pipelines = images.build(index, global_batch_size=FLAGS.batch_size, augment_names=FLAGS.augment,
                                     cache=cache, progress=False, normalize=spec)
            t_first = time.perf_counter() - t
            rates = [_epoch_rate(pipelines.train_fn, e) for e in range(FLAGS.epochs)]
            line = (f"{form:9s} cache={cache:8s} index {t_index:5.2f} s, first pass {t_first:5.1f} s "
                    f"({len(index) / t_first:,.0f} img/s), epochs: " + ", ".join(f"{r:,.0f}" for r in rates) +
                    " examples/s")
            if FLAGS.train_steps:
                rate, wait = _train_rate(pipelines, FLAGS.train_steps)
                line += f"; ResNet-20 {rate:.0f} examples/s, input wait {wait:.2f}%"
            print(line, flush=True)
            results.append((form, cache, min(rates)))
    if FLAGS.train_steps:
        data = cifar10.load(FLAGS.data_dir)
        steps = in_memory.steps_per_epoch(len(data.train.labels), FLAGS.batch_size)
        fn = in_memory.train_dataset_fn(data.train.images, data.train.labels, global_batch_size=FLAGS.batch_size,
                                        seed=0)
        arrays = images.ImagePipelines(
            train_fn=fn, steps_per_epoch=steps, eval_data=None, image_shape=(32, 32, 3), normalize={},
            class_names=cifar10.CLASS_NAMES, num_train=len(data.train.labels), num_eval=0, skipped=[])
        rate, wait = _train_rate(arrays, FLAGS.train_steps)
        print(f"in-memory arrays (cifar10.load): ResNet-20 {rate:.0f} examples/s, input wait {wait:.2f}%")
    print("slowest epoch: " + " ".join(f"{f}/{c}={r:.0f}" for f, c, r in results))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    app.run(main)
