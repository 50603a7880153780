"""Lookahead (engine.LookaheadOptions): the slow weights follow their rule on every replica, and resume exactly."""

import numpy as np
import pytest
import tensorflow as tf

from engine import LookaheadOptions
from tests.engine.test_features import _data, _input, _trainer

EVERY, ALPHA, STEPS = 3, 0.4, 8


def _reference(options: LookaheadOptions, steps: int):
    """A trainer without lookahead, trained `EVERY` steps at a time with the rule applied by hand in numpy.

    Returns the model weights and the slow weights after `steps` steps.
    """
    x, y = _data()
    trainer = _trainer(batch=16)
    slow = [w.copy() for w in trainer.model.get_weights()]
    syncs = sorted(set(range(EVERY, steps + 1, EVERY)) | ({options.ramp_steps} if options.ramp_steps else set()))
    for u in syncs:
        trainer.fit(_input(x, y, 16), train_steps=u)
        alpha = options.alpha if options.ramp_steps is None else \
            1 - (1 - options.alpha) * min(u / options.ramp_steps, 1) ** 3
        slow = [s + alpha * (w - s) for s, w in zip(slow, trainer.model.get_weights())]
        trainer.model.set_weights(slow)
    if trainer.global_step < steps:
        trainer.fit(_input(x, y, 16), train_steps=steps)
    return trainer.model.get_weights(), slow


@pytest.mark.parametrize("ramp", [None, STEPS], ids=["constant", "cubic-ramp"])
@pytest.mark.parametrize("replicas", [1, 2], ids=["1-replica", "2-replicas"])
def test_slow_weights_follow_the_lookahead_rule_on_every_replica(replicas, ramp, two_replicas):
    strategy = two_replicas if replicas == 2 else tf.distribute.get_strategy()
    options = LookaheadOptions(every_steps=EVERY, alpha=ALPHA, ramp_steps=ramp)
    x, y = _data()
    trainer = _trainer(strategy, batch=16, lookahead=options)
    start = [w.copy() for w in trainer.model.get_weights()]
    trainer.fit(_input(x, y, 16), train_steps=STEPS)
    weights, slow = _reference(options, STEPS)
    assert not all(np.allclose(a, b) for a, b in zip(weights, start))  # it trained
    for (variable, slow_variable), expected, expected_slow in zip(trainer.state.slow_pairs, weights, slow):
        copies = strategy.experimental_local_results(variable.value)
        slow_copies = strategy.experimental_local_results(slow_variable)
        assert len(copies) == len(slow_copies) == replicas
        for copy, slow_copy in zip(copies, slow_copies):
            np.testing.assert_allclose(copy.numpy(), expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(slow_copy.numpy(), expected_slow, rtol=1e-5, atol=1e-6)


def test_lookahead_differs_from_plain_training_and_alpha_one_is_plain_training():
    x, y = _data()
    plain = _trainer(batch=16)
    plain.fit(_input(x, y, 16), train_steps=6)
    pulled = _trainer(batch=16, lookahead=LookaheadOptions(every_steps=2, alpha=0.5))
    pulled.fit(_input(x, y, 16), train_steps=6)
    neutral = _trainer(batch=16, lookahead=LookaheadOptions(every_steps=2, alpha=1.0))
    neutral.fit(_input(x, y, 16), train_steps=6)
    assert not all(np.allclose(a, b) for a, b in zip(pulled.model.get_weights(), plain.model.get_weights()))
    for a, b in zip(neutral.model.get_weights(), plain.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_resumed_run_keeps_its_slow_weights(tmp_path):
    options = LookaheadOptions(every_steps=EVERY, alpha=ALPHA, ramp_steps=STEPS)
    x, y = _data()
    straight = _trainer(batch=16, lookahead=options)
    straight.fit(_input(x, y, 16), train_steps=STEPS)
    first = _trainer(batch=16, lookahead=options, model_dir=str(tmp_path))
    first.fit(_input(x, y, 16), train_steps=4)  # stops between two syncs: slow != weights
    assert not all(np.allclose(s.numpy(), np.asarray(w)) for w, s in first.state.slow_pairs)
    resumed = _trainer(batch=16, lookahead=options, model_dir=str(tmp_path))
    resumed.restore()
    assert resumed.global_step == 4
    resumed.fit(_input(x, y, 16), train_steps=STEPS)
    for a, b in zip(resumed.model.get_weights(), straight.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for (_, a), (_, b) in zip(resumed.state.slow_pairs, straight.state.slow_pairs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(every_steps=0), "every_steps=0 must be at least 1"),
    (dict(alpha=0.0), r"alpha=0.0 must be in \(0, 1\]"),
    (dict(ramp_steps=0), "ramp_steps=0 must be at least 1"),
])
def test_bad_lookahead_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LookaheadOptions(**kwargs)
