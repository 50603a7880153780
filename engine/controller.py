"""The outer loop of training, in the spirit of Orbit's Controller: loops of steps, then actions.

`Controller.run` drives a Trainer from its current step to a total: per epoch
it opens the distributed iterator (or goes on with the one a previous run on the
same input left at this step) and the progress bar; per loop it runs the
Trainer's compiled loop of up to `steps_per_loop` steps, reads the metrics and
the timing, then runs the actions between loops in a fixed order:

    summaries -> progress bar -> signal stop -> non-finite rollback -> hooks'
    loop_end -> agreed hook stop -> periodic checkpoint -> preemption

and at each epoch end: finite check (or rollback) -> checkpoint -> evaluation
and best checkpoint -> history -> the epoch line -> hooks' epoch_end -> hook
state. Everything numeric runs in the Trainer's compiled functions; this module
is eager Python: it decides, the Trainer computes.
"""

from __future__ import annotations

import math
import time

from typing import Protocol

from engine.progress import EpochProgress, format_value


class ControlledTrainer(Protocol):
    """What the Controller reads and calls; engine.Trainer has it all, a test's fake trainer may too.

    Settings: `is_chief`, `progress`, `steps_per_loop`, `global_batch_size`,
    `checkpoint_every_steps`, `nonfinite_limit`. State: `global_step`,
    `nonfinite_steps`, `nonfinite_streak`, `learning_rate`, `hooks` (objects,
    for their `stop_points(total)`), `stopped_by` (the Controller sets it when
    it stops a run). Actions it calls, each an object or a method:
    `guard` (in_streak(), state_finite(), describe(step), rollback(step, where)),
    `summaries` (scalars(split, logs, step), flush()).
    """

    is_chief: bool
    progress: bool
    steps_per_loop: int
    global_batch_size: int
    checkpoint_every_steps: int | None
    nonfinite_limit: int | None
    stopped_by: str | None
    guard: object
    summaries: object

    global_step: int
    nonfinite_steps: int
    nonfinite_streak: int
    learning_rate: float
    hooks: tuple
    signal_received: str | None  # "SIGTERM"/"SIGINT" once one arrived
    stop_request: str | None  # a hook's request_stop reason

    def begin_run(self, *, evaluates: bool) -> None: ...
    def stop_signals(self): ...  # context manager
    def preemption_handler(self): ...  # object with save_checkpoint_if_preempted(), or None
    def open_iterator(self, train_input, epoch: int, start: int): ...
    def release_iterator(self, iterator, position: tuple | None = None) -> None: ...
    def reset_train_metrics(self) -> None: ...
    def run_loop(self, iterator, num_steps: int) -> dict[str, float]: ...
    def input_wait_seconds(self) -> float | None: ...
    def call_hooks(self, event: str, logs=None) -> None: ...
    def agree(self, flag: bool) -> bool: ...
    def save(self, step: int) -> str | None: ...
    def save_hook_state(self, step: int) -> None: ...
    def evaluate_and_record(self, eval_data, step: int) -> dict[str, float]: ...
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
    """

    def __init__(self, trainer: ControlledTrainer, train_input, eval_data, total: int, eval_every_epochs: int = 1):
        self.trainer, self.train_input, self.eval_data, self.total = trainer, train_input, eval_data, total
        self.eval_every_epochs = eval_every_epochs
        self.steps_per_epoch = train_input.steps_per_epoch
        self.num_epochs = math.ceil(total / self.steps_per_epoch)
        self.history: dict[str, list[float]] = {}
        self.say = trainer.say
        self.cut_points = sorted({int(p) for h in trainer.hooks if hasattr(h, "stop_points")
                                  for p in h.stop_points(total)})
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
        t.begin_run(evaluates=self.eval_data is not None)
        t.call_hooks("train_begin")
        self.preemption = t.preemption_handler()
        iterator = None
        with t.stop_signals():
            while step < self.total and not t.stopped_by:
                t.release_iterator(iterator)
                step, iterator = self._epoch(step)

        t.summaries.flush()
        if not self.history and self.eval_data is not None and not t.stopped_by:
            # Nothing left to train: report where the run stands.
            logs = {f"eval_{k}": v for k, v in t.evaluate_and_record(self.eval_data, step).items()}
            logs.update(step=step, epoch=step / self.steps_per_epoch)
            self.history = {k: [v] for k, v in logs.items()}
            self.say(f"already at step {step} of {self.total}: " +
                     " ".join(f"{k}={format_value(v)}" for k, v in logs.items()))
        t.call_hooks("train_end", self.history)
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
            t.summaries.scalars("train", logs, step)
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
        t = self.trainer
        if t.signal_received or done < n:
            t.stopped_by = t.signal_received or "signal"
            return "stop"
        streak = t.nonfinite_streak
        if t.nonfinite_limit and streak >= t.nonfinite_limit:
            t.guard.rollback(step, f"{streak} non-finite steps in a row up to step {step}")
            return "rollback"
        t.call_hooks("loop_end", dict(logs, step=step))
        if t.agree(t.stop_request is not None):
            t.stopped_by = t.stop_request or "another worker's hook"
            return "stop"
        if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
            if self._rolled_back_on_nonfinite_weights(step):
                return "rollback"
            if not t.guard.in_streak():
                t.save(step)
        if self.preemption:  # All workers call it at the same steps, as it requires.
            self.preemption.save_checkpoint_if_preempted()
        return None

    def _rolled_back_on_nonfinite_weights(self, step: int) -> bool:
        """Before a checkpoint: rolls back (or raises, see NonFiniteGuard) if a variable is NaN/Inf."""
        guard = self.trainer.guard
        if guard.state_finite():
            return False
        guard.rollback(step, guard.describe(step))
        return True

    def _end_epoch(self, epoch: int, step: int, logs: dict, timing: "_EpochTiming") -> None:
        """Checkpoint, evaluation, history, the epoch line and the epoch-end hooks."""
        t = self.trainer
        # Weights in a non-finite streak are finite, but the last steps diverged from
        # them: they would make a poor rollback target. Signals save anyway.
        path = t.save(step) if t.stopped_by or not t.guard.in_streak() else t.latest_checkpoint
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
            logs.update({f"eval_{k}": v for k, v in t.evaluate_and_record(self.eval_data, step).items()})
        # One value per epoch end in every list: NaN where a metric was not computed
        # (the eval metrics between evaluations), so the lists stay aligned with "step".
        rows = len(self.history.get("step", []))
        for name in {*self.history, *logs}:
            self.history.setdefault(name, [math.nan] * rows).append(logs.get(name, math.nan))
        self.say(f"epoch {epoch + 1}/{self.num_epochs} step {step}: " +
                 " ".join(f"{k}={format_value(v)}" for k, v in logs.items() if k not in ("step", "epoch")))
        t.call_hooks("epoch_end", logs)
        t.save_hook_state(step)  # The epoch's checkpoint came before its hooks ran.
        if t.stop_request:  # Epoch-end decisions (early stopping) agree: the eval metrics do.
            t.stopped_by = t.stop_request
            self.say(f"{t.stop_request}: stopped after step {step}; checkpoint {path}")


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
