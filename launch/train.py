"""Trains a model: python -m launch.train --flagfile=launch/cifar.flags [--flag=value ...].

A flag on the command line overrides the same flag in the flag file, wherever it
stands. Rerunning the same command resumes from the newest checkpoint in
--model_dir; the run's resolved flags are saved there as config.flags (rerun
with --flagfile=<model_dir>/config.flags) and config.json.
"""

from __future__ import annotations

import os
import sys
import traceback

from launch import quiet

# TensorFlow's C++ start-up lines are hidden unless --tf_log_level is given on the
# command line: it has to be read before TensorFlow loads, so before absl parses.
_LOG_LEVEL = quiet.log_level_from_argv(sys.argv)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = _LOG_LEVEL if _LOG_LEVEL is not None else \
    os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")

with quiet.native_startup_hidden(enabled=_LOG_LEVEL is None):
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA probing logs here (cuInit on a machine without a GPU).
    from absl import app, flags, logging

    from launch import flags as launch_flags
    from launch import saved_config

FLAGS = flags.FLAGS
PROG = "launch.train"


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


def fail(message: str, error: BaseException | None = None) -> None:
    """Exits with status 1 and `launch.train: error: <message>`; the traceback only with --verbose_errors."""
    if error is not None and FLAGS["verbose_errors"].value:
        traceback.print_exception(error)
    else:
        # A failed restore leaves objects whose deletion at exit logs a warning per
        # unmatched variable (hundreds): the one line above says what matters.
        logging.set_verbosity(logging.ERROR)
        tf.get_logger().setLevel("ERROR")
    sys.exit(f"{PROG}: error: {message}")


def _os_error_line(e: OSError) -> str:
    import errno

    what = e.filename or ""
    if e.errno == errno.ENOSPC:
        return f"the disk is full writing {what or 'the model_dir'}"
    return f"{e.strerror or type(e).__name__}: {what}" if what else str(e)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF logs every checkpoint save at INFO.
    from engine.checkpoint import CheckpointWriteError
    from engine.errors import UserError
    from engine.progress import EpochProgress
    from engine.trainer import NonFiniteError
    from launch import experiment

    try:
        config = launch_flags.config_from_flags()
        saved = saved_config.read_saved_config(config.run.model_dir)
        changes = config.compare_saved(saved) if saved is not None else []  # Refuses what would corrupt the run.
        run = experiment.prepare(config)  # Bad data or checkpoints fail here, before any training.
    except UserError as e:
        fail(str(e), e)  # One clear line, nothing trained or written. Any other error shows its traceback.
    except OSError as e:
        fail(_os_error_line(e), e)
    trainer = run.trainer
    say = EpochProgress.write if trainer.is_chief else (lambda line: None)
    if trainer.is_chief:
        say(f"config: {' '.join(config.non_default()) or 'all defaults'} "
            f"(all settings: {os.path.join(config.run.model_dir, saved_config.CONFIG_FLAGS)})")
        if changes:
            say(f"changed since the last run in {config.run.model_dir}: {'; '.join(changes)}")
        try:
            saved_config.write_saved_config(config)
        except OSError as e:
            fail(_os_error_line(e), e)
    say(run.plan())
    try:
        run.train()  # On SIGTERM/SIGINT it checkpoints and returns: exit status 0.
    except NonFiniteError as e:
        # Divergence that rollbacks could not cure: one line, the checkpoints left finite.
        fail(f"{e}; see --learning_rate, --clip_norm, --warmup_epochs, --max_rollbacks", e)
    except CheckpointWriteError as e:
        fail(str(e), e)
    except OSError as e:
        latest = trainer.checkpointer.latest if trainer.checkpointer else None
        fail(f"{_os_error_line(e)}; the newest checkpoint is {latest or 'none'}", e)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.InternalError) as e:
        if not trainer.multi_worker:
            raise
        # A peer died or stopped answering: say so in one line, not a graph trace.
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        latest = trainer.checkpointer.latest if trainer.checkpointer else None
        fail(f"another task of the cluster failed or stopped answering ({type(e).__name__}: {first}); "
             f"rerun the job to resume from {latest or 'the start'}", e)
    for line in run.where_things_are():
        say(line)


if __name__ == "__main__":
    launch_flags.define_train_flags()
    if any(arg in launch_flags.HELP_ARGS for arg in sys.argv[1:]):
        try:
            launch_flags.print_help(__doc__)
        except BrokenPipeError:  # `| head`
            os._exit(0)
        sys.exit(0)
    app.run(main, argv=flagfiles_first(sys.argv))
