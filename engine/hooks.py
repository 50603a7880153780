"""Hooks: code that runs at fixed points of Trainer.fit, without touching the loop.

A hook is any object with some of these methods (all optional):

    on_train_begin(trainer)                 before the first step of fit
    on_loop_end(trainer, logs)              after each compiled loop (steps_per_loop steps)
    on_epoch_end(trainer, logs)             after each epoch's checkpoint and evaluation
    on_train_end(trainer, history)          when fit returns
and optionally `stop_points(total_steps) -> iterable of steps` at which the
Trainer must end a loop (so that, e.g., the profiler starts exactly at step 10).
`logs` maps names to floats: the train metrics, learning_rate,
examples_per_second, input_wait_percent, step, and at epoch ends epoch and the
eval metrics prefixed "eval_". A plain callable hook(trainer, logs) is added with
`Trainer.add_hook(event, fn)`, and a Trainer subclass may override the same
methods on itself. A hook ends training early with `trainer.request_stop(reason)`:
the Trainer checkpoints and fit returns.

The hooks here are the ones users expect from Keras callbacks and Lightning:
EarlyStopping, ReduceLROnPlateau, HistoryLogger (CSV and JSON), WeightHistograms,
Profiler and MaxTime.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from engine import profiling
from engine.files import is_better, mode_for, write_atomic
from engine.errors import UserError

HOOK_EVENTS = ("train_begin", "loop_end", "epoch_end", "train_end")
# Hooks with get_state() -> dict and set_state(dict) have it saved beside each
# checkpoint in <model_dir>/hook_state.json and given back on restore, so a resumed
# run keeps its patience counters and best values.
HOOK_STATE_FILE = "hook_state.json"
# EarlyStopping's best weights, a checkpoint prefix under model_dir.
_BEST_WEIGHTS = "early_stopping/step-{step}"




def _not_evaluated(metric: str, trainer, logs: dict) -> bool:
    """True for an eval metric at an epoch end that fit's eval_every_epochs left without evaluation.

    A run without eval data is not such a case: its hooks raise, as the metric never comes.
    """
    return metric.startswith("eval_") and getattr(trainer, "evaluates", False) and \
        not any(k.startswith("eval_") for k in logs)


class EarlyStopping:
    """Stops training when an epoch-end metric stops improving; can restore the best weights.

    Args:
      metric: a key of the epoch-end logs, e.g. "eval_loss" or "eval_accuracy".
      patience: epochs without improvement before stopping, >= 1. For an eval
        metric, epochs without an evaluation (fit's eval_every_epochs) do not
        count: patience is then in evaluations.
      min_delta: the smallest change that counts as an improvement.
      mode: "min" or "max"; default "min" for names ending in "loss", else "max".
      restore_best: on stopping, set the model's weights to those of the best
        epoch (the weights that were evaluated: the moving averages with
        ema_decay). They are kept in host memory and, with a model_dir, in
        `<model_dir>/early_stopping/step-<N>`, so a resumed run that stops
        restores the best epoch from before the resume too.

    Raises:
      ValueError: on a bad patience, min_delta or mode; KeyError at the first
        epoch end if `metric` is not logged (the message lists those that are).
    """

    def __init__(self, metric: str = "eval_loss", *, patience: int = 3, min_delta: float = 0.0,
                 mode: str | None = None, restore_best: bool = True):
        if patience < 1:
            raise UserError(f"early stopping patience={patience} must be at least 1")
        if min_delta < 0:
            raise UserError(f"early stopping min_delta={min_delta} must not be negative")
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.mode = mode_for(metric, mode)
        self.restore_best = restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_at: int | None = None
        self._weights = None

    def get_state(self) -> dict:
        # The best weights are in memory and in <model_dir>/early_stopping/step-<best_step>.
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

    def set_state(self, state: dict) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]

    def on_epoch_end(self, trainer, logs):
        if _not_evaluated(self.metric, trainer, logs):
            return
        if self.metric not in logs:
            raise KeyError(f"early stopping metric {self.metric!r} is not logged; logged: {', '.join(sorted(logs))}")
        value = logs[self.metric]
        if is_better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_step, self.wait = value, int(logs["step"]), 0
            if self.restore_best:
                with trainer.ema_weights():  # The weights that were evaluated.
                    self._weights = [np.array(v) for v in trainer.model.get_weights()]
                    saved = trainer.save_weights(_BEST_WEIGHTS.format(step=self.best_step))
                if saved and trainer.is_chief:  # Keep only the newest best.
                    for path in glob.glob(os.path.join(os.path.dirname(saved), "step-*")):
                        if not path.startswith(saved + "."):
                            os.remove(path)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_at = int(logs["step"])
            trainer.request_stop(f"early stopping: {self.metric} has not improved on {self.best:.4g} "
                                 f"(step {self.best_step}) for {self.wait} epochs")

    def on_train_end(self, trainer, history):
        del history
        if not self.restore_best or self.stopped_at is None or self.best_step is None:
            return
        if self._weights is not None:
            trainer.model.set_weights(self._weights)
        elif not trainer.load_weights(_BEST_WEIGHTS.format(step=self.best_step)):
            trainer.say(f"early stopping: the weights of step {self.best_step} are not in memory or in "
                        f"{trainer.model_dir}/{_BEST_WEIGHTS.format(step=self.best_step)}; kept the last weights")
            return
        trainer.say(f"early stopping: restored the weights of step {self.best_step} "
                    f"({self.metric}={self.best:.4g})")


class ReduceLROnPlateau:
    """Multiplies the learning rate by `factor` when an epoch-end metric stalls.

    The scale is applied through Trainer.scale_learning_rate, so it multiplies any
    schedule and is saved in checkpoints (a resumed run keeps the lowered rate).

    Args:
      metric, mode, min_delta: as EarlyStopping.
      patience: epochs without improvement before each reduction (evaluations,
        for an eval metric: see EarlyStopping).
      factor: in (0, 1).
      min_scale: do not scale the learning rate below this fraction of the schedule.
    """

    def __init__(self, metric: str = "eval_loss", *, factor: float = 0.1, patience: int = 2,
                 min_delta: float = 0.0, mode: str | None = None, min_scale: float = 1e-3):
        if not 0 < factor < 1:
            raise UserError(f"plateau factor={factor} must be in (0, 1)")
        if patience < 1:
            raise UserError(f"plateau patience={patience} must be at least 1")
        self.metric, self.factor, self.patience, self.min_delta = metric, factor, patience, min_delta
        self.mode = mode_for(metric, mode)
        self.min_scale = min_scale
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0

    def get_state(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def set_state(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]

    def on_epoch_end(self, trainer, logs):
        if _not_evaluated(self.metric, trainer, logs):
            return
        if self.metric not in logs:
            raise KeyError(f"plateau metric {self.metric!r} is not logged; logged: {', '.join(sorted(logs))}")
        value = logs[self.metric]
        if is_better(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience and trainer.learning_rate_scale * self.factor >= self.min_scale:
            trainer.scale_learning_rate(self.factor)
            trainer.say(f"plateau: {self.metric} has not improved for {self.wait} epochs; learning rate now "
                        f"{trainer.learning_rate:.4g}")
            self.wait = 0


class HistoryLogger:
    """Appends each epoch's logs to <folder>/history.csv and rewrites <folder>/history.json.

    A resumed run reads the JSON back and goes on after the last step it holds, so
    the files cover the whole run once. launch.plot draws them.

    Args:
      folder: where to write (usually the model_dir).
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.json_path = os.path.join(folder, "history.json")
        self.csv_path = os.path.join(folder, "history.csv")
        self.rows: list[dict] = []

    def on_train_begin(self, trainer):
        del trainer
        if os.path.isfile(self.json_path):
            with open(self.json_path) as f:
                self.rows = json.load(f)

    def on_epoch_end(self, trainer, logs):
        if not trainer.is_chief:
            return
        # Rows after this step were written by a run that later rolled back or resumed earlier.
        self.rows = [r for r in self.rows if r["step"] < logs["step"]] + [dict(logs)]
        os.makedirs(self.folder, exist_ok=True)
        write_atomic(self.json_path, json.dumps(self.rows, indent=1))
        columns = sorted({k for r in self.rows for k in r}, key=lambda k: (k not in ("epoch", "step"), k))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.csv_path, text.getvalue())


