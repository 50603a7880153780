"""The CIFAR-10 loader reads every official form, made small by the tests themselves."""

import collections
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from datasets import cifar10

N_PER_BATCH = 6  # examples per data batch; 5 train batches + 1 test batch


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(1)
    train = cifar10.Split(rng.integers(0, 256, (5 * N_PER_BATCH, 32, 32, 3), dtype=np.uint8),
                          rng.integers(0, 10, 5 * N_PER_BATCH).astype(np.int32))
    test = cifar10.Split(rng.integers(0, 256, (N_PER_BATCH, 32, 32, 3), dtype=np.uint8),
                         rng.integers(0, 10, N_PER_BATCH).astype(np.int32))
    return train, test


def _chw(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # official row layout


def _write_python_batches(folder, train, test):
    os.makedirs(folder)
    parts = [(f"data_batch_{i + 1}", slice(i * N_PER_BATCH, (i + 1) * N_PER_BATCH)) for i in range(5)]
    for name, split, sl in [(n, train, s) for n, s in parts] + [("test_batch", test, slice(None))]:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": _chw(split.images[sl]), b"labels": split.labels[sl].tolist()}, f)


def _write_binary_batches(folder, train, test):
    os.makedirs(folder)
    for i in range(5):
        sl = slice(i * N_PER_BATCH, (i + 1) * N_PER_BATCH)
        rec = np.concatenate([train.labels[sl, None].astype(np.uint8), _chw(train.images[sl])], axis=1)
        rec.tofile(os.path.join(folder, f"data_batch_{i + 1}.bin"))
    np.concatenate([test.labels[:, None].astype(np.uint8), _chw(test.images)], axis=1).tofile(
        os.path.join(folder, "test_batch.bin"))


def _write_pngs(root, split_name, split):
    """Lossless PNGs in class folders (named so that sorted order = class id)."""
    rows = []
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        rel = os.path.join(split_name, f"{label}_{cifar10.CLASS_NAMES[label]}", f"{i:04d}.png")
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        tf.io.write_file(os.path.join(root, rel), tf.io.encode_png(image))
        rows.append(f"{rel},{label}\n")
    return rows


def _assert_same(data, train, test):
    np.testing.assert_array_equal(data.train.images, train.images)
    np.testing.assert_array_equal(data.train.labels, train.labels)
    np.testing.assert_array_equal(data.test.images, test.images)
    np.testing.assert_array_equal(data.test.labels, test.labels)


def test_python_batches_folder_and_archive(tmp_path, arrays):
    train, test = arrays
    folder = tmp_path / "cifar-10-batches-py"
    _write_python_batches(str(folder), train, test)
    _assert_same(cifar10.load(str(tmp_path)), train, test)
    _assert_same(cifar10.load(str(folder)), train, test)
    archive = tmp_path / "arch" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    _assert_same(cifar10.load(str(archive.parent)), train, test)
    _assert_same(cifar10.load(str(archive)), train, test)


def test_binary_batches(tmp_path, arrays):
    train, test = arrays
    _write_binary_batches(str(tmp_path / "cifar-10-batches-bin"), train, test)
    _assert_same(cifar10.load(str(tmp_path)), train, test)


def test_class_folders_and_csv_indexes(tmp_path, arrays):
    train, test = arrays
    order = np.argsort(train.labels, kind="stable")  # folder listing groups by class
    folders = tmp_path / "folders"
    _write_pngs(str(folders), "train", train)
    _write_pngs(str(folders), "test", test)
    data = cifar10.load(str(folders))
    # Class ids come from sorted folder names; within a class, files sort by name.
    np.testing.assert_array_equal(data.train.labels, train.labels[order])
    np.testing.assert_array_equal(data.train.images, train.images[order])

    indexed = tmp_path / "indexed"
    for split_name, split in (("train", train), ("test", test)):
        rows = _write_pngs(str(indexed), split_name, split)
        (indexed / f"{split_name}.csv").write_text("".join(rows))
    _assert_same(cifar10.load(str(indexed)), train, test)  # CSV order is kept


def test_missing_and_unknown_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"--data_dir=.*nowhere does not exist"):
        cifar10.load(str(tmp_path / "nowhere"))
    (tmp_path / "README").write_text("nothing here")
    with pytest.raises(ValueError, match="holds no CIFAR-10 in a known form"):
        cifar10.load(str(tmp_path))


def test_csv_errors_name_file_and_line(tmp_path, arrays):
    train, test = arrays
    rows = _write_pngs(str(tmp_path), "train", train)
    (tmp_path / "test.csv").write_text("".join(_write_pngs(str(tmp_path), "test", test)))
    csv = tmp_path / "train.csv"
    for bad_row, message in [("train/x.png,3", "does not exist"), (rows[0].split(",")[0] + ",cat", "not an integer"),
                             (rows[0].split(",")[0] + ",10", r"outside \[0, 10\)"), ("a,b,c", "expected")]:
        csv.write_text("".join(rows[:2]) + bad_row + "\n")
        with pytest.raises(ValueError, match=rf"train\.csv:3: .*{message}"):
            cifar10.load(str(tmp_path))
    csv.write_text("")
    with pytest.raises(ValueError, match="train.csv has no rows"):
        cifar10.load(str(tmp_path))


