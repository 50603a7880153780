"""A CIFAR-10 training run from a TrainConfig: strategy, data, model, Trainer."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

import models
from datasets import cifar10, in_memory
from engine import EpochInput, Trainer, configure_cpu_devices, create_strategy, piecewise_constant_by_epoch
from engine.progress import EpochProgress
from launch.config import TrainConfig


@dataclasses.dataclass
class Run:
    """A prepared run: everything checked and built, nothing trained yet.

    Attributes:
      config: the run's configuration.
      trainer: the Trainer, its checkpoint (if any) already restored.
      train_input: per-epoch training input.
      eval_data: the test split, every example once.
    """

    config: TrainConfig
    trainer: Trainer
    train_input: EpochInput
    eval_data: tf.data.Dataset

    def train(self) -> dict[str, list[float]]:
        """Trains to the configured end, evaluating each epoch; returns the history."""
        return self.trainer.fit(self.train_input, self.eval_data,
                                epochs=self.config.epochs, train_steps=self.config.train_steps)


def prepare(config: TrainConfig) -> Run:
    """Builds and checks a run; all bad input fails here, before any training.

    Nothing is written to config.model_dir by this function.

    Raises:
      ValueError: a bad data_dir or file in it, a global batch not divisible by the
        replicas, bad learning-rate boundaries, or a checkpoint in model_dir that
        does not fit the model; the message names the flag, path or value.
    """
    configure_cpu_devices(config.num_cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = create_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.global_batch(replicas)
    data = cifar10.load(config.data_dir)
    steps_per_epoch = in_memory.steps_per_epoch(len(data.train.labels), global_batch)
    EpochProgress.write(
            f"{data.source}: {len(data.train.labels)} train, {len(data.test.labels)} test examples; "
            f"{replicas} replica(s), per-replica batch {global_batch // replicas}, global batch {global_batch}, "
            f"{steps_per_epoch} steps per epoch")
    train_input = EpochInput(
        in_memory.train_dataset_fn(data.train.images, data.train.labels,
                                   global_batch_size=global_batch, seed=config.seed),
        steps_per_epoch)
    eval_data = in_memory.eval_dataset(data.test.images, data.test.labels, global_batch_size=global_batch)
    schedule = piecewise_constant_by_epoch(config.scaled_learning_rate(global_batch), config.lr_boundaries,
                                           config.lr_multipliers, steps_per_epoch)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = models.build(config.model, num_classes=cifar10.NUM_CLASSES, weight_decay=config.weight_decay)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    EpochProgress.write(f"model {config.model} ({model.count_params():,} parameters), SGD momentum "
                        f"{config.momentum}, learning rate {config.scaled_learning_rate(global_batch):g}")
    trainer = Trainer(
        model=model, optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
        global_batch_size=global_batch, strategy=strategy, model_dir=config.model_dir,
        steps_per_loop=config.steps_per_loop, checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints, nonfinite_limit=config.nonfinite_limit or None,
        nonfinite_action=config.nonfinite_action, rollback_lr_factor=config.rollback_lr_factor,
        best_metric=config.best_metric or None, progress=config.progress)
    trainer.restore()
    return Run(config, trainer, train_input, eval_data)
