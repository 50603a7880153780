"""launch.train as users run it: in a subprocess, on small CIFAR-10 files the test writes."""

import os

import pytest

from tests.launch.cli import command as _command, run as _run, start_and_signal

pytestmark = pytest.mark.slow


def test_killed_run_resumes_from_its_last_checkpoint(tiny_cifar, tmp_path):
    model_dir = tmp_path / "run"
    # 4 epochs of 10 steps. Killed once ckpt-16's files appear: by then ckpt-12 is committed (the
    # manager records a save in its state file before it writes the next one), while ckpt-16 itself
    # may not be, so the rerun resumes at step 12 or 16; 24 steps are left, seconds of work.
    args = _command(tiny_cifar, model_dir, "--epochs=4", "--lr_boundaries=1", "--lr_multipliers=0.1")
    start_and_signal(args, model_dir / "ckpt-16.index")
    done = _run(args)
    assert done.returncode == 0, done.stderr
    resumed = [line for line in done.stderr.splitlines() if "resuming at step" in line]
    assert len(resumed) == 1
    step = int(resumed[0].split("resuming at step ")[1].split()[0])
    assert step >= 12 and (step % 4 == 0 or step % 10 == 0)  # a checkpoint step, not 0
    assert "learning rate 0.0025" in resumed[0]  # 0.1 x 32/128 x 0.1: past the boundary at epoch 1
    assert (model_dir / "ckpt-40.index").exists()
    assert "examples_per_second=" in done.stderr and "eval_accuracy=" in done.stderr
    # The command line wins over the flag file, wherever the file stands.
    assert "model resnet20" in done.stderr


def test_bad_input_stops_with_one_line_and_keeps_model_dir(tiny_cifar, tmp_path):
    model_dir = tmp_path / "kept"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("precious")
    for extra, message in [(["--batch_size=0"], "--batch_size=0 must be positive"),
                           ([f"--data_dir={tmp_path}/missing"], f"--data_dir={tmp_path}/missing does not exist"),
                           (["--epochs=0"], "--epochs=0 must be positive"),
                           (["--global_batch_size=33", "--strategy=mirrored", "--num_cpu_devices=2"],
                            "--global_batch_size=33 is not divisible by 2 replicas")]:
        result = _run(_command(tiny_cifar, model_dir, *extra))
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("launch.train: error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert sorted(os.listdir(model_dir)) == ["notes.txt"]
    result = _run(_command(tiny_cifar, model_dir, "--model=resnet19"))
    assert result.returncode != 0 and "resnet19" in result.stderr


def test_two_replicas_from_flags(tiny_cifar, tmp_path):
    result = _run(_command(tiny_cifar, tmp_path / "m2", "--strategy=mirrored", "--num_cpu_devices=2",
                           "--batch_size=16", "--train_steps=6"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s), per-replica batch 16, global batch 32" in result.stderr
    assert (tmp_path / "m2" / "ckpt-6.index").exists()


def test_trains_on_the_real_cifar10_files(cifar10_dir, tmp_path):
    """The JPEG copy through its CSV indexes; the small CNN trains about 5x ResNet-20's examples/s here."""
    result = _run(_command(cifar10_dir, tmp_path / "real", "--model=small_cnn", "--batch_size=128",
                           "--train_steps=120", "--steps_per_loop=40"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "50000 train, 10000 eval examples" in result.stderr
    final = [line for line in result.stderr.splitlines() if line.startswith("epoch 1/1 step 120:")]
    accuracy = float(final[0].split("eval_accuracy=")[1].split()[0])
    assert accuracy > 0.2  # chance is 0.1; 120 steps of the small CNN reach about 0.31
