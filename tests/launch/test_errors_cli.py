"""User errors are one line; anything else (a library's ValueError, a bug of ours) keeps its traceback."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Runs launch.train's main with experiment.prepare replaced by one that raises `error`.
_SCRIPT = """
import sys
from absl import app
from launch import train, experiment, flags as launch_flags
from engine.errors import UserError

def prepare(config):
    raise {error}

experiment.prepare = prepare
launch_flags.define_train_flags()
app.run(train.main, argv=train.flagfiles_first(["launch.train", "--model_dir=" + sys.argv[1], "--noprogress"]))
"""


def _train_with_prepare_raising(error: str, model_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT.format(error=error), str(model_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_a_user_error_is_one_line_without_traceback(tmp_path):
    result = _train_with_prepare_raising('UserError("--data_dir=/nowhere does not exist")', tmp_path / "run")
    assert result.returncode == 1
    assert "launch.train: error: --data_dir=/nowhere does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_any_other_value_error_keeps_its_traceback(tmp_path):
    result = _train_with_prepare_raising('ValueError("an internal inconsistency")', tmp_path / "run")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "in prepare" in result.stderr
    assert "ValueError: an internal inconsistency" in result.stderr
    assert "launch.train: error:" not in result.stderr
