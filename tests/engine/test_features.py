"""Training features: accumulation, clipping, EMA, label smoothing, precision, optimizers, retrace guard."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import augment, in_memory
from engine import EpochInput, GuardOptions, KernelOptions, Trainer, sparse_accuracy
from engine.losses import sparse_categorical_crossentropy
from engine.optimizers import OPTIMIZERS, build_optimizer
from tests.engine.test_batch_norm import _conv_bn_model, _conv_data

N, FEATURES, CLASSES = 64, 5, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = np.argmax(x[:, :CLASSES], axis=1).astype(np.int32)
    return x, y


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(CLASSES)])


def _input(x, y, batch):
    fn = in_memory.train_dataset_fn(x, y, global_batch_size=batch, seed=0, recipe=augment.BatchRecipe(),
                                    normalize=None)
    return EpochInput(fn, in_memory.steps_per_epoch(len(y), batch))


def _trainer(strategy=None, *, optimizer=None, batch=16, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = _mlp()
        optimizer = optimizer() if callable(optimizer) else keras.optimizers.SGD(0.1, momentum=0.9)
    return Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, strategy=strategy, global_batch_size=batch, progress=False,
                   loss=sparse_categorical_crossentropy(), **kwargs)


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_accumulating_k_micro_batches_equals_one_step_on_the_k_times_batch(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else None
    x, y = _data()
    # Micro-batch 8 x 4 accumulated == batch 32: the same examples in the same order
    # (the index-addressed order depends only on (seed, epoch) and the global batch,
    # so give both the order of the 32-batch run).
    big = _trainer(strategy, batch=32)
    big.fit(_input(x, y, 32), train_steps=2)
    order = [x_ for x_, _ in _input(x, y, 32).dataset_fn(tf.distribute.InputContext(), 0, 0)]
    xs = np.concatenate([b.numpy() for b in order])
    ys = np.concatenate([b.numpy() for _, b in _input(x, y, 32).dataset_fn(tf.distribute.InputContext(), 0, 0)])
    micro = _trainer(strategy, batch=8, accumulation_steps=4)
    fixed = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(8)
    micro.fit(fixed, train_steps=8)
    assert micro.global_step == 8 and int(micro.optimizer.iterations.numpy()) == 2
    for a, b in zip(big.model.get_weights(), micro.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_accumulation_with_float16_loss_scaling_equals_one_step_on_the_k_times_batch(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else None
    x, y = _data()
    order = list(_input(x, y, 32).dataset_fn(tf.distribute.InputContext(), 0, 0))
    xs = np.concatenate([a.numpy() for a, _ in order])
    ys = np.concatenate([b.numpy() for _, b in order])
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        def optimizer():
            return build_optimizer("sgd", 0.1, momentum=0.9, loss_scale=True)
        big = _trainer(strategy, batch=32, optimizer=optimizer)
        big.fit(_input(x, y, 32), train_steps=2)
        micro = _trainer(strategy, batch=8, accumulation_steps=4, optimizer=optimizer)
        micro.fit(tf.data.Dataset.from_tensor_slices((xs, ys)).batch(8), train_steps=8)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert int(micro.optimizer.iterations.numpy()) == 2
    for a, b in zip(big.model.get_weights(), micro.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)  # float16 activations and gradients


def test_accumulated_float16_window_that_overflows_is_skipped_and_lowers_the_scale():
    x, y = _data()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        trainer = _trainer(batch=8, accumulation_steps=4, optimizer=lambda: keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0 ** 60))  # Gradients overflow float16 at once.
        before = trainer.model.get_weights()
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), train_steps=4)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert float(trainer.optimizer.dynamic_scale.numpy()) == 2.0 ** 59  # Halved once, for the one window.
    for a, b in zip(before, trainer.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.any(acc.numpy()) for acc in trainer.state.accumulators)  # The next window starts from zero.


def test_accumulation_counts_optimizer_steps_for_the_schedule():
    x, y = _data()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [1.0, 0.5])  # 1.0 only at update 0
    trainer = _trainer(optimizer=lambda: keras.optimizers.SGD(schedule), batch=8, accumulation_steps=3)
    trainer.fit(_input(x, y, 8), train_steps=3)
    assert int(trainer.optimizer.iterations.numpy()) == 1 and trainer.learning_rate == 0.5
    trainer.fit(_input(x, y, 8), train_steps=5)  # Mid-window: no second update yet.
    assert int(trainer.optimizer.iterations.numpy()) == 1


def test_global_norm_clipping_bounds_the_update():
    x, y = _data()
    y = np.where(y == 0, 1, y)

    def run(clip):
        trainer = _trainer(optimizer=lambda: build_optimizer("sgd", 100.0, momentum=0.0, clip_norm=clip))
        before = trainer.model.get_weights()
        trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16).take(1), train_steps=1)
        delta = [a - b for a, b in zip(trainer.model.get_weights(), before)]
        return np.sqrt(sum(float(np.sum(d * d)) for d in delta))

    clipped, free = run(0.01), run(None)
    assert clipped == pytest.approx(100.0 * 0.01, rel=1e-3)  # lr x clip norm
    assert free > 10 * clipped


def test_ema_weights_differ_from_raw_and_are_what_evaluation_uses(tmp_path):
    x, y = _data()
    trainer = _trainer(ema_decay=0.9, model_dir=str(tmp_path), guard=GuardOptions(nonfinite_limit=None))
    trainer.fit(_input(x, y, 16), train_steps=12)
    raw = trainer.model.get_weights()
    shadows = [s.numpy() for _, s in trainer.state.ema_pairs]
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(raw, shadows))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    results = trainer.evaluate(data)
    assert all(np.array_equal(a, b) for a, b in zip(raw, trainer.model.get_weights()))  # swapped back
    reference = _mlp()
    reference.set_weights(shadows)
    logits = reference.predict(x, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, 1) == y))
    assert results["accuracy"] == pytest.approx(accuracy)
    raw_model = _mlp()
    raw_model.set_weights(raw)
    assert np.abs(raw_model.predict(x, verbose=0) - logits).max() > 1e-4
    # The checkpoint holds the averages, and a new Trainer restores them.
    again = _trainer(ema_decay=0.9, model_dir=str(tmp_path), guard=GuardOptions(nonfinite_limit=None))
    again.restore()
    for (_, s), expected in zip(again.state.ema_pairs, shadows):
        np.testing.assert_array_equal(s.numpy(), expected)


def test_ema_of_the_first_update_is_decay_weighted():
    x, y = _data()
    trainer = _trainer(ema_decay=0.75, optimizer=lambda: keras.optimizers.SGD(0.5))
    start = trainer.model.get_weights()
    trainer.fit(_input(x, y, 16), train_steps=1)
    for (_, shadow), w0, w1 in zip(trainer.state.ema_pairs, start, trainer.model.get_weights()):
        np.testing.assert_allclose(shadow.numpy(), 0.75 * w0 + 0.25 * w1, rtol=1e-5, atol=1e-7)


def test_label_smoothing_matches_its_formula_and_zero_is_plain_cross_entropy():
    logits = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = tf.constant([0, 1])
    smooth = sparse_categorical_crossentropy(label_smoothing=0.1)(labels, logits).numpy()
    log_p = tf.nn.log_softmax(logits).numpy()
    targets = np.eye(3)[[0, 1]] * 0.9 + 0.1 / 3
    np.testing.assert_allclose(smooth, -(targets * log_p).sum(1), rtol=1e-6)
    plain = sparse_categorical_crossentropy()(labels, logits).numpy()
    np.testing.assert_allclose(plain, -log_p[[0, 1], [0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing=1"):
        sparse_categorical_crossentropy(label_smoothing=1.0)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_weights(precision):
    x, y = _data()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        trainer = _trainer(optimizer=lambda: build_optimizer("sgd", 0.1, loss_scale=precision == "mixed_float16"))
        history = trainer.fit(_input(x, y, 16), train_steps=8)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert trainer.model.layers[0].compute_dtype == precision.split("_")[1]
    assert all(w.dtype == np.float32 for w in trainer.model.get_weights())
    assert np.isfinite(history["loss"][-1]) and trainer.nonfinite_steps == 0
    assert int(trainer.optimizer.iterations.numpy()) == 8


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(name):
    x, y = _data()
    trainer = _trainer(optimizer=lambda: build_optimizer(name, 0.05 if name == "sgd" else 0.01))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    before = trainer.evaluate(data)["loss"]
    trainer.fit(_input(x, y, 16), train_steps=40)
    assert trainer.evaluate(data)["loss"] < before


def test_nesterov_and_decoupled_weight_decay_change_the_update():
    x, y = _data()

    def weights(**kwargs):
        trainer = _trainer(optimizer=lambda: build_optimizer("sgd", 0.1, **kwargs))
        trainer.fit(_input(x, y, 16), train_steps=3)
        return trainer.model.get_weights()

    plain, nesterov = weights(), weights(nesterov=True)
    assert np.abs(plain[0] - nesterov[0]).max() > 1e-5
    # Decoupled decay: w <- w - lr * wd * w on kernels beyond the gradient step;
    # biases are excluded.
    decayed = weights(weight_decay=0.5)
    assert np.abs(decayed[0]).sum() < np.abs(plain[0]).sum()
    with pytest.raises(ValueError, match="nesterov applies to optimizer=sgd"):
        build_optimizer("adam", 0.1, nesterov=True)
    with pytest.raises(ValueError, match="optimizer='lion'"):
        build_optimizer("lion", 0.1)


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_fused_sgd_equals_keras_sgd_on_every_replica(replicas, two_replicas, tmp_path):
    from engine.optimizers import SGD

    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    x, y = _data()
    variants = [dict(momentum=0.9), dict(momentum=0.85, nesterov=True), dict(momentum=0.0),
                dict(momentum=0.9, weight_decay=0.05, global_clipnorm=0.5)]
    for kwargs in variants:
        runs = {}
        for cls in (keras.optimizers.SGD, SGD):
            trainer = _trainer(strategy, optimizer=lambda: cls(0.1, **kwargs))
            trainer.fit(_input(x, y, 16), train_steps=4)
            runs[cls] = trainer
        keras_run, fused_run = runs[keras.optimizers.SGD], runs[SGD]
        ops = {n.op for f in fused_run._train_loop._list_all_concrete_functions_for_serialization()
               for g in [f.graph.as_graph_def()] for fn in g.library.function for n in fn.node_def}
        assert ("ResourceApplyKerasMomentum" if kwargs["momentum"] else "ResourceApplyGradientDescent") in ops, kwargs
        pairs = list(zip(keras_run.model.trainable_variables, fused_run.model.trainable_variables))
        pairs += list(zip(keras_run.optimizer.variables, fused_run.optimizer.variables))  # iterations, momentums
        assert len(pairs) > len(keras_run.model.trainable_variables)
        for expected, got in pairs:
            want = strategy.experimental_local_results(expected.value)[0].numpy()
            copies = strategy.experimental_local_results(got.value)
            assert len(copies) == replicas
            for copy in copies:
                np.testing.assert_allclose(copy.numpy(), want, rtol=1e-6, atol=1e-7, err_msg=str(kwargs))
    # Checkpoints of either restore into the other: the same slots under the same names.
    saved = tf.train.Checkpoint(optimizer=fused_run.optimizer).write(str(tmp_path / "fused_sgd"))
    fresh = _trainer(strategy, optimizer=lambda: keras.optimizers.SGD(0.1, momentum=0.9))
    fresh.optimizer.build(fresh.model.trainable_variables)
    tf.train.Checkpoint(optimizer=fresh.optimizer).read(saved).assert_existing_objects_matched()
    assert int(fresh.optimizer.iterations.numpy()) == 4


def test_fused_sgd_takes_keras_update_for_a_variable_without_a_resource_handle():
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    from engine.optimizers import SGD

    # A parameter-server partitioner's ShardedVariable has shards, not one handle.
    sharded = ShardedVariable([tf.Variable([1.0, 2.0]), tf.Variable([3.0])])
    SGD(0.5, momentum=0.0).update_step(tf.constant([2.0, 4.0, 6.0]), sharded, 0.5)
    np.testing.assert_allclose(np.concatenate([v.numpy() for v in sharded.variables]), [0.0, 0.0, 0.0])


def test_retrace_with_a_new_input_signature_warns_with_the_function_and_signature():
    x, y = _data()
    trainer = _trainer()
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), train_steps=2)
    assert trainer.retraces == []
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), train_steps=4)  # same signature
    assert trainer.retraces == []
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64))).batch(16), train_steps=6)
    assert len(trainer.retraces) == 1
    assert "Trainer.train_step traced again" in trainer.retraces[0] and "int64" in trainer.retraces[0]


def test_input_wait_is_logged_per_loop_and_per_epoch():
    x, y = _data()
    trainer = _trainer(steps_per_loop=2)
    seen = []
    trainer.add_hook("loop_end", lambda t, logs: seen.append(logs["input_wait_percent"]))
    history = trainer.fit(_input(x, y, 16), epochs=1)
    assert len(seen) == 2 and all(0 <= w <= 100 for w in seen)
    assert 0 <= history["input_wait_percent"][0] <= 100


def _xla_functions(trainer) -> int:
    """How many functions of the traced train loop XLA must compile."""
    count = 0
    for concrete in trainer._train_loop._list_all_concrete_functions():
        for f in concrete.graph.as_graph_def().library.function:
            count += bool(f.attr["_XlaMustCompile"].b)
    return count


@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_xla_compiled_steps_train_and_evaluate_as_without(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    x, y = _conv_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    results = {}
    for jit in (False, True):
        with strategy.scope():
            model = _conv_bn_model()
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        trainer = Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, loss=sparse_categorical_crossentropy(), strategy=strategy,
                          global_batch_size=8, steps_per_loop=3, progress=False,
                          kernels=KernelOptions(jit_compile=jit))
        trainer.fit(data, train_steps=6)
        assert (_xla_functions(trainer) > 0) == jit
        results[jit] = ([w.numpy() for w in model.weights], trainer.evaluate(data))
    for a, b in zip(results[True][0], results[False][0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert results[True][1]["accuracy"] == results[False][1]["accuracy"]
    np.testing.assert_allclose(results[True][1]["loss"], results[False][1]["loss"], rtol=1e-5)
