"""The Trainer's side of the Controller's interface (a mixin): iterators, stops, evaluation, output.

engine/controller.py drives any object with the members its `ControlledTrainer`
protocol lists; the Trainer gets the ones no other mixin gives from here. Each
is public and documented, so the Controller (and a test's fake trainer) never
reads a private Trainer field.
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np
import tensorflow as tf

from engine import inputs
from engine.actions import Actions, BestCheckpointAction, CheckpointAction, HookActions
from engine.preemption import checkpoint_handler
from engine.progress import EpochProgress
from engine.schedules import ScaledSchedule


class RunControlMixin:
    """Iterator lifetime, the run's stop state, evaluation with the best checkpoint, and output lines."""

    # --- The training iterator ------------------------------------------------------

    def open_iterator(self, train_input, epoch: int, start: int):
        """The distributed iterator of `train_input` for `epoch` from step `start`.

        The iterator a previous run left at exactly this (input, epoch, step) is
        handed back (see `release_iterator`); any other held iterator is deleted.
        """
        if self._coordinator is not None:
            return iter(train_input.distribute(self.strategy, epoch, start, self._coordinator))
        held, self._held_iterator = self._held_iterator, None
        if held is not None:
            position, iterator = held
            if inputs.same_position(position, (train_input, epoch, start)):
                return iterator
            del iterator, held
        return iter(train_input.distribute(self.strategy, epoch, start))

    def release_iterator(self, iterator, position: tuple | None = None) -> None:
        """Keeps `iterator` for the next run that starts at `position` (input, epoch, step), or lets it go.

        A run that ends inside an epoch passes its position: the next fit from
        there on the same input goes on reading the same iterator, as Orbit's
        trainers keep theirs across `train(num_steps)` calls, instead of
        rebuilding the pipeline and skipping to the step. Until then the Trainer
        owns it; `close()` deletes it, as does the Trainer's own deletion.
        Deleting takes milliseconds because the Trainer's datasets run without
        tf.data's autotuning model (`inputs.without_autotune_model`).
        """
        if iterator is None or position is None or self._coordinator is not None:
            return
        self.close()
        self._held_iterator = (position, iterator)

    @property
    def held_iterator(self) -> tuple | None:
        """((input, epoch, step), iterator) kept for the next run, or None."""
        return self._held_iterator

    def close(self) -> None:
        """Deletes the training iterator the Trainer holds between runs, if any; the Trainer stays usable."""
        self._held_iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- The run's stop state -------------------------------------------------------

    def begin_run(self, *, evaluates: bool) -> None:
        """Starts a run: clears the stop state, and writes the first checkpoint a rollback may need.

        Args:
          evaluates: whether this run has eval data (epoch-end hooks then tell
            an epoch without evaluation from a run without any: `evaluates`).
        """
        self.stopped_by, self._stop_request = None, None
        self.evaluates = evaluates
        if self.nonfinite_limit and self.nonfinite_action == "rollback" and self.checkpointer \
                and self.checkpointer.latest is None:
            self.save(self.global_step)  # A rollback needs a checkpoint to go back to.

    def stop_signals(self):
        """A context in which SIGTERM/SIGINT stop the loop after the current step (not in multi-worker runs)."""
        # A signal to one worker must not stop its loop alone (the others would wait
        # in a collective forever): multi-worker runs leave signals to preemption.
        return self._stop if not self.multi_worker else contextlib.nullcontext()

    @property
    def signal_received(self) -> str | None:
        """"SIGTERM" or "SIGINT" once one arrived inside `stop_signals()`, else None."""
        return self._stop.signal_name

    def actions(self) -> Actions:
        """The Controller's actions for one run (engine/actions.py), with a new preemption handler.

        The preemption handler is TF's PreemptionCheckpointHandler for a
        multi-worker mirrored run, else None (engine/preemption.py).
        """
        best = (BestCheckpointAction(self.best, self.guard, self.ema_weights, is_chief=self.is_chief,
                                     scratch=self._scratch) if self.best else None)
        return Actions(summaries=self.summaries, guard=self.guard, hooks=HookActions(self),
                       checkpoint=CheckpointAction(self), best=best, preemption=checkpoint_handler(self))

    # --- Evaluation, checkpoints, output ---------------------------------------------

    @property
    def latest_checkpoint(self) -> str | None:
        """Path prefix of the newest checkpoint in model_dir, or None."""
        return self.checkpointer.latest if self.checkpointer else None

    @property
    def nonfinite_streak(self) -> int:
        """Updates skipped as non-finite in a row, up to now."""
        return int(self.state.nonfinite_streak.numpy())

    def reset_train_metrics(self) -> None:
        """Resets the training metrics (at each epoch's start)."""
        for metric in self.train_metrics.values():
            metric.reset_state()

    def say(self, line: str) -> None:
        """Prints a line above the progress bar (chief only)."""
        if self.is_chief:
            EpochProgress.write(line)

    # --- Learning rate and summaries ------------------------------------------------

    @property
    def learning_rate_scale(self) -> float:
        """The factor on the learning-rate schedule (lowered by rollbacks and plateau hooks)."""
        return float(self.state.lr_scale.numpy())

    def scale_learning_rate(self, factor: float) -> None:
        """Multiplies the learning rate from now on by `factor` (saved with checkpoints)."""
        self.state.lr_scale.assign(self.state.lr_scale * factor)
        for opt in self.optimizers.values():
            if not isinstance(opt._learning_rate, ScaledSchedule):
                opt.learning_rate = float(np.asarray(opt.learning_rate)) * factor

    def write_scalars(self, split: str, values: Mapping[str, float], step: int) -> None:
        """Writes TensorBoard scalars to model_dir/<split> (chief only)."""
        self.summaries.scalars(split, values, step)

    def write_histograms(self, tensors: Mapping[str, tf.Tensor], step: int) -> None:
        """Writes TensorBoard histograms to model_dir/train (chief only)."""
        self.summaries.histograms("train", tensors, step)
