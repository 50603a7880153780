"""Checkpoints written by an earlier engine still restore, every piece of run state in place.

The fixture `fixtures/checkpoint_v1/` was written by the engine at the commit that
added it (`python -m tests.engine.fixtures.make_checkpoint`): a Dense model with
SGD momentum, accumulation, EMA, Lookahead and a task's checkpoint item, after 5
steps, with lr_scale 0.5, one rollback and two skipped steps on record.
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from tests.engine.fixtures import make_checkpoint

FIXTURES = os.path.dirname(make_checkpoint.__file__)


def _expected() -> dict:
    with open(os.path.join(FIXTURES, "checkpoint_v1_expected.json")) as f:
        return json.load(f)


def test_checkpoint_of_an_earlier_engine_restores_every_piece_of_run_state(tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(make_checkpoint.FOLDER, model_dir)
    trainer = make_checkpoint.build(model_dir)
    assert trainer.restore().endswith("ckpt-5")
    assert trainer.global_step == 5
    assert trainer.learning_rate_scale == 0.5
    assert trainer.nonfinite_steps == 2
    assert float(trainer.counter.numpy()) == 7.0
    # Write what the restored objects hold, then compare name by name with what the
    # old engine wrote: a renamed or unrestored piece of state shows up as a missing
    # name or a value left at its initial one.
    again = trainer.checkpointer.save(6)
    written = {name for name, _ in tf.train.list_variables(again) if name.endswith("VARIABLE_VALUE")}
    expected = _expected()
    assert written == set(expected)
    for name, value in expected.items():
        if name.startswith("save_counter/"):
            continue
        np.testing.assert_array_equal(tf.train.load_variable(again, name), np.asarray(value), err_msg=name)
