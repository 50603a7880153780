"""A small GAN on CIFAR-10: two models, two optimizers, a custom train_step through apply_gradients.

    python -m launch.train --task=gan --data_dir=../shared/data/cifar10 --model_dir=/tmp/gan \
        --optimizer=adam --learning_rate=0.0002 --batch_size=64 --epochs=1 --lr_boundaries= \
        --lr_multipliers= --ema_decay=0.99 --best_metric= --weight_decay=0

DCGAN-style (Radford et al., "Unsupervised Representation Learning with Deep
Convolutional GANs", 2016): a generator of transposed convolutions with
BatchNorm from a 64-d Gaussian latent to 32x32x3 images in [-1, 1] (tanh), a
convolutional discriminator with LeakyReLU, the non-saturating loss of
Goodfellow et al. 2014. The generator is the Trainer's model (its weights'
moving average, --ema_decay, is what evaluation and export use); the
discriminator is checkpointed through `checkpoint_items`. Each step updates
the discriminator, then the generator, each with `apply_gradients`, so both
get the non-finite guard and the step's loss reduction over the global batch.
The latent noise is drawn statelessly from (step, replica), so a resumed run
draws what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from datasets import cifar10
from engine import Trainer
from launch.tasks.autoencoder import image_data
from launch.config import Section, setting
from launch.tasks.base import Task, TaskData


def generator(latent_dim: int = 64, width: int = 64) -> keras.Model:
    """Latent float32 [batch, latent_dim] -> images float32 [batch, 32, 32, 3] in [-1, 1]."""
    z = keras.Input((latent_dim,))
    x = keras.layers.Dense(4 * 4 * 2 * width, use_bias=False)(z)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Reshape((4, 4, 2 * width))(x)  # [b, 4, 4, 2w]
    for filters in (width, width // 2):  # [b, 8, 8, w] then [b, 16, 16, w/2]
        x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    images = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh")(x)  # [b, 32, 32, 3]
    return keras.Model(z, images, name="generator")


def discriminator(input_shape=(32, 32, 3), width: int = 32) -> keras.Model:
    """Images [batch, 32, 32, 3] -> real-vs-generated logits [batch, 1]."""
    images = keras.Input(input_shape)
    x = images
    for filters in (width, 2 * width):  # [b, 16, 16, w] then [b, 8, 8, 2w]
        x = keras.layers.LeakyReLU(0.2)(keras.layers.Conv2D(filters, 4, strides=2, padding="same")(x))
    logits = keras.layers.Dense(1)(keras.layers.Flatten()(x))
    return keras.Model(images, logits, name="discriminator")


def _bce(labels, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)  # [batch, 1]


class GANTrainer(Trainer):
    """Trains `model` (the generator) against `discriminator`; optimizers named "generator" and "discriminator".

    Reports "loss" (the generator's), "d_loss" and "g_loss", in training and
    evaluation (on real eval images and as many generated ones).

    Args:
      model: the generator, latent [batch, latent_dim] -> images.
      discriminator: images -> logits [batch, 1], built under the strategy's scope.
      optimizer: the generator's optimizer; discriminator_optimizer: the other.
      latent_dim: the latent size.
      **kwargs: the Trainer's other arguments.
    """

    def __init__(self, *, model, discriminator, optimizer, discriminator_optimizer, latent_dim: int, **kwargs):
        self.discriminator, self.latent_dim = discriminator, latent_dim
        strategy = kwargs.get("strategy") or tf.distribute.get_strategy()
        with strategy.scope():  # Each optimizer builds the slots of the variables it updates.
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            if not discriminator_optimizer.built:
                discriminator_optimizer.build(discriminator.trainable_variables)
        kwargs.setdefault("metrics", lambda: {"d_loss": keras.metrics.Mean(name="d_loss"),
                                              "g_loss": keras.metrics.Mean(name="g_loss")})
        super().__init__(model=model, optimizer={"generator": optimizer, "discriminator": discriminator_optimizer},
                         **kwargs)

    def checkpoint_items(self):
        return {"discriminator": self.discriminator}

    def _latent(self, batch, stream: int):
        """Stateless Gaussian latents keyed by (step, stream, replica): a resumed run draws the same ones."""
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        seed = tf.stack([tf.convert_to_tensor(self.state.step, tf.int64) * 4 + stream, replica])
        return tf.random.stateless_normal([batch, self.latent_dim], seed=seed)

    def _losses(self, real, training: bool):
        """Per-example discriminator and generator losses, [batch, 1] each."""
        batch = tf.shape(real)[0]
        fake = self.model(self._latent(batch, 0), training=training)
        real_logits = self.discriminator(real, training=training)
        fake_logits = self.discriminator(fake, training=training)
        d_losses = _bce(tf.ones_like(real_logits), real_logits) + _bce(tf.zeros_like(fake_logits), fake_logits)
        return d_losses, _bce(tf.ones_like(fake_logits), fake_logits)

    def train_step(self, data):
        real, _, _ = self.unpack(data)
        with tf.GradientTape() as tape:
            d_losses, _ = self._losses(real, training=True)
            d_loss = self.reduce_loss(d_losses, regularization=self.discriminator.losses)
        d_vars = self.discriminator.trainable_variables
        d_ok = self.apply_gradients(tape.gradient(d_loss, d_vars), d_vars, "discriminator", loss=d_loss)
        with tf.GradientTape() as tape:
            fake_logits = self.discriminator(self.model(self._latent(tf.shape(real)[0], 1), training=True),
                                             training=True)
            g_losses = _bce(tf.ones_like(fake_logits), fake_logits)  # non-saturating: -log D(G(z))
            g_loss = self.reduce_loss(g_losses, regularization=self.model.losses)
        g_vars = self.model.trainable_variables
        g_ok = self.apply_gradients(tape.gradient(g_loss, g_vars), g_vars, "generator", loss=g_loss)
        self._record(d_losses, g_losses, tf.logical_and(d_ok, g_ok))

    def test_step(self, data):
        real, _, _ = self.unpack(data)
        d_losses, g_losses = self._losses(real, training=False)
        self._record(d_losses, g_losses, tf.constant(True))

    def _record(self, d_losses, g_losses, finite):
        self.record_loss(g_losses, finite=finite)
        weight = tf.cast(finite, tf.float32)
        for name, losses in (("d_loss", d_losses), ("g_loss", g_losses)):
            per_example = self._per_example(losses)
            self.metrics[name].update_state(tf.where(finite, per_example, 0.0),
                                            sample_weight=weight * tf.ones_like(per_example))


@dataclasses.dataclass(frozen=True)
class GANOptions(Section):
    """The gan task's own settings (flags)."""

    gan_latent_dim: int = setting(64, "--task=gan: size of the generator's latent.", positive=True)
    gan_discriminator_lr: float = setting(2e-4, "--task=gan: the discriminator's Adam learning rate.", positive=True)


class GAN(Task):
    name = "gan"
    options_class = GANOptions
    metrics = ("d_loss", "g_loss")

    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        data = cifar10.load(config.data.data_dir, skip_bad=config.data.skip_bad_examples, progress=progress)
        train_fn, eval_data, steps = image_data(data.train.images, data.test.images, global_batch=global_batch,
                                                seed=config.run.seed)
        return TaskData(train_fn=train_fn, steps_per_epoch=steps, eval_data=eval_data,
                        input_shape=(config.option("gan_latent_dim"),), num_train=len(data.train.images),
                        num_eval=len(data.test.images), source=data.source, skipped=list(data.skipped),
                        info={"latent_dim": config.option("gan_latent_dim"), "scale": "[-1, 1]"})

    def model(self, config, data: TaskData) -> keras.Model:
        return generator(config.option("gan_latent_dim"))

    def trainer(self, config, *, model, optimizer, data, **kwargs) -> Trainer:
        strategy = kwargs.get("strategy") or tf.distribute.get_strategy()
        with strategy.scope():
            critic = discriminator()
            critic_optimizer = keras.optimizers.Adam(config.option("gan_discriminator_lr"), beta_1=0.5)
        return GANTrainer(model=model, discriminator=critic, optimizer=optimizer,
                          discriminator_optimizer=critic_optimizer, latent_dim=config.option("gan_latent_dim"),
                          **kwargs)


TASK = GAN()
