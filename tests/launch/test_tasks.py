"""Each example task trains from Python on 1 and 2 replicas, resumes, and reaches its number; and from launch.train."""

import functools
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import cifar10, in_memory
from engine import EpochInput
from launch import tasks
from launch.tasks import autoencoder, gan, regression, weighted_classification
from tests.launch.cli import run

REPLICAS = pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])


@functools.cache
def _cifar(path, n_train=512, n_eval=256):
    """A slice of the real CIFAR-10 (uint8 images, int32 labels), read once per session."""
    data = cifar10.load(path)
    rng = np.random.default_rng(0)  # The files are listed class by class: draw across classes.
    train, test = rng.permutation(len(data.train.labels))[:n_train], rng.permutation(len(data.test.labels))[:n_eval]
    return data.train.images[train], data.train.labels[train], data.test.images[test], data.test.labels[test]


def _strategy(replicas, two_replicas):
    return two_replicas if replicas == 2 else tf.distribute.get_strategy()


@REPLICAS
def test_regression_reaches_the_seeds_coefficients_and_resumes(replicas, two_replicas, tmp_path):
    strategy = _strategy(replicas, two_replicas)
    x, y = regression.linear_data(256, seed=0)
    train = EpochInput(in_memory.train_dataset_fn(x, y, global_batch_size=32, seed=0, normalize=None,
                                                  recipe=regression.augment.BatchRecipe()), 8)

    def trainer():
        with strategy.scope():
            model = regression.linear_model()
            # RMSprop as in the seed, then a tenth of the rate to settle.
            rate = keras.optimizers.schedules.PiecewiseConstantDecay([200], [0.05, 0.005])
            optimizer = keras.optimizers.RMSprop(rate)
        return regression.RegressionTrainer(model=model, optimizer=optimizer, global_batch_size=32, strategy=strategy,
                                            model_dir=str(tmp_path), progress=False)

    trainer().fit(train, epochs=30)
    resumed = trainer()
    history = resumed.fit(train, epochs=40)
    assert resumed.restored_from.endswith("ckpt-240") and resumed.global_step == 320
    kernel, bias = (w.numpy() for w in resumed.model.layers[-1].weights)
    assert abs(float(kernel[0, 0]) - regression.SLOPE) < 1e-2
    assert abs(float(bias[0]) - regression.INTERCEPT) < 1e-2
    assert history["mae"][-1] < 0.05 and "accuracy" not in history


@REPLICAS
def test_denoising_autoencoder_beats_the_mean_image_and_resumes(replicas, two_replicas, cifar10_dir, tmp_path):
    strategy = _strategy(replicas, two_replicas)
    images, _, eval_images, _ = _cifar(cifar10_dir)
    train_fn, eval_data, steps = autoencoder.image_data(images, eval_images, global_batch=64, seed=0)
    assert eval_data.element_spec.shape[1:] == (32, 32, 3)  # images only, no labels

    def trainer():
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = autoencoder.denoising_autoencoder()
            optimizer = keras.optimizers.Adam(2e-3)
        return autoencoder.AutoencoderTrainer(model=model, optimizer=optimizer, global_batch_size=64,
                                              strategy=strategy, model_dir=str(tmp_path), progress=False,
                                              steps_per_loop=8)

    trainer().fit(EpochInput(train_fn, steps), eval_data, epochs=2)
    resumed = trainer()
    history = resumed.fit(EpochInput(train_fn, steps), eval_data, epochs=4)
    assert resumed.restored_from.endswith(f"ckpt-{2 * steps}")
    unit = images.astype(np.float32) / 127.5 - 1
    baseline = float(np.mean((eval_images.astype(np.float32) / 127.5 - 1 - unit.mean(axis=0)) ** 2))
    assert history["eval_loss"][-1] < 0.5 * baseline  # per-pixel MSE in [-1, 1] units


@REPLICAS
def test_class_weighted_classifier_is_fed_x_y_w_and_resumes(replicas, two_replicas, cifar10_dir, tmp_path):
    strategy = _strategy(replicas, two_replicas)
    images, labels, eval_images, eval_labels = _cifar(cifar10_dir)
    weights = weighted_classification.class_weights("balanced", labels, 10)
    assert np.allclose(np.bincount(labels, minlength=10) * weights, len(labels) / 10)
    train_fn = weighted_classification.weighted_train_fn(images, labels, weights, global_batch=64, seed=0)
    assert len(train_fn(tf.distribute.InputContext(), 0, 0).element_spec) == 3  # (x, y, w)
    train = EpochInput(train_fn, in_memory.steps_per_epoch(len(labels), 64))
    eval_data = in_memory.eval_dataset(eval_images, eval_labels, global_batch_size=64)
    from launch.config import TrainConfig

    config = TrainConfig.create(data_dir=None, model="small_cnn", model_dir=str(tmp_path),
                                task="weighted_classification",
                                task_options=weighted_classification.WeightedClassificationOptions())
    task = tasks.get("weighted_classification")

    def trainer():
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = task.model(config, None)
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        return task.trainer(config, model=model, optimizer=optimizer, data=None, global_batch_size=64,
                            strategy=strategy, model_dir=str(tmp_path), progress=False)

    first = trainer().fit(train, eval_data, epochs=2)
    resumed = trainer()
    history = resumed.fit(train, eval_data, epochs=4)
    assert resumed.restored_from.endswith("ckpt-16") and resumed.global_step == 32
    assert history["loss"][-1] < first["loss"][0]  # the weighted training loss falls
    assert np.isfinite(history["eval_accuracy"][-1])


