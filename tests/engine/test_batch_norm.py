"""Fused BatchNorm (engine/batch_norm.py): the same results as Keras's layer, and used by the Trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine import KernelOptions, Trainer, batch_norm, sparse_accuracy
from engine.losses import sparse_categorical_crossentropy


def _ops(concrete_function) -> set[str]:
    """Op types of a traced function, its nested functions (loop bodies, branches) included."""
    graph = concrete_function.graph.as_graph_def()
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def _keras_and_fused(layer, x, training):
    """(outputs, gradients wrt x and the layer's trainables, moving statistics after) for both paths."""
    start = [v.numpy() for v in layer.weights]
    results = []
    for route in (False, True):
        for v, value in zip(layer.weights, start):
            v.assign(value)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                # A non-linear function of y, so the gradient checks more than a sum would.
                objective = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
            return y, tape.gradient(objective, [x] + layer.trainable_weights)

        if route:
            with batch_norm.fused(layer) as routed:
                assert routed == [layer]
                y, grads = step(x)
            assert "FusedBatchNormV3" in _ops(step.get_concrete_function(x))
        else:
            y, grads = step(x)
            assert "FusedBatchNormV3" not in _ops(step.get_concrete_function(x))
        results.append((y, grads, [v.numpy() for v in layer.non_trainable_weights]))
    return results


def _built(shape, dtype="float32", **kwargs):
    layer = keras.layers.BatchNormalization(momentum=0.8, dtype=dtype, **kwargs)
    layer.build(shape)
    rng = np.random.default_rng(1)
    channels = shape[-1]
    # Statistics and affine parameters away from their initial 0/1, so each one matters.
    layer.moving_mean.assign(rng.normal(size=channels).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=channels).astype(np.float32))
    if layer.scale:
        layer.gamma.assign(rng.uniform(0.5, 1.5, size=channels).astype(np.float32))
    if layer.center:
        layer.beta.assign(rng.normal(size=channels).astype(np.float32))
    return layer


@pytest.mark.parametrize("shape", [(8, 5, 5, 4), (16, 6), (4, 7, 3), (2, 3, 3, 3, 4)],
                         ids=["rank4", "rank2", "rank3", "rank5"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_fused_equals_keras_outputs_gradients_and_moving_statistics(shape, training):
    layer = _built(shape)
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=shape).astype(np.float32))
    before_mean, before_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    (y_k, g_k, stats_k), (y_f, g_f, stats_f) = _keras_and_fused(layer, x, training)
    np.testing.assert_allclose(y_f, y_k, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_f, g_k):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(stats_f, stats_k):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if training:  # Keras's rule with the biased batch variance (the kernel's own is unbiased).
        axes = tuple(range(len(shape) - 1))
        np.testing.assert_allclose(stats_f[0], 0.8 * before_mean + 0.2 * x.numpy().mean(axes), rtol=1e-5)
        np.testing.assert_allclose(stats_f[1], 0.8 * before_variance + 0.2 * x.numpy().var(axes), rtol=1e-5)
    else:
        np.testing.assert_array_equal(stats_f[1], before_variance)


def test_fused_without_center_and_scale_equals_keras():
    layer = _built((6, 4, 4, 3), center=False, scale=False)
    x = tf.constant(np.random.default_rng(0).normal(size=(6, 4, 4, 3)).astype(np.float32))
    (y_k, g_k, stats_k), (y_f, g_f, stats_f) = _keras_and_fused(layer, x, True)
    np.testing.assert_allclose(y_f, y_k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_f[0], g_k[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats_f[1], stats_k[1], rtol=1e-5)


def test_frozen_layer_normalises_with_its_moving_statistics_when_training():
    layer = _built((8, 4, 4, 3))
    layer.trainable = False  # Transfer learning: a frozen BatchNorm runs in inference mode.
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32))
    before = [v.numpy() for v in layer.non_trainable_weights]
    (y_k, _, _), (y_f, _, stats_f) = _keras_and_fused(layer, x, True)
    np.testing.assert_allclose(y_f, y_k, rtol=1e-5, atol=1e-5)
    for a, b in zip(stats_f, before):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_policy_matches_keras_to_bfloat16_rounding():
    layer = _built((8, 4, 4, 5), dtype="mixed_bfloat16")
    x = tf.cast(tf.constant(np.random.default_rng(0).normal(1.0, 2.0, size=(8, 4, 4, 5))), tf.bfloat16)
    (y_k, g_k, stats_k), (y_f, g_f, stats_f) = _keras_and_fused(layer, x, True)
    assert y_f.dtype == y_k.dtype == tf.bfloat16
    # Both compute the statistics in float32; the outputs are rounded to bfloat16 (8 bits).
    np.testing.assert_allclose(tf.cast(y_f, tf.float32), tf.cast(y_k, tf.float32), rtol=2e-2, atol=2e-2)
    for a, b in zip(stats_f, stats_k):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.cast(g_f[1], tf.float32), tf.cast(g_k[1], tf.float32), rtol=3e-2, atol=3e-2)


