"""Checkpoints of a training run: tf.train.CheckpointManager with clear restore errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Mapping

import tensorflow as tf

from engine.files import is_better, mode_for, write_atomic
from engine.hooks import save_hook_state
from engine.rollback import NonFiniteError
from engine.errors import UserError

# What a truncated or damaged checkpoint file raises on restore (a truncated data
# file gives IndexError "Read less bytes than requested" in TF 2.21).
_CORRUPT_ERRORS = (tf.errors.OpError, IndexError, OSError)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, no permission); the message names the one kept."""


class Checkpointer:
    """Saves and restores the trackable state of a run under one folder.

    A thin layer over tf.train.CheckpointManager, which does the rotation (keep the
    last K) and the atomic write of its index file. What it adds: checkpoints are
    numbered by the optimizer step, and a checkpoint that does not fit the model
    (another architecture, another number of classes) stops with an error naming
    its path, before anything is written.

    Multi-worker runs: every worker must take part in a save, but only the chief's
    checkpoints are kept. A non-chief worker passes `scratch_directory`: it
    restores from `directory` (the chief's) and saves into the scratch folder,
    which is deleted right after each save.

    Args:
      directory: folder of the checkpoints (`ckpt-<step>.index`, `.data-*`, and
        the `checkpoint` index file). Created on the first save, not before.
      max_to_keep: how many recent checkpoints to keep, >= 1.
      scratch_directory: for non-chief workers, where saves go and are removed.
      **trackables: what to save, e.g. model=..., optimizer=...
    """

    def __init__(self, directory: str, *, max_to_keep: int, scratch_directory: str | None = None, **trackables):
        if max_to_keep < 1:
            raise UserError(f"keep_checkpoints={max_to_keep} must be at least 1")
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self._objects = dict(trackables)
        self._optional: set[str] = set()
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        self.scratch_directory = scratch_directory
        self.last_saved_step: int | None = None  # The step of the checkpoint restored or written last.

    def add(self, name: str, item, *, optional: bool = False) -> None:
        """Saves and restores `item` under `name` from now on (no-op if it already is).

        Args:
          name: its name in the checkpoint.
          item: a trackable (tf.Variable, Keras object, list of variables, ...).
          optional: a checkpoint without `name` (written before it existed) still
            restores; `item` keeps its value then. Any other object must be in the
            checkpoint.
        """
        if self._objects.get(name) is not item:
            setattr(self.checkpoint, name, item)
            self._objects[name] = item
        if optional:
            self._optional.add(name)

    def _reader_for(self, path: str) -> tf.train.Checkpoint:
        """self.checkpoint, or one without the optional objects that `path` lacks."""
        if not self._optional:
            return self.checkpoint
        saved = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
        missing = self._optional - saved
        if not missing:
            return self.checkpoint
        return tf.train.Checkpoint(**{k: v for k, v in self._objects.items() if k not in missing})

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or None."""
        if self.scratch_directory is not None:  # The chief writes them: read its index anew.
            return tf.train.latest_checkpoint(self.manager.directory)
        return self.manager.latest_checkpoint

    def _all(self) -> list[str]:
        """Kept checkpoints, oldest first."""
        if self.scratch_directory is not None:
            state = tf.train.get_checkpoint_state(self.manager.directory)
            return list(state.all_model_checkpoint_paths) if state else []
        return list(self.manager.checkpoints)

    def restore_latest(self) -> str | None:
        """Restores the newest readable checkpoint, if any.

        A checkpoint whose files are truncated or damaged is reported (with its
        path, on stderr) and skipped for the one before it; it is not deleted.

        Returns:
          The restored checkpoint's path prefix, or None when the folder holds no
          checkpoint.

        Raises:
          ValueError: naming the checkpoint, if its variables do not match the
            objects being restored (shape or structure), or if every checkpoint is
            unreadable. Nothing is deleted.
        """
        candidates = list(reversed(self._all()))
        for path in candidates:
            status = None
            try:
                status = self._reader_for(path).restore(path)
                status.assert_existing_objects_matched()
                self.last_saved_step = int(path.rsplit("-", 1)[1])
                return path
            except _CORRUPT_ERRORS as e:
                sys.stderr.write(f"warning: checkpoint {path} is unreadable ({_first_line(e)}); "
                                 "trying the one before it\n")
            except (ValueError, AssertionError) as e:
                if status is not None:
                    status.expect_partial()  # No pages of "value not found" warnings when it is collected.
                raise UserError(
                    f"checkpoint {path} does not match this model: {_mismatch(path, self.checkpoint, e)}; it was "
                    "left as it is: use another model_dir, or the settings that wrote it") from e
        if candidates:
            raise UserError(f"no readable checkpoint among {', '.join(candidates)}; they were left as they are")
        return None

    def save(self, step: int) -> str:
        """Writes a checkpoint numbered `step` and drops the oldest beyond max_to_keep.

        Returns the chief's newest checkpoint path (for a non-chief worker, whose
        own copy is deleted at once).

        Raises:
          CheckpointWriteError: if writing fails (e.g. the disk is full); the
            partial files are removed and the previous checkpoint stays the newest.
        """
        if self.scratch_directory is None:
            previous = self.latest
            try:
                path = self.manager.save(checkpoint_number=step)
                self.last_saved_step = step
                return path
            except (OSError, tf.errors.OpError) as e:
                # The index file is replaced only after the new files are complete, so
                # the previous checkpoint is still the newest one listed.
                for leftover in tf.io.gfile.glob(os.path.join(self.manager.directory, f"ckpt-{step}.*")) \
                        if previous != os.path.join(self.manager.directory, f"ckpt-{step}") else []:
                    tf.io.gfile.remove(leftover)
                raise CheckpointWriteError(
                    f"could not write checkpoint {step} in {self.manager.directory} ({_first_line(e)}); the "
                    f"previous checkpoint {previous or '(none)'} is kept: free space and rerun to resume") from e
        self.checkpoint.write(os.path.join(self.scratch_directory, f"ckpt-{step}"))
        remove_scratch(self.scratch_directory)
        self.last_saved_step = step
        return self.latest


def remove_scratch(folder: str) -> None:
    """Deletes a non-chief worker's scratch folder, and its parent once empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))
    except OSError:
        pass  # Another worker's scratch is still there.


