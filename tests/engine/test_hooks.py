"""Hooks: early stopping, plateaus, history files, histograms, profiler, max_time, user hooks; schedules."""

import glob
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import augment, in_memory
from engine import EpochInput, GuardOptions, Trainer, sparse_accuracy
from engine import hooks as hooks_lib
from engine import schedules
from engine.losses import sparse_categorical_crossentropy

N, FEATURES, CLASSES, GB = 48, 4, 2, 16


def _input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    fn = in_memory.train_dataset_fn(x, y, global_batch_size=GB, seed=0, recipe=augment.BatchRecipe(), normalize=None)
    return EpochInput(fn, N // GB), tf.data.Dataset.from_tensor_slices((x, y)).batch(GB)


def _trainer(model_dir=None, hooks=(), lr=0.1, **kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    optimizer = keras.optimizers.SGD(schedules.Constant(lr) if kwargs.pop("schedule", False) else lr)
    return Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, global_batch_size=GB, model_dir=model_dir, progress=False,
                   loss=sparse_categorical_crossentropy(), hooks=hooks, **kwargs)


class _Feed:
    """A hook writing a made-up metric into the epoch logs (hooks run in order)."""

    def __init__(self, values):
        self.values = list(values)

    def on_epoch_end(self, trainer, logs):
        logs["made_up"] = self.values.pop(0)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    kept = {}

    class Keep:
        def on_epoch_end(self, trainer, logs):
            kept[int(logs["step"])] = trainer.model.get_weights()

    stop = hooks_lib.EarlyStopping("made_up", patience=2, mode="min")
    trainer = _trainer(hooks=[_Feed([1.0, 0.5, 0.7, 0.8, 0.9, 1.0]), Keep(), stop])
    train, _ = _input()
    history = trainer.fit(train, epochs=6)
    assert len(history["step"]) == 4  # Best at epoch 2, no better at 3 and 4: stop.
    assert trainer.stopped_by.startswith("early stopping: made_up has not improved")
    assert stop.best_step == 6 and trainer.global_step == 12
    for a, b in zip(trainer.model.get_weights(), kept[6]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(kept[12], kept[6]))


def test_early_stopping_min_delta_and_unknown_metric():
    stop = hooks_lib.EarlyStopping("made_up", patience=1, min_delta=0.1, mode="max")
    trainer = _trainer(hooks=[_Feed([0.5, 0.55, 0.9]), stop])
    train, _ = _input()
    history = trainer.fit(train, epochs=3)
    assert len(history["step"]) == 2  # +0.05 is not an improvement of at least 0.1
    with pytest.raises(KeyError, match="'nope' is not logged; logged: .*loss"):
        _trainer(hooks=[hooks_lib.EarlyStopping("nope")]).fit(train, epochs=1)


def test_eval_every_epochs_evaluates_every_nth_epoch_and_at_the_end_and_patience_counts_evaluations():
    train, evaluation = _input()
    history = _trainer().fit(train, evaluation, epochs=5, eval_every_epochs=2)
    assert history["step"] == [3, 6, 9, 12, 15]
    evaluated = [not np.isnan(v) for v in history["eval_loss"]]
    assert evaluated == [False, True, False, True, True]  # epochs 2 and 4, and the last step
    assert all(np.isfinite(history["loss"]))
    # At learning rate 0 the eval loss never improves on its first value: with patience 1
    # the run stops at the second evaluation (epoch 4), not at the unevaluated epoch 3.
    trainer = _trainer(lr=0.0, hooks=[hooks_lib.EarlyStopping("eval_loss", patience=1),
                                      hooks_lib.ReduceLROnPlateau("eval_loss", patience=5)])
    history = trainer.fit(train, evaluation, epochs=6, eval_every_epochs=2)
    assert history["step"] == [3, 6, 9, 12] and trainer.stopped_by.startswith("early stopping")
    with pytest.raises(KeyError, match="'eval_loss' is not logged"):  # No eval data: the metric never comes.
        _trainer(hooks=[hooks_lib.EarlyStopping("eval_loss")]).fit(train, epochs=1, eval_every_epochs=2)
    with pytest.raises(ValueError, match="eval_every_epochs=0 must be at least 1"):
        _trainer().fit(train, evaluation, epochs=1, eval_every_epochs=0)


def test_plateau_scales_the_learning_rate_and_the_scale_is_checkpointed(tmp_path):
    plateau = hooks_lib.ReduceLROnPlateau("made_up", factor=0.5, patience=2, mode="min")
    trainer = _trainer(model_dir=str(tmp_path), hooks=[_Feed([1.0, 1.0, 1.0, 0.5, 0.6]), plateau],
                       schedule=True, guard=GuardOptions(nonfinite_limit=None))
    train, _ = _input()
    trainer.fit(train, epochs=5)
    assert trainer.learning_rate == pytest.approx(0.05) and trainer.learning_rate_scale == 0.5
    again = _trainer(model_dir=str(tmp_path), schedule=True, guard=GuardOptions(nonfinite_limit=None))
    again.restore()
    assert again.learning_rate == pytest.approx(0.05)


def test_history_logger_writes_csv_and_json_and_a_resume_does_not_repeat_rows(tmp_path):
    train, evaluation = _input()
    _trainer(model_dir=str(tmp_path), hooks=[hooks_lib.HistoryLogger(str(tmp_path))]).fit(train, evaluation,
                                                                                          epochs=2)
    _trainer(model_dir=str(tmp_path), hooks=[hooks_lib.HistoryLogger(str(tmp_path))]).fit(train, evaluation,
                                                                                          epochs=3)
    rows = json.load(open(tmp_path / "history.json"))
    assert [r["step"] for r in rows] == [3, 6, 9]
    assert {"loss", "accuracy", "learning_rate", "eval_loss", "eval_accuracy", "input_wait_percent"} <= set(rows[0])
    lines = open(tmp_path / "history.csv").read().splitlines()
    assert lines[0].startswith("epoch,step,") and len(lines) == 4


def test_weight_histograms_are_written_every_n_epochs(tmp_path):
    train, _ = _input()
    _trainer(model_dir=str(tmp_path), hooks=[hooks_lib.WeightHistograms(every_epochs=2)]).fit(train, epochs=4)
    steps = {}
    for path in glob.glob(str(tmp_path / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("weights/"):
                    steps.setdefault(value.tag, set()).add(event.step)
    assert steps and all(s == {6, 12} for s in steps.values())
    assert any("kernel" in tag for tag in steps)


def test_profiler_records_exactly_the_requested_steps(tmp_path):
    loops, said = [], []
    profiler = hooks_lib.Profiler(str(tmp_path / "train"), 2, 5)
    trainer = _trainer(model_dir=str(tmp_path), steps_per_loop=100, hooks=[profiler])
    trainer.say = said.append
    trainer.add_hook("loop_end", lambda t, logs: loops.append(int(logs["step"])))
    train, _ = _input()
    trainer.fit(train, epochs=3)
    assert loops == [2, 3, 5, 6, 9]  # Loops cut at the profiler's steps and the epoch ends.
    assert glob.glob(str(tmp_path / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    # Its summary (engine/profiling.py) finds the model's own op, and is said per profiled step.
    assert any("MatMul" in t.op_type for t in profiler.summary.by_type)
    assert any("per step (3 steps)" in line and "MatMul" in line for line in said)


def test_max_time_checkpoints_and_stops_and_a_rerun_goes_on(tmp_path):
    train, _ = _input()
    trainer = _trainer(model_dir=str(tmp_path), steps_per_loop=1, hooks=[hooks_lib.MaxTime(1e-9)])
    trainer.fit(train, epochs=3)
    assert trainer.stopped_by.startswith("max_time") and trainer.global_step == 1
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
    rerun = _trainer(model_dir=str(tmp_path))
    rerun.fit(train, epochs=3)
    assert rerun.global_step == 9


def test_user_hooks_as_callables_and_subclass_methods_see_the_logs():
    events = []

    class Mine(Trainer):
        def on_train_begin(self):
            events.append(("begin", self.global_step))

        def on_epoch_end(self, logs):
            events.append(("epoch", int(logs["step"])))

        def on_train_end(self, history):
            events.append(("end", len(history["step"])))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    trainer = Mine(model=model, optimizer=keras.optimizers.SGD(0.1), global_batch_size=GB, progress=False,
                   loss=sparse_categorical_crossentropy(), steps_per_loop=2)
    trainer.add_hook("loop_end", lambda t, logs: events.append(("loop", int(logs["step"]), "loss" in logs)))
    train, _ = _input()
    trainer.fit(train, epochs=2)
    assert events == [("begin", 0), ("loop", 2, True), ("loop", 3, True), ("epoch", 3), ("loop", 5, True),
                      ("loop", 6, True), ("epoch", 6), ("end", 2)]
    with pytest.raises(ValueError, match="hook event 'step_end'"):
        trainer.add_hook("step_end", print)


def test_schedules_warmup_cosine_onecycle_values():
    warm = schedules.LinearWarmup(schedules.Constant(0.4), 4)
    assert [round(float(warm(k)), 6) for k in range(6)] == [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    cosine = schedules.build_schedule("cosine", 1.0, steps_per_epoch=10, total_steps=100)
    assert float(cosine(0)) == pytest.approx(1.0) and float(cosine(50)) == pytest.approx(0.5)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7) and float(cosine(150)) == pytest.approx(0.0, abs=1e-7)
    one = schedules.OneCycle(1.0, 100, pct_start=0.25)
    values = [float(one(k)) for k in range(101)]
    assert values[0] == pytest.approx(1.0 / 25) and max(values) == pytest.approx(1.0)
    assert int(np.argmax(values)) == 25 and values[-1] == pytest.approx(1.0 / 25 / 1e4)
    assert all(a <= b for a, b in zip(values[:25], values[1:26])) and all(a >= b for a, b in zip(values[25:],
                                                                                               values[26:]))
    built = schedules.build_schedule("cosine", 0.8, steps_per_epoch=10, total_steps=100, warmup_epochs=1)
    assert float(built(5)) == pytest.approx(0.4) and float(built(10)) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="warmup_epochs does not apply to lr_schedule=onecycle"):
        schedules.build_schedule("onecycle", 0.1, steps_per_epoch=10, total_steps=100, warmup_epochs=1)
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        schedules.build_schedule("step", 0.1, steps_per_epoch=10, total_steps=100)


def test_learning_rate_is_logged_every_loop(tmp_path):
    train, _ = _input()
    trainer = _trainer(model_dir=str(tmp_path), steps_per_loop=1, schedule=True)
    trainer.fit(train, epochs=1)
    steps = set()
    for path in glob.glob(str(tmp_path / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps |= {event.step for v in event.summary.value if v.tag == "learning_rate"}
    assert steps == {1, 2, 3}


def test_patience_counters_and_best_values_survive_a_resume(tmp_path):
    train, _ = _input()
    plateau = hooks_lib.ReduceLROnPlateau("made_up", factor=0.5, patience=3, mode="min")
    stop = hooks_lib.EarlyStopping("made_up", patience=3, mode="min")
    _trainer(model_dir=str(tmp_path), hooks=[_Feed([1.0, 2.0]), plateau, stop]).fit(train, epochs=2)
    assert (plateau.best, plateau.wait, stop.best, stop.wait, stop.best_step) == (1.0, 1, 1.0, 1, 3)
    plateau2 = hooks_lib.ReduceLROnPlateau("made_up", factor=0.5, patience=3, mode="min")
    stop2 = hooks_lib.EarlyStopping("made_up", patience=3, mode="min")
    resumed = _trainer(model_dir=str(tmp_path), hooks=[_Feed([3.0, 4.0]), plateau2, stop2])
    resumed.restore()
    assert (plateau2.best, plateau2.wait, stop2.best, stop2.wait, stop2.best_step) == (1.0, 1, 1.0, 1, 3)
    history = resumed.fit(train, epochs=4)
    # Two more epochs without improvement make 3 for early stopping: it stops at the 4th epoch.
    assert resumed.stopped_by.startswith("early stopping") and history["step"] == [9, 12]


def test_early_stopping_after_a_resume_restores_the_best_epoch_from_before_it(tmp_path):
    train, _ = _input()
    kept = {}

    class Keep:
        def on_epoch_end(self, trainer, logs):
            kept[int(logs["step"])] = trainer.model.get_weights()

    first = _trainer(model_dir=str(tmp_path), hooks=[_Feed([1.0, 0.5]), Keep(),
                                                     hooks_lib.EarlyStopping("made_up", patience=2, mode="min")])
    first.fit(train, epochs=2)
    saved = sorted(p.name for p in (tmp_path / "early_stopping").iterdir())
    assert saved == ["step-6.data-00000-of-00001", "step-6.index"]  # Only the newest best is kept.
    stop = hooks_lib.EarlyStopping("made_up", patience=2, mode="min")
    resumed = _trainer(model_dir=str(tmp_path), hooks=[_Feed([0.7, 0.8, 0.9]), Keep(), stop])
    resumed.fit(train, epochs=5)
    assert resumed.stopped_by.startswith("early stopping") and resumed.global_step == 12
    for a, b in zip(resumed.model.get_weights(), kept[6]):  # From disk: the resumed run never held them.
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(kept[12], kept[6]))


def test_early_stopping_restores_the_evaluated_moving_averages_with_ema():
    train, _ = _input()
    evaluated = {}

    class Keep:
        def on_epoch_end(self, trainer, logs):
            with trainer.ema_weights():
                evaluated[int(logs["step"])] = trainer.model.get_weights()

    trainer = _trainer(hooks=[_Feed([1.0, 2.0, 3.0]), Keep(), hooks_lib.EarlyStopping("made_up", patience=2,
                                                                                       mode="min")], ema_decay=0.5)
    trainer.fit(train, epochs=3)
    assert trainer.stopped_by.startswith("early stopping")
    for a, b in zip(trainer.model.get_weights(), evaluated[3]):
        np.testing.assert_array_equal(a, b)
