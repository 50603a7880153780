"""Issue 29: the transfer tutorial's two phases from launch.train, read from their checkpoints.

A saved backbone is frozen (weights and BatchNorm statistics) while the head trains;
at the switch the top layers train at a tenth of the rate while the rest, and every
BatchNorm statistic, stay as saved; a run killed in either phase and rerun ends
bitwise where an uninterrupted one does.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.launch.cli import command, run, start_and_signal

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3  # 5 classes x 12 images, global batch 20
FLAGS = ["--classes=5,6,7,8,9", "--labels_per_class=12", "--batch_size=20", "--epochs=4", "--lr_boundaries=30",
         "--lr_multipliers=0.1", "--finetune_after_epochs=2", "--finetune_layers=8", "--finetune_lr_factor=0.1",
         "--deterministic", "--keep_checkpoints=20", "--checkpoint_every_steps=100"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A ResNet-20 .keras file with random weights and random BatchNorm statistics."""
    import models

    keras.utils.set_random_seed(7)
    model = models.build("resnet20", num_classes=5)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))
    path = tmp_path_factory.mktemp("backbone") / "pre.keras"
    model.save(path)
    return path, {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers}


def _train(tiny_cifar, model_dir, backbone):
    return command(tiny_cifar, model_dir, f"--backbone={backbone}", "--backbone_cut=avg_pool", *FLAGS)


def _backbone_weights(model_dir, checkpoint):
    """{layer name: weights} of the backbone inside the run's model, as the checkpoint holds it."""
    from launch import experiment

    model, _, _ = experiment.load_trained(str(model_dir), str(checkpoint))
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(inner) == 1
    head = [w.numpy() for w in model.get_layer("logits").weights]
    return {layer.name: [w.numpy() for w in layer.weights] for layer in inner[0].layers}, head, inner[0]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _learning_rates(folder):
    from launch.plot import read_learning_rates

    return read_learning_rates(str(folder))[1]


@pytest.fixture(scope="module")
def unbroken(tiny_cifar, pretrained, tmp_path_factory):
    """The model_dir of one uninterrupted run on one replica, shared by the tests that read one.

    With --deterministic every such run ends bitwise the same, so one serves them all.
    """
    model_dir = tmp_path_factory.mktemp("unbroken") / "run"
    result = run(_train(tiny_cifar, model_dir, pretrained[0]))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_frozen_phase_then_fine_tuning_of_the_top_layers_only(unbroken, pretrained):
    _, saved = pretrained
    model_dir = unbroken
    head_steps, total = 2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH

    # Frozen phase: after it, every backbone weight and statistic is as saved; the head moved.
    at_start, head_0, _ = _backbone_weights(model_dir, model_dir / "ckpt-0")
    frozen, head_1, backbone = _backbone_weights(model_dir, model_dir / f"ckpt-{head_steps}")
    assert len(frozen) > 40 and all(_same(frozen[name], saved[name]) for name in frozen)
    assert not _same(head_0, head_1)

    # Fine-tuning: the top 8 layers with weights, BatchNorm excepted, moved; nothing else did.
    tuned, head_2, _ = _backbone_weights(model_dir, model_dir / "finetune" / f"ckpt-{total - head_steps}")
    top = {layer.name for layer in backbone.layers[-8:]
           if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert len(top) >= 2
    moved = {name for name in tuned if not _same(tuned[name], frozen[name])}
    assert moved == top
    batch_norms = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(_same(tuned[name], saved[name]) for name in batch_norms)
    assert not _same(head_1, head_2)

    # The rate: --learning_rate 0.1 at a batch of 128, so 0.1 * 20 / 128 before the switch, a tenth after.
    head_rates, tuning_rates = _learning_rates(model_dir), _learning_rates(model_dir / "finetune")
    assert head_rates and tuning_rates
    np.testing.assert_allclose(head_rates, 0.1 * 20 / 128, rtol=1e-6)
    np.testing.assert_allclose(tuning_rates, 0.1 * 20 / 128 * 0.1, rtol=1e-6)


def _state(checkpoint):
    reader = tf.train.load_checkpoint(str(checkpoint))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "optimizer/", "step/", "seed_generators/"))}


TWO_REPLICAS = ["--strategy=mirrored", "--num_cpu_devices=2", "--batch_size=10"]


@pytest.mark.parametrize("phase, replicas", [("head", []), ("finetune", []), ("head", TWO_REPLICAS)],
                         ids=["head", "finetune", "head-2-replicas"])
def test_a_run_killed_in_either_phase_ends_where_an_unbroken_one_does(tiny_cifar, tmp_path, pretrained, request,
                                                                      phase, replicas):
    # The head's dropout draws new masks each step: its random state is in the checkpoint.
    path, _ = pretrained
    if replicas:
        straight_dir = tmp_path / "straight"
        straight = run([*_train(tiny_cifar, straight_dir, path), *replicas])
        assert straight.returncode == 0, straight.stderr[-3000:]
    else:  # the shared run, built only when a one-replica case runs
        straight_dir = request.getfixturevalue("unbroken")
    killed = tmp_path / "killed"
    marker = killed / f"ckpt-{STEPS_PER_EPOCH}.index" if phase == "head" else \
        killed / "finetune" / f"ckpt-{STEPS_PER_EPOCH}.index"
    start_and_signal([*_train(tiny_cifar, killed, path), *replicas], marker)
    resumed = run([*_train(tiny_cifar, killed, path), *replicas])
    assert resumed.returncode == 0 and "resuming at step" in resumed.stderr, resumed.stderr[-3000:]
    last = f"finetune/ckpt-{2 * STEPS_PER_EPOCH}"
    a, b = _state(straight_dir / last), _state(killed / last)
    assert a.keys() == b.keys() and len(a) > 50 and any(name.startswith("seed_generators/") for name in a)
    assert [name for name in a if a[name].tobytes() != b[name].tobytes()] == []
