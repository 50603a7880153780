"""A training run from a TrainConfig: strategy, the task's data, model and Trainer, hooks.

Everything task-specific (data, model, loss, metrics) comes from the task
(launch/tasks/<name>.py, chosen by --task); this module only puts the pieces
together the same way for every task.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import keras
import tensorflow as tf

from datasets import augment
from models import transfer
from engine import EpochInput, LookaheadOptions, Trainer, configure_cpu_devices, create_strategy, distribution
from engine import hooks as hooks_lib
from engine.files import write_atomic
from engine.optimizers import build_optimizer, set_precision
from engine.schedules import build_schedule
from engine.progress import EpochProgress
from launch import tasks
from launch.config import TrainConfig
from engine.errors import UserError


@dataclasses.dataclass
class Run:
    """A prepared run: everything checked and built, nothing trained yet.

    Attributes:
      config: the run's configuration.
      trainer: the Trainer, its checkpoint (if any) already restored.
      train_input: per-epoch training input.
      eval_data: the test split, every example once.
      backbone: the transfer backbone to unfreeze later, when the run fine-tunes.
      schedule: the first phase's learning rate, from which fine-tuning's is derived.
      task: the task, which builds the fine-tuning phase's Trainer too.
      data: the task's data.
      last_trainer: the fine-tuning phase's Trainer, once that phase started.
    """

    config: TrainConfig
    trainer: Trainer
    train_input: EpochInput
    eval_data: tf.data.Dataset
    backbone: keras.Model | None = None
    schedule: keras.optimizers.schedules.LearningRateSchedule | float | None = None
    task: tasks.Task | None = None
    data: tasks.TaskData | None = None
    last_trainer: Trainer | None = None  # The fine-tuning phase's, once it started.

    @property
    def total_steps(self) -> int:
        """Steps the whole run trains, counted from step 0 (both phases when it fine-tunes)."""
        return self.config.run.train_steps or int(round(self.config.run.epochs * self.train_input.steps_per_epoch))

    def plan(self) -> str:
        """One line: epochs, steps, where the run starts, the strategy and the model_dir."""
        trainer, spe = self.trainer, self.train_input.steps_per_epoch
        total, step = self.total_steps, trainer.global_step
        start = f"from step {step} (the newest checkpoint's)" if trainer.restored_from else "from step 0"
        return (f"plan: {total / spe:g} epochs = {total} steps of global batch {trainer.global_batch_size} "
                f"({spe} per epoch), {start}; {self.config.distribution.strategy} strategy with "
                f"{trainer.strategy.num_replicas_in_sync} replica(s); model_dir {self.config.run.model_dir}")

    def where_things_are(self) -> list[str]:
        """The end-of-run lines: newest and best checkpoints, history, curves, TensorBoard."""
        folder = self.config.run.model_dir
        trainer = self.last_trainer or self.trainer
        lines = [f"newest checkpoint: {trainer.checkpointer.latest if trainer.checkpointer else 'none'}"]
        best = os.path.join(trainer.model_dir, "best", "best.json")
        if os.path.isfile(best):
            with open(best) as f:
                info = json.load(f)
            lines.append(f"best checkpoint: {os.path.join(os.path.dirname(best), info['checkpoint'])} "
                         f"({info['metric']}={info['value']:.4g} at step {info['step']})")
        history = os.path.join(folder, "history.json")
        if os.path.isfile(history):
            lines.append(f"history: {history} (and history.csv)")
        curves = os.path.join(folder, "curves.png")
        lines.append(f"curves: {curves}" if os.path.isfile(curves) else
                     f"curves: python -m launch.plot --model_dir={folder}")
        lines.append(f"TensorBoard: tensorboard --logdir={folder}")
        return lines

    def train(self) -> dict[str, list[float]]:
        """Trains to the configured end, evaluating each epoch; returns the history.

        With --finetune_after_epochs: the head trains first; then the top
        --finetune_layers of the backbone are unfrozen and training goes on, in
        <model_dir>/finetune with a fresh optimizer at a constant --finetune_lr_factor
        times the learning rate of the switch, for the remaining epochs.
        """
        config = self.config
        if self.backbone is None:
            with self.trainer:  # A command trains once: nothing to keep the iterator for.
                return self.trainer.fit(self.train_input, self.eval_data, epochs=config.run.epochs,
                                        train_steps=config.run.train_steps,
                                        eval_every_epochs=config.run.eval_every_epochs)
        spe = self.train_input.steps_per_epoch
        total = config.run.train_steps or int(round(config.run.epochs * spe))
        head_steps = min(total, int(round(config.model.finetune_after_epochs * spe)))
        with self.trainer:
            history = self.trainer.fit(self.train_input, self.eval_data, train_steps=head_steps,
                                       eval_every_epochs=config.run.eval_every_epochs)
        if self.trainer.stopped_by or head_steps >= total:
            return history
        model, strategy = self.trainer.model, self.trainer.strategy
        names = transfer.unfreeze_top(self.backbone, config.model.finetune_layers)
        rate = self.schedule(head_steps) if callable(self.schedule) else self.schedule
        with strategy.scope():  # The flags' optimizer, at a constant rate: only the rate changes.
            optimizer = _optimizer(config, config.model.finetune_lr_factor * float(rate))
        EpochProgress.write(f"fine-tuning {len(names)} backbone layers ({', '.join(names[-3:])}, ...) with "
                            f"{type(getattr(optimizer, 'inner_optimizer', optimizer)).__name__} at "
                            f"{config.model.finetune_lr_factor:g} x the learning rate")
        finetune = _trainer(self.task, self.data, config, model, optimizer, strategy, self.trainer.global_batch_size,
                            os.path.join(config.run.model_dir, "finetune"))
        self.last_trainer = finetune
        with finetune:
            more = finetune.fit(self.train_input, self.eval_data, train_steps=total - head_steps,
                                eval_every_epochs=config.run.eval_every_epochs)
        return {k: history.get(k, []) + more.get(k, []) for k in {*history, *more}}


def prepare(config: TrainConfig) -> Run:
    """Builds and checks a run; all bad input fails here, before any training.

    The model_dir is written to (model.keras, run.json) only once every check passed.

    Raises:
      ValueError: a bad data_dir or file in it, a global batch not divisible by the
        replicas, bad learning-rate boundaries, or a checkpoint in model_dir that
        does not fit the model; the message names the flag, path or value.
    """
    task = tasks.get(config.task)
    task.check(config)
    if config.run.tta != "none" and "accuracy" not in task.metrics:
        # Averaging over mirrored inputs suits labels that do not move with the image.
        raise UserError(f"--tta={config.run.tta} applies to image classification; the {task.name} task's "
                         "outputs would not be averaged with their inputs' mirrors")
    if config.run.best_metric and config.run.best_metric not in [f"eval_{m}" for m in ("loss", *task.metrics)]:
        raise UserError(f"--best_metric={config.run.best_metric!r}: the {task.name} task reports "
                         f"{', '.join(f'eval_{m}' for m in ('loss', *task.metrics))} (or leave it empty)")
    dist = config.distribution
    cluster = distribution.cluster_from_env_or_flags(
        worker_hosts=dist.worker_hosts, ps_hosts=dist.ps_hosts, chief_host=dist.chief_host,
        task_type=dist.task_type, task_index=dist.task_index)
    if cluster is not None and config.distribution.strategy not in distribution.MULTI_WORKER:
        raise UserError(f"a cluster is given (TF_CONFIG or --worker_hosts) but --strategy={dist.strategy}; "
                         f"use one of {', '.join(distribution.MULTI_WORKER)}")
    if cluster is not None:
        cluster.check_port_free()
        if config.distribution.strategy == "parameter_server" and cluster.task_type in ("worker", "ps"):
            serve(cluster)  # Never returns: the chief (coordinator) drives the training.
    configure_cpu_devices(config.distribution.num_cpu_devices)
    distribution.configure_gpus(memory_growth=dist.memory_growth, visible=dist.visible_gpus)
    if config.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = create_strategy(dist.strategy, cluster, collective_timeout_s=dist.collective_timeout_s)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.global_batch(replicas)
    say = EpochProgress.write if distribution.is_chief(strategy) else (lambda line: None)
    data = task.data(config, global_batch, progress=config.run.progress and distribution.is_chief(strategy))
    steps_per_epoch = data.steps_per_epoch
    say(f"{task.name} task, {data.source}: {data.num_train} train, {data.num_eval} eval examples; "
        f"{dist.strategy} strategy, {replicas} replica(s), per-replica batch {global_batch // replicas}, "
        f"global batch {global_batch}, "
        f"{steps_per_epoch} steps per epoch")
    for line in data.skipped:
        say(f"skipped bad example {line}")
    train_input = EpochInput(data.train_fn, steps_per_epoch)
    # The schedule counts optimizer updates: accumulation_steps batches make one.
    k = config.optimizer.accumulation_steps
    total_batches = config.run.train_steps or int(round(config.run.epochs * steps_per_epoch))
    schedule = build_schedule(config.schedule.lr_schedule, config.scaled_learning_rate(global_batch * k),
                              steps_per_epoch=steps_per_epoch / k if k > 1 else steps_per_epoch,
                              total_steps=max(2, math.ceil(total_batches / k)),
                              boundaries=config.schedule.lr_boundaries,
                              multipliers=config.schedule.lr_multipliers, warmup_epochs=config.schedule.warmup_epochs)
    keras.utils.set_random_seed(config.run.seed)
    set_precision(config.compute.precision)
    with strategy.scope():
        model = task.model(config, data)
        optimizer = _optimizer(config, schedule)
    say(f"model {task.model_label(config, model)} ({model.count_params():,} parameters, "
        f"{sum(int(v.numpy().size) for v in model.trainable_variables):,} trainable), {config.optimizer.name} "
        f"(momentum {config.optimizer.momentum}), {config.schedule.lr_schedule} learning rate "
        f"{config.scaled_learning_rate(global_batch * k):g}, {config.compute.precision}")
    finetuning = config.model.finetunes
    trainer = _trainer(task, data, config, model, optimizer, strategy, global_batch)
    if data.skipped and trainer.is_chief:
        trainer.add_hook("train_begin", lambda t, logs: t.write_scalars(
            "train", {"skipped_bad_examples": float(len(data.skipped))}, t.global_step))
    trainer.restore()
    if trainer.is_chief:
        save_run_files(config.run.model_dir, model, task=task.name, **data.info)
    backbone = data.runtime.get("backbone")
    return Run(config, trainer, train_input, data.eval_data, backbone=backbone if finetuning else None,
               schedule=schedule, task=task, data=data)


def _optimizer(config: TrainConfig, learning_rate) -> keras.optimizers.Optimizer:
    """The optimizer the flags name (--optimizer and its flags) at `learning_rate`; build it under the scope."""
    opt = config.optimizer
    return build_optimizer(opt.name, learning_rate, momentum=opt.momentum, nesterov=opt.nesterov,
                           weight_decay=opt.decoupled_weight_decay, clip_norm=opt.clip_norm,
                           loss_scale=config.compute.precision == "float16")


def _trainer(task: tasks.Task, data: tasks.TaskData, config: TrainConfig, model, optimizer, strategy,
             global_batch: int, model_dir: str | None = None) -> Trainer:
    """The task's Trainer with the engine options and hooks the flags ask for."""
    model_dir = model_dir or config.run.model_dir
    hooks: list[object] = [hooks_lib.HistoryLogger(model_dir)]
    if config.run.early_stopping_patience:
        hooks.append(hooks_lib.EarlyStopping(config.run.early_stopping_metric,
                                             patience=config.run.early_stopping_patience,
                                             min_delta=config.run.early_stopping_min_delta,
                                             restore_best=config.run.restore_best))
    if config.schedule.plateau_patience:
        hooks.append(hooks_lib.ReduceLROnPlateau(config.schedule.plateau_metric, factor=config.schedule.plateau_factor,
                                                 patience=config.schedule.plateau_patience))
    if config.run.histogram_every_epochs:
        hooks.append(hooks_lib.WeightHistograms(config.run.histogram_every_epochs))
    if config.run.profile_steps:
        hooks.append(hooks_lib.Profiler(os.path.join(model_dir, "train"), *config.run.profile_steps))
    if config.run.max_time:
        hooks.append(hooks_lib.MaxTime(config.run.max_time))
    return task.trainer(
        config, model=model, optimizer=optimizer, data=data, global_batch_size=global_batch, strategy=strategy,
        model_dir=model_dir, hooks=hooks, lookahead=_lookahead(config, data.steps_per_epoch),
        **config.engine_options())  # Every other engine option, from its setting's engine= declaration.


