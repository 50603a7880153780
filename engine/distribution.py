"""Choosing a tf.distribute strategy by name, and logical CPU devices for testing."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored")


def configure_cpu_devices(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices.

    MirroredStrategy over several logical CPU devices runs multi-replica code on a
    machine without accelerators (for tests and trials; it is not faster).

    Args:
      num_devices: number of logical CPU devices, >= 1. 1 leaves TF's default.

    Raises:
      ValueError: if num_devices < 1.
      RuntimeError: if TensorFlow has already initialised its devices with a
        different split (this must run before the first op).
    """
    if num_devices < 1:
        raise ValueError(f"--num_cpu_devices={num_devices} must be at least 1")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if num_devices == 1 and not current:
        return
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow has already "
            f"initialised its devices ({e}); call configure_cpu_devices first") from e


def create_strategy(name: str) -> tf.distribute.Strategy:
    """Creates a distribution strategy by name.

    Args:
      name: "default" (no distribution), "one_device" (the first GPU, else the
        CPU), or "mirrored" (all GPUs, else all logical CPU devices; see
        configure_cpu_devices).

    Returns:
      The strategy. Its num_replicas_in_sync gives the number of replicas.

    Raises:
      ValueError: if the name is unknown.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    raise ValueError(f"--strategy={name!r} is not known here; choose one of {', '.join(STRATEGIES)}")