@REPLICAS
def test_gan_trains_both_models_and_restores_both_optimizers(replicas, two_replicas, cifar10_dir, tmp_path):
    strategy = _strategy(replicas, two_replicas)
    images, _, eval_images, _ = _cifar(cifar10_dir)
    train_fn, eval_data, steps = autoencoder.image_data(images, eval_images, global_batch=64, seed=0)

    def trainer():
        with strategy.scope():
            keras.utils.set_random_seed(0)
            generator, critic = gan.generator(16, width=16), gan.discriminator(width=16)
            optimizers = keras.optimizers.Adam(2e-4, beta_1=0.5), keras.optimizers.Adam(2e-4, beta_1=0.5)
        return gan.GANTrainer(model=generator, discriminator=critic, optimizer=optimizers[0],
                              discriminator_optimizer=optimizers[1], latent_dim=16, global_batch_size=64,
                              strategy=strategy, model_dir=str(tmp_path), progress=False, ema_decay=0.9)

    first = trainer()
    initial = [np.asarray(w) for w in first.model.weights]
    first.fit(EpochInput(train_fn, steps), train_steps=6)
    critic_weights = first.discriminator.get_weights()
    resumed = trainer()
    assert resumed.restore().endswith("ckpt-6")
    assert {name: int(o.iterations.numpy()) for name, o in resumed.optimizers.items()} == \
        {"generator": 6, "discriminator": 6}
    for a, b in zip(critic_weights, resumed.discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)  # the discriminator came back through checkpoint_items
    history = resumed.fit(EpochInput(train_fn, steps), eval_data, train_steps=10)
    assert all(np.isfinite(history[k][-1]) for k in ("d_loss", "g_loss", "eval_d_loss", "eval_g_loss"))
    shadows = [np.asarray(s) for _, s in resumed.state.ema_pairs]
    assert len(shadows) == len(initial) and not np.allclose(shadows[0], initial[0])  # EMA followed the generator
    if replicas == 2:  # the generator's BatchNorm statistics are the same on both replicas
        for v in resumed.model.non_trainable_variables:
            copies = strategy.experimental_local_results(v.value)
            np.testing.assert_array_equal(np.asarray(copies[0]), np.asarray(copies[1]))


@pytest.mark.slow
@pytest.mark.parametrize("task,flags", [
    ("regression", ["--optimizer=rmsprop", "--learning_rate=0.04", "--epochs=3"]),
    ("autoencoder", ["--optimizer=adam", "--learning_rate=0.002", "--epochs=1"]),
    ("weighted_classification", ["--model=small_cnn", "--class_weights=1,1,1,3,1,1,1,1,1,0", "--epochs=1"]),
    ("gan", ["--optimizer=adam", "--learning_rate=0.0004", "--ema_decay=0.9", "--weight_decay=0", "--epochs=1",
             "--gan_latent_dim=16"]),
])
def test_each_task_trains_from_launch_train(task, flags, tiny_cifar, tmp_path):
    result = run([sys.executable, "-m", "launch.train", f"--task={task}", f"--data_dir={tiny_cifar}",
                  f"--model_dir={tmp_path}", "--batch_size=32", "--lr_boundaries=", "--lr_multipliers=",
                  "--best_metric=eval_loss", "--noprogress", "--steps_per_loop=5", *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{task} task, " in result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("epoch ")][-1]
    for metric in tasks.get(task).metrics:
        assert f" {metric}=" in last and f" eval_{metric}=" in last
    assert (tmp_path / "best" / "best.json").exists()


def test_unknown_task_or_metric_is_one_line(tiny_cifar, tmp_path):
    result = run([sys.executable, "-m", "launch.train", "--task=bogus", f"--model_dir={tmp_path}"])
    assert result.returncode != 0 and "bogus" in result.stderr and "Traceback" not in result.stderr
    result = run([sys.executable, "-m", "launch.train", "--task=regression", f"--model_dir={tmp_path}",
                  "--best_metric=eval_accuracy"])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "eval_loss, eval_mae" in errors[0]