def _lookahead(config: TrainConfig, steps_per_epoch: int) -> LookaheadOptions | None:
    """--lookahead_*: the engine's options; a ramp spans the run's updates (accumulation_steps batches each)."""
    opt = config.optimizer
    if not opt.lookahead_steps:
        return None
    batches = config.run.train_steps or int(round(config.run.epochs * steps_per_epoch))
    return LookaheadOptions(every_steps=opt.lookahead_steps, alpha=opt.lookahead_alpha,
                            ramp_steps=max(1, math.ceil(batches / opt.accumulation_steps)) if opt.lookahead_ramp
                            else None)


RUN_JSON = "run.json"
MODEL_FILE = "model.keras"


def save_run_files(model_dir: str, model: keras.Model, **info) -> None:
    """Writes what export, predict and evaluate need beside the checkpoints.

    `model.keras` holds the architecture (its weights come from a checkpoint) and
    `run.json` the task's `info` (for classification: the task name, input
    shape, class names and normalisation of the run).
    """
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, MODEL_FILE))
    write_atomic(os.path.join(model_dir, RUN_JSON), json.dumps(info, indent=1) + "\n")


def load_trained(model_dir: str, checkpoint: str = "latest") -> tuple[keras.Model, dict, str]:
    """Rebuilds a run's model with the weights of its latest or best checkpoint.

    Args:
      model_dir: a launch.train --model_dir.
      checkpoint: "latest", "best", or a checkpoint path prefix.

    Returns:
      (model, run info from run.json, path of the checkpoint restored).

    Raises:
      ValueError: naming the file or checkpoint that is missing.
    """
    for name in (MODEL_FILE, RUN_JSON):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise UserError(f"--model_dir={model_dir} has no {name}: is it a launch.train model_dir?")
    with open(os.path.join(model_dir, RUN_JSON)) as f:
        info = json.load(f)
    model_file = os.path.join(model_dir, MODEL_FILE)
    model = transfer.load_trusted_layers(model_file, what=model_file)
    if checkpoint == "latest":
        path = tf.train.latest_checkpoint(model_dir)
    elif checkpoint == "best":
        best = os.path.join(model_dir, "best", "best.json")
        if not os.path.isfile(best):
            raise UserError(f"--model_dir={model_dir} has no best checkpoint ({best} is missing)")
        with open(best) as f:
            path = os.path.join(model_dir, "best", json.load(f)["checkpoint"])
    else:
        path = checkpoint
    if not path or not tf.io.gfile.exists(path + ".index"):
        raise UserError(f"no checkpoint {checkpoint!r} in {model_dir}")
    # read(), not restore(): the best checkpoint is written by Checkpoint.write, without
    # the save_counter that restore() would create and then find unmatched.
    tf.train.Checkpoint(model=model).read(path).expect_partial().assert_existing_objects_matched()
    if any(name.startswith("ema/") for name, _ in tf.train.list_variables(path)):
        # Trained with --ema_decay: serve the moving averages, as evaluation did.
        weights = [v for v in model.weights if tf.as_dtype(v.dtype).is_floating]
        shadows = [tf.Variable(tf.zeros(v.shape, v.dtype)) for v in weights]
        tf.train.Checkpoint(ema=shadows).read(path).expect_partial().assert_existing_objects_matched()
        for v, shadow in zip(weights, shadows):
            v.assign(shadow)
    return model, info, path


def normalizer(info: dict):
    """The run's preprocessing: uint8 images -> normalised float32."""
    return augment.normalizer(info["normalize"])


def serve(cluster: distribution.Cluster) -> None:
    """Runs this process as a parameter-server-training worker or ps task, forever.

    The chief (coordinator) sends it work; launch.cluster ends it when the chief is
    done. On a real cluster, the job's scheduler does.
    """
    EpochProgress.write(f"{cluster.task_type} {cluster.task_index} serving at {cluster.address}")
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster.spec), job_name=cluster.task_type,
                                  task_index=cluster.task_index, protocol="grpc", start=True)
    server.join()
