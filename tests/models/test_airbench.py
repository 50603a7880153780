import numpy as np
import pytest
import tensorflow as tf

import models
from engine.tta import augmented_predictions
from models.airbench import PatchWhitening


def _correlated_images(n=64, seed=0):
    """Images whose channels and neighbouring pixels are strongly correlated (as natural images are)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 33, 33, 1))
    smooth = (base[:, :-1, :-1] + base[:, 1:, :-1] + base[:, :-1, 1:] + base[:, 1:, 1:]) / 2
    mix = np.array([[1.0, 0.8, 0.6]])
    return (smooth * mix + 0.3 * rng.normal(size=(n, 32, 32, 3))).astype(np.float32)


def test_the_whitening_layer_whitens_the_patches_it_was_initialised_from():
    images = _correlated_images()
    layer = PatchWhitening(eps=1e-6)
    layer.build((None, 32, 32, 3))
    eigenvalues = layer.initialize_from_images(images)
    assert eigenvalues[0] / eigenvalues[-1] > 50  # the input is far from white
    out = layer(tf.constant(images)).numpy()  # [n, 31, 31, 24]
    assert out.shape == (64, 31, 31, 24)
    positive = out[..., :12].reshape(-1, 12)  # the bias is zero at first
    covariance = positive.T @ positive / len(positive)
    np.testing.assert_allclose(covariance, np.diag(eigenvalues / (eigenvalues + 1e-6)), atol=2e-3)
    # A filter and its negation, to float32 rounding: the conv sums in an order that differs by
    # output channel on some CPUs (1.2e-6 apart on outputs of ~1 on an AVX2 EPYC).
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], rtol=1e-5, atol=1e-5)
    assert not layer.kernel.trainable and layer.bias.trainable


def test_airbench_builds_initialises_and_predicts_float32_logits():
    model = models.build("airbench", num_classes=10)
    assert models.initialize_whitening(model, _correlated_images(16)) == 1
    logits = model(tf.constant(_correlated_images(4)), training=False)
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits.numpy()))
    # Three blocks of 64, 256, 256 channels on 31 -> 15 -> 7 -> 3 maps.
    assert [model.get_layer(f"block{i}_conv2").output.shape[1:] for i in (1, 2, 3)] == \
        [(15, 15, 64), (7, 7, 256), (3, 3, 256)]


@pytest.mark.parametrize("name, widths", [("airbench93", (64, 128, 128)), ("airbench95", (128, 384, 384))])
def test_airbench93_and_95_are_airbench94_at_their_widths(name, widths):
    model, reference = models.build(name), models.build("airbench")
    assert [model.get_layer(f"block{i + 1}_conv2").output.shape[-1] for i in range(3)] == list(widths)
    # Same layers in the same order; only the blocks' kernels change shape.
    assert [layer.name for layer in model.layers] == [layer.name for layer in reference.layers]
    kernels = {w.path: tuple(w.shape) for w in model.weights if "conv" in w.path}
    assert kernels["block2_conv1/kernel"] == (3, 3, widths[0], widths[1])
    assert kernels["block3_conv2/kernel"] == (3, 3, widths[2], widths[2])


def test_tta_averages_the_mirrored_and_translated_predictions():
    images = tf.constant(np.random.default_rng(1).normal(size=(3, 6, 5, 2)).astype(np.float32))
    weights = tf.constant(np.random.default_rng(2).normal(size=(6 * 5 * 2, 4)).astype(np.float32))

    def predict(x):  # not mirror-symmetric: each pixel has its own weights
        return tf.reshape(x, (x.shape[0], -1)) @ weights

    mirrored = images[:, :, ::-1]
    flip = augmented_predictions(predict, images, "flip")
    np.testing.assert_allclose(flip, (predict(images) + predict(mirrored)) / 2, rtol=1e-5, atol=1e-5)
    padded = np.pad(images.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    down_right, up_left = padded[:, :6, :5], padded[:, 2:, 2:]
    expected = 0.5 * flip + 0.25 * sum(0.5 * (predict(v) + predict(v[:, :, ::-1])) for v in (down_right, up_left))
    np.testing.assert_allclose(augmented_predictions(predict, images, "flip_translate"), expected, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(augmented_predictions(predict, images, "none"), predict(images))
    with pytest.raises(ValueError, match="test_time_augmentation='flips' is not one of none, flip"):
        augmented_predictions(predict, images, "flips")


@pytest.mark.parametrize("replicas", [1, 2])
def test_trainer_evaluates_with_tta_on_every_replica(replicas, two_replicas):
    import keras

    from engine import Trainer, sparse_accuracy

    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4, 4, 3)).astype(np.float32)
    y = rng.integers(0, 5, 12).astype(np.int32)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)

    def trainer(mode):
        return Trainer(model=model, optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=sparse_accuracy,
                       global_batch_size=6, strategy=strategy, progress=False, test_time_augmentation=mode)

    logits = augmented_predictions(lambda v: model(v, training=False), tf.constant(x), "flip_translate")
    expected = float(tf.reduce_mean(loss(y, logits)))
    got = trainer("flip_translate").evaluate(data)
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, 1) == y)))
    assert trainer("none").evaluate(data)["loss"] != pytest.approx(expected, rel=1e-3)


def test_partial_identity_copies_the_input_channels_and_draws_the_rest_like_pytorch():
    import keras

    from models.airbench import PartialIdentity

    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32))
    widen = PartialIdentity()((3, 3, 3, 8))  # in 3 -> out 8: filters 0..2 copy channels 0..2
    out = tf.nn.conv2d(x, widen, strides=1, padding="SAME").numpy()
    np.testing.assert_allclose(out[..., :3], x.numpy(), atol=1e-6)
    assert not np.allclose(out[..., 3:4], 0)
    rest = np.asarray(widen)[..., 3:]
    bound = 1 / np.sqrt(3 * 3 * 3)  # PyTorch's default: uniform in +-1/sqrt(fan_in)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.8 * bound
    narrow = np.asarray(PartialIdentity()((3, 3, 8, 4)))  # in 8 -> out 4: every filter is an identity
    expected = np.zeros((3, 3, 8, 4), np.float32)
    expected[1, 1, np.arange(4), np.arange(4)] = 1
    np.testing.assert_array_equal(narrow, expected)


def test_scaled_bias_moves_lr_multiplier_times_faster_and_decays_at_the_kernels_rate():
    import keras

    from models.airbench import ScaledBias

    lr, multiplier, decay = 0.1, 64.0, 0.01
    layer = ScaledBias(multiplier, weight_decay=decay)
    x = tf.zeros((4, 3))
    layer(x)
    layer.raw.assign([0.5, -1.0, 2.0])
    bias = np.asarray(layer.bias)
    np.testing.assert_allclose(layer(x).numpy(), np.broadcast_to(bias, (4, 3)), rtol=1e-6)
    upstream = np.array([1.0, -2.0, 3.0], np.float32)  # dL/d(output) of each channel, per example
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * upstream) + tf.add_n(layer.losses)
    grads = tape.gradient(loss, [layer.raw.value])
    keras.optimizers.SGD(lr).apply_gradients(zip(grads, [layer.raw]))
    dl_dbias = 4 * upstream  # summed over the 4 examples
    expected = bias - multiplier * lr * dl_dbias - lr * decay * bias
    np.testing.assert_allclose(np.asarray(layer.bias), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="lr_multiplier=0 must be positive"):
        ScaledBias(0)


def test_airbench_whitens_in_float32_under_mixed_bfloat16():
    import keras

    images = _correlated_images(8)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build("airbench", num_classes=10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    models.initialize_whitening(model, images)
    whiten = model.get_layer("whiten")
    assert whiten.compute_dtype == "float32" and model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    reference = PatchWhitening()
    reference.build((None, 32, 32, 3))
    reference.kernel.assign(whiten.kernel)
    # The same outputs as a float32 layer, to float32 rounding (bfloat16 would be off by ~1e-2).
    probe = keras.Model(model.inputs[0], whiten.output)
    np.testing.assert_allclose(probe(images).numpy(), reference(images).numpy(), rtol=1e-5, atol=1e-5)


def test_a_saved_airbench_loads_back_with_its_custom_layers(tmp_path):
    import keras

    model = models.build("airbench", num_classes=10)
    models.initialize_whitening(model, _correlated_images(16))
    model.get_layer("block1_bn1_bias").raw.assign(np.linspace(-1, 1, 64).astype(np.float32))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)  # what launch.evaluate/predict/export do
    images = tf.constant(_correlated_images(4))
    np.testing.assert_allclose(loaded(images, training=False).numpy(), model(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_larger_whitening_eps_damps_the_small_eigenvalue_components():
    images = _correlated_images()
    layer = PatchWhitening()
    layer.build((None, 32, 32, 3))
    eigenvalues = layer.initialize_from_images(images, eps=0.1)
    assert layer.eps == 0.1 and layer.get_config()["eps"] == 0.1
    out = layer(tf.constant(images)).numpy()[..., :12].reshape(-1, 12)
    variances = np.diag(out.T @ out / len(out))
    np.testing.assert_allclose(variances, eigenvalues / (eigenvalues + 0.1), rtol=1e-3, atol=1e-4)
    assert variances[-1] < 0.5 * variances[0]
    with pytest.raises(ValueError, match="whitening eps=0 must be positive"):
        layer.initialize_from_images(images, eps=0)