class WeightHistograms:
    """Writes a TensorBoard histogram of every trainable variable every `every_epochs` epochs.

    Written to <model_dir>/train under "weights/<variable path>" at the epoch's step.
    """

    def __init__(self, every_epochs: int = 1):
        if every_epochs < 1:
            raise UserError(f"histogram every_epochs={every_epochs} must be at least 1")
        self.every_epochs = every_epochs

    def on_epoch_end(self, trainer, logs):
        epoch = int(round(logs["epoch"]))
        if epoch % self.every_epochs == 0:
            trainer.write_histograms({f"weights/{getattr(v, 'path', v.name)}": v
                                      for v in trainer.model.trainable_variables}, int(logs["step"]))


class Profiler:
    """Records the TensorFlow profiler over steps [start, stop), for TensorBoard's profile tab.

    The trace lands in <logdir>/plugins/profile/<run>/; open TensorBoard on the
    model_dir (pip install tensorboard-plugin-profile for the Profile tab). When
    the trace ends, the hook says the `top` op types by self time per profiled
    step (engine/profiling.py; `python -m launch.profile_report` prints it again)
    and keeps that summary as `self.summary`.

    Args:
      logdir: usually <model_dir>/train.
      start, stop: global steps, 0 <= start < stop.
      top: op types to print (0: say only the trace's path; no summary is kept).
    """

    def __init__(self, logdir: str, start: int, stop: int, top: int = 12):
        check_profile_steps((start, stop))
        self.logdir, self.start, self.stop, self.top = logdir, start, stop, top
        self.summary = None
        self.active = False
        self.done = False

    def stop_points(self, total_steps):
        del total_steps
        return (self.start, self.stop)

    def _maybe_start(self, trainer):
        if not self.active and not self.done and self.start <= trainer.global_step < self.stop:
            tf.profiler.experimental.start(self.logdir)
            self.active = True

    def on_train_begin(self, trainer):
        self._maybe_start(trainer)

    def on_loop_end(self, trainer, logs):
        del logs
        if self.active and trainer.global_step >= self.stop:
            tf.profiler.experimental.stop()
            self.active, self.done = False, True
            self._report(trainer, self.stop)
        self._maybe_start(trainer)

    def on_train_end(self, trainer, history):
        del history
        if self.active:
            tf.profiler.experimental.stop()
            self.active, self.done = False, True
            self._report(trainer, trainer.global_step)

    def _report(self, trainer, stop: int) -> None:
        """Says where the trace went and its top op types by self time (engine/profiling.py)."""
        trainer.say(f"profiled steps {self.start}-{stop} into {self.logdir}")
        if not trainer.is_chief or not self.top:  # Other workers need not read the trace.
            return
        try:
            summary = profiling.summarize(self.logdir)
        except (OSError, ValueError) as e:  # A trace the profiler could not write is not fatal to training.
            trainer.say(f"could not summarise the profile: {e}")
            return
        self.summary = summary
        trainer.say(summary.table(top=self.top, steps=max(stop - self.start, 1)))


