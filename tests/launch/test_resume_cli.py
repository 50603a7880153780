"""Issue 4's end-to-end promises: bitwise-identical restarts and a clean SIGTERM exit."""

import signal

import numpy as np
import pytest
import tensorflow as tf

from tests.launch.cli import command, run, start_and_signal

pytestmark = pytest.mark.slow

TWO_REPLICAS = ["--strategy=mirrored", "--num_cpu_devices=2", "--batch_size=16"]


def _state(checkpoint):
    """Every model and optimizer tensor of a checkpoint (not its save counter)."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "optimizer/", "step/"))}


@pytest.mark.parametrize("replicas", [[], TWO_REPLICAS], ids=["1-replica", "2-replicas"])
def test_sigkill_and_rerun_end_bitwise_identical_with_deterministic(tiny_cifar, tmp_path, replicas):
    flags = ["--deterministic", "--train_steps=30", "--keep_checkpoints=20", "--lr_boundaries=1.5",
             "--lr_multipliers=0.1", *replicas]
    straight = run(command(tiny_cifar, tmp_path / "straight", *flags))
    assert straight.returncode == 0, straight.stderr[-3000:]
    start_and_signal(command(tiny_cifar, tmp_path / "killed", *flags), tmp_path / "killed" / "ckpt-12.index")
    resumed = run(command(tiny_cifar, tmp_path / "killed", *flags))
    assert resumed.returncode == 0 and "resuming at step" in resumed.stderr, resumed.stderr[-3000:]
    a, b = _state(str(tmp_path / "straight" / "ckpt-30")), _state(str(tmp_path / "killed" / "ckpt-30"))
    assert a.keys() == b.keys() and len(a) > 100
    different = [name for name in a if a[name].tobytes() != b[name].tobytes()]
    assert different == []
    early = _state(str(tmp_path / "killed" / "ckpt-12"))
    # The weights are stored once, under the optimizer's path in the object graph.
    changed = [k for k in a if k.startswith("optimizer/_trainable_variables/") and not np.array_equal(a[k], early[k])]
    assert len(changed) > 50  # it did train after the resume


def test_sigterm_checkpoints_the_current_step_and_exits_0(tiny_cifar, tmp_path):
    model_dir = tmp_path / "preempted"
    # Loops of a whole epoch (10 steps) and no step-count checkpoints: the checkpoint
    # at the stop is the one the signal caused.
    args = [a for a in command(tiny_cifar, model_dir, "--epochs=100", "--steps_per_loop=1000")
            if a != "--checkpoint_every_steps=4"] + ["--checkpoint_every_steps=1000"]
    proc = start_and_signal(args, model_dir / "train", sig=signal.SIGTERM)
    assert proc.returncode == 0, proc.stderr_text[-3000:]
    line = [l for l in proc.stderr_text.splitlines() if l.startswith("SIGTERM received")]
    assert len(line) == 1, proc.stderr_text[-3000:]
    step = int(line[0].split("stopped after step ")[1].split(";")[0])
    assert step > 0 and line[0].split("checkpoint ")[1].split(";")[0].endswith(f"ckpt-{step}")
    assert (model_dir / f"ckpt-{step}.index").exists()
