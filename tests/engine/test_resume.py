"""Exact resume and the non-finite guard, in process on small data."""

import gc
import glob
import os
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import in_memory
from engine import inputs
from engine import (CheckpointOptions, DatasetInput, EpochInput, GuardOptions, Trainer,
                    piecewise_constant_by_epoch, sparse_accuracy)
from engine.trainer import NonFiniteError
from tests.engine.test_trainer import GB, N, _data, _inputs, _small_cnn


class RecordingTrainer(Trainer):
    """Counts how often each example id (its label) is trained on, and can inject NaN losses."""

    def __init__(self, *, nan_calls=(), nan_replica=None, num_ids=N, **kwargs):
        super().__init__(**kwargs)
        with self.strategy.scope():
            self.seen = tf.Variable(tf.zeros([num_ids], tf.int32), aggregation=tf.VariableAggregation.SUM,
                                    synchronization=tf.VariableSynchronization.ON_READ)
            self.calls = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.nan_calls = tf.constant(list(nan_calls) or [-1], tf.int64)
        self.nan_replica = nan_replica

    def compute_loss(self, x, y, y_pred, sample_weight):
        losses = super().compute_loss(x, y % 3, y_pred, sample_weight)
        poisoned = tf.reduce_any(tf.equal(self.calls, self.nan_calls))
        if self.nan_replica is not None:
            ctx = tf.distribute.get_replica_context()
            poisoned = tf.logical_and(poisoned, tf.equal(ctx.replica_id_in_sync_group, self.nan_replica))
        return tf.where(poisoned, np.nan, losses)

    def update_metrics(self, x, y, y_pred, sample_weight):
        super().update_metrics(x, y % 3, y_pred, sample_weight)

    def train_step(self, data):
        super().train_step(data)
        self.seen.assign_add(tf.math.bincount(data[1], minlength=self.seen.shape[0], maxlength=self.seen.shape[0]))
        self.calls.assign_add(1)  # ONLY_FIRST_REPLICA: one count per step


def _recording(strategy=None, learning_rate=0.05, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = _small_cnn()
        optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    return RecordingTrainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, strategy=strategy, global_batch_size=GB,
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                            progress=False, **kwargs)


def _ids_input():
    images, _ = _data()
    ids = np.arange(N, dtype=np.int32)  # labels carry the example id; the loss uses id % 3
    return EpochInput(in_memory.train_dataset_fn(images, ids, global_batch_size=GB, seed=3),
                      in_memory.steps_per_epoch(N, GB))


def test_mid_epoch_resume_uses_every_example_exactly_once(tmp_path):
    train = _ids_input()  # 96 examples, 6 steps of 16 per epoch
    first = _recording(model_dir=str(tmp_path), checkpoint=CheckpointOptions(every_steps=2), steps_per_loop=1)
    first.fit(train, train_steps=6 + 4)  # all of epoch 0, 4 steps of epoch 1
    second = _recording(model_dir=str(tmp_path), steps_per_loop=1)  # a new process, in effect
    second.fit(train, train_steps=12)  # the rest of epoch 1
    assert second.restored_from.endswith("ckpt-10")
    epoch1 = first.seen.read_value().numpy() - 1 + second.seen.read_value().numpy()
    # first saw epoch 0 once (all ones) and 4 steps of epoch 1; second the last 2.
    assert epoch1.tolist() == [1] * N


@pytest.mark.parametrize("replicas", [1, 2])
def test_fits_that_end_inside_an_epoch_go_on_with_the_same_iterator(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else None
    trainer = _recording(strategy, steps_per_loop=1)
    images, _ = _data()
    produced = tf.Variable(0, dtype=tf.int64)  # examples the pipeline has read

    def count(image, example_id):
        produced.assign_add(1)
        return image, example_id

    # One shuffled pass of 6 steps, reshuffled by each new iterator, passed as a
    # plain tf.data.Dataset (the Trainer wraps it anew on every call).
    data = tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int32))).map(count).shuffle(
        N, seed=5).batch(GB)
    for total in (2, 4, 6):
        trainer.fit(data, train_steps=total)
        trainer.evaluate(tf.data.Dataset.from_tensor_slices((images, np.zeros(N, np.int32))).batch(GB))
    # One epoch in one order: every example once on the replicas together, and the
    # pipeline read once (a new iterator per fit would reshuffle, skip and re-read).
    assert trainer.seen.read_value().numpy().tolist() == [1] * N
    assert int(produced.numpy()) == N and trainer.global_step == 6