class MaxTime:
    """A wall-clock budget: stops (with a checkpoint) at the first loop end past `seconds`.

    Counted from the start of this fit call; rerunning resumes from the checkpoint.
    """

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise UserError(f"max_time={seconds} must be positive (seconds)")
        self.seconds = seconds
        self._start = None

    def on_train_begin(self, trainer):
        del trainer
        self._start = time.monotonic()

    def on_loop_end(self, trainer, logs):
        del logs
        if time.monotonic() - self._start >= self.seconds:
            trainer.request_stop(f"max_time of {self.seconds:g} s reached")


def check_profile_steps(steps: Sequence[int], name: str = "profile_steps") -> None:
    """Raises UserError (naming `name`) unless `steps` is two integers start, stop with 0 <= start < stop."""
    if len(steps) != 2 or not 0 <= steps[0] < steps[1]:
        raise UserError(f"{name}={','.join(str(v) for v in steps)} must be start,stop with 0 <= start < stop")


def stateful_hooks(hooks) -> dict[str, object]:
    """The hooks with get_state/set_state, keyed by position and class (stable across reruns of one job)."""
    return {f"{i}:{type(h).__name__}": h for i, h in enumerate(hooks) if hasattr(h, "get_state")}


def save_hook_state(hooks, model_dir: str, step: int) -> None:
    """Writes the hooks' own state (patience counters, best values) for checkpoint `step`, atomically."""
    stateful = stateful_hooks(hooks)
    if not stateful:
        return
    state = {"step": step, "hooks": {key: h.get_state() for key, h in stateful.items()}}
    path = os.path.join(model_dir, HOOK_STATE_FILE)
    write_atomic(path, json.dumps(state))


