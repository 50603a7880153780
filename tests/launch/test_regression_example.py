import keras
import numpy as np
import tensorflow as tf

from launch.regression_example import RegressionTrainer, synthetic_data


def test_regression_subclass_recovers_the_linear_function(two_replicas):
    x, y, w = synthetic_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32, drop_remainder=True)
    with two_replicas.scope():
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
        optimizer = keras.optimizers.SGD(0.05)
    trainer = RegressionTrainer(model=model, optimizer=optimizer, global_batch_size=32, strategy=two_replicas,
                                progress=False)
    history = trainer.fit(ds, ds, epochs=10)
    assert history["eval_loss"][-1] < 0.02  # the noise variance is 0.01
    np.testing.assert_allclose(model.layers[-1].kernel.numpy()[:, 0], w, atol=0.05)
    assert history["eval_mae"][-1] < 0.15