def test_a_fit_on_another_input_does_not_take_the_held_iterator():
    trainer = _recording(steps_per_loop=1, num_ids=2 * N)
    images, _ = _data()
    ids = np.arange(N, dtype=np.int32)
    first = DatasetInput(tf.data.Dataset.from_tensor_slices((images, ids)).batch(GB))
    second = DatasetInput(tf.data.Dataset.from_tensor_slices((images, ids + N)).batch(GB))
    trainer.fit(first, train_steps=3)
    trainer.fit(second, train_steps=6)  # steps 3-5 of the second input: its second half
    half = N // 2
    assert trainer.seen.read_value().numpy().tolist() == [1] * half + [0] * half + [0] * half + [1] * half


def test_a_held_iterator_is_deleted_with_its_trainer():
    def fit_inside_an_epoch():
        # In a function of its own: TensorFlow reads its callers' frame locals while
        # tracing, and such a snapshot would keep the Trainer alive in this frame.
        trainer = _recording(steps_per_loop=1)
        images, _ = _data()
        data = tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int32))).batch(GB)
        trainer.fit(data, train_steps=3)
        (_, epoch, step), iterator = trainer.held_iterator  # ended inside the epoch
        assert (epoch, step) == (0, 3)
        return weakref.ref(iterator), weakref.ref(trainer)

    iterator, trainer = fit_inside_an_epoch()
    assert iterator() is not None  # Held by the Trainer alone.
    gc.collect()
    assert trainer() is None and iterator() is None


def test_close_deletes_the_held_iterator_and_the_trainer_goes_on():
    images, _ = _data()
    data = DatasetInput(tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int32))).batch(GB))
    with _recording(steps_per_loop=1) as trainer:
        trainer.fit(data, train_steps=3)
        held = weakref.ref(trainer.held_iterator[1])
        trainer.close()
        assert trainer.held_iterator is None and held() is None  # Deleted by close, on this thread.
        trainer.fit(data, train_steps=6)  # A new iterator at step 3 (the pipeline skipped to it).
        assert trainer.seen.read_value().numpy().tolist() == [1] * N
        assert trainer.held_iterator is None  # Ended at the epoch's end: nothing to keep.


def test_every_dataset_the_trainer_distributes_runs_without_the_autotuning_model(monkeypatch, two_replicas):
    """Training (EpochInput and DatasetInput) and evaluation pipelines all pass through
    without_autotune_model, and so do tf.distribute's per-device datasets behind them."""
    seen = []
    keep = inputs.without_autotune_model

    def recording(dataset):
        dataset = keep(dataset)
        seen.append(dataset.options().autotune.enabled)
        return dataset

    monkeypatch.setattr(inputs, "without_autotune_model", recording)
    images, labels = _data()
    train, eval_data = _inputs(images, labels)
    trainer = _recording(two_replicas, steps_per_loop=1)
    trainer.fit(train, train_steps=2)
    epoch_input = len(seen)
    trainer.fit(DatasetInput(tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int32))).batch(GB)),
                train_steps=3)
    dataset_input = len(seen) - epoch_input
    trainer.evaluate(eval_data)
    # Per distributed iterator: this worker's one input pipeline, then each replica's device dataset.
    assert (epoch_input, dataset_input, len(seen)) == (3, 3, 9)
    assert seen == [False] * len(seen)


