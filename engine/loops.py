"""The Trainer's compiled loops (a mixin): `steps_per_loop` steps per tf.function call, and evaluation.

Graph discipline, as Orbit's loop functions: one tf.function per loop, traced
once; the step count is a tensor argument, so a different count never
retraces; numpy, printing and file I/O stay in the eager controller
(engine/controller.py). Each step is `strategy.run` of one replica's step:
the Trainer's `train_step`, then the state its layers updated kept finite and
averaged over the replicas (engine/replica_state.py).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from engine import batch_norm, replica_state
from engine import inputs
from engine.progress import EpochProgress
from engine.errors import UserError

# Upper bound for the in-graph evaluation loop, which stops when the data ends.
_MAX_EVAL_STEPS = 2**62


def op_determinism() -> bool:
    """Whether tf.config.experimental.enableop_determinism() was called (no public getter)."""
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())


class LoopsMixin:
    """Trainer methods of the compiled loops; called by the Trainer and its Controller."""

    def _note_trace(self, name: str, signature) -> None:
        """Runs while `name` is traced: warns when it traces again with a new input signature."""
        shown = str(signature)
        if name in self._traced and self._traced[name] != shown:
            message = (f"{name} traced again with a new input signature (each retrace recompiles the step; "
                       f"keep batch shapes and dtypes fixed): was {self._traced[name]}, now {shown}")
            self.retraces.append(message)
            logging.warning(message)
            if self.is_chief:
                EpochProgress.write(f"warning: {message}")
        self._traced[name] = shown

    def _train_loop_fn(self, iterator, num_steps: tf.Tensor) -> None:
        self._note_trace("Trainer.train_step", iterator.element_spec)
        for _ in tf.range(num_steps):
            if not self.multi_worker and self._stop.flag:  # SIGTERM/SIGINT: stop before the next step.
                break
            if self._coordinator or op_determinism():
                batch = next(iterator)  # (tf.timestamp refuses to run under op determinism.)
            else:
                # Input wait: the time next() blocks. Stateful ops keep program order
                # in a tf.function, so the stamps bracket the fetch of each step.
                start = tf.timestamp()
                with tf.control_dependencies([start]):
                    batch = next(iterator)
                with tf.control_dependencies(tf.nest.flatten(self._local_tensors(batch))):
                    self._input_wait.assign_add(tf.timestamp() - start)
            # Read only when the lookahead or the EMA needs it.
            updates = self._updates_applied() if (self.state.ema_pairs or self.state.slow_pairs) else None
            self.strategy.run(self._replica_train_step, args=(batch,))
            self.state.step.assign_add(1)
            # After the replicas' state was averaged, so slow weights and shadows follow
            # the mean; only when the step applied an update (not a skipped or
            # accumulating one).
            if updates is not None:
                applied = self._updates_applied() > updates
                if self.state.slow_pairs:
                    tf.cond(applied, self._update_lookahead, lambda: None)
                if self.state.ema_pairs:
                    tf.cond(applied, self._update_ema, lambda: None)

    def _replica_train_step(self, batch) -> None:
        """One replica's step: `train_step`, then the state its layers updated, made finite and equal.

        Raises:
          ValueError: at trace time, if train_step applied no update through
            apply_gradients while a feature that needs it (ema_decay,
            accumulation, the non-finite guard) is on.
        """
        models = [self.model] + [item for item in self.checkpoint_items().values()
                                 if isinstance(item, keras.layers.Layer)]  # e.g. a GAN's discriminator
        state = [v for m in models for v in replica_state.updated_state(m)]
        before = [tf.identity(tf.convert_to_tensor(v)) for v in state]
        calls, self._mode = self._apply_calls, "train"
        self.train_step(batch)
        if self._apply_calls == calls:
            needs = [name for name, on in (("ema_decay", self.state.ema_pairs), ("lookahead", self.state.slow_pairs),
                                           ("accumulation_steps", self.accumulation_steps > 1),
                                           ("the non-finite guard (nonfinite_limit)",
                                            self.nonfinite_limit is not None)) if on]
            if needs:
                raise UserError(f"{type(self).__name__}.train_step applied no update through "
                                 f"self.apply_gradients, so {', '.join(needs)} would silently do nothing; call "
                                 "self.apply_gradients(gradients, variables) instead of the optimizer's (or turn "
                                 "them off: nonfinite_limit=None)")
        replica_state.keep_finite(state, before)
        replica_state.average([v for m in models for v in replica_state.local_state(m, self.strategy)])

    def _local_tensors(self, batch):
        """The tensors of a (distributed) batch, for control dependencies."""
        return [t for v in tf.nest.flatten(batch, expand_composites=False)
                for t in (self.strategy.experimental_local_results(v) if self.strategy.num_replicas_in_sync > 1
                          else [v])]

    def _eval_loop_fn(self, iterator) -> None:
        self._note_trace("Trainer.test_step", iterator.element_spec)
        for _ in tf.range(_MAX_EVAL_STEPS):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            self.strategy.run(self._replica_test_step, args=(optional.get_value(),))

    def _replica_test_step(self, batch) -> None:
        self._mode = "eval"
        try:
            self.test_step(batch)
        finally:
            self._mode = "train"

    def _inline_eval_fn(self, data) -> None:
        # Parameter-server training: the coordinator evaluates on its own device.
        for batch in data:
            self._replica_test_step(batch)

    def input_wait_seconds(self) -> float | None:
        """Seconds the compiled loops waited for input since the last call (None where not measured)."""
        if self._coordinator or op_determinism():
            return None
        wait = float(self._input_wait.numpy())
        self._input_wait.assign(0.0)
        return wait

    def run_loop(self, iterator, num_steps: int) -> dict[str, float]:
        """Runs `num_steps` training steps from `iterator` (fewer if a signal stops it); returns the train metrics."""
        if not self._coordinator:
            self._train_loop(iterator, tf.constant(num_steps, tf.int64))
        else:
            # One closure per step: the coordinator hands each to a free worker.
            one = tf.constant(1, tf.int64)
            for _ in range(num_steps):
                self._coordinator.schedule(self._train_loop, args=(iterator, one))
            self._coordinator.join()
        return {name: float(m.result()) for name, m in self.train_metrics.items()}

    def _with_kernels(self, fn: Callable) -> Callable:
        """`fn`, tracing with the model's BatchNorm layers synchronized or fused, as configured."""
        if not self.fused_batch_norm and not self.sync_batch_norm:
            return fn

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            # Synchronized layers are not eligible for the fused kernel: set them first.
            with contextlib.ExitStack() as stack:
                if self.sync_batch_norm:
                    stack.enter_context(batch_norm.synchronized(self.model))
                if self.fused_batch_norm:
                    stack.enter_context(batch_norm.fused(self.model))
                return fn(*args, **kwargs)
        return traced

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """Evaluates on every example of `data` once, the last partial batch included.

        Args:
          data: finite tf.data.Dataset of (features, labels) global batches; a
            partial last batch is split over the replicas as it comes.

        Returns:
          Metric names to float values (e.g. {"loss": 0.9, "accuracy": 0.7}).
        """
        for metric in self.eval_metrics.values():
            metric.reset_state()
        with self.ema_weights():
            if self._coordinator:
                self._eval_loop(data)
            else:
                # A fresh iterator each time: evaluation always starts at the first batch.
                iterator = iter(self.strategy.experimental_distribute_dataset(inputs.without_autotune_model(data)))
                self._eval_loop(iterator)
                del iterator  # Deleted here: quick without the autotuning model (see inputs).
        return {name: float(m.result()) for name, m in self.eval_metrics.items()}
