"""Transfer models: frozen backbones from keras.applications or saved files."""

import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import Trainer, sparse_accuracy
from models import transfer


def _train_a_few_steps(model, steps=3, size=32, classes=4):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, 32).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    trainer = Trainer(metrics=sparse_accuracy, model=model, optimizer=keras.optimizers.SGD(0.1, momentum=0.9), global_batch_size=8,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      progress=False)
    trainer.fit(ds, train_steps=steps)
    return trainer


def test_applications_backbone_stays_frozen_while_the_head_trains():
    keras.utils.set_random_seed(0)
    backbone = transfer.applications_backbone("MobileNetV2", input_shape=(32, 32, 3), weights=None, alpha=0.35)
    model = transfer.transfer_model(backbone, num_classes=4)
    before = {v.path: v.numpy().copy() for v in backbone.weights}  # BatchNorm statistics included
    head_before = [w.numpy().copy() for w in model.get_layer("logits").weights]
    assert {v.path for v in model.trainable_variables} == {w.path for w in model.get_layer("logits").weights}
    _train_a_few_steps(model)
    for v in backbone.weights:
        np.testing.assert_array_equal(before[v.path], v.numpy(), err_msg=v.path)
    # The head trained (with random backbone weights its features may be near zero,
    # so at least the bias moves).
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(head_before, model.get_layer("logits").weights))


def test_saved_backbone_is_cut_by_name_or_index(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(6, name="hidden")(x)
    outputs = keras.layers.Dense(2, name="top")(x)
    path = str(tmp_path / "net.keras")
    keras.Model(inputs, outputs).save(path)
    assert transfer.saved_backbone(path, cut="pool").output_shape == (None, 4)
    assert transfer.saved_backbone(path, cut=transfer.parse_cut("-2")).output_shape == (None, 6)
    cut = transfer.saved_backbone(path, cut="conv")
    model = transfer.transfer_model(cut, num_classes=3, input_shape=(16, 16, 3), resize_to=(8, 8))
    assert model(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 3)
    with pytest.raises(ValueError, match="--backbone_cut='mixed7' is not a layer of .*net.keras"):
        transfer.saved_backbone(path, cut="mixed7")
    with pytest.raises(ValueError, match="does not exist"):
        transfer.saved_backbone(str(tmp_path / "none.keras"))


def test_offline_imagenet_weights_say_how_to_pass_a_file(monkeypatch):
    def offline(**kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setitem(transfer.APPLICATIONS, "ResNet50", offline)
    with pytest.raises(ValueError, match="could not fetch ImageNet weights for ResNet50.*--backbone_weights"):
        transfer.applications_backbone("ResNet50")
    with pytest.raises(ValueError, match="not a known keras.applications"):
        transfer.applications_backbone("ResNet9000")
    with pytest.raises(ValueError, match="--backbone_weights=/no/file.h5 does not exist"):
        transfer.applications_backbone("MobileNetV2", weights="/no/file.h5")


def test_unfreeze_top_keeps_batchnorm_frozen():
    backbone = transfer.applications_backbone("MobileNetV2", input_shape=(32, 32, 3), weights=None, alpha=0.35)
    names = transfer.unfreeze_top(backbone, 10)
    top = backbone.layers[-10:]
    assert names and all(backbone.get_layer(n) in top for n in names)
    assert not any(isinstance(l, keras.layers.BatchNormalization) and l.trainable for l in backbone.layers)
    assert not any(l.trainable and l.weights for l in backbone.layers[:-10])
