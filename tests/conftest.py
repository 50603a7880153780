"""Test set-up: two logical CPU devices, so multi-replica tests run without GPUs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices, hence at import time.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_DIR = os.environ.get("CIFAR10_DIR", os.path.join(REPO, "..", "shared", "data", "cifar10"))
CIFAR10_BIN_DIR = os.environ.get("CIFAR10_BIN_DIR", os.path.join(REPO, "..", "shared", "data", "cifar10-bin"))


@pytest.fixture
def cifar10_dir():
    """The shared real CIFAR-10 (JPEG class folders with CSV indexes)."""
    if not os.path.isfile(os.path.join(CIFAR10_DIR, "train.csv")):
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10_DIR} (set CIFAR10_DIR)")
    return CIFAR10_DIR


@pytest.fixture
def cifar10_bin_dir():
    """The shared lossless CIFAR-10 (the official binary layout): the copy for accuracy figures."""
    if not os.path.isfile(os.path.join(CIFAR10_BIN_DIR, "cifar-10-batches-bin", "test_batch.bin")):
        pytest.skip(f"lossless CIFAR-10 not found at {CIFAR10_BIN_DIR} (set CIFAR10_BIN_DIR)")
    return CIFAR10_BIN_DIR


@pytest.fixture(scope="session")
def two_replicas():
    """MirroredStrategy over the two logical CPU devices, one for the whole session.

    Several MirroredStrategy objects in one process can reuse collective instance
    keys, and their all-reduces then fail with "Shape mismatch in the collective
    instance" (seen with TF 2.21 on logical CPU devices).
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def pytest_sessionfinish(session, exitstatus):
    """Freezes the heap before pytest's last garbage collections.

    The heap of traced graphs is garbage-collected 6 more times on the way out
    (pytest's unraisableexception plugin, then the interpreter): 11 s for 29
    engine tests; frozen, 2 s (BUILD_NOTES.md, "Pitfalls"). The process then
    exits normally.
    """
    import gc

    gc.freeze()
