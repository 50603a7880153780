"""launch.train on image files (folders, CSV, TFRecord), datasets.to_tfrecord, the feature flags, launch.plot."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.launch.cli import run

pytestmark = pytest.mark.slow


def _write_folder(root, classes=("ant", "bee", "cow"), per_class=12, size=16):
    rng = np.random.default_rng(0)
    rows = []
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
            path = root / name / f"{i}.jpg"
            tf.io.write_file(str(path), tf.io.encode_jpeg(image))
            rows.append(f"{name}/{i}.jpg,{label}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def _train(model_dir, *extra):
    return [sys.executable, "-m", "launch.train", f"--model_dir={model_dir}", "--model=small_cnn",
            "--batch_size=8", "--steps_per_loop=2", "--noprogress", "--lr_boundaries=", "--lr_multipliers=",
            *extra]


def test_tfrecords_written_by_to_tfrecord_train_with_feature_flags_and_plot(tmp_path):
    folder = _write_folder(tmp_path / "img")
    made = run([sys.executable, "-m", "datasets.to_tfrecord", f"--source={folder}", f"--output={tmp_path}/rec/train",
                "--num_shards=3", "--noprogress"])
    assert made.returncode == 0, made.stderr[-2000:]
    assert "wrote 36 images of 3 classes to 3 files" in made.stdout
    model_dir = tmp_path / "model"
    result = run(_train(model_dir, f"--train_data={tmp_path}/rec/train-*.tfrecord", f"--eval_data={folder}",
                        "--epochs=3", "--optimizer=adamw", "--learning_rate=0.01", "--lr_schedule=cosine",
                        "--warmup_epochs=1", "--clip_norm=1", "--accumulation_steps=2", "--ema_decay=0.9",
                        "--label_smoothing=0.1", "--precision=bfloat16", "--augment=cifar,jitter,affine",
                        "--histogram_every_epochs=1", "--cache=none"))  # TFRecords streamed from disk.
    assert result.returncode == 0, result.stderr[-3000:]
    assert "36 train, 36 eval examples" in result.stderr
    rows = json.load(open(model_dir / "history.json"))
    assert [r["step"] for r in rows] == [4, 8, 12]
    info = json.load(open(model_dir / "run.json"))
    assert info["class_names"] == ["ant", "bee", "cow"] and info["normalize"]["kind"] == "channel"
    plotted = run([sys.executable, "-m", "launch.plot", f"--model_dir={model_dir}"])
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    with open(model_dir / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_image_stops_with_its_name_unless_skipped(tmp_path):
    folder = _write_folder(tmp_path / "img")
    (folder / "bee" / "3.jpg").write_bytes(b"")
    failed = run(_train(tmp_path / "m1", f"--train_data={folder}/index.csv", "--train_steps=2"))
    assert failed.returncode == 1
    assert "bee/3.jpg (" in failed.stderr and "index.csv:16): the file is empty" in failed.stderr
    assert "--skip_bad_examples" in failed.stderr
    assert not (tmp_path / "m1").exists()  # Nothing written before the data were checked.
    skipped = run(_train(tmp_path / "m2", f"--train_data={folder}/index.csv", "--train_steps=2",
                         "--skip_bad_examples"))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "35 train" in skipped.stderr and "skipped bad example" in skipped.stderr


def test_max_time_stops_with_a_checkpoint_and_bad_feature_flags_name_themselves(tmp_path):
    folder = _write_folder(tmp_path / "img")
    stopped = run(_train(tmp_path / "m", f"--train_data={folder}", "--epochs=50", "--max_time=0.001",
                         "--cache=none", "--normalize=per_image"))
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "max_time of 0.001 s reached: stopped after step 2" in stopped.stderr
    assert os.path.isfile(tmp_path / "m" / "ckpt-2.index")
    for flag, message in (("--ema_decay=1.5", "--ema_decay=1.5 must be in [0, 1)"),
                          ("--profile_steps=5,2", "--profile_steps=5,2 must be start,stop"),
                          ("--augment=blur", "'blur' is not a known recipe"),
                          ("--lr_schedule=onecycle --warmup_epochs=1", "--warmup_epochs does not apply")):
        bad = run(_train(tmp_path / "bad", f"--train_data={folder}", *flag.split()))
        assert bad.returncode == 1 and message in bad.stderr, (flag, bad.stderr[-1500:])
