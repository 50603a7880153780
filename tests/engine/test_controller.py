"""The Controller driven by a fake trainer, as orbit/controller_test.py drives Orbit's.

The fake implements engine.controller.ControlledTrainer with plain Python, and
its `actions()` gives the Controller fake action objects (engine.actions.Actions):
steps are counts, the loop records what it was asked, checkpoints are step
numbers. So these tests pin the Controller's own decisions (order of actions,
stops, rollbacks, the final save) without TensorFlow in the loop.
"""

from __future__ import annotations

import contextlib
import math

import pytest

from engine.actions import Actions
from engine.controller import Controller


class FakeInput:
    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch


class FakeGuard:
    """The non-finite guard's interface; a rollback goes back to the fake's newest checkpoint."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.finite = True

    def in_streak(self) -> bool:
        return self.trainer.nonfinite_streak > 0

    def state_finite(self) -> bool:
        return self.finite

    def describe(self, step: int) -> str:
        return f"NaN at step {step}"

    def rollback(self, step: int, where: str) -> int:
        t = self.trainer
        t.log.append(("rollback", step))
        t.global_step = max(t.saved)
        t.nonfinite_streak = 0
        t.rollbacks += 1
        self.finite = True
        return t.global_step


class FakeSummaries:
    def __init__(self, log):
        self.log = log

    def scalars(self, split, logs, step):
        self.log.append(("summary", split, step))

    def flush(self):
        pass


class FakeHooks:
    """HookActions' interface; `stop_request` is the fake trainer's, which a test's script sets."""

    def __init__(self, trainer):
        self.trainer = trainer

    def stop_points(self, total):
        return sorted({p for h in self.trainer.hooks for p in h.stop_points(total)})

    def call(self, event, logs=None):
        self.trainer.log.append((f"hooks_{event}", self.trainer.global_step))

    @property
    def stop_request(self):
        return self.trainer.stop_request

    def agree(self, flag):
        return flag

    def save_state(self, step):
        self.trainer.log.append(("save_hook_state", step))


class FakeCheckpoint:
    def __init__(self, trainer):
        self.trainer = trainer

    def save(self, step):
        self.trainer.log.append(("save", step))
        self.trainer.saved.add(step)
        return f"ckpt-{step}"

    @property
    def latest(self):
        return f"ckpt-{max(self.trainer.saved)}"


class FakeBest:
    def __init__(self, log):
        self.log = log

    def record(self, step, eval_metrics):
        self.log.append(("best", step, eval_metrics["eval_accuracy"]))
        return True


class FakePreemption:
    def __init__(self, trainer):
        self.trainer = trainer

    def save_checkpoint_if_preempted(self):
        self.trainer.log.append(("preemption", self.trainer.global_step))


class FakeTrainer:
    """Records every call the Controller makes, in order, as (action, step) tuples."""

    def __init__(self, *, steps_per_loop=2, checkpoint_every_steps=None, nonfinite_limit=3, hooks=()):
        self.is_chief, self.progress = True, False
        self.steps_per_loop, self.global_batch_size = steps_per_loop, 8
        self.checkpoint_every_steps, self.nonfinite_limit = checkpoint_every_steps, nonfinite_limit
        self.hooks = tuple(hooks)
        self.global_step, self.nonfinite_steps, self.nonfinite_streak, self.learning_rate = 0, 0, 0, 0.1
        self.stopped_by, self.signal_received, self.stop_request = None, None, None
        self.log: list[tuple] = []
        self.saved: set[int] = {0}
        self.rollbacks = 0
        self.guard = FakeGuard(self)
        self.best, self.preemption = None, None  # A test may give them fakes.
        self.on_loop = lambda trainer, steps: None  # A test's script: runs after each loop.
        self.iterators_open = 0

    def begin_run(self, *, evaluates):
        self.log.append(("begin_run", self.global_step))
        self.stopped_by, self.stop_request = None, None

    def stop_signals(self):
        return contextlib.nullcontext()

    def open_iterator(self, train_input, epoch, start):
        self.log.append(("open_iterator", epoch * train_input.steps_per_epoch + start))  # the global step
        self.iterators_open += 1
        return (epoch, start)

    def release_iterator(self, iterator, position=None):
        if iterator is not None:
            self.iterators_open -= 1
            self.log.append(("keep_iterator" if position else "release_iterator", self.global_step))

    def reset_train_metrics(self):
        pass

    def run_loop(self, iterator, num_steps):
        self.log.append(("run_loop", self.global_step, num_steps))
        self.global_step += num_steps
        self.on_loop(self, num_steps)
        return {"loss": 1.0 / (1 + self.global_step)}

    def input_wait_seconds(self):
        return 0.0

    def evaluate(self, eval_data):
        self.log.append(("evaluate", self.global_step))
        return {"loss": 0.5, "accuracy": 0.9}

    def actions(self):
        return Actions(summaries=FakeSummaries(self.log), guard=self.guard, hooks=FakeHooks(self),
                       checkpoint=FakeCheckpoint(self), best=self.best, preemption=self.preemption)

    def say(self, line):
        self.log.append(("say", line))


