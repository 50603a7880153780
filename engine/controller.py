"""The outer loop of training, in the spirit of Orbit's Controller: loops of steps, then actions.

`Controller.run` drives a trainer from its current step to a total: per epoch
it opens the distributed iterator (or goes on with the one a previous run on the
same input left at this step) and the progress bar; per loop it runs the
trainer's compiled loop of up to `steps_per_loop` steps, reads the metrics and
the timing, then calls the actions (engine/actions.py, one object each) in a
fixed order. Between loops:

    summaries.scalars -> progress bar -> signal stop -> guard.rollback (non-finite
    streak) -> hooks.call("loop_end") -> hooks.agree(stop_request) -> guard.state_finite
    -> checkpoint.save (every checkpoint_every_steps) -> preemption

and at each epoch end:

    guard.state_finite (or rollback) -> checkpoint.save -> evaluate -> summaries.scalars
    ("eval") -> best.record -> history -> the epoch line -> hooks.call("epoch_end")
    -> hooks.save_state

Everything numeric runs in the trainer's compiled functions; this module is
eager Python: it decides, the trainer computes, the actions act.
"""

from __future__ import annotations

import math
import time

from typing import Protocol

from engine.actions import Actions
from engine.progress import EpochProgress, format_value


class ControlledTrainer(Protocol):
    """What the Controller reads and calls on a trainer; engine.Trainer has it all, a test's fake trainer too.

    Settings: `is_chief`, `progress`, `steps_per_loop`, `global_batch_size`,
    `checkpoint_every_steps`, `nonfinite_limit`. State: `global_step`,
    `nonfinite_steps`, `nonfinite_streak`, `learning_rate`, `signal_received`,
    `stopped_by` (the Controller sets it when it stops a run). The actions come
    from `actions()`, one engine.actions.Actions per run.
    """

    is_chief: bool
    progress: bool
    steps_per_loop: int
    global_batch_size: int
    checkpoint_every_steps: int | None
    nonfinite_limit: int | None
    stopped_by: str | None

    global_step: int
    nonfinite_steps: int
    nonfinite_streak: int
    learning_rate: float
    signal_received: str | None  # "SIGTERM"/"SIGINT" once one arrived

    def actions(self) -> Actions: ...
    def begin_run(self, *, evaluates: bool) -> None: ...
    def stop_signals(self): ...  # context manager
    def open_iterator(self, train_input, epoch: int, start: int): ...
    def release_iterator(self, iterator, position: tuple | None = None) -> None: ...
    def reset_train_metrics(self) -> None: ...
    def run_loop(self, iterator, num_steps: int) -> dict[str, float]: ...
    def input_wait_seconds(self) -> float | None: ...
    def evaluate(self, eval_data) -> dict[str, float]: ...
    def say(self, line: str) -> None: ...


