"""The index-addressed training pipeline: exact order, sharding and resume."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import in_memory

N, GB = 70, 8  # 8 steps per epoch, 6 examples dropped


def _fn(seed=0):
    # Labels are the example ids, so every batch says which examples it holds.
    images = np.zeros((N, 4, 4, 3), np.uint8)
    return in_memory.train_dataset_fn(images, np.arange(N, dtype=np.int32), global_batch_size=GB, seed=seed)


def _ctx(pipelines=1, pipeline_id=0, replicas=1):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                      num_replicas_in_sync=replicas)


def _batches(ds):
    return [y.numpy().tolist() for _, y in ds]


def test_one_epoch_uses_each_example_at_most_once_and_drops_the_remainder():
    batches = _batches(_fn()(_ctx(), 0, 0))
    assert len(batches) == in_memory.steps_per_epoch(N, GB) == 8
    ids = sum(batches, [])
    assert all(len(b) == GB for b in batches) and len(set(ids)) == len(ids) == 64


def test_order_is_fixed_by_seed_and_epoch():
    fn = _fn()
    assert _batches(fn(_ctx(), 0, 0)) == _batches(_fn()(_ctx(), 0, 0))
    assert _batches(fn(_ctx(), 0, 0)) != _batches(fn(_ctx(), 1, 0))
    assert _batches(fn(_ctx(), 0, 0)) != _batches(_fn(seed=1)(_ctx(), 0, 0))


def test_starting_mid_epoch_gives_the_rest_of_the_same_epoch():
    fn = _fn()
    full = list(fn(_ctx(), 2, 0))
    tail = list(fn(_ctx(), 2, 5))
    assert len(tail) == 3
    for (x1, y1), (x2, y2) in zip(full[5:], tail):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)  # same augmentation too


def test_replicas_and_pipelines_split_the_same_global_batches():
    fn = _fn()
    global_batches = _batches(fn(_ctx(), 0, 0))
    # One pipeline feeding two replicas: consecutive per-replica batches.
    two_replicas = _batches(fn(_ctx(replicas=2), 0, 0))
    assert [a + b for a, b in zip(two_replicas[::2], two_replicas[1::2])] == global_batches
    # Two pipelines (workers), one replica each.
    p0 = _batches(fn(_ctx(2, 0, 2), 0, 0))
    p1 = _batches(fn(_ctx(2, 1, 2), 0, 0))
    assert [a + b for a, b in zip(p0, p1)] == global_batches


def test_eval_dataset_keeps_every_example_once_with_a_partial_last_batch():
    ds = in_memory.eval_dataset(np.zeros((N, 4, 4, 3), np.uint8), np.arange(N), global_batch_size=GB)
    batches = _batches(ds)
    assert sum(batches, []) == list(range(N)) and len(batches[-1]) == N % GB


def test_fewer_examples_than_one_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        in_memory.train_dataset_fn(np.zeros((3, 4, 4, 3), np.uint8), np.arange(3), global_batch_size=GB, seed=0)