def restore_hook_state(hooks, model_dir: str, step: int) -> None:
    """Gives the hooks their state saved with checkpoint `step`, if that is what the file holds."""
    stateful = stateful_hooks(hooks)
    path = os.path.join(model_dir, HOOK_STATE_FILE)
    if not stateful or not os.path.isfile(path):
        return
    with open(path) as f:
        state = json.load(f)
    if state.get("step") != step:
        return  # Written for another checkpoint (e.g. one that was corrupt): start afresh.
    for key, hook in stateful.items():
        if key in state["hooks"]:
            hook.set_state(state["hooks"][key])


class _CallableHook:
    """A plain function fn(trainer, logs) called at one event."""

    def __init__(self, event: str, fn):
        self.event, self.fn = event, fn

    def __getattr__(self, name):
        if name == f"on_{self.event}":
            return (lambda trainer: self.fn(trainer, {})) if self.event == "train_begin" else self.fn
        raise AttributeError(name)


class HooksMixin:
    """The Trainer's hook API: add_hook, request_stop, the on_* methods a subclass may override.

    The controller calls them through engine/actions.py's HookActions; hooks'
    own state is saved beside each checkpoint and given back on restore.
    """

    def add_hook(self, event: str, fn: Callable) -> None:
        """Calls fn(trainer, logs) at `event`: train_begin (logs {}), loop_end, epoch_end or train_end (history).

        Raises:
          ValueError: on an unknown event.
        """
        if event not in HOOK_EVENTS:
            raise UserError(f"hook event {event!r} is not one of {', '.join(HOOK_EVENTS)}")
        self._hooks.append(_CallableHook(event, fn))

    def request_stop(self, reason: str) -> None:
        """Ends fit at the next loop or epoch end, with a checkpoint; `stopped_by` becomes `reason`."""
        self._stop_request = reason

    stop_request = property(lambda self: self._stop_request, doc="A hook's request_stop reason in this run, or None.")
    hooks = property(lambda self: tuple(self._hooks), doc="The hook objects, in calling order (more: add_hook).")

    def on_train_begin(self) -> None:
        """Subclass hook: before the first step of fit."""

    def on_loop_end(self, logs: dict[str, float]) -> None:
        """Subclass hook: after each compiled loop, with its logs."""

    def on_epoch_end(self, logs: dict[str, float]) -> None:
        """Subclass hook: after each epoch's checkpoint and evaluation."""

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        """Subclass hook: when fit returns."""

    def _restore_hook_state(self, step: int) -> None:
        if self.model_dir:
            restore_hook_state(self._hooks, self.model_dir, step)
