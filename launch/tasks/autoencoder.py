"""Denoising autoencoder on CIFAR-10 images: data without labels, a per-pixel loss.

    python -m launch.train --task=autoencoder --data_dir=../shared/data/cifar10 --model_dir=/tmp/dae \
        --optimizer=adam --learning_rate=0.002 --batch_size=128 --epochs=2 --lr_boundaries= \
        --lr_multipliers= --best_metric=eval_loss

The dataset yields images only (`x`, no `y`): the model corrupts its input with
Gaussian noise in training (keras.layers.GaussianNoise) and reconstructs it;
compute_loss returns the squared error per pixel, [batch, 32, 32], which the
engine averages over the pixels and the global batch (Keras's
"sum_over_batch_size"). Vincent et al., "Extracting and Composing Robust
Features with Denoising Autoencoders", 2008. Images are scaled to [-1, 1].
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from datasets import augment, cifar10, in_memory
from engine import Trainer
from launch.config import NON_NEGATIVE, Section, setting
from launch.tasks.base import Task, TaskData


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8-valued images [..., 3] -> float32 in [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def image_data(train_images: np.ndarray, eval_images: np.ndarray, *, global_batch: int, seed: int):
    """(train_fn yielding x only, eval dataset of x only, steps per epoch) for unlabelled images.

    Args:
      train_images, eval_images: uint8 [N, h, w, 3].
    """
    labels = np.zeros(len(train_images), np.int32)  # in_memory's pipelines carry a label; dropped here
    batches = in_memory.train_dataset_fn(train_images, labels, global_batch_size=global_batch, seed=seed,
                                         recipe=augment.BatchRecipe(), normalize=to_unit_range)

    def train_fn(ctx, epoch, start, independent=False):
        return batches(ctx, epoch, start, independent=independent).map(lambda x, y: x)

    eval_data = in_memory.eval_dataset(eval_images, np.zeros(len(eval_images), np.int32),
                                       global_batch_size=global_batch, normalize=to_unit_range)
    return train_fn, eval_data.map(lambda x, y: x), in_memory.steps_per_epoch(len(train_images), global_batch)


class AutoencoderTrainer(Trainer):
    """Reconstructs x; the loss is the squared error per pixel (mean over channels), [batch, h, w]."""

    def compute_loss(self, x, y, y_pred, sample_weight):
        return tf.reduce_mean(tf.square(y_pred - x), axis=-1)  # [batch, h, w]


def denoising_autoencoder(input_shape=(32, 32, 3), *, noise: float = 0.1, width: int = 32) -> keras.Model:
    """Conv encoder (two stride-2 convolutions) and transposed-conv decoder; linear output in [-1, 1] units."""
    inputs = keras.Input(input_shape)
    x = keras.layers.GaussianNoise(noise)(inputs)  # only in training: the denoising corruption
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)  # [b, h/2, w/2, width]
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(x)  # [b, h/4, w/4, 2w]
    x = keras.layers.Conv2DTranspose(width, 3, strides=2, padding="same", activation="relu")(x)  # [b, h/2, w/2]
    outputs = keras.layers.Conv2DTranspose(input_shape[-1], 3, strides=2, padding="same")(x)  # [b, h, w, 3]
    return keras.Model(inputs, outputs, name="denoising_autoencoder")


@dataclasses.dataclass(frozen=True)
class AutoencoderOptions(Section):
    """The autoencoder task's own settings (flags)."""

    autoencoder_noise: float = setting(0.1, "--task=autoencoder: stddev of the Gaussian noise added to the input in "
                                       "training (images in [-1, 1]).", rule=NON_NEGATIVE)


class Autoencoder(Task):
    name = "autoencoder"
    options_class = AutoencoderOptions

    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        data = cifar10.load(config.data.data_dir, skip_bad=config.data.skip_bad_examples, progress=progress)
        train_fn, eval_data, steps = image_data(data.train.images, data.test.images, global_batch=global_batch,
                                                seed=config.run.seed)
        return TaskData(train_fn=train_fn, steps_per_epoch=steps, eval_data=eval_data,
                        input_shape=tuple(data.train.images.shape[1:]), num_train=len(data.train.images),
                        num_eval=len(data.test.images), source=data.source, skipped=list(data.skipped),
                        info={"image_shape": list(data.train.images.shape[1:]), "scale": "[-1, 1]"})

    def model(self, config, data: TaskData) -> keras.Model:
        return denoising_autoencoder(data.input_shape, noise=config.option("autoencoder_noise"))

    def trainer(self, config, *, model, optimizer, data, **kwargs) -> Trainer:
        return AutoencoderTrainer(model=model, optimizer=optimizer, **kwargs)


TASK = Autoencoder()
