"""Stop requests from SIGTERM and SIGINT that take effect after the current step.

A preempted VM gets SIGTERM and a grace period; a user presses Ctrl-C (SIGINT).
Either way the run should finish the step it is in, write a checkpoint and exit
cleanly. The compiled training loop runs many steps in one call, during which
Python signal handlers cannot run, so the request is passed to the graph through a
boolean tf.Variable that the loop reads before each step: a watcher thread, woken
through `signal.set_wakeup_fd` as soon as the signal arrives, sets it.
"""

from __future__ import annotations

import os
import signal
import threading

import tensorflow as tf

from engine import distribution
from engine.progress import EpochProgress

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Catches SIGTERM/SIGINT for the duration of a `with` block.

    Attributes:
      flag: scalar bool tf.Variable, True once a signal has arrived; read it inside
        the compiled loop to stop before the next step.
      signal_name: "SIGTERM" or "SIGINT" once one arrived, else None.

    A second signal of the same kind restores the previous handler's behaviour
    (so a second Ctrl-C interrupts at once). Outside the main thread, or where
    signals cannot be caught, the block catches nothing and `flag` stays False.
    """

    def __init__(self):
        with tf.init_scope():
            self.flag = tf.Variable(False, trainable=False, name="stop_requested")
        self.signal_name: str | None = None
        self._previous = {}
        self._wakeup = None

    def __enter__(self) -> "StopRequest":
        self.flag.assign(False)
        self.signal_name = None
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_wakeup = signal.set_wakeup_fd(write_fd)
        except ValueError:  # Not possible here (embedded interpreters).
            os.close(read_fd)
            os.close(write_fd)
            return self
        self._wakeup = (read_fd, write_fd, previous_wakeup)
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="stop-request").start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup:
            read_fd, write_fd, previous_wakeup = self._wakeup
            signal.set_wakeup_fd(previous_wakeup)
            os.close(write_fd)  # Ends the watcher's read.
            self._wakeup = None

    def _watch(self, read_fd: int) -> None:
        # Runs while the main thread is inside the compiled loop.
        try:
            while True:
                data = os.read(read_fd, 16)
                if not data:
                    return
                if any(byte in (int(s) for s in _SIGNALS) for byte in data):
                    self.flag.assign(True)
        finally:
            os.close(read_fd)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.flag.assign(True)
        # A second signal gets the previous behaviour (e.g. KeyboardInterrupt).
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))


def checkpoint_handler(trainer):
    """TF's PreemptionCheckpointHandler for a multi_worker_mirrored Trainer's run, else None.

    A SIGTERM to any worker makes all of them checkpoint at the same step (through
    the coordination service) and exit with status 0; rerunning resumes there.
    """
    if not (trainer.multi_worker and trainer.checkpointer and
            isinstance(trainer.strategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return None

    meta = os.path.join(trainer.model_dir, ".preemption")

    def save():
        path = trainer.save(trainer.global_step)
        if not trainer.is_chief:
            # The handler deletes a non-chief's own temporary folder after save_fn.
            os.makedirs(os.path.join(meta, f"workertemp_{distribution.worker_index(trainer.strategy)}"),
                        exist_ok=True)
        if trainer.is_chief:
            EpochProgress.write(f"preempted: checkpoint {path} at step {trainer.global_step}; "
                                "rerun the job to resume")

    config = tf.distribute.experimental.TerminationConfig(exit_fn=lambda: os._exit(0), save_fn=save,
                                                         grace_period=0)
    # Its own folder only records its bookkeeping; the checkpoints are ours.
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        trainer.strategy.cluster_resolver, tf.train.Checkpoint(), checkpoint_dir=meta, termination_config=config)
