"""The Controller's actions, each an object: summaries, rollback, hooks, checkpoint, best checkpoint, preemption.

Orbit's Controller is given its checkpoint manager, summary manager and actions
as objects instead of reaching into the trainer; ours is given an `Actions`.
`Trainer.actions()` builds the engine's for one run, and
tests/engine/test_controller.py hands the Controller recording fakes. Each
action has one narrow interface:

    summaries    Summaries (engine/summaries.py)   scalars(split, logs, step), flush()
    guard        NonFiniteGuard (engine/rollback)  in_streak(), state_finite(), describe(step),
                                                   rollback(step, where)
    hooks        HookActions                       stop_points(total), call(event, logs),
                                                   stop_request, agree(flag), save_state(step)
    checkpoint   CheckpointAction                  save(step) -> path, latest
    best         BestCheckpointAction or None      record(step, eval_metrics) -> bool
    preemption   PreemptionCheckpointHandler/None  save_checkpoint_if_preempted()

The order the Controller calls them in is documented in engine/controller.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from engine.checkpoint import remove_scratch
from engine.hooks import save_hook_state
from engine.progress import EpochProgress, format_value


class HookActions:
    """The run's hooks as one action: the trainer's own on_<event> methods, then each hook object's, in order.

    Args:
      trainer: the Trainer the hooks receive as their first argument; its
        `hooks` (read at each call, so hooks added later count), `stop_request`,
        `model_dir`, `is_chief`, `multi_worker` and `strategy` are read.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def stop_points(self, total: int) -> list[int]:
        """The steps at which a hook needs a loop to end (e.g. the profiler's window), sorted."""
        return sorted({int(p) for h in self.trainer.hooks if hasattr(h, "stop_points") for p in h.stop_points(total)})

    def call(self, event: str, logs=None) -> None:
        """Calls the trainer's own on_<event>, then each hook's, with logs (none for train_begin)."""
        t = self.trainer
        own = getattr(t, f"on_{event}")
        own() if event == "train_begin" else own(logs)
        for hook in t.hooks:
            method = getattr(hook, f"on_{event}", None)
            if method is not None:
                method(t) if event == "train_begin" else method(t, logs)

    @property
    def stop_request(self) -> str | None:
        """The reason a hook gave `trainer.request_stop` in this run, or None."""
        return self.trainer.stop_request

    def agree(self, flag: bool) -> bool:
        """Multi-worker: True if any worker's flag is set, so that all stop at the same step; else `flag`."""
        t = self.trainer
        if not (t.multi_worker and isinstance(t.strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            return flag
        value = tf.constant(1.0 if flag else 0.0)
        total = t.strategy.reduce(tf.distribute.ReduceOp.SUM, t.strategy.run(lambda: tf.identity(value)), axis=None)
        return float(total) > 0

    def save_state(self, step: int) -> None:
        """Writes the hooks' own state for checkpoint `step` (chief only; see engine/hooks.py)."""
        if self.trainer.model_dir and self.trainer.is_chief:
            save_hook_state(self.trainer.hooks, self.trainer.model_dir, step)


class CheckpointAction:
    """The run's periodic and epoch-end checkpoints: `Trainer.save` (refused with NaN/Inf weights)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def save(self, step: int) -> str | None:
        """Checkpoints at `step` unless it is saved already; returns the newest path (None without model_dir)."""
        return self.trainer.save(step)

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or None."""
        return self.trainer.latest_checkpoint


class BestCheckpointAction:
    """Keeps the checkpoint of the best evaluation (engine.checkpoint.BestCheckpoint) after each evaluation.

    Weights with NaN/Inf, or in a non-finite streak, never become the best
    checkpoint, whatever their metric says.

    Args:
      best: the BestCheckpoint.
      guard: the NonFiniteGuard (in_streak, state_finite).
      evaluated_weights: context manager in which the model holds the weights
        that were evaluated (the EMA weights when there are any).
      is_chief: whether this process reports the new best; others delete their
        scratch copy.
      scratch: a non-chief worker's scratch folder, or None.
    """

    def __init__(self, best, guard, evaluated_weights: Callable, *, is_chief: bool, scratch: str | None):
        self.best, self.guard, self.evaluated_weights = best, guard, evaluated_weights
        self.is_chief, self.scratch = is_chief, scratch

    def record(self, step: int, eval_metrics: dict[str, float]) -> bool:
        """Saves the model as the best at `step` if `eval_metrics` (keys prefixed "eval_") improve; returns whether."""
        with self.evaluated_weights():
            improved = not self.guard.in_streak() and self.guard.state_finite() and \
                self.best.update(step, eval_metrics)
        if improved:
            if self.is_chief:
                EpochProgress.write(f"new best {self.best.metric}={format_value(self.best.info['value'])} "
                                    f"at step {step}")
            else:
                remove_scratch(self.scratch)
        return bool(improved)


@dataclasses.dataclass
class Actions:
    """What the Controller does between loops and at epoch ends, one object each (see the module docstring)."""

    summaries: object
    guard: object
    hooks: object
    checkpoint: object
    best: object | None = None
    preemption: object | None = None
