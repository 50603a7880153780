"""Replicas hold the same non-trainable state after every step; evaluation survives a restore."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import GuardOptions, KernelOptions, Trainer, replica_state, sparse_accuracy
from engine.losses import sparse_categorical_crossentropy

N, SIZE, CLASSES, GB = 64, 8, 3, 16


@keras.saving.register_keras_serializable(package="tests")
class RunningMax(keras.layers.Layer):
    """Keeps a running maximum of its input's mean in a non-trainable weight it assigns in `call`."""

    def build(self, input_shape):
        self.peak = self.add_weight(shape=(), initializer="zeros", trainable=False, name="peak")

    def call(self, x, training=False):
        if training:
            self.peak.assign(tf.maximum(self.peak, tf.reduce_mean(x)))
        return x


def _data(seed=0):
    """Images whose first and second half of each batch (the two replicas' shares) differ in scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, SIZE, SIZE, 3)).astype(np.float32)
    first_half = np.arange(N) % GB < GB // 2
    x[first_half] = x[first_half] * 3 + 2
    y = rng.integers(0, CLASSES, N).astype(np.int32)
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), RunningMax(), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(CLASSES)])


def _trainer(strategy, **kwargs):
    with strategy.scope():
        model = _model()
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    return Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, strategy=strategy, global_batch_size=GB, progress=False,
                   loss=sparse_categorical_crossentropy(), **kwargs)


def _dataset():
    x, y = _data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GB)


def _copies(strategy, variable):
    tf_var = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(c) for c in strategy.experimental_local_results(tf_var)]


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "keras-batchnorm"])
def test_every_replica_holds_the_same_non_trainable_state_after_training(fused, two_replicas):
    trainer = _trainer(two_replicas, kernels=KernelOptions(fused_batch_norm=fused), ema_decay=0.9)
    trainer.fit(_dataset(), epochs=3)  # 12 steps, to the end
    assert trainer.global_step == 12
    state = trainer.model.non_trainable_variables
    assert len(state) == 3  # moving_mean, moving_variance, peak
    for v in state:
        copies = _copies(two_replicas, v)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=v.path)
    for _, shadow in trainer.state.ema_pairs:
        copies = _copies(two_replicas, shadow)
        np.testing.assert_array_equal(copies[0], copies[1])


def test_moving_statistics_are_the_mean_of_the_replicas_updates(two_replicas):
    """One step: each replica's update from its half of the batch, averaged (aggregation MEAN)."""
    trainer = _trainer(two_replicas, kernels=KernelOptions(fused_batch_norm=False))
    x, y = _data()
    trainer.fit(tf.data.Dataset.from_tensor_slices((x[:GB], y[:GB])).batch(GB), train_steps=1)
    with tf.distribute.get_strategy().scope():
        probe = _model()  # the same initial weights: the conv output before the first update
    conv = probe.layers[1]
    bn = trainer.model.layers[2]
    halves = [conv(x[:GB // 2]).numpy(), conv(x[GB // 2:GB]).numpy()]  # each replica's share
    momentum = bn.momentum
    expected_mean = np.mean([momentum * 0 + (1 - momentum) * h.mean(axis=(0, 1, 2)) for h in halves], axis=0)
    expected_var = np.mean([momentum * 1 + (1 - momentum) * h.var(axis=(0, 1, 2)) for h in halves], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected_var, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_in_process_evaluation_equals_evaluation_of_the_restored_checkpoint(replicas, two_replicas, tmp_path):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    trainer = _trainer(strategy, model_dir=str(tmp_path))
    history = trainer.fit(_dataset(), _dataset(), epochs=3)
    in_process = trainer.evaluate(_dataset())
    assert in_process["loss"] == pytest.approx(history["eval_loss"][-1], rel=1e-6)
    restored = _trainer(strategy, model_dir=str(tmp_path))
    assert restored.restore().endswith("ckpt-12")
    again = restored.evaluate(_dataset())
    assert again["loss"] == pytest.approx(in_process["loss"], rel=1e-5)
    assert again["accuracy"] == pytest.approx(in_process["accuracy"])
    # And on one replica, from the same checkpoint: the saved copy is every replica's.
    single = _trainer(tf.distribute.get_strategy(), model_dir=str(tmp_path))
    single.restore()
    assert single.evaluate(_dataset())["loss"] == pytest.approx(in_process["loss"], rel=1e-5)


def test_synchronized_batch_norm_on_two_replicas_equals_one_replica_step_by_step(two_replicas):
    results = []
    for strategy in (tf.distribute.get_strategy(), two_replicas):
        trainer = _trainer(strategy, kernels=KernelOptions(sync_batch_norm=True), ema_decay=0.9)
        losses = [trainer.fit(_dataset(), train_steps=k)["loss"][0] for k in range(1, 5)]
        # RunningMax's peak is a max of per-replica means, not a BatchNorm statistic: left out.
        keep = [i for i, v in enumerate(trainer.model.weights) if "peak" not in v.path]
        results.append((losses, [np.asarray(trainer.model.weights[i]) for i in keep],
                        [np.asarray(trainer.state.ema_pairs[i][1]) for i in keep]))
    (losses1, weights1, ema1), (losses2, weights2, ema2) = results
    np.testing.assert_allclose(losses1, losses2, rtol=1e-5)
    for a, b in zip(weights1 + ema1, weights2 + ema2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The layers' own setting is back to what the model was built with.
    assert not any(layer.synchronized for layer in trainer.model.layers
                   if isinstance(layer, keras.layers.BatchNormalization))


def test_without_synchronization_two_replicas_differ_from_one():
    """The control for the test above: per-replica statistics do change the result on this data."""
    # (Runs in its own strategy-free form: the difference shows in one BatchNorm call.)
    x, _ = _data()
    bn = keras.layers.BatchNormalization()
    whole = bn(x[:GB], training=True).numpy()
    halves = np.concatenate([bn(x[:GB // 2], training=True).numpy(), bn(x[GB // 2:GB], training=True).numpy()])
    assert np.abs(whole - halves).max() > 0.1


def test_frozen_layers_state_is_not_synchronized(two_replicas):
    with two_replicas.scope():
        model = _model()
    model.layers[2].trainable = False  # a frozen BatchNorm runs in inference mode
    names = [v.path for v in replica_state.local_state(model, two_replicas)]
    assert names == [model.layers[0].peak.path]
    assert replica_state.local_state(model, tf.distribute.get_strategy()) == []


def test_a_step_whose_activations_overflow_leaves_the_moving_statistics_as_they_were():
    trainer = _trainer(tf.distribute.get_strategy(), guard=GuardOptions(nonfinite_limit=5))
    x, y = _data()
    trainer.fit(tf.data.Dataset.from_tensor_slices((x[:GB], y[:GB])).batch(GB), train_steps=1)
    bn = trainer.model.layers[2]
    before = [bn.moving_mean.numpy(), bn.moving_variance.numpy(), trainer.model.layers[0].peak.numpy()]
    bad = x[:GB].copy()
    bad[0, 0, 0, 0] = np.inf
    trainer.fit(tf.data.Dataset.from_tensor_slices((bad, y[:GB])).batch(GB), train_steps=2)
    assert trainer.nonfinite_steps == 1  # the step was skipped ...
    after = [bn.moving_mean.numpy(), bn.moving_variance.numpy(), trainer.model.layers[0].peak.numpy()]
    for a, b in zip(before, after):  # ... and so was its state update
        np.testing.assert_array_equal(a, b)
