"""Does a frozen pretrained backbone beat training from scratch on little data?

    python -m launch.transfer_experiment --data_dir=../shared/data/cifar10 --model_dir=/tmp/transfer

1. Pretrain ResNet-20 on CIFAR-10 classes 0-4 (25,000 images), save it as .keras.
2. Transfer: load that file, cut it at its global average pooling (`avg_pool`),
   freeze it (BatchNorm in inference mode), add dropout and a dense head, and train
   the head on classes 5-9 with 500 training images per class (2,500 images).
3. Baseline: ResNet-20 from scratch on the same 2,500 images, same steps, batch,
   schedule and augmentation.
Both are tested on all 5,000 test images of classes 5-9. Each phase has its own
folder under --model_dir, so a rerun resumes where it stopped.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data_dir", "../shared/data/cifar10", "CIFAR-10 folder (see launch.train).")
flags.DEFINE_string("model_dir", "/tmp/transfer_experiment", "Folder for the three phases.")
flags.DEFINE_float("pretrain_epochs", 3, "Epochs of pretraining on classes 0-4.")
flags.DEFINE_float("epochs", 20, "Epochs over the 2,500 images, for the head and for the baseline.")
flags.DEFINE_float("dropout", 0.2, "Dropout before the transfer head (its features are only 64 wide).")
flags.DEFINE_integer("per_class", 500, "Training images per class of 5-9.")
flags.DEFINE_integer("batch_size", 128, "Global batch.")
flags.DEFINE_integer("seed", 0, "Seed of the subset, initial weights, order and augmentation.")
FLAGS = flags.FLAGS


def _subset(split, classes, per_class=None, seed=0):
    """Examples of `classes` (relabelled 0..k-1), at most per_class of each, drawn by seed."""
    import numpy as np

    from datasets.cifar10 import Split

    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        idx = np.flatnonzero(split.labels == c)
        keep.append(idx if per_class is None else np.sort(rng.choice(idx, per_class, replace=False)))
    keep = np.concatenate(keep)
    relabel = {c: i for i, c in enumerate(classes)}
    return Split(split.images[keep], np.array([relabel[int(c)] for c in split.labels[keep]], np.int32))


def _train(model, train, test, folder, *, epochs, lr_boundaries):
    import keras

    from datasets import in_memory
    from engine import EpochInput, Trainer, piecewise_constant_by_epoch, sparse_accuracy

    batch = FLAGS.batch_size
    steps = in_memory.steps_per_epoch(len(train.labels), batch)
    optimizer = keras.optimizers.SGD(piecewise_constant_by_epoch(0.1 * batch / 128, lr_boundaries, [0.1, 0.01],
                                                                 steps), momentum=0.9)
    trainer = Trainer(model=model, optimizer=optimizer, global_batch_size=batch, model_dir=folder,
                      metrics=sparse_accuracy,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      steps_per_loop=20, progress=False)
    train_input = EpochInput(in_memory.train_dataset_fn(train.images, train.labels, global_batch_size=batch,
                                                        seed=FLAGS.seed), steps)
    history = trainer.fit(train_input, in_memory.eval_dataset(test.images, test.labels, global_batch_size=500),
                          epochs=epochs)
    return history["eval_accuracy"][-1]


def main(argv: list[str]) -> None:
    del argv
    import keras

    import models
    from datasets import cifar10
    from models import transfer

    data = cifar10.load(FLAGS.data_dir)
    first, second = list(range(5)), list(range(5, 10))
    pre_train, pre_test = _subset(data.train, first), _subset(data.test, first)
    small_train = _subset(data.train, second, FLAGS.per_class, FLAGS.seed)
    new_test = _subset(data.test, second)
    print(f"pretrain on {len(pre_train.labels)} images of classes 0-4; transfer to {len(small_train.labels)} "
          f"images of classes 5-9; test on {len(new_test.labels)}", flush=True)

    saved = os.path.join(FLAGS.model_dir, "pretrained.keras")
    keras.utils.set_random_seed(FLAGS.seed)
    backbone_net = models.build("resnet20", num_classes=5)
    e = FLAGS.pretrain_epochs
    pre_accuracy = _train(backbone_net, pre_train, pre_test, os.path.join(FLAGS.model_dir, "pretrain"),
                          epochs=e, lr_boundaries=[e * 2 / 3, e * 5 / 6])
    if not os.path.exists(saved):
        backbone_net.save(saved)

    keras.utils.set_random_seed(FLAGS.seed)
    model = transfer.transfer_model(transfer.saved_backbone(saved, cut="avg_pool"), num_classes=5,
                                    dropout=FLAGS.dropout)
    e = FLAGS.epochs
    tag = f"{e:g}ep"
    transfer_accuracy = _train(model, small_train, new_test, os.path.join(FLAGS.model_dir, f"transfer-{tag}"),
                               epochs=e, lr_boundaries=[e / 2, e * 3 / 4])
    keras.utils.set_random_seed(FLAGS.seed)
    scratch_accuracy = _train(models.build("resnet20", num_classes=5), small_train, new_test,
                              os.path.join(FLAGS.model_dir, f"scratch-{tag}"), epochs=e,
                              lr_boundaries=[e / 2, e * 3 / 4])
    results = {"pretrain_accuracy_classes_0_4": pre_accuracy, "transfer_accuracy_classes_5_9": transfer_accuracy,
               "scratch_accuracy_classes_5_9": scratch_accuracy, "train_images": len(small_train.labels),
               "epochs": FLAGS.epochs, "pretrain_epochs": FLAGS.pretrain_epochs, "dropout": FLAGS.dropout}
    with open(os.path.join(FLAGS.model_dir, f"results-{tag}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"pretrained ResNet-20 on classes 0-4: test accuracy {pre_accuracy:.4f}")
    print(f"classes 5-9 from {len(small_train.labels)} images, {FLAGS.epochs:g} epochs each: frozen-backbone "
          f"transfer {transfer_accuracy:.4f}, from scratch {scratch_accuracy:.4f}")


if __name__ == "__main__":
    app.run(main)
