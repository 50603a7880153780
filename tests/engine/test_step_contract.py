"""The subclassing contract: unpack, compute_loss's reduction, apply_gradients, several optimizers, items."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import GuardOptions, Trainer

B, H, W = 8, 12, 12


def _pixel_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((H, W, 3)), keras.layers.Conv2D(2, 3, padding="same")])


def _pixel_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, H, W, 3)).astype(np.float32)
    y = rng.normal(size=(B, H, W, 2)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=B).astype(np.float32)
    return x, y, w


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_a_per_pixel_loss_gives_keras_fits_loss_and_update(weighted):
    """MSE with reduction=None is [batch, H, W]: the step must equal Keras fit's, not be H*W times larger."""
    x, y, w = _pixel_data()
    w = w[:, None, None]  # [batch, 1, 1]: Keras cannot broadcast [batch] weights over [batch, H, W] losses
    sample_weight = w if weighted else None
    keras_model = _pixel_model()
    keras_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.MeanSquaredError())
    keras_loss = keras_model.train_on_batch(x, y, sample_weight=sample_weight)

    model = _pixel_model()
    trainer = Trainer(model=model, optimizer=keras.optimizers.SGD(0.1), global_batch_size=B, progress=False,
                      loss=keras.losses.MeanSquaredError(reduction=None))
    data = (x, y, w) if weighted else (x, y)
    history = trainer.fit(tf.data.Dataset.from_tensor_slices(data).batch(B), train_steps=1)
    assert history["loss"][0] == pytest.approx(float(keras_loss), rel=1e-5)
    for a, b in zip(keras_model.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    if weighted:  # The engine also takes [batch] weights for such a loss, with the same result.
        flat = Trainer(model=_pixel_model(), optimizer=keras.optimizers.SGD(0.1), global_batch_size=B,
                       progress=False, loss=keras.losses.MeanSquaredError(reduction=None))
        again = flat.fit(tf.data.Dataset.from_tensor_slices((x, y, w[:, 0, 0])).batch(B), train_steps=1)
        assert again["loss"][0] == pytest.approx(history["loss"][0], rel=1e-6)


def _tiny_trainer(strategy=None, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        optimizer = kwargs.pop("optimizer", None) or keras.optimizers.SGD(0.1)
    kwargs.setdefault("loss", keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None))
    return Trainer(model=model, optimizer=optimizer, global_batch_size=8, progress=False, strategy=strategy,
                   **kwargs)


def test_elements_may_be_x_x_y_or_x_y_w():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    seen = []

    class Recording(Trainer):
        def compute_loss(self, x, y, y_pred, sample_weight):
            seen.append((y is None, sample_weight is None))
            target = tf.zeros(tf.shape(y_pred)[:1], tf.int32) if y is None else y
            return super().compute_loss(x, target, y_pred, sample_weight)

    for data, expected in [(x, (True, True)), ((x,), (True, True)), ((x, y), (False, True)),
                           ((x, y, np.ones(16, np.float32)), (False, False))]:
        seen.clear()
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        trainer = Recording(model=model, optimizer=keras.optimizers.SGD(0.1), global_batch_size=8, progress=False,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None))
        trainer.fit(tf.data.Dataset.from_tensor_slices(data).batch(8), epochs=1)
        assert trainer.global_step == 2 and seen[0] == expected


def test_examples_of_weight_zero_leave_the_gradients_unchanged(two_replicas):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 2, 8).astype(np.int32)
    w = np.array([1, 0, 1, 0, 1, 1, 0, 1], np.float32)
    other_x, other_y = x.copy(), y.copy()
    other_x[w == 0] = rng.normal(size=(3, 3)) * 100  # anything at all where the weight is zero
    other_y[w == 0] = 1 - other_y[w == 0]
    results = []
    for features, labels in ((x, y), (other_x, other_y)):
        trainer = _tiny_trainer(two_replicas)
        trainer.fit(tf.data.Dataset.from_tensor_slices((features, labels, w)).batch(8), train_steps=1)
        results.append(trainer.model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(results[0][0], _tiny_trainer().model.get_weights()[0])  # and the step did move


def test_a_scalar_or_misshapen_loss_is_refused_at_trace_time_naming_the_shape():
    x = np.zeros((8, 3), np.float32)
    y = np.zeros(8, np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)  # a static batch of 8
    scalar = _tiny_trainer(loss=lambda y, y_pred: tf.reduce_mean(y_pred))
    with pytest.raises(ValueError, match=r"scalar \(shape \(\)\)"):
        scalar.fit(ds, train_steps=1)
    misshapen = _tiny_trainer(loss=lambda y, y_pred: tf.reshape(y_pred, [-1]))  # [16], not led by the batch of 8
    with pytest.raises(ValueError, match=r"shape \(16,\), not led by the batch size 8"):
        misshapen.fit(ds, train_steps=1)


class _OwnUpdate(Trainer):
    """A custom train_step that updates through the optimizer, bypassing apply_gradients."""

    def train_step(self, data):
        x, y, _ = self.unpack(data)
        with tf.GradientTape() as tape:
            loss = self.reduce_loss(self.compute_loss(x, y, self.model(x, training=True), None))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))


class _PublicUpdate(Trainer):
    """The same step through apply_gradients: it keeps every feature."""

    def train_step(self, data):
        x, y, _ = self.unpack(data)
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            losses = self.compute_loss(x, y, y_pred, None)
            loss = self.reduce_loss(losses, y_pred=y_pred)
        grads = tape.gradient(loss, self.model.trainable_variables)
        finite = self.apply_gradients(grads, self.model.trainable_variables, loss=loss)
        self.record_loss(losses, finite=finite)


