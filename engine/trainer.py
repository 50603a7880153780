"""The Trainer: a custom training loop on tf.GradientTape under a tf.distribute strategy.

Loop shape, in the spirit of TF Model Garden's Orbit:
  * eager, per loop: choose how many steps to run, call the compiled loop, read the
    metrics, write summaries, advance the progress bar, checkpoint;
  * graph, per loop: `steps_per_loop` steps, the count passed as a tensor so that
    changing it never retraces; each step is `strategy.run(train_step, ...)`.
A new task subclasses Trainer and overrides `train_step` / `eval_step` (or only
`compute_loss`); the loop, the distribution and the checkpoints stay as they are.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from engine.checkpoint import Checkpointer
from engine.inputs import DatasetInput, EpochInput
from engine.progress import EpochProgress, format_value

# Upper bound for the in-graph evaluation loop, which stops when the data ends.
_MAX_EVAL_STEPS = 2**62

MetricsFactory = Callable[[], Mapping[str, keras.metrics.Metric]]


def _default_metrics() -> dict[str, keras.metrics.Metric]:
    return {"accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}


class Trainer:
    """Trains, evaluates and checkpoints a Keras model with a custom distributed loop.

    Build the model and the optimizer under `strategy.scope()` first. The Trainer
    builds the optimizer's slot variables there (Keras 3 creates them lazily, and a
    distributed step that creates them fails; see BUILD_NOTES.md), creates its
    metrics, and, with a model_dir, restores the newest checkpoint at the start of
    `fit`, so that rerunning the same job resumes at the saved step with the
    learning rate of that step.

    Args:
      model: a keras.Model (Sequential, functional or subclassed) mapping features
        to outputs; its `losses` (regularisation) are added to the loss.
      optimizer: a keras optimizer; its `iterations` is the run's global step, and a
        LearningRateSchedule given to it reads that step.
      loss: callable (labels, outputs) -> float32 per-example losses [batch]; a
        keras loss built with reduction=None qualifies.
      global_batch_size: examples per step over all replicas; the loss is averaged
        over it (tf.nn.compute_average_loss), so gradients summed over replicas
        equal those of one replica on the whole batch.
      strategy: tf.distribute strategy; the default (no distribution) when None.
      model_dir: folder for checkpoints (`ckpt-<step>`) and summaries (`train/`,
        `eval/`); None trains without either.
      metrics: factory returning named keras metrics updated with (labels,
        outputs); called twice, for training and for evaluation. Default: accuracy
        for sparse labels. A mean "loss" metric is always added.
      steps_per_loop: steps per call of the compiled loop; metrics, summaries and
        the progress bar are updated between calls. Larger is faster, coarser.
      checkpoint_every_steps: also checkpoint every this many steps (checkpoints
        are always written at each epoch end); None for epoch ends only.
      keep_checkpoints: how many recent checkpoints to keep.
      progress: show a tqdm progress bar per epoch (a summary line per epoch, and
        lines on restore and interruption, are printed either way).

    Raises:
      ValueError: if the loss reduces over the batch, the global batch is not
        divisible by the replicas, or the model's variables were not created under
        `strategy.scope()`.
    """

    def __init__(
        self,
        *,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        global_batch_size: int,
        strategy: tf.distribute.Strategy | None = None,
        model_dir: str | None = None,
        metrics: MetricsFactory | None = None,
        steps_per_loop: int = 100,
        checkpoint_every_steps: int | None = None,
        keep_checkpoints: int = 3,
        progress: bool = True,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if global_batch_size < 1 or global_batch_size % replicas:
            raise ValueError(f"global batch {global_batch_size} is not a positive multiple of {replicas} replicas")
        if steps_per_loop < 1:
            raise ValueError(f"steps_per_loop={steps_per_loop} must be at least 1")
        if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps={checkpoint_every_steps} must be at least 1")
        if isinstance(loss, keras.losses.Loss) and loss.reduction not in (None, "none"):
            raise ValueError(f"loss {loss.name} reduces with {loss.reduction!r}; build it with reduction=None "
                             "so the Trainer can average over the global batch")
        for v in model.variables:
            # A Keras 3 variable wraps the tf.Variable that tf.distribute placed.
            if not self.strategy.extended.variable_created_in_scope(getattr(v, "value", v)):
                raise ValueError(f"variable {v.path if hasattr(v, 'path') else v.name} of model {model.name} was "
                                 "not created under strategy.scope(); build the model inside it")
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.steps_per_loop = steps_per_loop
        self.checkpoint_every_steps = checkpoint_every_steps
        self.progress = progress
        metrics = metrics or _default_metrics
        with self.strategy.scope():
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            self.train_metrics = {"loss": keras.metrics.Mean(name="loss"), **metrics()}
            self.eval_metrics = {"loss": keras.metrics.Mean(name="loss"), **metrics()}
        self.checkpointer = (Checkpointer(model_dir, max_to_keep=keep_checkpoints, model=model, optimizer=optimizer)
                             if model_dir else None)
        self._restored = False
        self._announced = False
        self.restored_from: str | None = None  # checkpoint restored at start, if any
        self._last_saved_step: int | None = None
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        # Compiled once; the loop count is a tensor argument, so no retracing.
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_loop = tf.function(self._eval_loop_fn)

    # --- Per-replica step functions (graph; override in subclasses) ---------------

    def compute_loss(self, labels: tf.Tensor, outputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Loss of one replica's batch, scaled for summing over replicas.

        Returns:
          (scalar loss to differentiate, float32 per-example data losses [batch]).
          The scalar is the per-example losses summed and divided by the global
          batch, plus the model's regularisation losses divided by the replicas.
        """
        per_example = tf.cast(self.loss(labels, outputs), tf.float32)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
        if self.model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        return loss, per_example

    def train_step(self, inputs) -> None:
        """One optimizer step on one replica's batch (features, labels)."""
        features, labels = inputs
        with tf.GradientTape() as tape:
            outputs = self.model(features, training=True)
            loss, per_example = self.compute_loss(labels, outputs)
        variables = self.model.trainable_variables
        # The optimizer sums gradients over replicas before applying them.
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self._update_metrics(self.train_metrics, labels, outputs, per_example)

    def eval_step(self, inputs) -> None:
        """Updates the eval metrics with one replica's batch (features, labels)."""
        features, labels = inputs
        outputs = self.model(features, training=False)
        self._update_metrics(self.eval_metrics, labels, outputs, tf.cast(self.loss(labels, outputs), tf.float32))

    @staticmethod
    def _update_metrics(metrics, labels, outputs, per_example_loss):
        for name, metric in metrics.items():
            if name == "loss":
                metric.update_state(per_example_loss)
            else:
                metric.update_state(labels, outputs)

    # --- Compiled loops ---------------------------------------------------------------

    def _train_loop_fn(self, iterator, num_steps: tf.Tensor) -> None:
        for _ in tf.range(num_steps):
            self.strategy.run(self.train_step, args=(next(iterator),))

    def _eval_loop_fn(self, iterator) -> None:
        for _ in tf.range(_MAX_EVAL_STEPS):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            self.strategy.run(self.eval_step, args=(optional.get_value(),))

    # --- Public API (eager) ----------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (restored with the checkpoint)."""
        return int(self.optimizer.iterations.numpy())

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step."""
        return float(np.asarray(self.optimizer.learning_rate))

    def restore(self) -> str | None:
        """Restores the newest checkpoint in model_dir, once; returns its path or None.

        Raises:
          ValueError: if the checkpoint does not fit the model (see Checkpointer).
        """
        if self.checkpointer and not self._restored:
            self.restored_from = self.checkpointer.restore_latest()
            self._last_saved_step = self.global_step if self.restored_from else None
        self._restored = True
        return self.restored_from

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Evaluates on every example of `data` once, the last partial batch included.

        Args:
          data: finite tf.data.Dataset of (features, labels) global batches; a
            partial last batch is split over the replicas as it comes.

        Returns:
          Metric names to float values (e.g. {"loss": 0.9, "accuracy": 0.7}).
        """
        for metric in self.eval_metrics.values():
            metric.reset_state()
        # A fresh iterator each time: evaluation always starts at the first batch.
        self._eval_loop(iter(self.strategy.experimental_distribute_dataset(data)))
        return {name: float(m.result()) for name, m in self.eval_metrics.items()}

    def fit(
        self,
        train_input: EpochInput | DatasetInput | tf.data.Dataset,
        eval_data: tf.data.Dataset | None = None,
        *,
        epochs: float | None = None,
        train_steps: int | None = None,
    ) -> dict[str, list[float]]:
        """Trains to `train_steps` (or `epochs`) total steps, resuming from model_dir.

        Evaluates on `eval_data` after every epoch and at the end, checkpoints at
        each epoch end (and every `checkpoint_every_steps`), and writes summaries
        to model_dir/train and model_dir/eval. On Ctrl-C it checkpoints the steps
        done before re-raising.

        Args:
          train_input: an EpochInput, a DatasetInput, or a finite tf.data.Dataset of
            global batches (one pass per epoch).
          eval_data: finite tf.data.Dataset of global batches, or None.
          epochs: epochs to train in total, counted from step 0 (a resumed run
            does the rest). Ignored when train_steps is given.
          train_steps: optimizer steps to train in total; overrides epochs.

        Returns:
          History: names to lists with one value per evaluation point (epoch ends
          and the end): "step", "epoch", "learning_rate", "examples_per_second",
          the train metrics, and the eval metrics prefixed with "eval_".

        Raises:
          ValueError: if neither epochs nor train_steps is positive, or the
            checkpoint in model_dir does not fit the model.
        """
        if isinstance(train_input, tf.data.Dataset):
            train_input = DatasetInput(train_input)
        steps_per_epoch = train_input.steps_per_epoch
        if train_steps is not None:
            if train_steps < 1:
                raise ValueError(f"train_steps={train_steps} must be at least 1")
            total = int(train_steps)
        elif epochs is not None and epochs > 0:
            total = int(round(epochs * steps_per_epoch))
        else:
            raise ValueError(f"epochs={epochs} must be positive (or give train_steps)")
        num_epochs = math.ceil(total / steps_per_epoch)

        self.restore()
        step = self.global_step
        say = EpochProgress.write
        if self.restored_from and not self._announced:  # Once per Trainer.
            say(f"restored {self.restored_from}: resuming at step {step} (epoch {step // steps_per_epoch + 1}, "
                f"learning rate {self.learning_rate:.4g})")
        self._announced = True
        history: dict[str, list[float]] = {}
        first_loop = True
        try:
            while step < total:
                epoch, start = divmod(step, steps_per_epoch)
                epoch_end = min((epoch + 1) * steps_per_epoch, total)
                iterator = iter(train_input.distribute(self.strategy, epoch, start))
                for metric in self.train_metrics.values():
                    metric.reset_state()
                bar = EpochProgress(epoch=epoch, num_epochs=num_epochs, total_steps=epoch_end - epoch * steps_per_epoch,
                                    initial_step=start, enabled=self.progress)
                examples, seconds = 0, 0.0
                try:
                    while step < epoch_end:
                        n = min(self.steps_per_loop, epoch_end - step)
                        if self.checkpoint_every_steps:
                            n = min(n, self.checkpoint_every_steps - step % self.checkpoint_every_steps)
                        t0 = time.perf_counter()
                        self._train_loop(iterator, tf.constant(n, tf.int64))
                        logs = {name: float(m.result()) for name, m in self.train_metrics.items()}
                        dt = time.perf_counter() - t0  # Reading the metrics waited for the loop.
                        step += n
                        rate = n * self.global_batch_size / dt
                        if not first_loop or step == epoch_end:  # The first loop also traces.
                            examples, seconds = examples + n * self.global_batch_size, seconds + dt
                        first_loop = False
                        logs.update(learning_rate=self.learning_rate, examples_per_second=rate)
                        self._write_summaries("train", logs, step)
                        bar.update(n, logs)
                        if self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0:
                            self._save(step)
                finally:
                    bar.close()
                self._save(step)
                logs["examples_per_second"] = examples / seconds if seconds else logs["examples_per_second"]
                logs.update(step=step, epoch=step / steps_per_epoch)
                if eval_data is not None:
                    logs.update({f"eval_{k}": v for k, v in self._evaluate_and_log(eval_data, step).items()})
                for name, value in logs.items():
                    history.setdefault(name, []).append(value)
                say(f"epoch {epoch + 1}/{num_epochs} step {step}: " +
                    " ".join(f"{k}={format_value(v)}" for k, v in logs.items() if k not in ("step", "epoch")))
        except KeyboardInterrupt:
            if self.checkpointer:
                path = self._save(self.global_step)
                say(f"interrupted at step {self.global_step}; checkpoint {path}: rerun the same command to resume")
            raise
        finally:
            for writer in self._writers.values():
                writer.flush()
        if not history and eval_data is not None:  # Nothing left to train: report where the run stands.
            logs = {f"eval_{k}": v for k, v in self._evaluate_and_log(eval_data, step).items()}
            logs.update(step=step, epoch=step / steps_per_epoch)
            history = {k: [v] for k, v in logs.items()}
            say(f"already at step {step} of {total}: " + " ".join(f"{k}={format_value(v)}" for k, v in logs.items()))
        return history

    # --- Eager helpers ----------------------------------------------------------------

    def _evaluate_and_log(self, eval_data, step: int) -> dict[str, float]:
        results = self.evaluate(eval_data)
        self._write_summaries("eval", results, step)
        return results

    def _save(self, step: int) -> str | None:
        """Checkpoints at `step` unless that step is saved already; returns the path."""
        if not self.checkpointer:
            return None
        if step != self._last_saved_step:
            self.checkpointer.save(step)
            self._last_saved_step = step
        return self.checkpointer.latest

    def _write_summaries(self, split: str, logs: Mapping[str, float], step: int) -> None:
        if not self.model_dir:
            return
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.model_dir, split))
        with self._writers[split].as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
