"""Checkpoint fallback on damaged files, and the best-checkpoint keeper."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from engine.checkpoint import BestCheckpoint, Checkpointer


def _saved(tmp_path, steps):
    v = tf.Variable(0.0)
    keeper = Checkpointer(str(tmp_path), max_to_keep=5, v=v)
    for step in steps:
        v.assign(float(step))
        keeper.save(step)
    return v, keeper


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, capfd):
    _saved(tmp_path, [10, 20])
    data = tmp_path / "ckpt-20.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])
    v = tf.Variable(-1.0)
    restored = Checkpointer(str(tmp_path), max_to_keep=5, v=v).restore_latest()
    assert restored.endswith("ckpt-10") and float(v.numpy()) == 10.0
    assert f"checkpoint {tmp_path}/ckpt-20 is unreadable" in capfd.readouterr().err
    assert data.exists()  # reported, not deleted


def test_all_checkpoints_unreadable_is_an_error(tmp_path):
    _saved(tmp_path, [1])
    (tmp_path / "ckpt-1.index").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable checkpoint"):
        Checkpointer(str(tmp_path), max_to_keep=5, v=tf.Variable(0.0)).restore_latest()


def test_best_checkpoint_keeps_only_the_best_and_names_it_in_json(tmp_path):
    v = tf.Variable(0.0)
    best = BestCheckpoint(str(tmp_path), "eval_accuracy", v=v)
    for step, accuracy in [(1, 0.5), (2, 0.7), (3, 0.6), (4, float("nan"))]:
        v.assign(float(step))
        best.update(step, {"eval_accuracy": accuracy, "eval_loss": 1.0})
    info = json.loads((tmp_path / "best.json").read_text())
    assert info["step"] == 2 and info["value"] == 0.7 and info["metrics"]["eval_loss"] == 1.0
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("best-")) == ["best-2"]
    w = tf.Variable(-1.0)
    tf.train.Checkpoint(v=w).read(str(tmp_path / info["checkpoint"])).assert_consumed()
    assert float(w.numpy()) == 2.0
    # A new keeper over the same folder continues from what best.json says.
    again = BestCheckpoint(str(tmp_path), "eval_accuracy", v=v)
    assert not again.update(5, {"eval_accuracy": 0.69}) and again.update(6, {"eval_accuracy": 0.71})


def test_the_best_checkpoint_action_refuses_weights_in_a_streak_or_not_finite_and_saves_evaluated_ones(
        tmp_path, capsys):
    import contextlib

    from engine.actions import BestCheckpointAction

    class Guard:
        streak, finite = False, True

        def in_streak(self):
            return self.streak

        def state_finite(self):
            return self.finite

    v = tf.Variable(0.0)
    evaluated = []

    @contextlib.contextmanager
    def evaluated_weights():  # e.g. the EMA weights: the ones saved must be these
        v.assign(100.0 + len(evaluated))
        evaluated.append(True)
        yield
        v.assign(0.0)

    guard = Guard()
    action = BestCheckpointAction(BestCheckpoint(str(tmp_path), "eval_accuracy", v=v), guard, evaluated_weights,
                                  is_chief=True, scratch=None)
    guard.streak = True
    assert not action.record(1, {"eval_accuracy": 0.9})
    guard.streak, guard.finite = False, False
    assert not action.record(2, {"eval_accuracy": 0.9})
    assert not (tmp_path / "best.json").exists()
    guard.finite = True
    assert action.record(3, {"eval_accuracy": 0.5})
    assert "new best eval_accuracy=0.5 at step 3" in capsys.readouterr().err
    info = json.loads((tmp_path / "best.json").read_text())
    w = tf.Variable(-1.0)
    tf.train.Checkpoint(v=w).read(str(tmp_path / info["checkpoint"])).assert_consumed()
    assert info["step"] == 3 and float(w.numpy()) == 102.0 and float(v.numpy()) == 0.0


def test_loss_metrics_are_minimised():
    best = BestCheckpoint("/nonexistent-until-written", "eval_loss", v=tf.Variable(0.0))
    assert best.mode == "min" and best.is_better(1.0)
    best.info = {"value": 0.5}
    assert best.is_better(0.4) and not best.is_better(0.6) and not best.is_better(np.inf)


def _dropout_model():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5),
                             keras.layers.GaussianNoise(0.1)])


def test_dropout_states_are_saved_and_older_checkpoints_without_them_restore(tmp_path):
    from engine.errors import UserError
    from engine.state import seed_generator_states

    model = _dropout_model()
    seeds = seed_generator_states(model)
    assert len(seeds) == 2 and all(v.dtype == "int64" and tuple(v.shape) == (2,) for v in seeds)
    # A checkpoint written before the seed states were saved: the model alone.
    Checkpointer(str(tmp_path), max_to_keep=5, model=model).save(1)
    model(np.ones([2, 4], np.float32), training=True)  # draws: the counters move
    moved = [v.numpy().copy() for v in seeds]
    keeper = Checkpointer(str(tmp_path), max_to_keep=5, model=model)
    keeper.add("seed_generators", seeds, optional=True)
    assert keeper.restore_latest().endswith("ckpt-1")
    assert all(np.array_equal(v.numpy(), m) for v, m in zip(seeds, moved))  # kept: nothing saved to restore
    keeper.save(2)
    model(np.ones([2, 4], np.float32), training=True)
    assert not all(np.array_equal(v.numpy(), m) for v, m in zip(seeds, moved))
    assert Checkpointer(str(tmp_path), max_to_keep=5, model=model,
                        seed_generators=seeds).restore_latest().endswith("ckpt-2")
    assert all(np.array_equal(v.numpy(), m) for v, m in zip(seeds, moved))  # restored
    # Only the objects added as optional may be missing.
    strict = Checkpointer(str(tmp_path / "old"), max_to_keep=5, model=model)
    strict.save(1)
    strict.add("seed_generators", seeds)
    with pytest.raises(UserError, match="does not match this model"):
        strict.restore_latest()
