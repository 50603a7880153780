"""Any Keras model trains under two replicas: Sequential, functional, subclassed; label kinds; export."""

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import Trainer, sparse_accuracy
from engine.export import export_classifier

N, GB, CLASSES = 64, 16, 3


@keras.saving.register_keras_serializable(package="tests")
class Scale(keras.layers.Layer):
    """A custom layer with its own weight."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class Subclassed(keras.Model):
    def __init__(self, outputs, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.scale = Scale()
        self.dense = keras.layers.Dense(outputs)

    def call(self, x, training=False):
        return self.dense(self.scale(self.flatten(x)))


def _build(kind, outputs):
    if kind == "sequential":
        return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(outputs)])
    if kind == "functional":
        inputs = keras.Input((4, 4, 3))
        return keras.Model(inputs, keras.layers.Dense(outputs)(keras.layers.Flatten()(inputs)))
    model = Subclassed(outputs)
    model(np.zeros((1, 4, 4, 3), np.float32))  # create the weights (under the scope)
    return model


def _data(label_kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4, 4, 3)).astype(np.float32)
    y = (x[:, :, :, 0].mean(axis=(1, 2)) > 0).astype(np.int32) + (x[:, 0, 0, 1] > 1)  # 0, 1 or 2
    if label_kind == "binary":
        return x, (y > 0).astype(np.float32)[:, None]
    if label_kind == "one_hot":
        return x, np.eye(CLASSES, dtype=np.float32)[y]
    return x, y


LOSSES = {
    "sparse": (CLASSES, lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
               lambda: {"accuracy": keras.metrics.SparseCategoricalAccuracy()}),
    "one_hot": (CLASSES, lambda: keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None),
                lambda: {"accuracy": keras.metrics.CategoricalAccuracy()}),
    "binary": (1, lambda: keras.losses.BinaryCrossentropy(from_logits=True, reduction=None),
               lambda: {"accuracy": keras.metrics.BinaryAccuracy(threshold=0.0)}),
}


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
@pytest.mark.parametrize("label_kind", ["sparse", "one_hot", "binary"])
def test_model_kind_trains_on_two_replicas(kind, label_kind, two_replicas):
    outputs, loss, metrics = LOSSES[label_kind]
    x, y = _data(label_kind)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GB, drop_remainder=True)
    with two_replicas.scope():
        keras.utils.set_random_seed(1)
        model = _build(kind, outputs)
        optimizer = keras.optimizers.SGD(0.5)
    trainer = Trainer(model=model, optimizer=optimizer, loss=loss(), metrics=metrics, global_batch_size=GB,
                      strategy=two_replicas, progress=False)
    before = trainer.evaluate(ds)
    history = trainer.fit(ds, ds, epochs=8)
    assert trainer.global_step == 8 * N // GB
    assert history["eval_loss"][-1] < before["loss"]
    assert history["eval_accuracy"][-1] > max(before["accuracy"], 0.7)


def test_exported_model_predicts_what_the_trainer_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    labels = (images[:, :, :, 0].mean(axis=(1, 2)) > 128).astype(np.int32)

    def preprocess(x):
        return (tf.cast(x, tf.float32) - 128.0) / 64.0

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).map(lambda a, b: (preprocess(a), b))
    keras.utils.set_random_seed(2)
    model = _build("functional", 2)
    trainer = Trainer(metrics=sparse_accuracy, model=model, optimizer=keras.optimizers.SGD(0.3), global_batch_size=8, progress=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None))
    trainer.fit(ds, epochs=3)
    evaluation = trainer.evaluate(ds)
    path = export_classifier(model, str(tmp_path / "export"), preprocess=preprocess, image_shape=(4, 4, 3),
                             class_names=["dark", "bright"])
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(images=tf.constant(images))
    expected = tf.nn.softmax(model(preprocess(images))).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    accuracy = float(np.mean(out["classes"].numpy() == labels))
    assert accuracy == pytest.approx(evaluation["accuracy"])
    assert [n.decode() for n in out["class_names"].numpy()] == [["dark", "bright"][c] for c in out["classes"]]
    assert (tmp_path / "export" / "assets.extra" / "class_names.txt").read_text() == "dark\nbright\n"


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_subclassed_model_never_called_is_built_from_the_first_batch_and_resumes(replicas, two_replicas, tmp_path):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    x, y = _data("sparse")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GB, drop_remainder=True)

    def trainer():
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = Subclassed(CLASSES)  # no variables yet
            optimizer = keras.optimizers.SGD(0.5, momentum=0.9)
        return Trainer(model=model, optimizer=optimizer, strategy=strategy, global_batch_size=GB, progress=False,
                       loss=LOSSES["sparse"][1](), model_dir=str(tmp_path), ema_decay=0.9)

    first = trainer()
    assert not first.model_built
    first.fit(ds, epochs=2)
    names = [name for name, _ in tf.train.list_variables(str(tmp_path / "ckpt-0"))]
    assert any(n.startswith("model/dense/") for n in names)  # ckpt-0 holds the model, not an empty one
    assert any(n.startswith("ema/") for n in names) and any("optimizer/_variables" in n for n in names)
    second = trainer()
    second.fit(ds, epochs=3)
    assert second.restored_from.endswith("ckpt-8") and second.global_step == 12
    shutil.rmtree(tmp_path)  # The same run again without stopping, for comparison.
    third = trainer()
    third.fit(ds, epochs=3)
    for a, b in zip(second.model.get_weights(), third.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_that_cannot_be_built_from_the_batch_stops_before_writing_anything(tmp_path):
    class Picky(keras.Model):
        def call(self, x):
            raise TypeError("this model wants a dict")

    trainer = Trainer(model=Picky(), optimizer=keras.optimizers.SGD(0.1), global_batch_size=GB, progress=False,
                      loss=LOSSES["sparse"][1](), model_dir=str(tmp_path / "run"))
    x, y = _data("sparse")
    with pytest.raises(ValueError, match=r"no variables yet .* build it under strategy.scope\(\)"):
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GB), epochs=1)
    assert not (tmp_path / "run").exists()
