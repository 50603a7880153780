"""Checkpoints of a training run: tf.train.CheckpointManager with clear restore errors."""

from __future__ import annotations

import tensorflow as tf


class Checkpointer:
    """Saves and restores the trackable state of a run under one folder.

    A thin layer over tf.train.CheckpointManager, which does the rotation (keep the
    last K) and the atomic write of its index file. What it adds: checkpoints are
    numbered by the optimizer step, and a checkpoint that does not fit the model
    (another architecture, another number of classes) stops with an error naming
    its path, before anything is written.

    Args:
      directory: folder of the checkpoints (`ckpt-<step>.index`, `.data-*`, and
        the `checkpoint` index file). Created on the first save, not before.
      max_to_keep: how many recent checkpoints to keep, >= 1.
      **trackables: what to save, e.g. model=..., optimizer=...
    """

    def __init__(self, directory: str, *, max_to_keep: int, **trackables):
        if max_to_keep < 1:
            raise ValueError(f"keep_checkpoints={max_to_keep} must be at least 1")
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or None."""
        return self.manager.latest_checkpoint

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint, if any.

        Returns:
          Its path prefix, or None when the folder holds no checkpoint.

        Raises:
          ValueError: naming the checkpoint, if its variables do not match the
            objects being restored (shape or structure). Nothing is deleted.
        """
        path = self.latest
        if path is None:
            return None
        try:
            status = self.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"checkpoint {path} does not match this model ({first}); it was left as it is: "
                "use another --model_dir, or the flags that wrote it") from e
        return path

    def save(self, step: int) -> str:
        """Writes a checkpoint numbered `step` and drops the oldest beyond max_to_keep."""
        return self.manager.save(checkpoint_number=step)