def _xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype(np.int32))).batch(8)


def test_a_custom_step_that_bypasses_apply_gradients_is_refused_while_ema_is_on():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    trainer = _OwnUpdate(model=model, optimizer=keras.optimizers.SGD(0.1), global_batch_size=8, progress=False,
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                         ema_decay=0.5, guard=GuardOptions(nonfinite_limit=None))
    with pytest.raises(ValueError, match=r"applied no update through self.apply_gradients, so ema_decay"):
        trainer.fit(_xy(), train_steps=1)
    # With nothing that needs it, the custom step is the user's business.
    plain = _OwnUpdate(model=model, optimizer=keras.optimizers.SGD(0.1), global_batch_size=8, progress=False,
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                       guard=GuardOptions(nonfinite_limit=None))
    plain.fit(_xy(), train_steps=2)
    assert int(plain.optimizer.iterations.numpy()) == 2


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_a_custom_step_through_apply_gradients_keeps_ema_and_the_guard(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else None
    trainer = _tiny_trainer(strategy, ema_decay=0.5)
    trainer.__class__ = _PublicUpdate
    initial = [np.asarray(w) for w in trainer.model.weights]
    trainer.fit(_xy(), train_steps=4)
    shadows = [np.asarray(s) for _, s in trainer.state.ema_pairs]
    assert not np.allclose(shadows[0], initial[0])  # the averages followed the updates
    with trainer.ema_weights():
        averaged = [np.asarray(w) for w in trainer.model.weights]
    for a, b in zip(averaged, shadows):
        np.testing.assert_array_equal(a, b)  # evaluation uses the trained averages
    bad = tf.data.Dataset.from_tensor_slices((np.full((8, 3), np.nan, np.float32), np.zeros(8, np.int32))).batch(8)
    before = trainer.model.get_weights()
    trainer.fit(bad, train_steps=5)
    assert trainer.nonfinite_steps == 1  # the guard skipped it
    for a, b in zip(before, trainer.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_default_metrics_are_the_loss_alone():
    trainer = _tiny_trainer(loss=keras.losses.MeanSquaredError(reduction=None))
    history = trainer.fit(tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 3), np.float32), np.ones((8, 2), np.float32))).batch(8), train_steps=1)
    assert sorted(k for k in history if k in ("loss", "accuracy")) == ["loss"]


class _TwoModels(Trainer):
    """Trains a second model alongside with its own optimizer; keeps it through checkpoint_items."""

    def __init__(self, *, other, **kwargs):
        self.other = other
        super().__init__(**kwargs)

    def checkpoint_items(self):
        return {"other": self.other}

    def train_step(self, data):
        x, y, _ = self.unpack(data)
        for model, name in ((self.model, "main"), (self.other, "other")):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                losses = self.compute_loss(x, y, y_pred, None)
                loss = self.reduce_loss(losses, y_pred=y_pred)
            grads = tape.gradient(loss, model.trainable_variables)
            self.apply_gradients(grads, model.trainable_variables, name, loss=loss)
        self.record_loss(losses)


def _two_models(strategy, model_dir):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        main, other = (keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]) for _ in range(2))
        optimizers = {"main": keras.optimizers.SGD(0.1, momentum=0.9), "other": keras.optimizers.Adam(0.01)}
        optimizers["main"].build(main.trainable_variables)
        optimizers["other"].build(other.trainable_variables)
    return _TwoModels(model=main, other=other, optimizer=optimizers, global_batch_size=8, progress=False,
                      strategy=strategy, model_dir=model_dir,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None))


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_several_optimizers_and_checkpoint_items_are_saved_and_restored(replicas, two_replicas, tmp_path):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    first = _two_models(strategy, str(tmp_path))
    first.fit(_xy(), epochs=2)
    assert [int(o.iterations.numpy()) for o in first.optimizers.values()] == [8, 8]
    again = _two_models(strategy, str(tmp_path))
    assert again.restore().endswith("ckpt-8")
    assert [int(o.iterations.numpy()) for o in again.optimizers.values()] == [8, 8]
    for a, b in zip(first.other.get_weights() + [np.asarray(v) for v in first.optimizers["other"].variables],
                    again.other.get_weights() + [np.asarray(v) for v in again.optimizers["other"].variables]):
        np.testing.assert_array_equal(a, b)
    again.scale_learning_rate(0.5)  # a rollback or a plateau lowers every optimizer's rate
    assert [float(np.asarray(o.learning_rate)) for o in again.optimizers.values()] == \
        pytest.approx([0.05, 0.005])


def test_an_optimizer_of_a_dict_must_be_built_first():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"optimizer 'b' is not built: call its build\(variables\)"):
        built = keras.optimizers.SGD(0.1)
        built.build(model.trainable_variables)
        Trainer(model=model, optimizer={"a": built, "b": keras.optimizers.SGD(0.1)}, global_batch_size=8)


def test_option_groups_refuse_bad_values_naming_them():
    from engine import CheckpointOptions, GuardOptions

    for build, message in [(lambda: GuardOptions(nonfinite_limit=0), "nonfinite_limit=0"),
                           (lambda: GuardOptions(action="retry"), "action='retry'"),
                           (lambda: GuardOptions(max_rollbacks=-1), "max_rollbacks=-1"),
                           (lambda: CheckpointOptions(keep=0), "keep=0"),
                           (lambda: CheckpointOptions(every_steps=0), "every_steps=0")]:
        with pytest.raises(ValueError, match=message):
            build()
