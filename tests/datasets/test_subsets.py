"""datasets.subsets: class subsets and labels-per-class limits (--classes, --labels_per_class)."""

import numpy as np
import pytest

from datasets import subsets
from engine.errors import UserError


def _labels():
    rng = np.random.default_rng(3)
    return rng.permutation(np.repeat(np.arange(10), 50)).astype(np.int32)  # 50 of each class, shuffled


def test_classes_are_kept_whole_and_renumbered_in_the_order_given():
    labels = _labels()
    keep, new = subsets.select(labels, [7, 2])
    assert np.all(np.diff(keep) > 0)  # source order
    assert sorted(keep.tolist()) == np.flatnonzero((labels == 7) | (labels == 2)).tolist()
    assert np.array_equal(new, np.where(labels[keep] == 7, 0, 1))
    assert new.dtype == np.int32


def test_labels_per_class_draws_that_many_of_each_class_by_seed():
    labels = _labels()
    keep, new = subsets.select(labels, None, 7, seed=1)
    assert np.array_equal(np.bincount(new), np.full(10, 7))
    assert np.array_equal(new, labels[keep])  # no renumbering without --classes
    again, _ = subsets.select(labels, None, 7, seed=1)
    other, _ = subsets.select(labels, None, 7, seed=2)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)


def test_a_class_draws_the_same_images_whatever_other_classes_are_kept():
    labels = _labels()
    few, few_new = subsets.select(labels, [5, 6], 10, seed=4)
    more, more_new = subsets.select(labels, [5, 6, 7], 10, seed=4)
    assert np.array_equal(few[few_new == 0], more[more_new == 0])
    assert np.array_equal(few[few_new == 1], more[more_new == 1])


@pytest.mark.parametrize("classes, per_class, message", [
    ([3, 3], None, "lists a class twice"),
    ([10], None, "class ids 0..9, not 10"),
    ([1], 51, "--labels_per_class=51: the training data has only 50 examples of class 1"),
    (None, 0, "--labels_per_class=0 must be at least 1"),
])
def test_bad_subsets_are_refused_by_name(classes, per_class, message):
    with pytest.raises(UserError, match=message):
        subsets.select(_labels(), classes, per_class)


def test_image_folders_are_subset_and_renamed_through_the_flags(tmp_path):
    """--classes and --labels_per_class on a --train_data/--eval_data folder source (launch.tasks.classification)."""
    import tensorflow as tf

    from launch.config import TrainConfig
    from launch.tasks.classification import load_images

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("test", 3)):
        for name in ("apple", "bear", "cat"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                tf.io.write_file(str(tmp_path / split / name / f"{i}.png"), tf.io.encode_png(pixels))
    config = TrainConfig.create(train_data=str(tmp_path / "train"), eval_data=str(tmp_path / "test"),
                                model_dir=str(tmp_path / "m"), classes=(2, 0), labels_per_class=2, augment="none")
    pipelines, _ = load_images(config, global_batch=2, progress=False)
    assert pipelines.class_names == ("cat", "apple")
    assert (pipelines.num_train, pipelines.num_eval) == (4, 6)  # 2 per kept class; every test image of both
    labels = np.concatenate([y.numpy() for _, y in pipelines.eval_data])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
