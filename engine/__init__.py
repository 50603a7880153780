"""The training engine: Trainer, distribution, inputs, schedules and checkpoints.

It knows nothing of CIFAR or ResNet: tasks come in as a Keras model, a loss and
input pipelines.
"""

from engine.checkpoint import CheckpointWriteError
from engine.distribution import configure_cpu_devices, create_strategy
from engine.inputs import DatasetInput, EpochInput
from engine.options import CheckpointOptions, GuardOptions, KernelOptions, LookaheadOptions
from engine.schedules import piecewise_constant_by_epoch
from engine.trainer import NonFiniteError, Trainer, sparse_accuracy

__all__ = ["Trainer", "CheckpointOptions", "GuardOptions", "KernelOptions", "LookaheadOptions", "NonFiniteError",
           "CheckpointWriteError",
           "sparse_accuracy", "EpochInput", "DatasetInput", "create_strategy", "configure_cpu_devices",
           "piecewise_constant_by_epoch"]