def test_each_replica_device_dataset_is_built_without_the_autotuning_model(monkeypatch, two_replicas):
    """tf.distribute's per-device datasets (one per replica) pass through without_autotune_model
    once the Trainer has patched their builder."""
    from tensorflow.python.data.ops import multi_device_iterator_ops as device_ops

    images, labels = _data()
    # TF's own function back in place, whatever earlier tests did:
    original = getattr(device_ops._create_device_dataset, "__wrapped__", device_ops._create_device_dataset)
    monkeypatch.setattr(device_ops, "_create_device_dataset", original)
    _recording(two_replicas)  # Building a Trainer applies the patch.
    assert getattr(device_ops._create_device_dataset, "untuned", False)
    built = []
    keep = inputs.without_autotune_model
    monkeypatch.setattr(inputs, "without_autotune_model", lambda dataset: built.append(keep(dataset)) or built[-1])
    iterator = iter(two_replicas.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(GB)))
    batch = next(iterator)
    assert len(two_replicas.experimental_local_results(batch[0])) == 2
    assert len(built) == 2 and all(d.options().autotune.enabled is False for d in built)


def test_without_autotune_model_keeps_an_explicit_choice():
    dataset = tf.data.Dataset.range(4)
    assert inputs.without_autotune_model(dataset).options().autotune.enabled is False
    for choice in (True, False):
        options = tf.data.Options()
        options.autotune.enabled = choice
        chosen = dataset.with_options(options)
        assert inputs.without_autotune_model(chosen).options().autotune.enabled is choice
    assert list(inputs.without_autotune_model(dataset).as_numpy_iterator()) == [0, 1, 2, 3]


@pytest.mark.parametrize("replicas", [1, 2])
def test_nonfinite_steps_are_skipped_on_every_replica_and_counted(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else None
    trainer = _recording(strategy, nan_calls=(2, 3), nan_replica=0, steps_per_loop=1,
                         guard=GuardOptions(nonfinite_limit=5))
    train = _ids_input()
    trainer.fit(train, train_steps=2)
    before = [w.numpy() for w in trainer.model.weights]
    trainer.fit(train, train_steps=4)  # calls 2 and 3: non-finite on replica 0 only
    assert trainer.nonfinite_steps == 2 and trainer.global_step == 4
    assert int(trainer.optimizer.iterations.numpy()) == 2
    for a, b in zip(before, trainer.model.weights):
        np.testing.assert_array_equal(a, b.numpy())  # no replica applied anything
    history = trainer.fit(train, train_steps=6)
    assert int(trainer.optimizer.iterations.numpy()) == 4 and np.isfinite(history["loss"][-1])


@pytest.mark.parametrize("scheduled", [False, True])
def test_k_nonfinite_steps_in_a_row_roll_back_and_lower_the_learning_rate(tmp_path, scheduled):
    lr = piecewise_constant_by_epoch(0.05, [100], [0.1], steps_per_epoch=6) if scheduled else 0.05
    trainer = _recording(model_dir=str(tmp_path), nan_calls=(8, 9, 10), learning_rate=lr,
                         guard=GuardOptions(nonfinite_limit=3, rollback_lr_factor=0.5),
                         checkpoint=CheckpointOptions(every_steps=4), steps_per_loop=1)
    history = trainer.fit(_ids_input(), train_steps=18)
    assert trainer.global_step == 18 and trainer.nonfinite_steps == 3
    # Rolled back to step 8 (the newest checkpoint) after steps 9-11 failed.
    assert trainer.learning_rate == pytest.approx(0.025)
    assert all(np.isfinite(history["loss"]))
    assert all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)
    assert int(trainer.calls.numpy()) == 18 + 3  # the three bad steps were redone after the rollback
    # The lowered rate is saved: a new Trainer over the same folder keeps it.
    again = _recording(model_dir=str(tmp_path), learning_rate=lr)
    again.restore()
    assert again.learning_rate == pytest.approx(0.025) and again.nonfinite_steps == 3


