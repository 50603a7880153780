"""TensorBoard summaries of a run: one tf.summary writer per split under model_dir (chief only)."""

from __future__ import annotations

import os
from typing import Mapping

import tensorflow as tf


class Summaries:
    """Writes scalars and histograms to `<model_dir>/<split>` ("train", "eval").

    Args:
      model_dir: the run's folder; None writes nothing.
      enabled: False on a non-chief worker (only the chief writes).
    """

    def __init__(self, model_dir: str | None, enabled: bool = True):
        self.model_dir, self.enabled = model_dir, bool(model_dir) and enabled
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.model_dir, split))
        return self._writers[split]

    def scalars(self, split: str, values: Mapping[str, float], step: int) -> None:
        """One scalar per name at `step`."""
        if not self.enabled:
            return
        with self._writer(split).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def histograms(self, split: str, tensors: Mapping[str, tf.Tensor], step: int) -> None:
        """One histogram per name at `step`."""
        if not self.enabled:
            return
        with self._writer(split).as_default(step=step):
            for name, value in tensors.items():
                tf.summary.histogram(name, tf.convert_to_tensor(value))

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()