class _Custom(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask) * 2.0


class _Renamed(keras.layers.BatchNormalization):
    pass


@pytest.mark.parametrize("make, reason", [
    (lambda: keras.layers.BatchNormalization(renorm=True), "renorm"),
    (lambda: keras.layers.BatchNormalization(synchronized=True), "synchronized"),
    (lambda: keras.layers.BatchNormalization(axis=1), "axis 1"),
    (lambda: keras.layers.BatchNormalization(epsilon=1e-6), "epsilon"),
    (lambda: _Custom(name="custom_bn"), "overrides call"),
])
def test_layers_the_kernel_cannot_serve_keep_the_keras_computation(make, reason):
    layer = make()
    layer.build((4, 3, 3, 2))
    assert reason in batch_norm.ineligible_reason(layer)
    x = tf.random.normal((4, 3, 3, 2))
    with batch_norm.fused(layer) as routed:
        assert routed == []
        graph_ops = _ops(tf.function(lambda x: layer(x, training=True)).get_concrete_function(x))
    assert "FusedBatchNormV3" not in graph_ops


def test_a_subclass_that_keeps_call_is_routed_and_a_masked_call_falls_back():
    layer = _Renamed(name="renamed_bn")
    layer.build((4, 5, 2))
    assert batch_norm.ineligible_reason(layer) is None
    x = tf.random.normal((4, 5, 2))
    mask = tf.constant(np.random.default_rng(0).integers(0, 2, (4, 5)).astype(bool))
    expected = layer(x, training=False, mask=mask)
    with batch_norm.fused(layer):
        got = tf.function(lambda x, m: layer(x, training=False, mask=m))(x, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-6)



def test_a_layer_built_inside_the_context_is_checked_when_called():
    last, first = keras.layers.BatchNormalization(), keras.layers.BatchNormalization(axis=1)
    x = tf.random.normal((4, 3, 3, 2))
    for layer, expect_kernel in ((last, True), (first, False)):
        with batch_norm.fused(layer) as routed:
            assert routed == [layer]  # Not built: its axis is checked against the input it gets.
            step = tf.function(lambda x: layer(x, training=True))
            graph_ops = _ops(step.get_concrete_function(x))
        assert ("FusedBatchNormV3" in graph_ops) == expect_kernel
        np.testing.assert_allclose(step(x), layer(x, training=True), rtol=1e-4, atol=1e-4)


def test_contexts_nest_and_leave_the_layer_as_keras_made_it():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    bn = model.layers[1]
    with batch_norm.fused(model) as outer:
        assert outer == [bn] and "call" in vars(bn)
        with batch_norm.fused(model):
            pass
        assert "call" in vars(bn)  # The outer context still routes it.
    assert "call" not in vars(bn)
    x = tf.random.normal((5, 4))
    assert "FusedBatchNormV3" not in _ops(tf.function(lambda x: model(x, training=True)).get_concrete_function(x))


def _conv_bn_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(momentum=0.5),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6),
        keras.layers.BatchNormalization(momentum=0.5), keras.layers.Dense(3)])


def _conv_data():
    """48 examples for _conv_bn_model: float32 [48, 8, 8, 3] images, int32 [48] labels in [0, 3)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 48).astype(np.int32)


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_trainer_with_fused_kernel_trains_as_with_keras_batch_norm(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    x, y = _conv_data()
    weights, ops = {}, {}
    for fused in (False, True):
        with strategy.scope():
            model = _conv_bn_model()
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        start = [w.numpy() for w in model.weights]
        trainer = Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, loss=sparse_categorical_crossentropy(), strategy=strategy,
                          global_batch_size=8, steps_per_loop=3, progress=False,
                          kernels=KernelOptions(fused_batch_norm=fused))
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), train_steps=6)
        weights[fused] = [w.numpy() for w in model.weights]
        ops[fused] = set().union(*(_ops(f) for f in trainer._train_loop._list_all_concrete_functions()))
        assert not any("call" in vars(layer) for layer in model.layers)  # The model is left as it was.
        assert not any(np.allclose(a, b) for a, b in zip(weights[fused], start))  # Every weight trained.
    assert "FusedBatchNormGradV3" in ops[True] and "FusedBatchNormV3" not in ops[False]
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
