"""Evaluates the latest or best checkpoint of a run on the CIFAR-10 test (or training) split.

    python -m launch.evaluate --model_dir=/tmp/cifar10_resnet --data_dir=../shared/data/cifar10 [--checkpoint=best]

`--split=train` evaluates the training images (no augmentation, moving BatchNorm
statistics): against the test figure it gives the generalisation gap. `--tta`
averages over mirrored/translated copies as training's evaluations did with it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "A launch.train --model_dir.", required=True)
flags.DEFINE_string("data_dir", None, "CIFAR-10 folder (see launch.train); Keras's cache when unset.")
flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path prefix.")
flags.DEFINE_integer("batch_size", 500, "Evaluation batch.", lower_bound=1)
flags.DEFINE_enum("split", "test", ["test", "train"], "Which CIFAR-10 split to evaluate.")
flags.DEFINE_enum("tta", "none", ["none", "flip", "flip_translate"], "Test-time augmentation (engine/tta.py).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    import keras

    from datasets import cifar10, in_memory
    from engine import Trainer, sparse_accuracy
    from engine.errors import UserError
    from launch import experiment

    try:
        model, info, path = experiment.load_trained(FLAGS.model_dir, FLAGS.checkpoint)
        data = cifar10.load(FLAGS.data_dir)
    except UserError as e:  # One line; any other error shows its traceback.
        sys.exit(f"launch.evaluate: error: {e}")
    mean, std = info["normalize"]["mean"], info["normalize"]["std"]
    split = data.test if FLAGS.split == "test" else data.train
    eval_data = in_memory.eval_dataset(split.images, split.labels, global_batch_size=FLAGS.batch_size,
                                       mean=mean, std=std)
    trainer = Trainer(model=model, optimizer=keras.optimizers.SGD(), global_batch_size=FLAGS.batch_size,
                      metrics=sparse_accuracy,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      progress=False, test_time_augmentation=FLAGS.tta)
    results = trainer.evaluate(eval_data)
    print(f"{path}: " + " ".join(f"eval_{k}={v:.4f}" for k, v in results.items()) +
          f" on {len(split.labels)} {FLAGS.split} examples" + (f" with {FLAGS.tta} TTA" if FLAGS.tta != "none" else ""))


if __name__ == "__main__":
    app.run(main)