def _actions(trainer, *names):
    return [entry for entry in trainer.log if entry[0] in names]


def test_actions_run_in_the_documented_order_and_the_run_ends_at_total():
    trainer = FakeTrainer(steps_per_loop=2, checkpoint_every_steps=2)
    history = Controller(trainer, FakeInput(4), eval_data="eval", total=8).run()
    kinds = [e for e in trainer.log if e[0] not in ("say", "summary")]
    first_epoch = kinds[:kinds.index(("open_iterator", 4))]
    assert first_epoch == [
        ("begin_run", 0), ("hooks_train_begin", 0), ("open_iterator", 0),
        ("run_loop", 0, 2), ("hooks_loop_end", 2), ("save", 2),                  # periodic checkpoint
        ("run_loop", 2, 2), ("hooks_loop_end", 4), ("save", 4),
        ("save", 4), ("evaluate", 4), ("hooks_epoch_end", 4), ("save_hook_state", 4),  # epoch end
        ("release_iterator", 4)]
    assert kinds[-3:] == [("save_hook_state", 8), ("hooks_train_end", 8), ("release_iterator", 8)]
    assert trainer.global_step == 8 and trainer.stopped_by is None and trainer.iterators_open == 0
    assert history["step"] == [4, 8] and history["eval_accuracy"] == [0.9, 0.9]
    # A loop's summary is written at the step it reached, before the actions after it.
    assert ("summary", "train", 6) in trainer.log


def test_best_checkpoint_and_preemption_actions_run_in_their_places():
    trainer = FakeTrainer(steps_per_loop=2, checkpoint_every_steps=2)
    trainer.best, trainer.preemption = FakeBest(trainer.log), FakePreemption(trainer)
    Controller(trainer, FakeInput(4), eval_data="eval", total=8).run()
    kinds = [e for e in trainer.log if e[0] not in ("say", "summary")]
    second_epoch = kinds[kinds.index(("open_iterator", 4)):]
    assert second_epoch == [
        ("open_iterator", 4),
        ("run_loop", 4, 2), ("hooks_loop_end", 6), ("save", 6), ("preemption", 6),
        ("run_loop", 6, 2), ("hooks_loop_end", 8), ("save", 8), ("preemption", 8),
        ("save", 8), ("evaluate", 8), ("best", 8, 0.9), ("hooks_epoch_end", 8), ("save_hook_state", 8),
        ("hooks_train_end", 8), ("release_iterator", 8)]
    # The eval summary is written at the evaluated step, before the best checkpoint is offered it.
    assert trainer.log.index(("summary", "eval", 8)) < trainer.log.index(("best", 8, 0.9))


def test_actions_given_to_the_controller_replace_the_trainers():
    trainer = FakeTrainer(steps_per_loop=4)
    log: list[tuple] = []
    actions = trainer.actions()
    actions.summaries, actions.best = FakeSummaries(log), FakeBest(log)
    Controller(trainer, FakeInput(4), eval_data="eval", total=8, actions=actions).run()
    assert [e for e in log if e[0] == "best"] == [("best", 4, 0.9), ("best", 8, 0.9)]
    assert ("summary", "eval", 8) in log and not [e for e in trainer.log if e[0] in ("summary", "best")]


def test_loops_are_cut_at_checkpoints_and_epoch_ends():
    trainer = FakeTrainer(steps_per_loop=5, checkpoint_every_steps=3)
    Controller(trainer, FakeInput(4), eval_data=None, total=8).run()
    loops = [(start, n) for _, start, n in _actions(trainer, "run_loop")]
    assert loops == [(0, 3), (3, 1), (4, 2), (6, 2)]  # never past a checkpoint step or an epoch end
    assert sum(n for _, n in loops) == 8


def test_eval_every_epochs_skips_epochs_but_not_the_last_step():
    trainer = FakeTrainer(steps_per_loop=4)
    history = Controller(trainer, FakeInput(4), eval_data="eval", total=12, eval_every_epochs=2).run()
    assert [step for _, step in _actions(trainer, "evaluate")] == [8, 12]
    assert math.isnan(history["eval_loss"][0]) and history["eval_loss"][1:] == [0.5, 0.5]


