"""engine.summaries: one writer per split, nothing written where it must not be."""

import glob
import os

import tensorflow as tf

from engine.summaries import Summaries


def _tags(folder):
    found = []
    for path in glob.glob(os.path.join(folder, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            found += [(value.tag, event.step) for value in event.summary.value]
    return sorted(found)


def test_scalars_and_histograms_go_to_their_split(tmp_path):
    summaries = Summaries(str(tmp_path))
    summaries.scalars("train", {"loss": 1.5, "accuracy": 0.25}, step=3)
    summaries.scalars("eval", {"loss": 2.0}, step=3)
    summaries.histograms("train", {"kernel": tf.ones([4])}, step=4)
    summaries.flush()
    assert _tags(tmp_path / "train") == [("accuracy", 3), ("kernel", 4), ("loss", 3)]
    assert _tags(tmp_path / "eval") == [("loss", 3)]


def test_a_non_chief_or_a_run_without_model_dir_writes_nothing(tmp_path):
    Summaries(str(tmp_path), enabled=False).scalars("train", {"loss": 1.0}, step=1)
    Summaries(None).scalars("train", {"loss": 1.0}, step=1)
    assert not os.listdir(tmp_path)