def test_undecodable_image_is_named(tmp_path, arrays):
    train, test = arrays
    _write_pngs(str(tmp_path), "train", train)
    _write_pngs(str(tmp_path), "test", test)
    victim = sorted((tmp_path / "test").rglob("*.png"))[2]
    victim.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"{re.escape(str(victim))}: not a decodable JPEG/PNG image"):
        cifar10.load(str(tmp_path))
    data = cifar10.load(str(tmp_path), skip_bad=True)  # --skip_bad_examples: left out and listed
    assert len(data.test.labels) == len(test.labels) - 1 and len(data.skipped) == 1 and str(victim) in data.skipped[0]


def test_empty_class_folder_is_named(tmp_path, arrays):
    train, test = arrays
    _write_pngs(str(tmp_path), "train", train)
    _write_pngs(str(tmp_path), "test", test)
    (tmp_path / "test" / "zz_empty").mkdir()
    with pytest.raises(ValueError, match="zz_empty has no"):
        cifar10.load(str(tmp_path))


def test_truncated_binary_batch_is_named(tmp_path, arrays):
    train, test = arrays
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary_batches(str(folder), train, test)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="data_batch_3.bin has .* not a multiple"):
        cifar10.load(str(tmp_path))


def test_failed_download_says_how_to_pass_data_dir(monkeypatch):
    import keras

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ValueError, match="download.*network is unreachable.*--data_dir"):
        cifar10.load(None)


def test_keras_download_cache_is_read_by_the_safe_unpickler(monkeypatch, tmp_path, arrays):
    import keras

    train, test = arrays
    folder = tmp_path / "cifar-10-batches-py"
    _write_python_batches(str(folder), train, test)
    monkeypatch.setattr(keras.utils, "get_file", lambda **kwargs: str(tmp_path))
    _assert_same(cifar10.load(None), train, test)
    marker = tmp_path / "payload_ran"
    with open(folder / "data_batch_1", "wb") as f:  # a cache someone else filled
        pickle.dump(_RunsACommand(f"touch {marker}"), f)
    with pytest.raises(ValueError, match=r"data_batch_1: refused .*\.system"):
        cifar10.load(None)
    assert not marker.exists()


def test_real_cifar10_layout(cifar10_dir):
    paths, labels = cifar10.read_csv_index(os.path.join(cifar10_dir, "test.csv"))
    assert len(paths) == 10000 and np.bincount(labels).tolist() == [1000] * 10
    images = cifar10.decode_images(paths[:5])
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8


class _RunsACommand:
    """A pickle payload: unpickling it calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_crafted_python_batch_is_refused_before_its_payload_runs(tmp_path, arrays, protocol):
    train, test = arrays
    folder = tmp_path / "cifar-10-batches-py"
    _write_python_batches(str(folder), train, test)
    marker = tmp_path / "payload_ran"
    with open(folder / "data_batch_3", "wb") as f:  # A batch in the middle: the first two load fine.
        pickle.dump({b"data": _RunsACommand(f"touch {marker}"), b"labels": [0]}, f, protocol=protocol)
    global_name = re.escape(f"{os.system.__module__}.system")  # posix.system here
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'data_batch_3'))}: refused .*{global_name}"):
        cifar10.load(str(folder))
    assert not marker.exists()

    archive = tmp_path / "arch" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(ValueError, match=rf"{re.escape(str(archive))}:data_batch_3: refused .*{global_name}"):
        cifar10.load(str(archive.parent))
    assert not marker.exists()
    assert sorted(os.listdir(archive.parent)) == ["cifar-10-python.tar.gz"]  # nothing extracted beside it


def test_python_batches_in_every_pickle_protocol_still_load(tmp_path, arrays):
    train, test = arrays
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        folder = tmp_path / f"p{protocol}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(5):
            sl = slice(i * N_PER_BATCH, (i + 1) * N_PER_BATCH)
            with open(folder / f"data_batch_{i + 1}", "wb") as f:  # the official keys, numpy data, list labels
                pickle.dump({b"batch_label": b"training batch", b"labels": train.labels[sl].tolist(),
                             b"data": _chw(train.images[sl]), b"filenames": [b"x.png"] * N_PER_BATCH},
                            f, protocol=protocol)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"labels": test.labels.tolist(), b"data": _chw(test.images)}, f, protocol=protocol)
        _assert_same(cifar10.load(str(folder)), train, test)


def test_a_pickle_naming_an_unknown_class_is_refused_by_name(tmp_path, arrays):
    train, test = arrays
    folder = tmp_path / "cifar-10-batches-py"
    _write_python_batches(str(folder), train, test)
    with open(folder / "test_batch", "wb") as f:  # collections.OrderedDict: harmless, but not in the format
        pickle.dump({b"data": _chw(test.images), b"labels": test.labels.tolist(), b"x": collections.OrderedDict()}, f)
    with pytest.raises(ValueError, match=r"test_batch: refused .*collections\.OrderedDict"):
        cifar10.load(str(folder))


def test_real_lossless_copy_loads_with_its_documented_order_and_statistics(cifar10_bin_dir):
    data = cifar10.load(cifar10_bin_dir)
    assert data.train.images.shape == (50000, 32, 32, 3) and data.test.images.shape == (10000, 32, 32, 3)
    # Record k holds class k mod 10 (the copy's README).
    np.testing.assert_array_equal(data.train.labels, np.arange(50000) % 10)
    np.testing.assert_array_equal(data.test.labels, np.arange(10000) % 10)
    mean = data.train.images.reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