def test_a_signal_stops_after_the_loop_with_a_checkpoint_and_nothing_after_it():
    trainer = FakeTrainer(steps_per_loop=2)

    def signal_at_step_4(t, steps):
        if t.global_step == 4:
            t.signal_received = "SIGTERM"

    trainer.on_loop = signal_at_step_4
    history = Controller(trainer, FakeInput(6), eval_data="eval", total=12).run()
    assert trainer.stopped_by == "SIGTERM" and trainer.global_step == 4
    assert _actions(trainer, "run_loop")[-1] == ("run_loop", 2, 2)  # no step after the signal
    assert ("save", 4) in trainer.log and not _actions(trainer, "evaluate", "hooks_epoch_end")
    assert any("SIGTERM received: stopped after step 4" in e[1] for e in _actions(trainer, "say"))
    assert history == {} and trainer.iterators_open == 0


def test_a_loop_cut_short_by_the_trainer_counts_as_a_signal():
    trainer = FakeTrainer(steps_per_loop=3)
    trainer.run_loop = lambda iterator, n: (trainer.log.append(("run_loop", trainer.global_step, n)),
                                            setattr(trainer, "global_step", trainer.global_step + 1), {})[-1]
    Controller(trainer, FakeInput(6), eval_data=None, total=6).run()
    assert trainer.stopped_by == "signal" and trainer.global_step == 1


def test_a_hook_stop_request_ends_the_run_at_that_loop_with_a_checkpoint():
    trainer = FakeTrainer(steps_per_loop=2)

    def request_at_6(t, steps):
        if t.global_step == 6:
            t.stop_request = "max_time of 1 s reached"

    trainer.on_loop = request_at_6
    Controller(trainer, FakeInput(4), eval_data=None, total=20).run()
    assert trainer.stopped_by == "max_time of 1 s reached" and trainer.global_step == 6
    assert ("save", 6) in trainer.log and _actions(trainer, "run_loop")[-1][1] == 4


def test_a_nonfinite_streak_rolls_back_and_the_run_still_ends_at_total():
    trainer = FakeTrainer(steps_per_loop=2, checkpoint_every_steps=4, nonfinite_limit=2)
    streaks = {6: 2}  # After the loop that reaches step 6: two skipped steps in a row.

    def diverge_once(t, steps):
        t.nonfinite_streak = streaks.pop(t.global_step, 0)

    trainer.on_loop = diverge_once
    history = Controller(trainer, FakeInput(8), eval_data="eval", total=16).run()
    assert _actions(trainer, "rollback") == [("rollback", 6)]
    assert trainer.rollbacks == 1 and trainer.global_step == 16 and trainer.stopped_by is None
    # Back at the checkpoint of step 4, in the same epoch: a new iterator from there.
    opened = [step for _, step in _actions(trainer, "open_iterator")]
    assert opened == [0, 4, 8]
    # No hook saw the diverged loop, and no checkpoint was written from it.
    assert ("hooks_loop_end", 6) not in trainer.log[:trainer.log.index(("rollback", 6))]
    assert ("save", 6) not in trainer.log[:trainer.log.index(("rollback", 6))]
    assert history["step"] == [8, 16]
    assert [step for _, step in _actions(trainer, "save")][-1] == 16


def test_nonfinite_weights_at_the_epoch_end_roll_back_instead_of_saving():
    trainer = FakeTrainer(steps_per_loop=4, nonfinite_limit=2)

    def poison_first_epoch_end(t, steps):
        if t.global_step == 4 and t.rollbacks == 0:
            t.guard.finite = False

    trainer.on_loop = poison_first_epoch_end
    Controller(trainer, FakeInput(4), eval_data=None, total=8).run()
    assert _actions(trainer, "rollback") == [("rollback", 4)]
    assert [step for _, step in _actions(trainer, "save")] == [4, 8]  # after the rollback only
    assert trainer.global_step == 8


def test_a_run_that_ends_inside_an_epoch_saves_and_keeps_its_iterator():
    trainer = FakeTrainer(steps_per_loop=2)
    Controller(trainer, FakeInput(10), eval_data="eval", total=6).run()
    assert _actions(trainer, "save")[-1] == ("save", 6)
    assert _actions(trainer, "evaluate") == [("evaluate", 6)]  # the last step evaluates
    assert trainer.log[-1] == ("keep_iterator", 6)


def test_nothing_left_to_train_evaluates_once_and_says_where_the_run_stands():
    trainer = FakeTrainer()
    trainer.global_step = 8
    history = Controller(trainer, FakeInput(4), eval_data="eval", total=8).run()
    assert not _actions(trainer, "run_loop", "save") and _actions(trainer, "evaluate") == [("evaluate", 8)]
    assert history["step"] == [8] and history["eval_accuracy"] == [0.9]


@pytest.mark.parametrize("points", [[3], [3, 5]])
def test_hooks_stop_points_cut_the_loops(points):
    class Cutter:
        def stop_points(self, total):
            return points

    trainer = FakeTrainer(steps_per_loop=8, hooks=[Cutter()])
    Controller(trainer, FakeInput(8), eval_data=None, total=8).run()
    ends = [start + n for _, start, n in _actions(trainer, "run_loop")]
    assert set(points) <= set(ends) and ends[-1] == 8
