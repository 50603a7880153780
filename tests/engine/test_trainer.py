"""The Trainer on small data: learning, distribution equivalence, checkpoints, summaries."""

import glob
import os
import signal
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import in_memory
from engine import (CheckpointOptions, DatasetInput, EpochInput, Trainer,
                    piecewise_constant_by_epoch, sparse_accuracy)

N, SIZE, CLASSES, GB = 96, 8, 3, 16


def _data(seed=0):
    """Images whose class is the brightest colour channel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N).astype(np.int32)
    images = rng.integers(0, 120, (N, SIZE, SIZE, 3))
    images[np.arange(N), :, :, labels] += 120
    return images.astype(np.uint8), labels


def _small_cnn():
    # No BatchNorm: per-replica batch statistics would differ from one replica's.
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, kernel_regularizer=keras.regularizers.L2(1e-3)),
    ])


def _trainer(strategy=None, model_dir=None, weights=None, lr=0.05, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = _small_cnn()
        if weights is not None:
            model.set_weights(weights)
        schedule = piecewise_constant_by_epoch(lr, [2], [0.1], steps_per_epoch=N // GB)
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    return Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, strategy=strategy, model_dir=model_dir,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                   global_batch_size=GB, progress=False, **kwargs)


def _inputs(images, labels):
    train = EpochInput(in_memory.train_dataset_fn(images, labels, global_batch_size=GB, seed=0),
                       in_memory.steps_per_epoch(N, GB))
    return train, in_memory.eval_dataset(images, labels, global_batch_size=GB)


def test_learns_a_separable_task():
    keras.utils.set_random_seed(0)
    images, labels = _data()
    train, evaluation = _inputs(images, labels)
    trainer = _trainer(steps_per_loop=4)
    history = trainer.fit(train, evaluation, epochs=6)
    assert history["epoch"] == [1, 2, 3, 4, 5, 6] and history["step"] == [6, 12, 18, 24, 30, 36]
    assert history["eval_accuracy"][-1] > 0.9
    assert history["loss"][-1] < history["loss"][0]
    assert trainer.global_step == 36
    # Loop lengths and fresh iterators each epoch are arguments, not new traces.
    assert trainer._train_loop.experimental_get_tracing_count() == 1
    assert trainer._eval_loop.experimental_get_tracing_count() == 1


def test_one_and_two_replicas_agree_step_by_step(two_replicas):
    images, labels = _data()
    train, evaluation = _inputs(images, labels)
    weights = _small_cnn().get_weights()
    runs = []
    for strategy in (tf.distribute.get_strategy(), two_replicas):
        trainer = _trainer(strategy, weights=weights, steps_per_loop=1)
        # fit(train_steps=k) continues from the current step: one step per call.
        losses = [trainer.fit(train, train_steps=k)["loss"][0] for k in range(1, 8)]
        runs.append((losses, [w.numpy() for w in trainer.model.weights], trainer.evaluate(evaluation)))
    (l1, w1, e1), (l2, w2, e2) = runs
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert e1 == pytest.approx(e2, rel=1e-5)
    assert not np.allclose(w1[0], weights[0])  # it did train


def test_evaluation_counts_every_example_once_on_two_replicas(two_replicas):
    images, labels = _data()
    weights = _small_cnn().get_weights()
    data = in_memory.eval_dataset(images[:83], labels[:83], global_batch_size=GB)  # 83 = 5 x 16 + 3
    results = []
    for strategy in (tf.distribute.get_strategy(), two_replicas):
        trainer = _trainer(strategy, weights=weights)
        results.append(trainer.evaluate(data))
        assert float(trainer.eval_metrics["loss"].count.value.read_value()) == 83
    assert results[0] == pytest.approx(results[1], rel=1e-5)
    plain = keras.metrics.SparseCategoricalAccuracy()
    trainer = _trainer(weights=weights)
    for x, y in data:
        plain.update_state(y, trainer.model(x))
    assert results[0]["accuracy"] == pytest.approx(float(plain.result()))


def test_resume_continues_exactly_where_the_checkpoint_left(tmp_path):
    images, labels = _data()
    train, _ = _inputs(images, labels)
    weights = _small_cnn().get_weights()
    straight = _trainer(weights=weights, steps_per_loop=3)
    straight.fit(train, train_steps=17)

    first = _trainer(model_dir=str(tmp_path), weights=weights, steps_per_loop=3,
                     checkpoint=CheckpointOptions(every_steps=5))
    first.fit(train, train_steps=10)
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "ckpt-*.index"))) == \
        ["ckpt-10.index", "ckpt-5.index", "ckpt-6.index"]  # every 5 steps and at the epoch end (6)
    second = _trainer(model_dir=str(tmp_path), steps_per_loop=3)  # fresh random weights
    assert second.restore().endswith("ckpt-10")
    assert second.global_step == 10
    assert second.learning_rate == pytest.approx(0.05)  # the boundary, epoch 2, is step 12
    second.fit(train, train_steps=17)
    assert second.learning_rate == pytest.approx(0.005)
    for a, b in zip(straight.model.weights, second.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path):
    images, labels = _data()
    train, _ = _inputs(images, labels)
    _trainer(model_dir=str(tmp_path)).fit(train, train_steps=2)
    before = sorted(os.listdir(tmp_path))
    with tf.distribute.get_strategy().scope():
        other = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    trainer = Trainer(metrics=sparse_accuracy, model=other, optimizer=keras.optimizers.SGD(0.1), global_batch_size=GB,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                      model_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"checkpoint .*ckpt-2 does not match this model"):
        trainer.restore()
    assert sorted(os.listdir(tmp_path)) == before


def _scalars(folder):
    out = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return out


def test_summaries_hold_train_and_eval_scalars(tmp_path):
    images, labels = _data()
    train, evaluation = _inputs(images, labels)
    history = _trainer(model_dir=str(tmp_path), steps_per_loop=2).fit(train, evaluation, epochs=2)
    train_scalars = _scalars(str(tmp_path / "train"))
    eval_scalars = _scalars(str(tmp_path / "eval"))
    assert {"loss", "accuracy", "learning_rate", "examples_per_second"} <= set(train_scalars)
    assert [step for step, _ in train_scalars["loss"]] == [2, 4, 6, 8, 10, 12]
    assert eval_scalars["accuracy"] == [(6, pytest.approx(history["eval_accuracy"][0])),
                                        (12, pytest.approx(history["eval_accuracy"][1]))]
    assert all(v > 0 for _, v in train_scalars["examples_per_second"])


def test_sigterm_mid_loop_finishes_the_step_checkpoints_and_returns(tmp_path):
    images, labels = _data()
    ds = tf.data.Dataset.from_tensor_slices(((images / 255).astype(np.float32), labels)).batch(GB).repeat()
    endless = DatasetInput(ds, steps_per_epoch=1_000_000)  # one compiled loop of 10^6 steps
    trainer = _trainer(model_dir=str(tmp_path), steps_per_loop=1_000_000)
    real_loop, senders = trainer._train_loop, []

    def signal_after_the_first_step():
        # Not a fixed delay: on a loaded machine tracing the loop can outlast it.
        deadline = time.monotonic() + 120
        while int(trainer.optimizer.iterations.numpy()) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    def loop_with_a_signal(iterator, n):
        # Sent while the compiled loop runs, where no Python handler can run.
        senders.append(threading.Thread(target=signal_after_the_first_step))
        senders[0].start()
        return real_loop(iterator, n)

    trainer._train_loop = loop_with_a_signal
    trainer.fit(endless, train_steps=1_000_000)
    step = trainer.global_step
    assert len(senders) == 1 and trainer.stopped_by == "SIGTERM"
    assert 0 < step < 1_000_000  # stopped inside the loop, after a whole step
    assert trainer.checkpointer.latest.endswith(f"ckpt-{step}")
    assert int(trainer.optimizer.iterations.numpy()) == step  # every started step finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_plain_dataset_of_global_batches_trains():
    images, labels = _data()
    ds = tf.data.Dataset.from_tensor_slices(((images / 255).astype(np.float32), labels)).batch(GB, drop_remainder=True)
    trainer = _trainer()
    history = trainer.fit(ds, ds, epochs=2)
    assert trainer.global_step == 2 * N // GB and len(history["eval_accuracy"]) == 2
    with pytest.raises(ValueError, match="infinite"):
        DatasetInput(ds.repeat())


def test_bad_arguments_are_refused(two_replicas):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with two_replicas.scope():
        model = _small_cnn()
    with pytest.raises(ValueError, match="global batch 15 is not a positive multiple of 2 replicas"):
        Trainer(model=model, optimizer=keras.optimizers.SGD(), loss=loss, global_batch_size=15,
                strategy=two_replicas)
    with pytest.raises(ValueError, match="reduction=None"):
        Trainer(model=model, optimizer=keras.optimizers.SGD(), global_batch_size=16, strategy=two_replicas,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    outside = _small_cnn()
    with pytest.raises(ValueError, match="not created under strategy.scope"):
        Trainer(model=outside, optimizer=keras.optimizers.SGD(), loss=loss, global_batch_size=16,
                strategy=two_replicas)
