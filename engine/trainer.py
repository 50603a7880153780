"""The Trainer: a custom training loop on tf.GradientTape under a tf.distribute strategy.

Loop shape, in the spirit of TF Model Garden's Orbit:
  * eager, per loop (engine/controller.py): choose how many steps to run, call the
    compiled loop, read the metrics, then the actions, one object each
    (engine/actions.py): summaries, rollback, hooks, checkpoint, best checkpoint,
    preemption;
  * graph, per loop (engine/loops.py): up to `steps_per_loop` steps, the count
    passed as a tensor so that changing it never retraces; each step is
    `strategy.run` of one replica's `train_step`.
This module holds the Trainer's construction and fit. The rest is one concept per
file: the run's state that checkpoints hold (engine/state.py, `self.state`), the
step contract (train_step, compute_loss, ...: engine/step.py), the update any
train_step applies (engine/update.py), the compiled loops and evaluate
(engine/loops.py), checkpoints (engine/checkpoint.py), hooks (engine/hooks.py),
and the interface the Controller drives (engine/run_control.py; the Controller
reads nothing private). A new task subclasses Trainer and overrides
`compute_loss`, `train_step` / `test_step` or `update_metrics`; the loop, the
distribution and the checkpoints stay as they are.

Steps and data position: `step` counts the global batches consumed. It is saved in
every checkpoint and, with the seed, fixes where the data stands (see
engine/inputs.py). The optimizer's own `iterations` counts the updates applied
and drives the learning-rate schedule; the two differ only by the updates that the
non-finite guard skipped.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from engine import distribution
from engine.checkpoint import BestCheckpoint, CheckpointMixin, Checkpointer
from engine.controller import Controller
from engine.hooks import HooksMixin
from engine.inputs import DatasetInput, EpochInput, untune_device_datasets
from engine.loops import LoopsMixin
from engine.options import CheckpointOptions, GuardOptions, KernelOptions, LookaheadOptions
from engine.preemption import StopRequest
from engine import tta
from engine.rollback import NonFiniteError, NonFiniteGuard
from engine.run_control import RunControlMixin
from engine.schedules import ScaledSchedule
from engine.state import RunState
from engine.summaries import Summaries
from engine.step import StepMixin
from engine.update import UpdateMixin
from engine.errors import UserError


__all__ = ["Trainer", "NonFiniteError", "sparse_accuracy", "MetricsFactory"]  # NonFiniteError: from engine.rollback

MetricsFactory = Callable[[], Mapping[str, keras.metrics.Metric]]


def sparse_accuracy() -> dict[str, keras.metrics.Metric]:
    """The classification metrics factory: {"accuracy": SparseCategoricalAccuracy}."""
    return {"accuracy": keras.metrics.SparseCategoricalAccuracy(name="accuracy")}


class Trainer(StepMixin, UpdateMixin, LoopsMixin, CheckpointMixin, HooksMixin, RunControlMixin):
    """Trains, evaluates and checkpoints a Keras model with a custom distributed loop.

    The subclassing contract, the shape Keras's trainer has (all per replica, in
    the compiled step; override what a task changes, keep the rest):

        unpack(data) -> (x, y, sample_weight)        x | (x,) | (x, y) | (x, y, w)
        compute_loss(x, y, y_pred, sample_weight)    per-example losses [batch, ...]
        train_step(data) / test_step(data)           one replica's batch
        update_metrics(x, y, y_pred, sample_weight)  the task's metrics
        apply_gradients(gradients, variables, optimizer=None)
            the public update: accumulation, the non-finite guard, loss-scale
            unscaling; the weights' moving average follows every applied update
        checkpoint_items() -> {name: trackable}      extra state to checkpoint

    The engine reduces the losses (`reduce_loss`): mean over the axes after the
    batch, weighted, summed and divided by the global batch, plus the model's
    regularisation: Keras's "sum_over_batch_size" value. A custom train_step
    that applies its update otherwise while ema_decay, accumulation or the guard
    is on raises at its first trace.

    Build the model and the optimizer under `strategy.scope()` first. The Trainer
    builds the optimizer's slot variables there (Keras 3 creates them lazily, and a
    distributed step that creates them fails; see BUILD_NOTES.md), creates its
    metrics, and, with a model_dir, restores the newest readable checkpoint at the
    start of `fit`, so that rerunning the same job resumes at the saved step with
    that step's learning rate and data position.

    Args:
      model: a keras.Model (Sequential, functional or subclassed) mapping features
        to outputs; its `losses` (regularisation) are added to the loss.
      optimizer: a keras optimizer, or a dict of names to optimizers (a GAN's
        "generator" and "discriminator"; `self.optimizers[name]`, the first one
        is `self.optimizer`). A LearningRateSchedule given to one reads its
        `iterations` (updates applied). With one optimizer the Trainer builds it
        for model.trainable_variables; each of a dict must be built already.
        All are checkpointed, restored and scaled by rollbacks.
      loss: callable (y, y_pred) -> float per-example losses [batch, ...] (a
        keras loss built with reduction=None qualifies), used by the default
        `compute_loss`; None when a subclass overrides compute_loss or train_step.
      global_batch_size: examples per step over all replicas; the loss is averaged
        over it (tf.nn.compute_average_loss), so gradients summed over replicas
        equal those of one replica on the whole batch.
      strategy: tf.distribute strategy; the default (no distribution) when None.
      model_dir: folder for checkpoints (`ckpt-<step>`), summaries (`train/`,
        `eval/`) and the best checkpoint (`best/`); None trains without them.
      metrics: factory returning named keras metrics that `update_metrics`
        updates with (y, y_pred, sample_weight); called twice, for training and
        for evaluation. Default: none (e.g. `sparse_accuracy` for a classifier).
        A mean "loss" metric is always there.
      steps_per_loop: steps per call of the compiled loop; metrics, summaries and
        the progress bar are updated between calls. Larger is faster, coarser.
      checkpoint: CheckpointOptions (engine/options.py): periodic checkpoints,
        how many to keep, the best checkpoint's metric.
      guard: GuardOptions: the non-finite guard, rollbacks and their limit.
      progress: show a tqdm progress bar per epoch (a summary line per epoch, and
        lines on restore and stop, are printed either way).
      hooks: objects with any of on_train_begin / on_loop_end / on_epoch_end /
        on_train_end (see engine/hooks.py); more with add_hook.
      eval_loss: per-example loss for evaluation; default `loss` (pass the plain
        loss here when `loss` adds label smoothing).
      accumulation_steps: k >= 1: accumulate the gradients of k consecutive
        global batches (micro-batches) and apply them as one update, equal to one
        step on the k-times batch. `global_batch_size` is the micro-batch; `step`
        counts micro-batches (the data position); the optimizer's iterations, and
        so the learning-rate schedule, count updates.
      ema_decay: keep an exponential moving average of the model's weights,
        shadow = decay * shadow + (1 - decay) * weights after every update (the
        trainable and the BatchNorm statistics); evaluation, the best checkpoint
        and export use the averages. None for no average. Typical: 0.999.
      kernels: KernelOptions: the fused BatchNorm kernel, synchronized BatchNorm,
        XLA.
      lookahead: LookaheadOptions: slow weights synced every k updates (Zhang
        et al. 2019; airbench's ramped variant), saved with every checkpoint;
        None for none. Applied before the moving average when both are on.
      test_time_augmentation: "none", "flip" or "flip_translate": evaluation
        (test_step) averages the model's outputs over mirrored and translated
        copies of image inputs [batch, h, w, c] (engine/tta.py, airbench's TTA).

    Raises:
      ValueError: if the loss reduces over the batch, the global batch is not
        divisible by the replicas, the model's variables were not created under
        `strategy.scope()`, or another argument is out of range.
    """

    def __init__(
        self,
        *,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer | Mapping[str, keras.optimizers.Optimizer],
        global_batch_size: int,
        loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        eval_loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        metrics: MetricsFactory | None = None,
        strategy: tf.distribute.Strategy | None = None,
        model_dir: str | None = None,
        steps_per_loop: int = 100,
        progress: bool = True,
        hooks: Sequence[object] = (),
        accumulation_steps: int = 1,
        ema_decay: float | None = None,
        checkpoint: CheckpointOptions = CheckpointOptions(),
        guard: GuardOptions = GuardOptions(),
        kernels: KernelOptions = KernelOptions(),
        test_time_augmentation: str = "none",
        lookahead: LookaheadOptions | None = None,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if global_batch_size < 1 or global_batch_size % replicas:
            raise UserError(f"global batch {global_batch_size} is not a positive multiple of {replicas} replicas")
        if steps_per_loop < 1:
            raise UserError(f"steps_per_loop={steps_per_loop} must be at least 1")
        if accumulation_steps < 1:
            raise UserError(f"accumulation_steps={accumulation_steps} must be at least 1")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise UserError(f"ema_decay={ema_decay} must be in (0, 1)")
        for fn in (loss, eval_loss):
            if isinstance(fn, keras.losses.Loss) and fn.reduction not in (None, "none"):
                raise UserError(f"loss {fn.name} reduces with {fn.reduction!r}; build it with reduction=None "
                                 "so the Trainer can average over the global batch")
        if isinstance(optimizer, Mapping):
            if not optimizer:
                raise UserError("optimizer={} names no optimizer")
            self.optimizers = dict(optimizer)
        else:
            self.optimizers = {"optimizer": optimizer}
        self.model = model
        self.optimizer = next(iter(self.optimizers.values()))  # The main one: apply_gradients' default.
        self.loss = loss
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.steps_per_loop = steps_per_loop
        # The groups' settings, read where they are used (the controller, the guard, the loops).
        self.checkpoint_every_steps = checkpoint.every_steps
        self.nonfinite_limit = guard.nonfinite_limit
        self.nonfinite_action = guard.action
        self.rollback_lr_factor = guard.rollback_lr_factor
        self.max_rollbacks = guard.max_rollbacks
        self.progress = progress
        untune_device_datasets()  # Quick iterator deletion (engine/inputs.py).
        self.eval_loss = eval_loss or loss
        self.accumulation_steps = accumulation_steps
        self.ema_decay = ema_decay
        self.lookahead = lookahead
        self.fused_batch_norm = kernels.fused_batch_norm
        self.sync_batch_norm = kernels.sync_batch_norm
        self.jit_compile = jit_compile = kernels.jit_compile
        self.test_time_augmentation = tta.check_mode(test_time_augmentation)
        # The per-replica compute, XLA-compiled on request (nested in the loop's
        # tf.function: the iterator and the cross-replica update cannot be).
        self._gradients = (tf.function(self.forward_backward, jit_compile=True) if jit_compile
                           else self.forward_backward)
        self._mode = "train"  # Which step is being traced: "train" or "eval" (see `metrics`).
        self._apply_calls = 0  # apply_gradients calls traced, to catch a train_step that makes none.
        self._infer = (tf.function(self._infer_fn, jit_compile=True) if jit_compile else self._infer_fn)
        self._hooks: list[object] = list(hooks)
        self._stop_request: str | None = None  # A hook's request_stop reason (engine/hooks.py).
        self.evaluates = False  # Whether the current run has eval data (set by begin_run).
        self._held_iterator = None  # (position, iterator) kept between runs: engine/run_control.py.
        self.retraces: list[str] = []  # Warnings of step functions traced again after warm-up.
        self._traced: dict[str, str] = {}
        self._stop = StopRequest()
        metrics = metrics or dict
        with self.strategy.scope():
            self.train_metrics = {"loss": keras.metrics.Mean(name="loss"), **metrics()}
            self.eval_metrics = {"loss": keras.metrics.Mean(name="loss"), **metrics()}
        # The run's state (step, counters, copies of the weights): engine/state.py.
        self.state = RunState(self.strategy)
        # Seconds the compiled loop waited for input since the last read; made
        # outside the strategy's scope (a plain host variable), not saved.
        self._input_wait = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="input_wait")
        for opt in self.optimizers.values():
            if isinstance(opt._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                # Lets a rollback lower a scheduled rate; the value is unchanged at scale 1.
                opt.learning_rate = ScaledSchedule(opt._learning_rate, self.state.lr_scale)
        # Multi-worker: every worker takes part in saves, only the chief's are kept,
        # and only the chief writes summaries and progress.
        self.is_chief = distribution.is_chief(self.strategy)
        resolver = getattr(self.strategy, "cluster_resolver", None)
        self.multi_worker = bool(resolver and resolver.cluster_spec().as_dict())
        self._scratch = (os.path.join(model_dir, ".scratch", f"worker-{distribution.worker_index(self.strategy)}")
                         if model_dir and not self.is_chief else None)
        # One optimizer keeps the name "optimizer" (checkpoints of earlier versions read on).
        optimizers = dict(optimizer=self.optimizer) if not isinstance(optimizer, Mapping) else \
            dict(optimizers=self.optimizers)
        trackables = dict(model=model, **optimizers, **self.state.checkpoint_objects())
        self.checkpointer = (Checkpointer(model_dir, max_to_keep=checkpoint.keep, scratch_directory=self._scratch,
                                          **trackables) if model_dir else None)
        best_metric = checkpoint.best_metric
        self.best = (BestCheckpoint(os.path.join(self._scratch or model_dir, "best"), best_metric, model=model)
                     if model_dir and best_metric else None)
        if best_metric and not model_dir:
            raise UserError(f"best_metric={best_metric!r} needs a model_dir to keep the checkpoint in")
        self._restored = False
        self._announced = False
        self.restored_from: str | None = None  # checkpoint restored at start, if any
        self.stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when fit stopped early on a signal
        self.summaries = Summaries(model_dir, enabled=self.is_chief)
        self.guard = NonFiniteGuard(self)
        # Parameter-server training: this process is the coordinator; it schedules
        # steps on the workers and evaluates itself.
        self._coordinator = (tf.distribute.coordinator.ClusterCoordinator(self.strategy)
                             if isinstance(self.strategy, tf.distribute.experimental.ParameterServerStrategy) else None)
        for opt in self.optimizers.values():
            if self._coordinator and isinstance(opt._learning_rate, ScaledSchedule):
                # Concurrent workers can lose increments of the optimizer's iterations;
                # the schedule follows the Trainer's step counter instead.
                opt._learning_rate.step = self.state.step
        self._items_attached = False
        if self.model_built:
            self._create_model_state()
        # Compiled once; the loop count is a tensor argument, so no retracing.
        self._train_loop = tf.function(self._with_kernels(self._train_loop_fn))
        self._eval_loop = tf.function(self._with_kernels(self._eval_loop_fn if not self._coordinator
                                                         else self._inline_eval_fn))

    @property
    def model_built(self) -> bool:
        """Whether the model's variables exist (a subclassed model gets them on its first call)."""
        return bool(self.model.built and self.model.variables)

    def _create_model_state(self) -> None:
        """What needs the model's variables: the optimizer's slots, accumulators, moving averages.

        Raises:
          ValueError: if a model variable was not created under the strategy's scope.
        """
        model = self.model
        for v in model.variables:
            # A Keras 3 variable wraps the tf.Variable that tf.distribute placed.
            if not self.strategy.extended.variable_created_in_scope(getattr(v, "value", v)):
                raise UserError(f"variable {v.path if hasattr(v, 'path') else v.name} of model {model.name} was "
                                 "not created under strategy.scope(); build the model inside it")
        with self.strategy.scope():
            if len(self.optimizers) == 1 and not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
            for name, opt in self.optimizers.items():
                if not opt.built:  # Which variables each one updates is the task's to say.
                    raise UserError(f"optimizer {name!r} is not built: call its build(variables) under "
                                     "strategy.scope() with the variables it will update, before creating the "
                                     "Trainer (Keras 3 creates slot variables lazily, which fails in a "
                                     "distributed step)")
        self.state.create_weight_state(model, self.strategy, accumulate=self.accumulation_steps > 1,
                                       ema=bool(self.ema_decay), lookahead=bool(self.lookahead))
        if self.checkpointer:
            self.state.attach(self.checkpointer)

    def build_model(self, element_spec) -> None:
        """Creates the model's variables from a batch's spec, under the strategy's scope; no-op if built.

        Called by `fit` before anything is restored or saved, so a subclassed
        model that was never called trains as any other, and no checkpoint of an
        empty model is written.

        Args:
          element_spec: the training dataset's element spec; its features
            (see `Trainer.unpack`) are fed as zeros, one example, training=False.

        Raises:
          ValueError: naming the fix, if calling the model on such features fails.
        """
        if self.model_built:
            return
        features = element_spec[0] if isinstance(element_spec, tuple) else element_spec
        zeros = tf.nest.map_structure(
            lambda spec: tf.zeros([1 if d is None else d for d in spec.shape],
                                  spec.dtype), features)
        try:
            with self.strategy.scope():
                self.model(zeros, training=False)
        except Exception as e:  # Anything the model's own code raises: say what to do instead.
            detail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())[:300]  # Keras's text, one line
            raise UserError(f"model {self.model.name} has no variables yet and calling it on the first batch's "
                             f"features ({features}) failed ({type(e).__name__}: {detail}); build it under "
                             "strategy.scope() before creating the Trainer") from e
        if not self.model_built:
            raise UserError(f"model {self.model.name} still has no variables after a call on the first batch's "
                             "features; build it under strategy.scope() before creating the Trainer")
        self._create_model_state()

    # --- Public API (eager) ----------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Global batches consumed so far (restored with the checkpoint)."""
        return int(self.state.step.numpy())

    @property
    def nonfinite_steps(self) -> int:
        """Steps whose update was skipped as non-finite, over the whole run."""
        return int(self.state.nonfinite_steps.numpy())

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next update."""
        return float(np.asarray(self.optimizer.learning_rate))

    def fit(
        self,
        train_input: EpochInput | DatasetInput | tf.data.Dataset,
        eval_data: tf.data.Dataset | None = None,
        *,
        epochs: float | None = None,
        train_steps: int | None = None,
        eval_every_epochs: int = 1,
    ) -> dict[str, list[float]]:
        """Trains to `train_steps` (or `epochs`) total steps, resuming from model_dir.

        Evaluates on `eval_data` after every epoch (or every `eval_every_epochs`-th)
        and at the end, checkpoints at each epoch end (and every
        `checkpoint_every_steps`), keeps the best checkpoint, and writes summaries
        to model_dir/train and model_dir/eval.
        On SIGTERM or SIGINT it finishes the current step, checkpoints, prints
        where, sets `stopped_by` and returns.

        A fit that ends inside an epoch keeps its input iterator; the next fit
        on the same input (the same EpochInput or DatasetInput, or the same
        tf.data.Dataset object) from that step goes on reading it, as Orbit's
        trainers keep theirs across `train(num_steps)` calls: the pipeline is
        not rebuilt and skipped to the step, and a shuffled dataset's epoch
        goes on in one order. Any other start (another input, a restore or
        rollback to another step) opens a new iterator at the step.

        Args:
          train_input: an EpochInput, a DatasetInput, or a finite tf.data.Dataset of
            global batches (one pass per epoch).
          eval_data: finite tf.data.Dataset of global batches, or None.
          epochs: epochs to train in total, counted from step 0 (a resumed run
            does the rest). Ignored when train_steps is given.
          train_steps: steps to train in total; overrides epochs.
          eval_every_epochs: evaluate only at the end of every N-th epoch (counted
            from step 0) and at the last step, as Keras's `validation_freq`.

        Returns:
          History: names to lists with one value per epoch end (and one at the end
          of a run that had nothing left to train; NaN in the eval metrics of the
          epochs `eval_every_epochs` skips): "step", "epoch", "learning_rate",
          "examples_per_second", "input_wait_percent" (not under op determinism or parameter-server
          training), "nonfinite_steps", the train metrics, and the eval metrics
          prefixed with "eval_". Hooks (see engine/hooks.py) run at train begin,
          each loop end, each epoch end and train end; one may end training early
          with request_stop, which sets `stopped_by` to its reason.

        Raises:
          ValueError: if neither epochs nor train_steps is positive, eval_every_epochs
            is below 1, or the checkpoint in model_dir does not fit the model.
          NonFiniteError: after `nonfinite_limit` non-finite steps in a row with
            nonfinite_action="stop", or when a rollback has no checkpoint to go to.
        """
        if isinstance(train_input, tf.data.Dataset):
            train_input = DatasetInput(train_input)
        steps_per_epoch = train_input.steps_per_epoch
        if train_steps is not None:
            if train_steps < 1:
                raise UserError(f"train_steps={train_steps} must be at least 1")
            total = int(train_steps)
        elif epochs is not None and epochs > 0:
            total = int(round(epochs * steps_per_epoch))
        else:
            raise UserError(f"epochs={epochs} must be positive (or give train_steps)")
        if eval_every_epochs < 1:
            raise UserError(f"eval_every_epochs={eval_every_epochs} must be at least 1")
        self.build_model(train_input.element_spec)  # Before anything is restored or saved.
        self.restore()
        step = self.global_step
        if self.restored_from and not self._announced:  # Once per Trainer.
            self.say(f"restored {self.restored_from}: resuming at step {step} (epoch {step // steps_per_epoch + 1}, "
                     f"learning rate {self.learning_rate:.4g})")
        self._announced = True
        return Controller(self, train_input, eval_data, total, int(eval_every_epochs)).run()
