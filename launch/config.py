"""The configuration of a training run: every setting defined once, here.

A run's configuration is a `TrainConfig` of sections (data, model, optimizer,
schedule, run, compute, distribution, command), each a frozen dataclass whose
fields are declared with `setting(default, help, ...)`. Everything else is
derived from those declarations:

- launch.flags defines one absl flag per field (same name unless `flag=` says
  otherwise), with the field's help text, grouped by section in `--helpshort`;
- `TrainConfig.from_flag_values` builds and validates the config from flag
  values (once, here: bad values raise one UserError naming the flag);
- `TrainConfig.engine_options` builds the engine's option groups and the
  Trainer's keywords from the settings that declare `engine="group.field"`
  (launch/settings.py), so an engine option is declared once, here;
- `saved_flags` / `flag_lines` write the resolved configuration into the
  model_dir (a flagfile that reruns the job, and JSON), and `compare_saved`
  reports and guards what changed on a rerun.

A task's own settings (launch/tasks/<name>.py) are a dataclass of the same kind,
`Task.options_class`, whose fields become flags in that task's group.

Adding a setting is one field in one section (and its use).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from datasets import sources
from datasets.augment import NORMALIZATIONS
from datasets.images import CACHE_MODES as CACHES
from engine.distribution import STRATEGIES
from engine.hooks import check_profile_steps
from engine.optimizers import OPTIMIZERS, PRECISIONS
from engine.schedules import SCHEDULES
from engine.tta import TTA_MODES
from models import MODEL_NAMES
from engine.errors import UserError
from launch.settings import (LOCKED, LOCKED_IF_DETERMINISTIC, NON_NEGATIVE, OFF_OR_POSITIVE, Section,  # noqa: F401
                             _in, _parse, check_writable_folder, engine_options, fields_of, flag_argument,
                             flag_name, parse_floats, setting, show_value)

# The tutorial's learning rate is 0.1 at a global batch of 128, scaled linearly.
REFERENCE_BATCH = 128

# Settings that are engine options say so with engine="group.field" (launch/settings.py):
# TrainConfig.engine_options() builds the Trainer's option groups from them.


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    title: typing.ClassVar[str] = "data"
    data_dir: str | None = setting(
        None, "CIFAR-10 folder: train.csv/test.csv, train/ and test/ class folders, cifar-10-python.tar.gz, "
        "cifar-10-batches-py/ or cifar-10-batches-bin/. Unset: Keras's download cache.",
        guard=LOCKED_IF_DETERMINISTIC)
    train_data: str | None = setting(
        None, "Training images: a folder of class folders, a CSV index ('<path>,<class id>' rows, paths relative "
        "to the CSV) or a TFRecord glob (datasets.to_tfrecord). Replaces --data_dir.", guard=LOCKED_IF_DETERMINISTIC)
    eval_data: str | None = setting(None, "Evaluation images, in any of --train_data's forms.")
    augment: str = setting(
        "cifar", "Augmentation recipes, comma-separated, applied in order: cifar (pad-crop-flip), translate2 "
        "(airbench's: reflect-pad 2, crop, flip), flip, jitter "
        "(brightness/contrast), affine (rotation/shift/shear/zoom/flip, as ImageDataGenerator), imagenet (random "
        "resize+224 crop; first), none.", guard=LOCKED_IF_DETERMINISTIC)
    image_size: tuple[int, ...] = setting((), "height,width to resize --train_data images to (imagenet: the crop).")
    cache: str = setting("decoded", "--train_data: decode every image once into memory (decoded), keep the file "
                         "bytes in memory (encoded), or read files every epoch.", choices=CACHES)
    normalize: str = setting("channel", "--train_data: per-channel mean/std of the training images, per-image "
                             "standardisation, ImageNet mean subtraction, or /255.", choices=NORMALIZATIONS)
    skip_bad_examples: bool = setting(False, "Leave out images that are missing, empty or undecodable (counted and "
                                      "reported) instead of stopping with their name.")
    classes: tuple[int, ...] = setting((), "Keep only these class ids, in training and evaluation data alike, "
                                       "renumbered 0..k-1 in the order given (e.g. 5,6,7,8,9).", guard=LOCKED)
    labels_per_class: int | None = setting(None, "Keep this many training examples of each class, drawn by --seed "
                                           "(evaluation data stays whole).", positive=True,
                                           guard=LOCKED_IF_DETERMINISTIC)

    def check(self):
        if self.data_dir is not None and not os.path.exists(os.path.expanduser(self.data_dir)):
            raise UserError(f"--data_dir={self.data_dir} does not exist")
        for name in ("train_data", "eval_data"):
            path = getattr(self, name)
            if path and not os.path.exists(path) and not any(ch in path for ch in "*?["):
                raise UserError(f"--{name}={path} does not exist")
        if self.eval_data and not self.train_data:
            raise UserError("--eval_data needs --train_data")
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise UserError(f"--image_size={show_value(self.image_size)} must be height,width")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    title: typing.ClassVar[str] = "model"
    name: str = setting("resnet56", "Network.", flag="model", choices=MODEL_NAMES, guard=LOCKED)
    backbone: str | None = setting(
        None, "Transfer learning: a keras.applications name (ResNet50, MobileNetV2, ...) or a saved "
        ".keras/.h5/SavedModel path; frozen, with a new head. Replaces --model.", guard=LOCKED)
    backbone_weights: str = setting("imagenet", "keras.applications weights: imagenet, none, or a file.")
    backbone_cut: str | None = setting(None, "Saved backbone: layer name (e.g. mixed7) or index (e.g. -3) to cut at.",
                                       guard=LOCKED)
    resize_to: tuple[int, ...] = setting((), "Resize inputs to height,width before the backbone.", guard=LOCKED)
    dropout: float = setting(0.5, "Dropout before the transfer head.", rule=_in(0, 1))
    whitening_eps: float = setting(5e-4, "airbench: added to the eigenvalues of the patch covariance when the "
                                   "whitening filters are set (airbench's 5e-4); larger damps the "
                                   "high-frequency patch components.", positive=True, guard=LOCKED)
    finetune_after_epochs: float | None = setting(
        None, "Transfer learning: after this many epochs, unfreeze --finetune_layers top layers of the backbone "
        "and go on at a lower learning rate; 0 or unset: the head alone trains.", rule=OFF_OR_POSITIVE)
    finetune_layers: int = setting(20, "Top backbone layers to unfreeze for fine-tuning (BatchNorm stays frozen).",
                                   positive=True)
    finetune_lr_factor: float = setting(
        0.1, "Learning-rate factor for the fine-tuning phase: it runs --optimizer (with its flags) at this "
        "factor x the rate reached at the hand-over, constant.", positive=True)

    def check(self):
        if self.resize_to and len(self.resize_to) != 2:
            raise UserError(f"--resize_to={show_value(self.resize_to)} must be height,width")
        if not self.backbone and (self.backbone_cut or self.finetunes):
            flag = f"--backbone_cut={self.backbone_cut}" if self.backbone_cut else "--finetune_after_epochs"
            raise UserError(f"{flag} needs --backbone")

    finetunes = property(lambda self: bool(self.finetune_after_epochs), doc="A fine-tuning phase follows the head's.")

    @property
    def backbone_weights_or_none(self) -> str | None:
        """--backbone_weights, None for 'none' (random initial weights)."""
        return None if self.backbone_weights.lower() == "none" else self.backbone_weights


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
    title: typing.ClassVar[str] = "optimizer"
    name: str = setting("sgd", "Optimizer.", flag="optimizer", choices=OPTIMIZERS, guard=LOCKED)
    learning_rate: float = setting(0.1, "Learning rate at a global batch of 128; scaled linearly with the "
                                   "global batch.", positive=True)
    momentum: float = setting(0.9, "SGD momentum.", rule=_in(0, 1))
    nesterov: bool = setting(False, "SGD with Nesterov momentum.")
    weight_decay: float = setting(1e-4, "Weight decay of conv and dense kernels (the paper's 1e-4).",
                                  rule=("not negative", lambda v: v >= 0))
    decoupled_weight_decay: float | None = setting(
        None, "Decoupled weight decay per step, times the learning rate (AdamW-style). Unset: 0.004 for adamw, "
        "none otherwise. Separate from --weight_decay, the L2 loss on kernels.",
        rule=("not negative", lambda v: v >= 0))
    clip_norm: float | None = setting(None, "Clip gradients to this global L2 norm.", positive=True)
    accumulation_steps: int = setting(1, "Accumulate gradients over this many global batches per update.",
                                      positive=True, guard=LOCKED, engine="trainer.accumulation_steps")
    label_smoothing: float = setting(0.0, "Label smoothing of the training loss.", rule=_in(0, 1))
    ema_decay: float = setting(0.0, "Moving average of the weights for evaluation and export (e.g. 0.999); "
                               "0 for none.", rule=("in [0, 1) (0: off)", lambda v: 0 <= v < 1), guard=LOCKED,
                               engine="trainer.ema_decay", off=0.0)
    lookahead_steps: int = setting(0, "Lookahead (Zhang et al. 2019): every this many updates the slow weights "
                                   "move --lookahead_alpha of the way to the model's, which restart from them; "
                                   "0 for none.", rule=OFF_OR_POSITIVE, guard=LOCKED)
    lookahead_alpha: float = setting(0.5, "Lookahead's slow-weight step size, in (0, 1].",
                                     rule=_in(0, 1, lo_open=True, hi_open=False))
    lookahead_ramp: bool = setting(False, "airbench's Lookahead: the slow weights' pull (1 - alpha) ramps up as "
                                   "(update / last update)^3, and the last update syncs.")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Section):
    title: typing.ClassVar[str] = "learning-rate schedule"
    lr_schedule: str = setting("piecewise", "Learning-rate schedule (piecewise uses --lr_boundaries/"
                               "--lr_multipliers; onecycle and triangle peak at --learning_rate, triangle ends at 0).",
                               choices=SCHEDULES)
    lr_boundaries: tuple[float, ...] = setting((30.0, 45.0), "Epochs (floats allowed) at which the learning rate "
                                               "becomes base x the matching --lr_multipliers value.")
    lr_multipliers: tuple[float, ...] = setting((0.1, 0.01), "Factors of the base learning rate, one per boundary.")
    warmup_epochs: float = setting(0.0, "Linear learning-rate warm-up over this many epochs.",
                                   rule=("not negative", lambda v: v >= 0))
    plateau_patience: int = setting(0, "Multiply the learning rate by --plateau_factor after this many epochs "
                                    "without a better --plateau_metric; 0 turns it off.", rule=OFF_OR_POSITIVE)
    plateau_factor: float = setting(0.1, "Learning-rate factor on a plateau.", rule=_in(0, 1, lo_open=True))
    plateau_metric: str = setting("eval_loss", "Epoch-end metric watched for plateaus.")

    def check(self):
        if self.warmup_epochs and self.lr_schedule in ("onecycle", "triangle"):
            raise UserError(f"--warmup_epochs does not apply to --lr_schedule={self.lr_schedule} (it warms up "
                             "itself)")
        if len(self.lr_boundaries) != len(self.lr_multipliers):
            raise UserError(f"--lr_boundaries has {len(self.lr_boundaries)} values but --lr_multipliers has "
                             f"{len(self.lr_multipliers)}: give one multiplier per boundary")


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    title: typing.ClassVar[str] = "run"
    model_dir: str = setting("/tmp/cifar10_model", "Checkpoints, TensorBoard summaries and the saved config "
                             "(config.flags); a rerun with the same folder resumes.", compare=False)
    batch_size: int = setting(128, "Per-replica batch; the global batch is this times the replicas.",
                              positive=True, guard=LOCKED)
    global_batch_size: int | None = setting(None, "Global batch over all replicas, instead of --batch_size; "
                                            "must be divisible by the replicas.", positive=True, guard=LOCKED)
    epochs: float = setting(60.0, "Epochs to train in total (fractions allowed).")
    train_steps: int | None = setting(None, "Optimizer steps to train in total; overrides --epochs.", positive=True)
    steps_per_loop: int = setting(50, "Steps per call of the compiled training loop.", positive=True,
                                  engine="trainer.steps_per_loop")
    checkpoint_every_steps: int | None = setting(200, "Checkpoint every this many steps, and at each epoch end.",
                                                 positive=True, engine="checkpoint.every_steps")
    keep_checkpoints: int = setting(3, "How many recent checkpoints to keep.", positive=True, engine="checkpoint.keep")
    eval_every_epochs: int = setting(1, "Evaluate on the test split at the end of every N-th epoch and at the last "
                                     "step; early stopping and plateau patience then count evaluations.",
                                     positive=True)
    best_metric: str = setting("eval_accuracy", "Keep the checkpoint with the best value of this eval metric in "
                               "<model_dir>/best (empty: keep none).", engine="checkpoint.best_metric", off="")
    seed: int = setting(0, "Seed of the initial weights, the shuffle and the augmentation.",
                        guard=LOCKED_IF_DETERMINISTIC)
    deterministic: bool = setting(False, "Op determinism and fixed seeds: a run killed at any step and rerun ends "
                                  "with bitwise the same weights as an uninterrupted one (slower).",
                                  guard=LOCKED_IF_DETERMINISTIC)
    nonfinite_limit: int = setting(10, "Skip steps with NaN/Inf loss or gradients; after this many in a row, "
                                   "apply --nonfinite_action. 0 turns the guard off.", rule=OFF_OR_POSITIVE,
                                   engine="guard.nonfinite_limit", off=0)
    nonfinite_action: str = setting("rollback", "rollback: restore the newest checkpoint and multiply the learning "
                                    "rate by --rollback_lr_factor; stop: exit with an error.",
                                    choices=("rollback", "stop"), engine="guard.action")
    rollback_lr_factor: float = setting(0.5, "Learning-rate factor applied at each rollback; it compounds (the "
                                        "second rollback trains at factor^2 of the schedule).",
                                        rule=_in(0, 1, lo_open=True, hi_open=False), engine="guard.rollback_lr_factor")
    max_rollbacks: int = setting(3, "Rollbacks allowed over the run; at the next divergence the run stops with "
                                 "exit status 1. -1: no limit.", rule=("-1 (no limit) or at least 0",
                                                                       lambda v: v >= -1),
                                 engine="guard.max_rollbacks", off=-1)
    early_stopping_patience: int = setting(0, "Stop after this many epochs without a better "
                                           "--early_stopping_metric; 0 turns it off.", rule=OFF_OR_POSITIVE)
    early_stopping_metric: str = setting("eval_loss", "Epoch-end metric watched by early stopping.")
    early_stopping_min_delta: float = setting(0.0, "Smallest change that counts as better.")
    restore_best: bool = setting(True, "On early stopping, restore the best epoch's weights.")
    histogram_every_epochs: int = setting(0, "TensorBoard weight histograms every this many epochs; 0: off.",
                                          rule=OFF_OR_POSITIVE)
    profile_steps: tuple[int, ...] = setting((), "start,stop: record the TensorFlow profiler over these global "
                                             "steps.")
    max_time: float | None = setting(None, "Wall-clock budget in seconds: checkpoint and stop at the first loop "
                                     "end past it (rerun to go on).", positive=True)
    progress: bool = setting(True, "Show a progress bar per epoch.", save=False, engine="trainer.progress")
    tta: str = setting("none", "Test-time augmentation in evaluation: flip averages the logits of each image and "
                       "its mirror; flip_translate adds 1-pixel translations (airbench's level 2).", choices=TTA_MODES,
                       engine="trainer.test_time_augmentation")

    def check(self):
        if not self.model_dir:
            raise UserError("--model_dir must be set")
        check_writable_folder(self.model_dir)
        if self.train_steps is None and not self.epochs > 0:
            raise UserError(f"--epochs={show_value(self.epochs)} must be positive")
        if self.best_metric and not self.best_metric.startswith("eval_"):
            raise UserError(f"--best_metric={self.best_metric!r} must name an eval metric (eval_loss, "
                             "eval_accuracy, ...) or be empty")
        if self.profile_steps:
            check_profile_steps(self.profile_steps, "--profile_steps")  # The Profiler hook's own rule.


@dataclasses.dataclass(frozen=True)
class ComputeConfig(Section):
    title: typing.ClassVar[str] = "compute"
    precision: str = setting("float32", "Compute precision (mixed: weights stay float32; float16 adds loss "
                             "scaling).", choices=PRECISIONS)
    fused_batch_norm: bool = setting(True, "Run BatchNormalization layers on TensorFlow's fused kernel in the "
                                     "compiled steps (same results; 1.36x faster ResNet-20 steps here); "
                                     "--nofused_batch_norm keeps Keras's computation.",
                                     engine="kernels.fused_batch_norm")
    sync_batch_norm: bool = setting(False, "BatchNormalization statistics over the global batch (all replicas), "
                                    "Keras's synchronized=True; such layers do not use the fused kernel.",
                                    engine="kernels.sync_batch_norm")
    jit_compile: bool = setting(False, "Compile each replica's forward-backward pass with XLA (slower on this "
                                "CPU; try it on GPUs).", engine="kernels.jit_compile")


@dataclasses.dataclass(frozen=True)
class DistributionConfig(Section):
    title: typing.ClassVar[str] = "distribution"
    strategy: str = setting("default", "tf.distribute strategy.", choices=STRATEGIES, guard=LOCKED_IF_DETERMINISTIC)
    num_cpu_devices: int = setting(1, "Split the CPU into this many logical devices (with --strategy=mirrored: "
                                   "several replicas on a machine without GPUs).", positive=True,
                                   guard=LOCKED_IF_DETERMINISTIC)
    worker_hosts: tuple[str, ...] = setting((), "Multi-worker: host:port of every worker (instead of TF_CONFIG).",
                                            guard=LOCKED_IF_DETERMINISTIC)
    ps_hosts: tuple[str, ...] = setting((), "Parameter-server training: host:port of every ps task.")
    chief_host: str | None = setting(None, "Parameter-server training: host:port of the chief (coordinator).")
    task_type: str | None = setting(None, "This process's job in the cluster: chief, worker or ps.", save=False)
    task_index: int | None = setting(None, "This process's index in its job.", save=False)
    collective_timeout_s: float | None = setting(600.0, "multi_worker_mirrored: fail a collective (a worker died) "
                                                 "after this many seconds instead of waiting forever.",
                                                 positive=True)
    memory_growth: bool = setting(False, "Allocate GPU memory as needed instead of all at start.")
    visible_gpus: str | None = setting(None, "Comma-separated GPU indices to use (default: all).")


@dataclasses.dataclass(frozen=True)
class CommandConfig(Section):
    title: typing.ClassVar[str] = "command line"
    allow_config_change: bool = setting(False, "Resume even if --model, the batch size, the optimizer (or, with "
                                        "--deterministic, the data order) differ from the run saved in "
                                        "--model_dir.", save=False)
    verbose_errors: bool = setting(False, "On an error, show the Python traceback, not only the one-line cause.",
                                   save=False)
    tf_log_level: int | None = setting(None, "Show TensorFlow's C++ log lines from this level on (0: all, 1: "
                                       "warnings, 2: errors); unset: its start-up lines are hidden. Read from the "
                                       "command line itself, before TensorFlow loads.", save=False,
                                       rule=_in(0, 3, hi_open=False))


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
    "run": RunConfig, "compute": ComputeConfig, "distribution": DistributionConfig, "command": CommandConfig}




@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, checked before anything runs.

    Build it with `TrainConfig.create(**flag_values)` (flag names, any section) or
    `from_flag_values`; sections are read as `config.optimizer.learning_rate`.
    Units: batches in examples, epochs and boundaries in epochs, learning rate per
    step at a global batch of 128.

    Raises:
      ValueError: on the first bad value, naming the flag and the value.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    compute: ComputeConfig = dataclasses.field(default_factory=ComputeConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    command: CommandConfig = dataclasses.field(default_factory=CommandConfig)
    task: str = "classification"
    # The task's own settings: an instance of its Task.options_class (None: it has none).
    task_options: Any = None

    def __post_init__(self):
        run, model = self.run, self.model
        if model.finetunes and run.train_steps is None \
                and model.finetune_after_epochs >= run.epochs:
            raise UserError(f"--finetune_after_epochs={model.finetune_after_epochs:g} leaves no epochs of "
                             f"--epochs={run.epochs:g} to fine-tune")
        streamed = [f"--{name}={path}" for name in ("train_data", "eval_data")
                    if (path := getattr(self.data, name)) and sources.source_kind(path) == "tfrecord"]
        if streamed and self.data.cache == "none" and self.distribution.strategy == "parameter_server":
            # The records are read by a Python function, which the remote workers cannot run.
            raise UserError(f"{streamed[0]}: TFRecords are streamed with --cache=none by a Python reader that "
                             "parameter-server workers cannot run; use --cache=encoded or --cache=decoded")

    @classmethod
    def create(cls, task: str = "classification", task_options: Any = None, **values) -> "TrainConfig":
        """A config from flag-named values (e.g. model="resnet20", learning_rate=0.2); the rest default.

        Raises:
          ValueError: naming the flag of a bad value; TypeError for an unknown name.
        """
        per_section: dict[str, dict] = {name: {} for name in SECTIONS}
        index = {flag_name(f): (section, f.name) for section, cls_ in SECTIONS.items()
                 for f, _ in fields_of(cls_)}
        for name, value in values.items():
            if name not in index:
                raise TypeError(f"no setting --{name}")
            section, field = index[name]
            per_section[section][field] = value
        return cls(**{name: SECTIONS[name](**kw) for name, kw in per_section.items()}, task=task,
                   task_options=task_options)

    @classmethod
    def from_flag_values(cls, flag_values, options_class=None) -> "TrainConfig":
        """The validated config from parsed absl flags (launch.flags defined them from the sections).

        Raises:
          ValueError: naming the flag of the first bad value.
        """
        values = {}
        for section in SECTIONS.values():
            for field, kind in fields_of(section):
                name = flag_name(field)
                values[name] = _parse(name, kind, flag_values[name].value)
        options = None
        if options_class is not None:
            options = options_class(**{f.name: _parse(f.name, kind, flag_values[f.name].value)
                                       for f, kind in fields_of(options_class)})
        return cls.create(task=flag_values["task"].value, task_options=options, **values)

    def option(self, name: str):
        """The task's setting `name` (its flag's value).

        Raises:
          KeyError: naming the setting and the task if the task defines no such flag.
        """
        options = dataclasses.asdict(self.task_options) if self.task_options is not None else {}
        if name not in options:
            raise KeyError(f"the {self.task} task has no setting {name!r} (it has {', '.join(options) or 'none'})")
        return options[name]

    def global_batch(self, num_replicas: int) -> int:
        """The global batch for `num_replicas` replicas.

        Raises:
          ValueError: if --global_batch_size is set and not divisible by the replicas.
        """
        run = self.run
        if run.global_batch_size is None:
            return run.batch_size * num_replicas
        if run.global_batch_size % num_replicas:
            raise UserError(f"--global_batch_size={run.global_batch_size} is not divisible by "
                             f"{num_replicas} replicas")
        return run.global_batch_size

    def engine_options(self) -> dict[str, Any]:
        """The Trainer's option groups and keywords, from the settings that declare engine= (one schema)."""
        return engine_options(getattr(self, name) for name in SECTIONS)

    def scaled_learning_rate(self, global_batch: int) -> float:
        """--learning_rate x global batch / 128 (the linear scaling rule of the tutorial)."""
        return self.optimizer.learning_rate * global_batch / REFERENCE_BATCH

    # --- The configuration as flags: saved, shown, compared -------------------------

    def settings(self) -> list[tuple[str, str, dataclasses.Field, Any]]:
        """(group title, flag name, field, value) of every setting, the task's own last."""
        out = [("task", "task", None, self.task)]
        for name in SECTIONS:
            section = getattr(self, name)
            out += [(section.title, flag_name(f), f, getattr(section, f.name)) for f, _ in fields_of(type(section))]
        if self.task_options is not None:
            out += [(f"task {self.task}", f.name, f, getattr(self.task_options, f.name))
                    for f, _ in fields_of(type(self.task_options))]
        return out

    def saved_flags(self) -> dict[str, Any]:
        """flag name -> value of every setting saved in the model_dir (JSON-ready: tuples become lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for _, name, field, value in self.settings() if field is None or field.metadata.get("save", True)}

    def non_default(self) -> list[str]:
        """'--flag=value' for each setting that differs from its default."""
        return [flag_argument(name, value) for _, name, field, value in self.settings()
                if field is not None and value != field.default and field.metadata.get("save", True)] + \
            ([f"--task={self.task}"] if self.task != "classification" else [])

    def compare_saved(self, saved: dict[str, Any]) -> list[str]:
        """What differs from `saved`, and refuses guarded changes: launch.saved_config.compare."""
        from launch import saved_config  # It imports this module.

        return saved_config.compare(self, saved)
