"""The validated configuration of a training run, built once from flags."""

from __future__ import annotations

import dataclasses
import os

from datasets import sources
from engine.distribution import STRATEGIES
from models import MODEL_NAMES

# The tutorial's learning rate is 0.1 at a global batch of 128, scaled linearly.
REFERENCE_BATCH = 128


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a CIFAR-10 training run needs, checked before anything runs.

    Attributes mirror the launch.train flags of the same names (see launch/flags.py);
    units: batches in examples, epochs and boundaries in epochs, learning rate per
    step at a global batch of 128.

    Raises:
      ValueError: on the first bad value, naming the flag and the value.
    """

    data_dir: str | None
    model_dir: str
    model: str = "resnet56"
    backbone: str | None = None
    backbone_weights: str | None = "imagenet"
    backbone_cut: str | None = None
    resize_to: tuple[int, ...] = ()
    dropout: float = 0.5
    finetune_after_epochs: float | None = None
    finetune_layers: int = 20
    finetune_lr_factor: float = 0.1
    batch_size: int = 128
    global_batch_size: int | None = None
    epochs: float = 60
    train_steps: int | None = None
    steps_per_loop: int = 50
    checkpoint_every_steps: int | None = 200
    keep_checkpoints: int = 3
    strategy: str = "default"
    num_cpu_devices: int = 1
    worker_hosts: tuple[str, ...] = ()
    ps_hosts: tuple[str, ...] = ()
    chief_host: str | None = None
    task_type: str | None = None
    task_index: int | None = None
    collective_timeout_s: float | None = 600
    memory_growth: bool = False
    visible_gpus: str | None = None
    learning_rate: float = 0.1
    lr_boundaries: tuple[float, ...] = (30.0, 45.0)
    lr_multipliers: tuple[float, ...] = (0.1, 0.01)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    deterministic: bool = False
    nonfinite_limit: int = 10
    nonfinite_action: str = "rollback"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    best_metric: str = "eval_accuracy"
    progress: bool = True
    train_data: str | None = None
    eval_data: str | None = None
    augment: str = "cifar"
    image_size: tuple[int, ...] = ()
    cache: str = "decoded"
    normalize: str = "channel"
    skip_bad_examples: bool = False
    optimizer: str = "sgd"
    nesterov: bool = False
    decoupled_weight_decay: float | None = None
    clip_norm: float | None = None
    accumulation_steps: int = 1
    precision: str = "float32"
    ema_decay: float = 0.0
    label_smoothing: float = 0.0
    fused_batch_norm: bool = True
    sync_batch_norm: bool = False
    jit_compile: bool = False
    lr_schedule: str = "piecewise"
    warmup_epochs: float = 0.0
    plateau_patience: int = 0
    plateau_factor: float = 0.1
    plateau_metric: str = "eval_loss"
    early_stopping_patience: int = 0
    early_stopping_metric: str = "eval_loss"
    early_stopping_min_delta: float = 0.0
    restore_best: bool = True
    histogram_every_epochs: int = 0
    profile_steps: tuple[int, ...] = ()
    max_time: float | None = None
    task: str = "classification"
    # The task's own settings (from its flags, launch/tasks/<task>.py), as (name, value) pairs.
    task_options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        def positive(name, value, allow_none=False):
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                shown = f"{value:g}" if isinstance(value, float) else value
                raise ValueError(f"--{name}={shown} must be positive")

        if self.data_dir is not None and not os.path.exists(os.path.expanduser(self.data_dir)):
            raise ValueError(f"--data_dir={self.data_dir} does not exist")
        if not self.model_dir:
            raise ValueError("--model_dir must be set")
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise ValueError(f"--model_dir={self.model_dir} is a file, not a folder")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"--model={self.model!r} is not a known model; choose one of {', '.join(MODEL_NAMES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy={self.strategy!r} is not known; choose one of {', '.join(STRATEGIES)}")
        if self.resize_to and len(self.resize_to) != 2:
            raise ValueError(f"--resize_to={','.join(map(str, self.resize_to))} must be height,width")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout={self.dropout:g} must be in [0, 1)")
        if self.finetune_after_epochs is not None:
            if not self.backbone:
                raise ValueError("--finetune_after_epochs needs --backbone")
            positive("finetune_after_epochs", self.finetune_after_epochs)
            positive("finetune_layers", self.finetune_layers)
            if self.train_steps is None and self.finetune_after_epochs >= self.epochs:
                raise ValueError(f"--finetune_after_epochs={self.finetune_after_epochs:g} leaves no epochs of "
                                 f"--epochs={self.epochs:g} to fine-tune")
        positive("finetune_lr_factor", self.finetune_lr_factor)
        positive("batch_size", self.batch_size)
        positive("global_batch_size", self.global_batch_size, allow_none=True)
        positive("train_steps", self.train_steps, allow_none=True)
        if self.train_steps is None:
            positive("epochs", self.epochs)
        positive("steps_per_loop", self.steps_per_loop)
        positive("checkpoint_every_steps", self.checkpoint_every_steps, allow_none=True)
        positive("keep_checkpoints", self.keep_checkpoints)
        positive("num_cpu_devices", self.num_cpu_devices)
        positive("collective_timeout_s", self.collective_timeout_s, allow_none=True)
        positive("learning_rate", self.learning_rate)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay={self.weight_decay} must not be negative")
        if self.nonfinite_limit < 0:
            raise ValueError(f"--nonfinite_limit={self.nonfinite_limit} must be 0 (off) or positive")
        if self.nonfinite_action not in ("rollback", "stop"):
            raise ValueError(f"--nonfinite_action={self.nonfinite_action!r} must be rollback or stop")
        if self.max_rollbacks < -1:
            raise ValueError(f"--max_rollbacks={self.max_rollbacks} must be -1 (no limit) or at least 0")
        if not 0 < self.rollback_lr_factor <= 1:
            raise ValueError(f"--rollback_lr_factor={self.rollback_lr_factor:g} must be in (0, 1]")
        if self.best_metric and not self.best_metric.startswith("eval_"):
            raise ValueError(f"--best_metric={self.best_metric!r} must name an eval metric (eval_loss, "
                             "eval_accuracy, ...) or be empty")
        for name in ("train_data", "eval_data"):
            path = getattr(self, name)
            if path and not os.path.exists(path) and not any(ch in path for ch in "*?["):
                raise ValueError(f"--{name}={path} does not exist")
        if self.eval_data and not self.train_data:
            raise ValueError("--eval_data needs --train_data")
        streamed = [f"--{name}={path}" for name in ("train_data", "eval_data")
                    if (path := getattr(self, name)) and sources.source_kind(path) == "tfrecord"]
        if streamed and self.cache == "none" and self.strategy == "parameter_server":
            # The records are read by a Python function, which the remote workers cannot run.
            raise ValueError(f"{streamed[0]}: TFRecords are streamed with --cache=none by a Python reader that "
                             "parameter-server workers cannot run; use --cache=encoded or --cache=decoded")
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"--image_size={','.join(map(str, self.image_size))} must be height,width")
        positive("accumulation_steps", self.accumulation_steps)
        positive("clip_norm", self.clip_norm, allow_none=True)
        positive("max_time", self.max_time, allow_none=True)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay={self.ema_decay:g} must be in [0, 1) (0: off)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label_smoothing={self.label_smoothing:g} must be in [0, 1)")
        if self.decoupled_weight_decay is not None and self.decoupled_weight_decay < 0:
            raise ValueError(f"--decoupled_weight_decay={self.decoupled_weight_decay:g} must not be negative")
        if self.warmup_epochs < 0:
            raise ValueError(f"--warmup_epochs={self.warmup_epochs:g} must not be negative")
        if self.warmup_epochs and self.lr_schedule == "onecycle":
            raise ValueError("--warmup_epochs does not apply to --lr_schedule=onecycle (it warms up itself)")
        for name in ("plateau_patience", "early_stopping_patience", "histogram_every_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}={getattr(self, name)} must be 0 (off) or positive")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"--plateau_factor={self.plateau_factor:g} must be in (0, 1)")
        if self.profile_steps and (len(self.profile_steps) != 2 or not 0 <= self.profile_steps[0]
                                   < self.profile_steps[1]):
            raise ValueError(f"--profile_steps={','.join(map(str, self.profile_steps))} must be start,stop "
                             "with 0 <= start < stop")
        if len(self.lr_boundaries) != len(self.lr_multipliers):
            raise ValueError(f"--lr_boundaries has {len(self.lr_boundaries)} values but --lr_multipliers has "
                             f"{len(self.lr_multipliers)}: give one multiplier per boundary")

    def option(self, name: str):
        """The task's setting `name` (its flag's value).

        Raises:
          KeyError: naming the setting and the task if the task defines no such flag.
        """
        options = dict(self.task_options)
        if name not in options:
            raise KeyError(f"the {self.task} task has no setting {name!r} (it has {', '.join(options) or 'none'})")
        return options[name]

    def global_batch(self, num_replicas: int) -> int:
        """The global batch for `num_replicas` replicas.

        Raises:
          ValueError: if --global_batch_size is set and not divisible by the replicas.
        """
        if self.global_batch_size is None:
            return self.batch_size * num_replicas
        if self.global_batch_size % num_replicas:
            raise ValueError(f"--global_batch_size={self.global_batch_size} is not divisible by "
                             f"{num_replicas} replicas")
        return self.global_batch_size

    def scaled_learning_rate(self, global_batch: int) -> float:
        """--learning_rate x global batch / 128 (the linear scaling rule of the tutorial)."""
        return self.learning_rate * global_batch / REFERENCE_BATCH


def parse_floats(flag: str, values) -> tuple[float, ...]:
    """Parses a list flag of floats.

    Raises:
      ValueError: naming the flag and the value that is not a number.
    """
    out = []
    for v in values or ():
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"--{flag}: {v!r} is not a number") from None
    return tuple(out)