class Controller:
    """Runs `trainer` to `total` steps over `train_input`, evaluating on `eval_data` at epoch ends.

    Args:
      trainer: a ControlledTrainer (an engine.Trainer, its model built and its
        checkpoint restored).
      train_input: an EpochInput or DatasetInput.
      eval_data: finite tf.data.Dataset of global batches, or None.
      total: steps to train to, counted from step 0.
      eval_every_epochs: evaluate at the end of epochs 1 x N, 2 x N, ... (counted from
        step 0, so a resumed run evaluates at the same epochs) and at `total`.
      actions: the run's Actions; default `trainer.actions()`.
    """

    def __init__(self, trainer: ControlledTrainer, train_input, eval_data, total: int, eval_every_epochs: int = 1,
                 actions: Actions | None = None):
        self.trainer, self.train_input, self.eval_data, self.total = trainer, train_input, eval_data, total
        self.actions = actions if actions is not None else trainer.actions()
        self.eval_every_epochs = eval_every_epochs
        self.steps_per_epoch = train_input.steps_per_epoch
        self.num_epochs = math.ceil(total / self.steps_per_epoch)
        self.history: dict[str, list[float]] = {}
        self.say = trainer.say
        self.cut_points = self.actions.hooks.stop_points(total)
        self._first_loop = True
        # With a progress bar, the first loops run 1, 2, 4, ... steps, so that the bar
        # moves within seconds even when steps_per_loop is large. It depends on a
        # setting all workers share (never on being the chief): every worker must
        # run the same loops.
        self._ramp = 1 if trainer.progress and trainer.steps_per_loop > 1 else None
        self._eta_said = False
        self._timed_seconds, self._timed_steps = 0.0, 0  # Over the run, loops that traced left out.

    def run(self) -> dict[str, list[float]]:
        """Trains to `total`; returns the history (one value per epoch end, see Trainer.fit)."""
        t = self.trainer
        step = t.global_step
        a = self.actions
        t.begin_run(evaluates=self.eval_data is not None)
        a.hooks.call("train_begin")
        iterator = None
        with t.stop_signals():
            while step < self.total and not t.stopped_by:
                t.release_iterator(iterator)
                step, iterator = self._epoch(step)

        a.summaries.flush()
        if not self.history and self.eval_data is not None and not t.stopped_by:
            # Nothing left to train: report where the run stands.
            logs = self._evaluate(step)
            logs.update(step=step, epoch=step / self.steps_per_epoch)
            self.history = {k: [v] for k, v in logs.items()}
            self.say(f"already at step {step} of {self.total}: " +
                     " ".join(f"{k}={format_value(v)}" for k, v in logs.items()))
        a.hooks.call("train_end", self.history)
        if step == self.total and step % self.steps_per_epoch and not t.stopped_by:
            # Ended inside an epoch: the next fit() from here on the same input goes on
            # with this iterator instead of rebuilding the pipeline and skipping to the step.
            t.release_iterator(iterator, (self.train_input, step // self.steps_per_epoch, step))
        else:
            t.release_iterator(iterator)
        return self.history

    # --- One epoch ------------------------------------------------------------------

    def _epoch(self, step: int):
        """Trains from `step` to the epoch's end (or a stop, or a rollback); returns (step, iterator)."""
        t = self.trainer
        epoch, start = divmod(step, self.steps_per_epoch)
        epoch_end = min((epoch + 1) * self.steps_per_epoch, self.total)
        iterator = t.open_iterator(self.train_input, epoch, start)
        t.reset_train_metrics()
        bar = EpochProgress(epoch=epoch, num_epochs=self.num_epochs,
                            total_steps=epoch_end - epoch * self.steps_per_epoch, initial_step=start,
                            enabled=t.progress and t.is_chief)
        timing = _EpochTiming()
        logs: dict[str, float] = {}
        try:
            while step < epoch_end:
                n = self._loop_length(step, epoch_end)
                logs, done, step = self._loop(iterator, n, step, epoch_end, timing)
                bar.update(done, logs)
                decision = self._after_loop(logs, step, done, n)
                if decision == "rollback":
                    return t.global_step, iterator
                if decision == "stop":
                    break
        finally:
            bar.close()
        if self._rolled_back_on_nonfinite_weights(step):
            return t.global_step, iterator
        self._end_epoch(epoch, step, logs, timing)
        return step, iterator

    def _loop_length(self, step: int, epoch_end: int) -> int:
        """Steps of the next loop: steps_per_loop, cut at the epoch end, checkpoints and hooks' points."""
        t = self.trainer
        n = min(t.steps_per_loop, epoch_end - step)
        if self._ramp is not None:
            n = min(n, self._ramp)
            self._ramp = self._ramp * 2 if self._ramp * 2 < t.steps_per_loop else None
        if t.checkpoint_every_steps:
            n = min(n, t.checkpoint_every_steps - step % t.checkpoint_every_steps)
        return min([n] + [p - step for p in self.cut_points if p > step])

    def _loop(self, iterator, n: int, step: int, epoch_end: int, timing: "_EpochTiming"):
        """Runs one compiled loop; returns (logs, steps done, new step)."""
        t = self.trainer
        t0 = time.perf_counter()
        skipped_before = t.nonfinite_steps
        logs = t.run_loop(iterator, n)
        dt = time.perf_counter() - t0  # Reading the metrics waited for the loop.
        wait = t.input_wait_seconds()
        done, step = t.global_step - step, t.global_step
        if not self._first_loop or step == epoch_end:  # The first loop also traces.
            timing.examples += done * t.global_batch_size
            timing.seconds += dt
            self._timed_seconds += dt
            self._timed_steps += done
            self._say_eta(step)
        self._first_loop = False
        logs.update(learning_rate=t.learning_rate, examples_per_second=done * t.global_batch_size / dt,
                    nonfinite_steps=t.nonfinite_steps)
        if wait is not None:  # Share of the loop's time spent waiting for input.
            logs["input_wait_percent"] = 100.0 * wait / dt
            timing.wait, timing.time = timing.wait + wait, timing.time + dt
        if t.nonfinite_steps - skipped_before < done:
            # A loop of skipped steps only has nothing to plot: a diverged run would
            # write a summary per skipped loop.
            self.actions.summaries.scalars("train", logs, step)
        return logs, done, step

    def _say_eta(self, step: int) -> None:
        """Once per run, after 3 s of timed steps: the time the remaining steps will take."""
        if self._eta_said or self._timed_seconds < 3.0 or step >= self.total:
            return
        self._eta_said = True
        per_step = self._timed_seconds / self._timed_steps
        seconds = (self.total - step) * per_step
        finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
        self.say(f"ETA: {_duration(seconds)} for the remaining {self.total - step} steps at "
                 f"{self.trainer.global_batch_size / per_step:.0f} examples/s, about {finish} "
                 "(evaluations not included)")

    def _after_loop(self, logs: dict, step: int, done: int, n: int) -> str | None:
        """The actions between loops; returns "stop", "rollback" or None (go on)."""
        t, a = self.trainer, self.actions
        if t.signal_received or done < n:
            t.stopped_by = t.signal_received or "signal"
            return "stop"
        streak = t.nonfinite_streak
        if t.nonfinite_limit and streak >= t.nonfinite_limit:
            a.guard.rollback(step, f"{streak} non-finite steps in a row up to step {step}")
            return "rollback"
        a.hooks.call("loop_end", dict(logs, step=step))
        if a.hooks.agree(a.hooks.stop_request is not None):
            t.stopped_by = a.hooks.stop_request or "another worker's hook"
            return "stop"
        if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
            if self._rolled_back_on_nonfinite_weights(step):
                return "rollback"
            if not a.guard.in_streak():
                a.checkpoint.save(step)
        if a.preemption:  # All workers call it at the same steps, as it requires.
            a.preemption.save_checkpoint_if_preempted()
        return None

    def _rolled_back_on_nonfinite_weights(self, step: int) -> bool:
        """Before a checkpoint: rolls back (or raises, see NonFiniteGuard) if a variable is NaN/Inf."""
        guard = self.actions.guard
        if guard.state_finite():
            return False
        guard.rollback(step, guard.describe(step))
        return True

    def _end_epoch(self, epoch: int, step: int, logs: dict, timing: "_EpochTiming") -> None:
        """Checkpoint, evaluation, history, the epoch line and the epoch-end hooks."""
        t, a = self.trainer, self.actions
        # Weights in a non-finite streak are finite, but the last steps diverged from
        # them: they would make a poor rollback target. Signals save anyway.
        path = a.checkpoint.save(step) if t.stopped_by or not a.guard.in_streak() else a.checkpoint.latest
        if t.stopped_by:
            cause = f"{t.stopped_by} received" if t.stopped_by.startswith("SIG") or t.stopped_by == "signal" \
                else t.stopped_by
            self.say(f"{cause}: stopped after step {step}; checkpoint {path}; rerun the same command to resume")
            return
        if timing.seconds:
            logs["examples_per_second"] = timing.examples / timing.seconds
        if "input_wait_percent" in logs and timing.time:  # Over the whole epoch (first loop included).
            logs["input_wait_percent"] = 100.0 * timing.wait / timing.time
        logs.update(step=step, epoch=step / self.steps_per_epoch)
        if self.eval_data is not None and ((epoch + 1) % self.eval_every_epochs == 0 or step >= self.total):
            logs.update(self._evaluate(step))
        # One value per epoch end in every list: NaN where a metric was not computed
        # (the eval metrics between evaluations), so the lists stay aligned with "step".
        rows = len(self.history.get("step", []))
        for name in {*self.history, *logs}:
            self.history.setdefault(name, [math.nan] * rows).append(logs.get(name, math.nan))
        self.say(f"epoch {epoch + 1}/{self.num_epochs} step {step}: " +
                 " ".join(f"{k}={format_value(v)}" for k, v in logs.items() if k not in ("step", "epoch")))
        a.hooks.call("epoch_end", logs)
        a.hooks.save_state(step)  # The epoch's checkpoint came before its hooks ran.
        if a.hooks.stop_request:  # Epoch-end decisions (early stopping) agree: the eval metrics do.
            t.stopped_by = a.hooks.stop_request
            self.say(f"{t.stopped_by}: stopped after step {step}; checkpoint {path}")

    def _evaluate(self, step: int) -> dict[str, float]:
        """Evaluates, writes the eval summaries at `step` and offers the result to the best checkpoint.

        Returns:
          The eval metrics, their names prefixed "eval_".
        """
        results = self.trainer.evaluate(self.eval_data)
        self.actions.summaries.scalars("eval", results, step)
        logs = {f"eval_{k}": v for k, v in results.items()}
        if self.actions.best is not None:
            self.actions.best.record(step, logs)
        return logs


class _EpochTiming:
    """Examples and seconds of an epoch's loops after the first (which traces), and input wait."""

    def __init__(self):
        self.examples, self.seconds, self.wait, self.time = 0, 0.0, 0.0, 0.0


def _duration(seconds: float) -> str:
    """3 h 05 min, 12 min 30 s or 45 s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
