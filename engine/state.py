"""The run's state: everything a checkpoint holds beside the model and the optimizers, in one owner.

`RunState` is the one place that creates, names and lists that state. The
checkpoint (`attach`), the rollback and the finite-weights check
(`float_variables`) and the names a task may not take (`RESERVED`) all read it,
so adding a piece of run state is one edit here:

    # in RunState.__init__ (or create_weight_state, if it needs the model's variables)
    self.warmup_done = tf.Variable(False, trainable=False, name="warmup_done")
    # and in SAVED_SCALARS, to save it under that name:
    SAVED_SCALARS = (..., "warmup_done")

Checkpoint names are those earlier versions wrote (tests/engine/test_checkpoint_compat.py
restores one): `step`, `nonfinite_steps`, `lr_scale`, `rollbacks`,
`grad_accumulators`, `ema`, `lookahead`, and each task item under its own name.
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from engine.errors import UserError

_FIRST = tf.VariableAggregation.ONLY_FIRST_REPLICA


class RunState(tf.Module):
    """Step, non-finite counters, learning-rate scale, rollbacks, accumulators, EMA and Lookahead copies.

    Scalars are one value per run (ONLY_FIRST_REPLICA: every replica computes the
    same); made under the strategy's scope.

    Attributes:
      step: int64, global batches consumed (the data position); saved as "step".
      nonfinite_steps: int64, updates skipped as non-finite over the run.
      nonfinite_streak: int64, skips in a row up to now; not saved (a restored
        run starts without a streak).
      lr_scale: float32, the factor on the learning-rate schedule (rollbacks and
        plateau hooks lower it); saved as "lr_scale".
      rollbacks: int64, rollbacks done over the run.
      accumulators: per trainable variable, the gradient sum of the current
        accumulation window (ON_READ, SUM over replicas); [] without accumulation.
      ema_pairs: (weight, shadow) for every float model weight; [] without EMA.
      slow_pairs: (weight, slow weight) for Lookahead; [] without it.
      items: the task's checkpoint_items, {name: trackable}.
    """

    # Saved under these names, as attributes of the same name.
    SAVED_SCALARS = ("step", "nonfinite_steps", "lr_scale", "rollbacks")
    # Names of the lists of per-weight state in a checkpoint.
    SAVED_LISTS = {"grad_accumulators": "accumulators", "ema": "ema_pairs", "lookahead": "slow_pairs"}
    # Saved since issue 29: the model's random-number states (Dropout's, GaussianNoise's), so that
    # a resumed run draws the masks an unbroken one would. Optional on restore: checkpoints
    # written before lack it, and such a run resumes with fresh random states, as it used to.
    OPTIONAL = ("seed_generators",)
    # What a task's checkpoint_items may not be called.
    RESERVED = frozenset({*SAVED_SCALARS, *SAVED_LISTS, *OPTIONAL, "model", "optimizer", "optimizers",
                          "save_counter"})

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__(name="run_state")
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step", aggregation=_FIRST)
            self.nonfinite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps",
                                               aggregation=_FIRST)
            self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_streak",
                                                aggregation=_FIRST)
            self.lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale", aggregation=_FIRST)
            self.rollbacks = tf.Variable(0, dtype=tf.int64, trainable=False, name="rollbacks", aggregation=_FIRST)
        # Made with the model's variables (create_weight_state), which a subclassed
        # model may not have until its first call.
        self.accumulators: list[tf.Variable] = []
        self.ema_pairs: list[tuple[keras.Variable, tf.Variable]] = []
        self.slow_pairs: list[tuple[keras.Variable, tf.Variable]] = []
        self.seed_states: list[keras.Variable] = []
        self.items: dict[str, object] = {}

    def create_weight_state(self, model: keras.Model, strategy: tf.distribute.Strategy, *, accumulate: bool,
                            ema: bool, lookahead: bool) -> None:
        """Creates the per-weight state the options ask for, under the strategy's scope.

        Args:
          model: the built model.
          accumulate: one gradient accumulator per trainable variable.
          ema: a moving-average shadow per float weight (trainable and BatchNorm statistics).
          lookahead: a slow weight per float weight.
        """
        with strategy.scope():
            # Each replica sums its own micro-batches' gradients.
            self.accumulators = [
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="grad_accumulator",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.SUM)
                for v in model.trainable_variables] if accumulate else []
            self.ema_pairs = _weight_copies(model, "ema") if ema else []
            self.slow_pairs = _weight_copies(model, "lookahead_slow") if lookahead else []
        self.seed_states = seed_generator_states(model)

    def add_items(self, items: Mapping[str, object]) -> None:
        """Adds a task's checkpoint_items.

        Raises:
          ValueError: naming the item, if its name is one the run state or the
            Trainer saves under.
        """
        for name, item in items.items():
            if name in self.RESERVED:
                raise UserError(f"checkpoint_items name {name!r} is taken by the Trainer's own state")
            self.items[name] = item

    def checkpoint_objects(self) -> dict[str, object]:
        """{checkpoint name: trackable} of the run state (the model and optimizers are the Trainer's)."""
        objects: dict[str, object] = {name: getattr(self, name) for name in self.SAVED_SCALARS}
        for name, attribute in self.SAVED_LISTS.items():
            values = getattr(self, attribute)
            if values:
                objects[name] = [v if isinstance(v, tf.Variable) else v[1] for v in values]
        if self.seed_states:
            objects["seed_generators"] = list(self.seed_states)
        objects.update(self.items)
        return objects

    def attach(self, checkpointer) -> None:
        """Adds every checkpoint object to `checkpointer` (an engine.checkpoint.Checkpointer) under its name.

        Called again after new state appears (the task's items); names in OPTIONAL
        may be missing from a checkpoint being restored.
        """
        for name, item in self.checkpoint_objects().items():
            checkpointer.add(name, item, optional=name in self.OPTIONAL)

    def float_variables(self) -> list[tf.Variable]:
        """The float variables among the saved state: copies, accumulators and the task's items."""
        items = [[item] if isinstance(item, (tf.Variable, keras.Variable)) else list(getattr(item, "variables", []))
                 for item in self.items.values()]
        return [self.lr_scale, *(s for _, s in self.ema_pairs), *(s for _, s in self.slow_pairs),
                *self.accumulators, *(v for vs in items for v in vs)]


def seed_generator_states(model: keras.Model) -> list[keras.Variable]:
    """The state variables of the model's keras.random.SeedGenerators (Dropout, GaussianNoise, ...).

    Keras lists them in `model.variables` but not in `model.weights`, and a
    tf.train.Checkpoint of the model does not hold them: without them a resumed run
    would start its dropout masks over from the layers' initial seeds.

    Returns:
      int64 [2] variables (seed, counter), in the model's variable order.
    """
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights and v.path.endswith("seed_generator_state")]


def _weight_copies(model: keras.Model, name: str) -> list[tuple[keras.Variable, tf.Variable]]:
    """(weight, copy) for every float model weight (trainable and BatchNorm statistics).

    The copies (the EMA's shadows, Lookahead's slow weights) start equal to the
    weights and are one per model, not per replica (ONLY_FIRST_REPLICA): every
    replica holds the same weights. Call under the strategy's scope.
    """
    return [(v, tf.Variable(tf.convert_to_tensor(v), trainable=False, name=name, aggregation=_FIRST))
            for v in model.weights if tf.as_dtype(v.dtype).is_floating]
