"""Faults a user meets from the command line: divergence, best checkpoints, bad images under --data_dir."""

import os
import re
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.engine.test_resume import _assert_every_checkpoint_finite
from tests.launch.cli import command, run

pytestmark = pytest.mark.slow


def test_a_run_that_always_diverges_ends_by_itself_with_one_line_and_finite_checkpoints(tiny_cifar, tmp_path):
    model_dir = tmp_path / "diverged"
    start = time.monotonic()
    result = run(command(tiny_cifar, model_dir, "--learning_rate=1e30", "--epochs=30"), timeout=300)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "after 3 rollback(s)" in errors[0]
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]  # the last line says it
    rollbacks = re.findall(r"rollback (\d) of 3 to \S+ \(step \d+\), learning rate now ([\d.e+]+)", result.stderr)
    assert [int(n) for n, _ in rollbacks] == [1, 2, 3]
    rates = [float(r) for _, r in rollbacks]
    assert rates[1] == pytest.approx(rates[0] / 2, rel=1e-3) and rates[2] == pytest.approx(rates[0] / 4, rel=1e-3)
    assert _assert_every_checkpoint_finite(str(model_dir))
    assert elapsed < 300


def test_evaluate_predict_and_export_load_the_best_checkpoint(tiny_cifar, tmp_path):
    model_dir = tmp_path / "run"
    trained = run(command(tiny_cifar, model_dir, "--model=small_cnn", "--epochs=2", "--best_metric=eval_loss"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = re.findall(r"new best eval_loss=([\d.]+) at step (\d+)", trained.stderr)[-1]
    evaluated = run([sys.executable, "-m", "launch.evaluate", f"--model_dir={model_dir}", f"--data_dir={tiny_cifar}",
                     "--checkpoint=best"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"best-{best[1]}" in evaluated.stdout
    assert float(re.search(r"eval_loss=([\d.]+)", evaluated.stdout).group(1)) == pytest.approx(float(best[0]),
                                                                                             abs=1e-3)
    export = tmp_path / "export"
    exported = run([sys.executable, "-m", "launch.export", f"--model_dir={model_dir}", f"--output={export}",
                    "--checkpoint=best"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    from datasets import cifar10

    image = tmp_path / "x.png"
    tf.io.write_file(str(image), tf.io.encode_png(cifar10.load(tiny_cifar).test.images[0]))
    for source in (str(export), str(model_dir)):
        predicted = run([sys.executable, "-m", "launch.predict", f"--model={source}", "--checkpoint=best", str(image)])
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        assert predicted.stdout.startswith(f"{image}: ")
    served = tf.saved_model.load(str(export)).signatures["serving_default"]
    probs = served(images=tf.constant(cifar10.load(tiny_cifar).test.images[:1]))["probabilities"].numpy()[0]
    top = np.argsort(-probs)[:3]
    assert predicted.stdout.strip() == f"{image}: " + ", ".join(f"{cifar10.CLASS_NAMES[i]} {probs[i]:.3f}"
                                                                  for i in top)


def _cifar_folders(root, per_class=4):
    """CIFAR-10's class-folder form with small random JPEGs; returns the path of one made corrupt."""
    rng = np.random.default_rng(0)
    from datasets import cifar10

    for split in ("train", "test"):
        for name in cifar10.CLASS_NAMES:
            os.makedirs(root / split / name)
            for i in range(per_class):
                image = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
                tf.io.write_file(str(root / split / name / f"{i}.jpg"), tf.io.encode_jpeg(image))
    bad = root / "train" / "cat" / "2.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    return bad


def test_skip_bad_examples_works_with_data_dir(tmp_path):
    bad = _cifar_folders(tmp_path / "cifar")
    flags = [f"--data_dir={tmp_path / 'cifar'}", "--model=small_cnn", "--batch_size=8", "--train_steps=2",
             "--steps_per_loop=1", "--noprogress"]
    stopped = run([sys.executable, "-m", "launch.train", "--flagfile=launch/cifar.flags",
                   f"--model_dir={tmp_path / 'a'}", *flags])
    assert stopped.returncode == 1
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "--skip_bad_examples" in errors[0], stopped.stderr[-2000:]
    assert not (tmp_path / "a").exists()
    skipped = run([sys.executable, "-m", "launch.train", "--flagfile=launch/cifar.flags",
                   f"--model_dir={tmp_path / 'b'}", "--skip_bad_examples", *flags])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert f"skipped bad example {bad}" in skipped.stderr
    assert "39 train, 40 eval examples" in skipped.stderr