def _mismatch(path: str, checkpoint: tf.train.Checkpoint, error: Exception) -> str:
    """A short account of why checkpoint `path` does not fit: variable counts and the first difference."""
    saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")
             and name.endswith(".ATTRIBUTES/VARIABLE_VALUE") and "/.OPTIMIZER_SLOT/" not in name]
    model = getattr(checkpoint, "model", None)
    mine = len(model.weights) if model is not None and hasattr(model, "weights") else None
    first = _first_line(error)
    if first.startswith("Some objects had attributes which were not restored"):
        first = "this model has variables the checkpoint lacks"
    counts = f"it holds {len(saved)} model variables, this model has {mine}" if mine is not None else ""
    return "; ".join(part for part in (counts, first[:300]) if part)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class BestCheckpoint:
    """Keeps the checkpoint with the best value of one eval metric.

    Layout under `directory`: `best-<step>/ckpt.*` (the checkpoint) and
    `best.json` ({"step", "metric", "value", "metrics", "checkpoint"}). A new best is
    written in full first; `best.json` is then replaced atomically (os.replace),
    and only after that is the previous best folder removed, so a crash at any
    point leaves a complete best checkpoint that best.json names.

    Args:
      directory: where to keep it (created on the first write).
      metric: the metric name to watch, e.g. "eval_accuracy" or "eval_loss".
      mode: "max" or "min"; None picks by the name (engine.files.mode_for).
      **trackables: what to save (e.g. model=...).

    Raises:
      ValueError: if mode is not "max", "min" or None.
    """

    def __init__(self, directory: str, metric: str, mode: str | None = None, **trackables):
        mode = mode_for(metric, mode)
        self.directory, self.metric, self.mode = directory, metric, mode
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.info = self._read_info()

    @property
    def json_path(self) -> str:
        return os.path.join(self.directory, "best.json")

    def _read_info(self) -> dict | None:
        try:
            with open(self.json_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def is_better(self, value: float) -> bool:
        return is_better(self.mode, value, self.info["value"] if self.info else None)

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Saves a new best if metrics[metric] beats the kept one; returns whether it did.

        Raises:
          KeyError: naming the metric if `metrics` lacks it.
        """
        if self.metric not in metrics:
            raise KeyError(f"best-checkpoint metric {self.metric!r} is not among {sorted(metrics)}")
        value = float(metrics[self.metric])
        if not self.is_better(value):
            return False
        folder = f"best-{step}"
        self.checkpoint.write(os.path.join(self.directory, folder, "ckpt"))
        info = {"step": step, "metric": self.metric, "value": value, "mode": self.mode,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "checkpoint": os.path.join(folder, "ckpt")}
        write_atomic(self.json_path, json.dumps(info, indent=1))
        previous, self.info = self.info, info
        if previous and os.path.dirname(previous["checkpoint"]) != folder:
            shutil.rmtree(os.path.join(self.directory, os.path.dirname(previous["checkpoint"])), ignore_errors=True)
        return True


class CheckpointMixin:
    """The Trainer's checkpoint API: restore, the saves (each refused with NaN/Inf), task items, weights."""

    def checkpoint_items(self) -> Mapping[str, object]:
        """Extra state a task checkpoints beside the model and optimizers: {name: trackable}.

        Override to save a second model (a discriminator, a teacher) or any
        tf.Variable or trackable; each is saved and restored with every
        checkpoint, under its name. Read when fit (or restore) first runs.
        """
        return {}

    def _attach_checkpoint_items(self) -> None:
        if self._items_attached or not self.checkpointer:
            return
        self.state.add_items(self.checkpoint_items())
        self.state.attach(self.checkpointer)
        self._items_attached = True

    def restore(self) -> str | None:
        """Restores the newest readable checkpoint in model_dir, once; returns its path or None.

        Raises:
          ValueError: if the checkpoint does not fit the model (see Checkpointer).
        """
        if not self.model_built:
            raise UserError(f"model {self.model.name} has no variables to restore yet; call fit (which builds it "
                             "from the first batch) or build it under strategy.scope() first")
        self._attach_checkpoint_items()
        if self.checkpointer and not self._restored:
            self.restored_from = self.checkpointer.restore_latest()
            if self.restored_from:
                self._restore_hook_state(self.global_step)
        self._restored = True
        return self.restored_from

    def save(self, step: int) -> str | None:
        """Checkpoints at `step` unless that step is saved already; returns the newest path (None without model_dir).

        Every worker of a multi-worker run must call it at the same step; only
        the chief's checkpoint is kept.

        Raises:
          NonFiniteError: if a variable to save is NaN/Inf; nothing is written.
        """
        if not self.checkpointer:
            return None
        if step != self.checkpointer.last_saved_step:
            if not self.guard.state_finite():
                raise NonFiniteError(f"checkpoint not written: {self.guard.describe(step)}; the newest finite "
                                     f"checkpoint is {self.checkpointer.latest or 'none'}")
            self.checkpointer.save(step)
            if self.model_dir and self.is_chief:
                save_hook_state(self.hooks, self.model_dir, step)
        return self.checkpointer.latest

    def save_weights(self, name: str) -> str | None:
        """Writes the model's weights (a TF checkpoint) to `<model_dir>/<name>`, for hooks.

        Every worker must call it, as for any multi-worker save; only the chief's
        copy is kept (the others write to their scratch folder and delete it).

        Args:
          name: checkpoint prefix relative to model_dir, e.g. "early_stopping/step-300".

        Returns:
          The prefix under model_dir, or None without a model_dir.

        Raises:
          NonFiniteError: if a weight is NaN/Inf; nothing is written.
        """
        if not self.model_dir:
            return None
        if not self.guard.state_finite():
            raise NonFiniteError(f"weights {name} not written: {self.guard.describe(self.global_step)}")
        weights = tf.train.Checkpoint(model=self.model)
        if self._scratch:
            weights.write(os.path.join(self._scratch, name))
            remove_scratch(self._scratch)
        else:
            weights.write(os.path.join(self.model_dir, name))
        return os.path.join(self.model_dir, name)

    def load_weights(self, name: str) -> bool:
        """Sets the model's weights from `<model_dir>/<name>` (written by save_weights).

        Returns:
          False, changing nothing, when there is no model_dir or no such checkpoint.

        Raises:
          AssertionError: if the checkpoint does not fit the model.
        """
        prefix = os.path.join(self.model_dir, name) if self.model_dir else None
        if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
            return False
        tf.train.Checkpoint(model=self.model).read(prefix).assert_existing_objects_matched()
        return True
