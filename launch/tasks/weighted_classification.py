"""Class-weighted CIFAR-10 classification: the dataset yields (x, y, sample_weight).

    python -m launch.train --task=weighted_classification --flagfile=launch/cifar.flags \
        --data_dir=../shared/data/cifar10-bin --class_weights=1,1,1,3,1,1,1,1,1,1

Each training example is weighted by its class's weight (Keras's
`class_weight`, given as sample weights): the default Trainer's train_step
unpacks the weight and the engine weights the per-example losses before
averaging them over the global batch, as Keras's "sum_over_batch_size" does
(a weight of 0 removes an example's gradient; the mean still counts it).
"balanced" weights each class by n / (classes * count), as scikit-learn's
`compute_class_weight` does. Evaluation is unweighted.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import models
from datasets import augment, cifar10, in_memory
from engine import Trainer, sparse_accuracy
from engine.losses import sparse_categorical_crossentropy
from launch.config import Section, setting
from launch.tasks.base import Task, TaskData
from engine.errors import UserError


def class_weights(spec: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [num_classes] from "balanced" or a comma list of one weight per class.

    Raises:
      ValueError: naming --class_weights if the list has the wrong length, a
        value that is not a number or is negative, or no positive weight.
    """
    if spec == "balanced":
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
    try:
        weights = np.array([float(v) for v in spec.split(",")], np.float32)
    except ValueError:
        raise UserError(f"--class_weights={spec!r} must be 'balanced' or {num_classes} numbers") from None
    if len(weights) != num_classes or (weights < 0).any() or not (weights > 0).any():
        raise UserError(f"--class_weights={spec!r} must give {num_classes} non-negative weights, one positive")
    return weights


def weighted_train_fn(images: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, global_batch: int,
                      seed: int, recipe: augment.BatchRecipe | None = None):
    """The CIFAR training pipeline (pad-crop-flip by default) with (x, y, weights[y]) elements."""
    batches = in_memory.train_dataset_fn(images, labels, global_batch_size=global_batch, seed=seed, recipe=recipe)
    table = tf.constant(weights, tf.float32)

    def train_fn(ctx, epoch, start, independent=False):
        return batches(ctx, epoch, start, independent=independent).map(lambda x, y: (x, y, tf.gather(table, y)))

    return train_fn


@dataclasses.dataclass(frozen=True)
class WeightedClassificationOptions(Section):
    """The weighted_classification task's own settings (flags)."""

    class_weights: str = setting("balanced", "--task=weighted_classification: 'balanced' or one weight per class, "
                                 "comma-separated.")


class WeightedClassification(Task):
    name = "weighted_classification"
    options_class = WeightedClassificationOptions
    metrics = ("accuracy",)

    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        data = cifar10.load(config.data.data_dir, skip_bad=config.data.skip_bad_examples, progress=progress)
        weights = class_weights(config.option("class_weights"), data.train.labels, cifar10.NUM_CLASSES)
        return TaskData(
            train_fn=weighted_train_fn(data.train.images, data.train.labels, weights, global_batch=global_batch,
                                       seed=config.run.seed),
            steps_per_epoch=in_memory.steps_per_epoch(len(data.train.labels), global_batch),
            eval_data=in_memory.eval_dataset(data.test.images, data.test.labels, global_batch_size=global_batch),
            input_shape=cifar10.IMAGE_SHAPE, num_train=len(data.train.labels), num_eval=len(data.test.labels),
            source=f"{data.source}, class weights {', '.join(f'{w:.3g}' for w in weights)}",
            skipped=list(data.skipped),
            info={"image_shape": list(cifar10.IMAGE_SHAPE), "class_names": list(cifar10.CLASS_NAMES),
                  "normalize": {"kind": "channel", "mean": list(augment.CIFAR10_MEAN),
                                "std": list(augment.CIFAR10_STD)},
                  "class_weights": [float(w) for w in weights]})

    def model(self, config, data: TaskData) -> keras.Model:
        return models.build(config.model.name, num_classes=cifar10.NUM_CLASSES, input_shape=cifar10.IMAGE_SHAPE,
                            weight_decay=config.optimizer.weight_decay)

    def model_label(self, config, model) -> str:
        return config.model.name

    def trainer(self, config, *, model, optimizer, data, **kwargs) -> Trainer:
        return Trainer(model=model, optimizer=optimizer,
                       loss=sparse_categorical_crossentropy(label_smoothing=config.optimizer.label_smoothing),
                       eval_loss=sparse_categorical_crossentropy(), metrics=sparse_accuracy, **kwargs)


TASK = WeightedClassification()