def test_nonfinite_stop_action_raises(tmp_path):
    trainer = _recording(model_dir=str(tmp_path), nan_calls=(1, 2),
                         guard=GuardOptions(nonfinite_limit=2, action="stop"),
                         steps_per_loop=1)
    with pytest.raises(NonFiniteError, match="2 non-finite steps in a row up to step 3"):
        trainer.fit(_ids_input(), train_steps=10)


def _checkpoint_prefixes(folder):
    return sorted(p[: -len(".index")] for p in glob.glob(os.path.join(folder, "**", "*.index"), recursive=True))


def _assert_every_checkpoint_finite(folder):
    """Reads every float tensor of every checkpoint under `folder` (periodic, best, early stopping)."""
    prefixes = _checkpoint_prefixes(folder)
    for prefix in prefixes:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.all(np.isfinite(reader.get_tensor(name))), f"{prefix}: {name}"
    return prefixes


def _scalar_steps(folder, tag):
    steps = []
    for path in glob.glob(os.path.join(folder, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant-rate", "schedule"])
def test_rollbacks_compound_the_factor_and_stop_after_max_rollbacks(tmp_path, scheduled):
    lr = piecewise_constant_by_epoch(0.05, [100], [0.1], steps_per_epoch=6) if scheduled else 0.05
    # Every step from the third on is non-finite, whatever the learning rate: rollbacks cannot cure it.
    trainer = _recording(model_dir=str(tmp_path), nan_calls=range(2, 1000), learning_rate=lr,
                         guard=GuardOptions(nonfinite_limit=2, rollback_lr_factor=0.5, max_rollbacks=3),
                         checkpoint=CheckpointOptions(every_steps=2), steps_per_loop=1)
    with pytest.raises(NonFiniteError, match=r"after 3 rollback\(s\).*ckpt-2, is finite"):
        trainer.fit(_ids_input(), train_steps=600)
    # Each rollback halved the rate it found, not the checkpoint's: 0.5^3.
    assert trainer.learning_rate_scale == pytest.approx(0.125)
    assert trainer.learning_rate == pytest.approx(0.05 * 0.125)
    assert int(trainer.calls.numpy()) == 2 + 4 * 2  # two good steps, then four attempts of two bad ones
    prefixes = _assert_every_checkpoint_finite(str(tmp_path))
    assert [os.path.basename(p) for p in prefixes] == ["ckpt-0", "ckpt-2"]  # none written mid-divergence
    # Loops whose steps were all skipped write no summaries: only the two good steps' loops did.
    assert sorted(_scalar_steps(str(tmp_path / "train"), "loss")) == [1, 2]


def test_rollback_count_survives_a_rerun(tmp_path):
    trainer = _recording(model_dir=str(tmp_path), nan_calls=(4, 5), checkpoint=CheckpointOptions(every_steps=2),
                         steps_per_loop=1, guard=GuardOptions(nonfinite_limit=2, max_rollbacks=1))
    trainer.fit(_ids_input(), train_steps=10)  # one rollback, from step 6 to ckpt-4, then fine
    assert trainer.global_step == 10 and trainer.learning_rate == pytest.approx(0.025)
    again = _recording(model_dir=str(tmp_path), nan_calls=range(0, 1000), steps_per_loop=1,
                       guard=GuardOptions(nonfinite_limit=2, max_rollbacks=1))
    with pytest.raises(NonFiniteError, match=r"after 1 rollback\(s\)"):  # the saved count: no rollback left
        again.fit(_ids_input(), train_steps=20)


def test_weights_that_become_nonfinite_are_never_checkpointed(tmp_path):
    # Guard off: a huge rate makes the weights overflow, and nothing stops the update.
    trainer = _recording(model_dir=str(tmp_path), guard=GuardOptions(nonfinite_limit=None), learning_rate=1e30,
                         checkpoint=CheckpointOptions(every_steps=1, best_metric="eval_accuracy"), steps_per_loop=1)
    images, labels = _data()
    with pytest.raises(NonFiniteError, match=r"NaN/Inf in \d+ variable"):
        trainer.fit(_ids_input(), in_memory.eval_dataset(images, labels % 3, global_batch_size=GB), epochs=3)
    assert not all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)  # it did diverge
    assert _assert_every_checkpoint_finite(str(tmp_path))  # and what it saved before is finite


class _InfGradientTrainer(Trainer):
    """Its first variable's gradient is Inf on replica 0; the loss is not given, so only the gradients are checked."""

    def train_step(self, data):
        x, y, _ = self.unpack(data)
        loss, losses, y_pred, grads = self.forward_backward(x, y, None)
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        grads = [tf.where(first, tf.fill(tf.shape(grads[0]), np.float32(np.inf)), grads[0])] + list(grads[1:])
        self.record_loss(losses, finite=self.apply_gradients(grads, self.model.trainable_variables))


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_finite_loss_with_an_inf_gradient_is_skipped_on_every_replica(replicas, two_replicas):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        model = _small_cnn()
        optimizer = keras.optimizers.SGD(0.05)
    trainer = _InfGradientTrainer(model=model, optimizer=optimizer, strategy=strategy, global_batch_size=GB,
                                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                                  progress=False, guard=GuardOptions(nonfinite_limit=10))
    before = [w.numpy() for w in model.weights]
    trainer.fit(_inputs(*_data())[0], train_steps=3)
    assert trainer.nonfinite_steps == 3 and int(optimizer.iterations.numpy()) == 0
    for a, b in zip(before, model.weights):
        for value in strategy.experimental_local_results(b.value):
            np.testing.assert_array_equal(a, value.numpy())  # every replica's copy


def _dropout_trainer(strategy, model_dir):
    keras.utils.set_random_seed(5)
    with strategy.scope():
        model = keras.Sequential([_small_cnn(), keras.layers.Dropout(0.5)])
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    return Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, strategy=strategy, model_dir=model_dir,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                   global_batch_size=GB, progress=False, steps_per_loop=2)


