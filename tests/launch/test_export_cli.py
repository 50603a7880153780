"""Train, export, predict and evaluate from the command line; transfer flags."""

import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.launch.cli import command, run

pytestmark = pytest.mark.slow


def test_export_predict_and_evaluate_agree_with_training(tiny_cifar, tmp_path):
    model_dir, export = tmp_path / "run", tmp_path / "export"
    trained = run(command(tiny_cifar, model_dir, "--model=small_cnn", "--train_steps=20"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    final_accuracy = float(re.findall(r"step 20: .*eval_accuracy=([\d.]+)", trained.stderr)[-1])

    exported = run([sys.executable, "-m", "launch.export", f"--model_dir={model_dir}", f"--output={export}"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    evaluated = run([sys.executable, "-m", "launch.evaluate", f"--model_dir={model_dir}", f"--data_dir={tiny_cifar}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert float(re.search(r"eval_accuracy=([\d.]+)", evaluated.stdout).group(1)) == pytest.approx(final_accuracy,
                                                                                                  abs=1e-4)
    on_train = run([sys.executable, "-m", "launch.evaluate", f"--model_dir={model_dir}", f"--data_dir={tiny_cifar}",
                    "--split=train", "--tta=flip"])
    assert on_train.returncode == 0, on_train.stderr[-3000:]
    assert "on 320 train examples with flip TTA" in on_train.stdout
    # The export on the raw uint8 test images gives the same accuracy.
    from datasets import cifar10

    data = cifar10.load(tiny_cifar)
    out = tf.saved_model.load(str(export)).signatures["serving_default"](images=tf.constant(data.test.images))
    assert float(np.mean(out["classes"].numpy() == data.test.labels)) == pytest.approx(final_accuracy, abs=1e-4)

    image = tmp_path / "x.png"
    tf.io.write_file(str(image), tf.io.encode_png(data.test.images[0]))
    predicted = run([sys.executable, "-m", "launch.predict", f"--model={export}", "--top_k=2", str(image)])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    probs = out["probabilities"].numpy()[0]
    top = np.argsort(-probs)[:2]
    assert predicted.stdout.strip() == f"{image}: " + ", ".join(f"{cifar10.CLASS_NAMES[i]} {probs[i]:.3f}"
                                                                  for i in top)


def test_saved_backbone_with_fine_tuning_from_flags(tiny_cifar, tmp_path):
    import models

    models.build("resnet20").save(tmp_path / "pre.keras")
    result = run(command(tiny_cifar, tmp_path / "ft", f"--backbone={tmp_path / 'pre.keras'}",
                         "--backbone_cut=avg_pool", "--epochs=2", "--finetune_after_epochs=1",
                         "--finetune_layers=10", "--optimizer=adam"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\(271,098 parameters, 650 trainable\)", result.stderr)  # only the head at first
    assert re.search(r"fine-tuning 2 backbone layers .* with Adam at 0.1 x", result.stderr)  # the flags' optimizer
    assert (tmp_path / "ft" / "ckpt-10.index").exists() and (tmp_path / "ft" / "finetune" / "ckpt-10.index").exists()
