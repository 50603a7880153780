"""What a task provides to launch.train: data, model, Trainer, metrics, flags."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from engine import Trainer
from engine.errors import UserError


@dataclasses.dataclass
class TaskData:
    """A task's input pipelines and what the run prints and saves about them.

    Attributes:
      train_fn: dataset_fn(input_context, epoch, start_step, independent=False)
        for engine.EpochInput, yielding per-replica batches of the elements the
        task's Trainer unpacks (x, (x, y) or (x, y, sample_weight)).
      steps_per_epoch: training steps per epoch.
      eval_data: tf.data.Dataset of global batches (every example once), or None.
      input_shape: one example's model input shape, e.g. (32, 32, 3).
      num_train, num_eval: examples in each split.
      source: a line naming where the data came from.
      skipped: one line per bad example left out (--skip_bad_examples).
      info: what the task saves in run.json for export, predict and evaluate
        (e.g. class names and normalisation).
      runtime: what the task's model builder hands to the run, not saved (e.g.
        the transfer backbone that fine-tuning unfreezes).
    """

    train_fn: Callable
    steps_per_epoch: int
    eval_data: tf.data.Dataset | None
    input_shape: tuple[int, ...]
    num_train: int
    num_eval: int
    source: str
    skipped: list[str] = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)
    runtime: dict = dataclasses.field(default_factory=dict)


class Task:
    """One kind of training job; subclass it in launch/tasks/<name>.py and set `TASK = YourTask()`.

    Attributes:
      name: the --task value.
      metrics: the metric names the task reports besides "loss" (its
        --best_metric may be "eval_" + any of them, or eval_loss).
      options_class: the task's own settings, a frozen dataclass of
        launch.config.setting fields (named with the task's prefix, e.g.
        gan_latent_dim); each becomes a flag, and config.option(name) reads it.
      selects_classes: the task applies --classes and --labels_per_class.
    """

    name: str = ""
    metrics: Sequence[str] = ()
    options_class: type | None = None
    selects_classes: bool = False


    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        """Builds the input pipelines for a global batch of `global_batch` examples.

        Raises:
          ValueError: naming the flag, file or line at fault.
        """
        raise NotImplementedError

    def model(self, config, data: TaskData) -> keras.Model:
        """Builds the model (called under the strategy's scope)."""
        raise NotImplementedError

    def trainer(self, config, *, model: keras.Model, optimizer, data: TaskData,
                **kwargs) -> Trainer:
        """Builds the task's Trainer; `kwargs` are the engine options from the flags.

        The default is the plain Trainer with `loss()` and `metric_factory()`.
        """
        return Trainer(model=model, optimizer=optimizer, loss=self.loss(config), metrics=self.metric_factory(),
                       **kwargs)

    def loss(self, config):
        """Per-example loss (y, y_pred) -> [batch, ...] for the default Trainer; None if it computes its own."""
        return None

    def metric_factory(self) -> Callable[[], Mapping[str, keras.metrics.Metric]] | None:
        """The Trainer's `metrics` factory (names as in `metrics`)."""
        return None

    def model_label(self, config, model) -> str:
        """How the start line names the model."""
        return model.name

    def check(self, config) -> None:
        """Refuses flags the task cannot serve (UserError naming the flag); called before anything is built.

        The default refuses --classes and --labels_per_class unless the task sets
        `selects_classes` (it applies them in `data`): a subset flag that a task
        ignored would train on data the user did not ask for.
        """
        if not self.selects_classes:
            for flag in ("classes", "labels_per_class"):
                if getattr(config.data, flag) not in ((), None):
                    raise UserError(f"--{flag} applies to image classification; the {self.name} task does not "
                                    "select its examples by class")