def _replica_seed_states(trainer) -> list[list[list[int]]]:
    """Each replica's own copy of each dropout state: [state][replica] -> [seed, counter]."""
    from engine.state import seed_generator_states

    return [[copy.numpy().tolist() for copy in trainer.strategy.experimental_local_results(v.value)]
            for v in seed_generator_states(trainer.model)]


def test_dropout_states_agree_on_every_replica_and_a_rerun_restores_each_copy(tmp_path, two_replicas):
    # Keras keeps one mirrored state per SeedGenerator: both replicas draw the same
    # masks (each on its own examples) and advance their copies together.
    images, labels = _data()
    train, _ = _inputs(images, labels)  # 6 steps per epoch
    unbroken = _dropout_trainer(two_replicas, str(tmp_path / "unbroken"))
    unbroken.fit(train, train_steps=10)
    states = _replica_seed_states(unbroken)
    assert states and all(copies[0] == copies[1] for copies in states)
    assert all(copies[0][1] > 0 for copies in states)  # the counters moved
    dropout = unbroken.model.layers[-1]
    masks = two_replicas.experimental_local_results(
        tf.function(lambda: two_replicas.run(lambda: dropout(tf.ones([4, 8]), training=True)))())
    assert np.array_equal(masks[0].numpy() == 0, masks[1].numpy() == 0)  # as BUILD_NOTES says
    assert 0 < np.mean(masks[0].numpy() == 0) < 1

    first = _dropout_trainer(two_replicas, str(tmp_path / "killed"))
    first.fit(train, train_steps=4)
    at_kill = _replica_seed_states(first)
    assert at_kill != states
    second = _dropout_trainer(two_replicas, str(tmp_path / "killed"))  # a new process, in effect
    second.build_model(train.element_spec)
    second.restore()
    assert second.restored_from.endswith("ckpt-4")
    assert _replica_seed_states(second) == at_kill  # every replica's copy, not only the first
    second.fit(train, train_steps=10)
    assert _replica_seed_states(second) == states
