"""Trains a ResNet on CIFAR-10: python -m launch.train --flagfile=launch/cifar.flags [--flag=value ...].

A flag on the command line overrides the same flag in the flag file, wherever it
stands. Rerunning the same command resumes from the newest checkpoint in
--model_dir.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides the run's own
# lines; warnings and errors still show. Set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from launch import flags as launch_flags  # noqa: E402
from launch import tasks  # noqa: E402
from launch.config import TrainConfig, parse_floats  # noqa: E402

FLAGS = flags.FLAGS


def flagfiles_first(argv: list[str]) -> list[str]:
    """Moves --flagfile arguments to the front, so that explicit flags win.

    absl applies flags in order, and a flag file's contents land where the
    --flagfile argument stands; with the files first, every flag given on the
    command line overrides the file's value.
    """
    def is_flagfile(arg):
        return arg.startswith("--flagfile=") or arg.startswith("-flagfile=")

    rest = argv[1:]
    return argv[:1] + [a for a in rest if is_flagfile(a)] + [a for a in rest if not is_flagfile(a)]


def config_from_flags() -> TrainConfig:
    """Builds the validated TrainConfig from the parsed FLAGS."""
    return TrainConfig(
        data_dir=FLAGS.data_dir, model_dir=FLAGS.model_dir, model=FLAGS.model,
        backbone=FLAGS.backbone, backbone_cut=FLAGS.backbone_cut, dropout=FLAGS.dropout,
        backbone_weights=None if (FLAGS.backbone_weights or "none").lower() == "none" else FLAGS.backbone_weights,
        resize_to=tuple(int(v) for v in parse_floats("resize_to", FLAGS.resize_to)),
        finetune_after_epochs=FLAGS.finetune_after_epochs, finetune_layers=FLAGS.finetune_layers,
        finetune_lr_factor=FLAGS.finetune_lr_factor,
        batch_size=FLAGS.batch_size, global_batch_size=FLAGS.global_batch_size,
        epochs=FLAGS.epochs, train_steps=FLAGS.train_steps, steps_per_loop=FLAGS.steps_per_loop,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps, keep_checkpoints=FLAGS.keep_checkpoints,
        strategy=FLAGS.strategy, num_cpu_devices=FLAGS.num_cpu_devices,
        worker_hosts=tuple(FLAGS.worker_hosts or ()), ps_hosts=tuple(FLAGS.ps_hosts or ()),
        chief_host=FLAGS.chief_host, task_type=FLAGS.task_type, task_index=FLAGS.task_index,
        collective_timeout_s=FLAGS.collective_timeout_s, memory_growth=FLAGS.memory_growth,
        visible_gpus=FLAGS.visible_gpus, learning_rate=FLAGS.learning_rate,
        lr_boundaries=parse_floats("lr_boundaries", FLAGS.lr_boundaries),
        lr_multipliers=parse_floats("lr_multipliers", FLAGS.lr_multipliers),
        momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, seed=FLAGS.seed,
        deterministic=FLAGS.deterministic, nonfinite_limit=FLAGS.nonfinite_limit,
        nonfinite_action=FLAGS.nonfinite_action, rollback_lr_factor=FLAGS.rollback_lr_factor,
        max_rollbacks=FLAGS.max_rollbacks, sync_batch_norm=FLAGS.sync_batch_norm,
        best_metric=FLAGS.best_metric, progress=FLAGS.progress,
        train_data=FLAGS.train_data, eval_data=FLAGS.eval_data, augment=FLAGS.augment,
        image_size=tuple(int(v) for v in parse_floats("image_size", FLAGS.image_size)), cache=FLAGS.cache,
        normalize=FLAGS.normalize, skip_bad_examples=FLAGS.skip_bad_examples,
        optimizer=FLAGS.optimizer, nesterov=FLAGS.nesterov,
        decoupled_weight_decay=(FLAGS.decoupled_weight_decay if FLAGS["decoupled_weight_decay"].present
                                or FLAGS.optimizer != "adamw" else None),
        clip_norm=FLAGS.clip_norm, accumulation_steps=FLAGS.accumulation_steps, precision=FLAGS.precision,
        ema_decay=FLAGS.ema_decay, label_smoothing=FLAGS.label_smoothing,
        fused_batch_norm=FLAGS.fused_batch_norm, jit_compile=FLAGS.jit_compile, lr_schedule=FLAGS.lr_schedule,
        warmup_epochs=FLAGS.warmup_epochs, plateau_patience=FLAGS.plateau_patience,
        plateau_factor=FLAGS.plateau_factor, plateau_metric=FLAGS.plateau_metric,
        early_stopping_patience=FLAGS.early_stopping_patience, early_stopping_metric=FLAGS.early_stopping_metric,
        early_stopping_min_delta=FLAGS.early_stopping_min_delta, restore_best=FLAGS.restore_best,
        histogram_every_epochs=FLAGS.histogram_every_epochs,
        profile_steps=tuple(int(v) for v in parse_floats("profile_steps", FLAGS.profile_steps)),
        max_time=FLAGS.max_time, task=FLAGS.task,
        task_options=tuple(sorted(tasks.get(FLAGS.task).options(FLAGS).items())))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF logs every checkpoint save at INFO.
    from launch import experiment  # TensorFlow loads here, after the flags parsed.

    try:
        run = experiment.prepare(config_from_flags())  # Bad flags fail here, before TensorFlow starts work.
    except ValueError as e:
        # Bad input: one clear line, nothing trained or written.
        sys.exit(f"launch.train: error: {e}")
    import tensorflow as tf

    from engine.trainer import NonFiniteError

    try:
        run.train()  # On SIGTERM/SIGINT it checkpoints and returns: exit status 0.
    except NonFiniteError as e:
        # Divergence that rollbacks could not cure: one line, the checkpoints left finite.
        sys.exit(f"launch.train: error: {e}; see --learning_rate, --clip_norm, --warmup_epochs, "
                 "--max_rollbacks")
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.InternalError) as e:
        if not run.trainer._multi_worker:
            raise
        # A peer died or stopped answering: say so in one line, not a graph trace.
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        latest = run.trainer.checkpointer.latest if run.trainer.checkpointer else None
        sys.exit(f"launch.train: error: another task of the cluster failed or stopped answering "
                 f"({type(e).__name__}: {first}); rerun the job to resume from {latest or 'the start'}")


if __name__ == "__main__":
    launch_flags.define_train_flags()
    app.run(main, argv=flagfiles_first(sys.argv))
