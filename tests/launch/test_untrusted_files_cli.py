"""Files made elsewhere run no code: a crafted CIFAR-10 pickle and a Lambda-layer backbone, from the command line."""

import os
import pickle

import pytest

from tests.launch.cli import command, run, write_tiny_cifar

pytestmark = pytest.mark.slow


class _RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


def test_a_crafted_data_batch_stops_the_run_in_one_line_without_running(tmp_path):
    (tmp_path / "data").mkdir()
    data_dir = write_tiny_cifar(tmp_path / "data")
    marker = tmp_path / "payload_ran"
    batch = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    with open(batch, "wb") as f:
        pickle.dump({b"data": _RunsACommand(f"touch {marker}"), b"labels": [0]}, f)
    result = run(command(data_dir, tmp_path / "m", "--train_steps=2"))
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and f"{batch}: refused to unpickle" in lines[0] and f"{os.system.__module__}.system" \
        in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_a_lambda_layer_backbone_is_refused_in_one_line(tiny_cifar, tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Lambda(lambda x: x * 2.0, name="doubles")(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, features).save(tmp_path / "lambda.keras")
    result = run(command(tiny_cifar, tmp_path / "m", f"--backbone={tmp_path / 'lambda.keras'}", "--train_steps=2"))
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and "Lambda" in lines[0] and "lambda.keras" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()
