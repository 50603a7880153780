"""One process of the multi-worker equivalence test (run by test_multi_worker.py).

Trains the small CNN of test_trainer.py for 7 steps, one `fit` call per step, on
one replica (no TF_CONFIG) or as one worker of multi_worker_mirrored training
(TF_CONFIG set), then evaluates on 83 examples; the chief writes what it saw.
Usage: python -m tests.engine.multi_worker_script OUT.npz
With a model_dir (python -m tests.engine.multi_worker_script OUT MODEL_DIR), it trains
test_replica_state's BatchNorm model instead and writes OUT.<worker>.npz: each
worker's non-trainable state and, from the chief, the evaluation in process and of
the restored checkpoint.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from engine import distribution  # noqa: E402


def main(out: str) -> None:
    cluster = distribution.cluster_from_env_or_flags()
    strategy = distribution.create_strategy("multi_worker_mirrored" if cluster else "default", cluster,
                                            collective_timeout_s=120)
    from tests.engine.test_trainer import _data, _inputs, _trainer, GB  # noqa: F401  (after the strategy)

    keras.utils.set_random_seed(0)
    images, labels = _data()
    train, _ = _inputs(images, labels)
    trainer = _trainer(strategy)
    losses = [trainer.fit(train, train_steps=k)["loss"][0] for k in range(1, 8)]
    from datasets import in_memory

    results = trainer.evaluate(in_memory.eval_dataset(images[:83], labels[:83], global_batch_size=GB))
    count = float(tf.convert_to_tensor(trainer.eval_metrics["loss"].count.value.read_value()))
    if distribution.is_chief(strategy):
        np.savez(out, losses=losses, count=count, eval_loss=results["loss"], eval_accuracy=results["accuracy"],
                 **{f"w{i}": w.numpy() for i, w in enumerate(trainer.model.weights)})


def main_batch_norm(out: str, model_dir: str) -> None:
    """Trains test_replica_state's BatchNorm model; saves each worker's state and both evaluations."""
    cluster = distribution.cluster_from_env_or_flags()
    strategy = distribution.create_strategy("multi_worker_mirrored" if cluster else "default", cluster,
                                            collective_timeout_s=120)
    from tests.engine.test_replica_state import _dataset, _trainer  # noqa: F401  (after the strategy)

    trainer = _trainer(strategy, model_dir=model_dir)
    trainer.fit(_dataset(), epochs=2)
    in_process = trainer.evaluate(_dataset())
    state = {f"s{i}": v.numpy() for i, v in enumerate(trainer.model.non_trainable_variables)}
    worker = distribution.worker_index(strategy)
    results = dict(eval_loss=in_process["loss"], **state)
    if distribution.is_chief(strategy):
        restored = _trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), model_dir=model_dir)
        results["checkpoint"] = restored.restore()
        results["restored_eval_loss"] = restored.evaluate(_dataset())["loss"]
    np.savez(f"{out}.{worker}.npz", **results)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        main_batch_norm(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1])
