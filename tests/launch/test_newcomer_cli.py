"""What a newcomer meets on the command line: help, banner, saved config, progress, errors, the end."""

import os
import re
import sys

import pytest
import tensorflow as tf

from engine.checkpoint import Checkpointer, CheckpointWriteError
from launch.quiet import _NATIVE_LINE
from tests.launch.cli import command, run

TRAIN = [sys.executable, "-m", "launch.train"]


def _native_lines(text):
    return [line for line in text.splitlines() if _NATIVE_LINE.match(line)]


def test_helpshort_lists_the_project_flags_by_group_and_hides_native_lines():
    from launch import config as config_lib

    for arg in ("--helpshort", "--help"):
        result = run(TRAIN + [arg], timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
        titles = [cls.title for cls in config_lib.SECTIONS.values()] + ["task gan"]
        positions = [out.find(f"\n{title}:\n") for title in titles]
        assert all(p > 0 for p in positions) and positions == sorted(positions), positions
        for flag in ("--learning_rate", "--model_dir", "--strategy", "--gan_latent_dim", "--tf_log_level"):
            assert f"\n  {flag}  (default: " in out, flag
        # Each flag lands in its own section's group.
        optimizer = out[out.find("\noptimizer:\n"):out.find("\nlearning-rate schedule:\n")]
        assert "--learning_rate" in optimizer and "--model_dir" not in optimizer
        assert not _native_lines(result.stderr), result.stderr
    shown = run(TRAIN + ["--helpshort", "--tf_log_level=0"], timeout=120)
    assert _native_lines(shown.stderr), "with --tf_log_level=0 TensorFlow's own start-up lines show"


def test_banner_saved_config_rerun_and_end_of_run_lines(tiny_cifar, tmp_path):
    model_dir = tmp_path / "m"
    first = run(command(tiny_cifar, model_dir, "--epochs=1", "--learning_rate=0.05"))
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stderr.splitlines()
    assert not _native_lines(first.stderr)
    config_line = next(line for line in lines if line.startswith("config: "))
    for flag in ("--model=resnet20", "--batch_size=32", "--epochs=1", "--learning_rate=0.05"):
        assert flag in config_line.split(), (flag, config_line)
    plan = next(line for line in lines if line.startswith("plan: "))
    assert "1 epochs = 10 steps of global batch 32 (10 per epoch), from step 0" in plan
    assert "default strategy with 1 replica(s)" in plan and str(model_dir) in plan
    assert lines.index(plan) < min(i for i, line in enumerate(lines) if line.startswith("epoch 1/1 step"))
    # The last lines say where everything is.
    assert lines[-5] == f"newest checkpoint: {model_dir}/ckpt-10"
    assert re.fullmatch(rf"best checkpoint: {model_dir}/best/best-10/ckpt \(eval_accuracy=[\d.]+ at step 10\)",
                        lines[-4])
    assert lines[-3:] == [f"history: {model_dir}/history.json (and history.csv)",
                          f"curves: python -m launch.plot --model_dir={model_dir}",
                          f"TensorBoard: tensorboard --logdir={model_dir}"]
    for path in (f"{model_dir}/ckpt-10.index", f"{model_dir}/history.json", f"{model_dir}/best/best.json"):
        assert os.path.isfile(path), path

    # The saved flagfile reruns the job; a longer --epochs resumes it and says what changed.
    saved = model_dir / "config.flags"
    assert "--learning_rate=0.05" in saved.read_text().splitlines()
    again = run(TRAIN + [f"--flagfile={saved}", "--epochs=2", "--noprogress"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"changed since the last run in {model_dir}: --epochs: 1 -> 2" in again.stderr.splitlines()
    assert "resuming at step 10" in again.stderr and f"newest checkpoint: {model_dir}/ckpt-20" in again.stderr

    # A change that would corrupt the run is refused, naming the flag, and nothing is touched.
    before = sorted(os.listdir(model_dir))
    refused = run(TRAIN + [f"--flagfile={saved}", "--model=resnet32", "--noprogress"])
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    error = refused.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("launch.train: error: ") and "--model: resnet20 -> resnet32" \
        in error[0] and "--allow_config_change" in error[0], refused.stderr[-2000:]
    assert sorted(os.listdir(model_dir)) == before

    # Forced, the other model meets the checkpoint: one line that names it, no pages of warnings.
    forced = run(TRAIN + [f"--flagfile={saved}", "--model=resnet32", "--allow_config_change", "--noprogress"])
    assert forced.returncode == 1 and "Traceback" not in forced.stderr
    assert "WARNING" not in forced.stderr and len(forced.stderr.strip().splitlines()) <= 4, forced.stderr[-3000:]
    last = forced.stderr.strip().splitlines()[-1]
    assert last.startswith(f"launch.train: error: checkpoint {model_dir}/ckpt-20 does not match this model")
    assert "model variables" in last and sorted(os.listdir(model_dir)) == before


def test_progress_moves_from_the_first_step_and_an_eta_follows(tiny_cifar, tmp_path):
    args = [a for a in command(tiny_cifar, tmp_path / "m", "--batch_size=8", "--steps_per_loop=50", "--epochs=30",
                               "--max_time=24", "--checkpoint_every_steps=1000")
            if a not in ("--noprogress", "--steps_per_loop=1", "--checkpoint_every_steps=4")]
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    updates = [int(n) for n in re.findall(r"epoch 1/30: +\d+%\|[^|]*\| *(\d+)/40", result.stderr)]
    # Loops of 1, 2, 4, 8, 16 steps, then 9 to the epoch's end (steps_per_loop=50 would jump to 40 at
    # once); tqdm draws at most every 0.1 s, so some of the early counts may not be drawn.
    moved = [n for n in updates if n]
    assert moved[0] == 1 and set(moved[:5]) <= {1, 3, 7, 15, 31, 40} and len(set(moved) - {40}) >= 3, updates
    # The ETA comes after 3 s of timed steps (loops that traced left out); with 8 s in all,
    # start-up, tracing and per-epoch evaluations sometimes left less than that (2 of 5 runs),
    # and with 14 s so did a CPU shared with a training job (2026-12-07): 24 s.
    eta = [line for line in result.stderr.splitlines() if line.startswith("ETA: ")]
    assert len(eta) == 1 and re.search(r"for the remaining \d+ steps at \d+ examples/s", eta[0]), eta
    assert "max_time of 24 s reached" in result.stderr


@pytest.mark.parametrize("model_dir,message", [
    ("/proc/x", "--model_dir=/proc/x: cannot create or write a folder in /proc"),
    ("/sys/x", "--model_dir=/sys/x: cannot create or write a folder in /sys"),
    ("FILE", "is a file, not a folder"),
])
def test_unusable_model_dirs_fail_with_one_line(tiny_cifar, tmp_path, model_dir, message):
    if model_dir == "FILE":
        model_dir = tmp_path / "a_file"
        model_dir.write_text("x")
    result = run(command(tiny_cifar, model_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("launch.train: error: ") and message in error[0], result.stderr
    verbose = run(command(tiny_cifar, model_dir, "--verbose_errors"))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and message in verbose.stderr


def test_a_bad_image_in_a_data_dir_csv_is_named_with_its_line(tmp_path):
    root = tmp_path / "cifar"
    for split in ("train", "test"):
        rows = []
        for i in range(3):
            path = root / split / "cat" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            tf.io.write_file(str(path), tf.io.encode_jpeg(tf.zeros((32, 32, 3), tf.uint8)))
            rows.append(f"{split}/cat/{i}.jpg,3")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (root / "train" / "cat" / "1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = run(TRAIN + ["--flagfile=launch/cifar.flags", f"--data_dir={root}", f"--model_dir={tmp_path / 'm'}",
                          "--model=small_cnn", "--noprogress"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and f"{root}/train/cat/1.jpg" in error[0] and "train.csv:2" in error[0], result.stderr
    assert not (tmp_path / "m").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    step = tf.Variable(1)
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=3, step=step)
    kept = checkpointer.save(1)
    real_save = tf.train.CheckpointManager.save

    def disk_full(self, checkpoint_number=None, **kwargs):
        # Half a checkpoint written, then the device is full.
        tf.io.write_file(os.path.join(self.directory, f"ckpt-{checkpoint_number}.data-00000-of-00001"), "partial")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    step.assign(2)
    with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint 2 .*No space left on device.*"
                                                   rf"previous checkpoint {re.escape(kept)} is kept"):
        checkpointer.save(2)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    assert tf.train.latest_checkpoint(str(tmp_path)) == kept
    assert not [f for f in os.listdir(tmp_path) if f.startswith("ckpt-2")]
    step.assign(7)
    assert Checkpointer(str(tmp_path), max_to_keep=3, step=step).restore_latest() == kept and int(step) == 1
