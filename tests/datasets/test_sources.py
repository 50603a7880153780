"""Every source trains a small model, and each bad input fails with a message naming the culprit."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import images, in_memory, sources, tfrecord
from engine import DatasetInput, EpochInput, Trainer, sparse_accuracy

SIZE, CLASSES = 8, 3


def _write_images(folder, n_per_class=6, size=SIZE, classes=("cat", "dog", "emu"), fmt="jpeg"):
    """Class folders of small images whose class is the brightest channel; returns (paths, labels)."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(n_per_class):
            image = rng.integers(0, 100, (size, size, 3)).astype(np.uint8)
            image[..., label % 3] += 150
            encoded = tf.io.encode_jpeg(image, quality=100) if fmt == "jpeg" else tf.io.encode_png(image)
            path = os.path.join(folder, name, f"{i:03d}.{'jpg' if fmt == 'jpeg' else 'png'}")
            tf.io.write_file(path, encoded)
            paths.append(path)
            labels.append(label)
    return paths, labels


def _write_csv(csv_path, rows):
    with open(csv_path, "w") as f:
        f.writelines(f"{r}\n" for r in rows)


def _fit(train_input, model, steps=3, batch=6):
    """Trains `steps` steps; returns (trainer, weights before)."""
    optimizer = keras.optimizers.SGD(0.05)
    trainer = Trainer(metrics=sparse_accuracy, model=model, optimizer=optimizer, global_batch_size=batch, progress=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None))
    before = [w.copy() for w in model.get_weights()]
    history = trainer.fit(train_input, train_steps=steps)
    assert trainer.global_step == steps
    assert np.isfinite(history["loss"][-1])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    return trainer


def _cnn(classes=CLASSES):
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)])


def _image_input(index, batch=6, **kwargs):
    p = images.build(index, global_batch_size=batch, progress=False, **kwargs)
    return EpochInput(p.train_fn, p.steps_per_epoch), p


# --- Each source trains ----------------------------------------------------------------

def test_class_folders_train_and_labels_follow_sorted_folder_names(tmp_path):
    _write_images(str(tmp_path))
    index = sources.class_folders(str(tmp_path))
    assert index.class_names == ("cat", "dog", "emu")
    assert index.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    train, p = _image_input(index)
    assert p.image_shape == (SIZE, SIZE, 3) and p.num_train == 18
    _fit(train, _cnn())


@pytest.mark.parametrize("cache", ["decoded", "encoded", "none"])
def test_csv_index_trains_in_every_cache_mode(tmp_path, cache):
    paths, labels = _write_images(str(tmp_path / "img"))
    _write_csv(tmp_path / "index.csv", [f"{os.path.relpath(p, tmp_path)},{y}" for p, y in zip(paths, labels)])
    index = sources.image_csv(str(tmp_path / "index.csv"))
    assert index.origins[4] == f"{tmp_path / 'index.csv'}:5"
    train, _ = _image_input(index, cache=cache, augment_names="cifar,jitter")
    _fit(train, _cnn())


def test_streaming_and_decoded_pipelines_give_the_same_batches(tmp_path):
    _write_images(str(tmp_path), fmt="png")  # PNG: lossless, so decoding is exact
    index = sources.class_folders(str(tmp_path))
    ctx = tf.distribute.InputContext()
    batches = {}
    for cache in ("decoded", "none"):
        p = images.build(index, global_batch_size=6, progress=False, cache=cache, augment_names="cifar",
                         normalize={"kind": "unit"})
        batches[cache] = [(x.numpy(), y.numpy()) for x, y in p.train_fn(ctx, 1, 0)]
    for (xa, ya), (xb, yb) in zip(batches["decoded"], batches["none"]):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(xa, xb, atol=1e-6)


def test_tfrecord_round_trip_trains_and_keeps_bytes_labels_and_names(tmp_path):
    _write_images(str(tmp_path / "img"))
    index = sources.class_folders(str(tmp_path / "img"))
    written = tfrecord.write(index, str(tmp_path / "rec" / "train"), num_shards=4, progress=False)
    assert len(written) == 4 and all(os.path.isfile(p) for p in written)
    back = tfrecord.read_index(str(tmp_path / "rec" / "train-*.tfrecord"))
    assert back.class_names == index.class_names
    by_path = {p: (y, open(p, "rb").read()) for p, y in zip(index.paths, index.labels)}
    assert sorted(back.paths) == sorted(index.paths)
    for path, label, data in zip(back.paths, back.labels, back.encoded):
        assert (label, data) == by_path[path]
    train, _ = _image_input(back)
    _fit(train, _cnn())



def test_streamed_tfrecords_read_by_offset_give_the_same_batches_as_memory_and_resume(tmp_path):
    _write_images(str(tmp_path / "img"), n_per_class=7, fmt="png")
    index = sources.class_folders(str(tmp_path / "img"))
    tfrecord.write(index, str(tmp_path / "rec" / "train"), num_shards=3, progress=False)
    pattern = str(tmp_path / "rec" / "train-*.tfrecord")
    held, streamed = tfrecord.read_index(pattern), tfrecord.read_index(pattern, keep_bytes=False)
    assert streamed.encoded is None and streamed.records is not None
    assert streamed.origins == held.origins and streamed.labels.tolist() == held.labels.tolist()
    ids = np.array([20, 0, 13, 7])  # Across shards, out of order.
    assert list(streamed.records.encoded_images(tf.constant(ids)).numpy()) == [held.encoded[i] for i in ids]
    assert images.read_encoded(streamed).encoded == held.encoded  # --cache=encoded from a streamed index
    ctx = tf.distribute.InputContext()

    def batches(idx, cache, start_step=0):
        p = images.build(idx, idx, global_batch_size=4, progress=False, cache=cache, augment_names="cifar",
                         normalize={"kind": "unit"})
        return p, [(x.numpy(), y.numpy()) for x, y in p.train_fn(ctx, 2, start_step)]

    p_held, from_memory = batches(held, "encoded")
    p_streamed, from_disk = batches(streamed, "none")
    assert len(from_disk) == len(from_memory) == p_streamed.steps_per_epoch == 5
    for (xa, ya), (xb, yb) in zip(from_memory, from_disk):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    _, resumed = batches(streamed, "none", start_step=3)  # Index-addressed: a resume reads the same tail.
    for (xa, ya), (xb, yb) in zip(from_disk[3:], resumed):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    eval_held = [(x.numpy(), y.numpy()) for x, y in p_held.eval_data]
    eval_streamed = [(x.numpy(), y.numpy()) for x, y in p_streamed.eval_data]
    assert sum(len(y) for _, y in eval_streamed) == 21  # Every example once, the last batch partial.
    for (xa, ya), (xb, yb) in zip(eval_held, eval_streamed):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    train, _ = _image_input(streamed, cache="none")
    _fit(train, _cnn())


def test_an_undecodable_image_in_a_streamed_tfrecord_names_shard_and_record(tmp_path):
    paths, _ = _write_images(str(tmp_path / "img"))
    with open(paths[5], "wb") as f:
        f.write(b"this is not a picture")
    index = sources.class_folders(str(tmp_path / "img"))
    tfrecord.write(index, str(tmp_path / "r"), num_shards=2, progress=False)
    streamed = tfrecord.read_index(str(tmp_path / "r-*.tfrecord"), keep_bytes=False)
    # Example 5 went to shard 5 % 2 = 1 as its record 5 // 2 = 2.
    with pytest.raises(ValueError, match=r"cat/005\.jpg \(.*r-00001-of-00002\.tfrecord#2\): not a decodable"):
        images.build(streamed, global_batch_size=4, progress=False, cache="none")
    p = images.build(streamed, global_batch_size=4, progress=False, cache="none", skip_bad=True)
    assert p.num_train == 17 and "r-00001-of-00002.tfrecord#2" in p.skipped[0]


def test_arrays_and_dataframe_train_through_the_index_addressed_pipeline():
    pandas = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    frame = pandas.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "label": y})
    for features, labels in (sources.arrays(x, y), sources.dataframe(frame, "label")):
        np.testing.assert_array_equal(features, x)
        fn = in_memory.train_dataset_fn(features, labels, global_batch_size=6, seed=0,
                                        recipe=__import__("datasets").augment.BatchRecipe(), normalize=None)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        _fit(EpochInput(fn, in_memory.steps_per_epoch(60, 6)), model)


def test_generator_tabular_csv_and_text_lines_train(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = (x[:, 1] > 0).astype(np.int64)

    def gen():
        yield from zip(x, y)

    sig = (tf.TensorSpec((4,), tf.float32), tf.TensorSpec((), tf.int64))
    ds = sources.generator(gen, sig, batch_size=6)
    _fit(DatasetInput(ds, steps_per_epoch=5), keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))

    _write_csv(tmp_path / "t.csv", ["f1,label,f2"] + [f"{a:.3f},{b},{c:.3f}" for a, b, c in zip(x[:, 0], y, x[:, 1])])
    ds = sources.tabular_csv(str(tmp_path / "t.csv"), "label", batch_size=6)
    features, labels = next(iter(ds))
    np.testing.assert_allclose(features.numpy()[:, 1], x[:6, 1], atol=1e-3)  # header order, label left out
    np.testing.assert_array_equal(labels.numpy(), y[:6])
    _fit(DatasetInput(ds, steps_per_epoch=5), keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))

    for name, words in (("a.txt", "sing goddess the wrath"), ("b.txt", "tell me muse of the man")):
        _write_csv(tmp_path / name, [words] * 12 + [""])
    ds = sources.text_lines([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], batch_size=6, seed=0)
    lines = [(s.decode(), int(label)) for batch_s, batch_y in ds for s, label in zip(batch_s.numpy(),
                                                                                   batch_y.numpy())]
    assert len(lines) == 24 and {label for s, label in lines if s.startswith("sing")} == {0}
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=6)
    vectorize.adapt(ds.map(lambda s, label: s))
    model = keras.Sequential([keras.Input((6,), dtype="int64"), keras.layers.Embedding(20, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    _fit(DatasetInput(ds.map(lambda s, label: (vectorize(s), label)), steps_per_epoch=4), model)


def test_channel_normalisation_is_measured_on_the_training_images(tmp_path):
    _write_images(str(tmp_path), fmt="png")
    index = sources.class_folders(str(tmp_path))
    p = images.build(index, global_batch_size=6, progress=False, augment_names="none")
    pixels, _, _ = images.scan(index, progress=False)
    np.testing.assert_allclose(p.normalize["mean"], pixels.reshape(-1, 3).mean(0), atol=0.01)
    batch, _ = next(iter(p.train_fn(tf.distribute.InputContext(), 0, 0)))
    assert abs(float(tf.reduce_mean(batch))) < 0.3


# --- Bad input -------------------------------------------------------------------------

def _csv_of(tmp_path, n=6):
    paths, labels = _write_images(str(tmp_path / "img"), n_per_class=n // 3)
    rows = [f"{os.path.relpath(p, tmp_path)},{y}" for p, y in zip(paths, labels)]
    return paths, rows


def test_missing_image_names_file_and_csv_line(tmp_path):
    paths, rows = _csv_of(tmp_path)
    os.remove(paths[3])
    _write_csv(tmp_path / "i.csv", rows)
    with pytest.raises(ValueError, match=rf"i\.csv:4: image .*{os.path.basename(paths[3])} does not exist"):
        sources.image_csv(str(tmp_path / "i.csv"))


@pytest.mark.parametrize("content,why", [(b"", "empty"), (b"this is not a picture", "not a decodable")])
def test_empty_or_undecodable_image_names_file_and_line_unless_skipped(tmp_path, content, why):
    paths, rows = _csv_of(tmp_path, n=9)
    with open(paths[4], "wb") as f:
        f.write(content)
    _write_csv(tmp_path / "i.csv", rows)
    index = sources.image_csv(str(tmp_path / "i.csv"))
    for cache in ("decoded", "none"):
        with pytest.raises(ValueError, match=rf"{os.path.basename(paths[4])} \(.*i\.csv:5\): .*{why}"):
            images.build(index, global_batch_size=4, progress=False, cache=cache)
        p = images.build(index, global_batch_size=4, progress=False, cache=cache, skip_bad=True)
        assert p.num_train == 8 and len(p.skipped) == 1 and "i.csv:5" in p.skipped[0]
    # Resizing streams must still decode every image in the check (nothing pruned).
    with pytest.raises(ValueError, match=rf"{os.path.basename(paths[4])} \(.*i\.csv:5\): .*{why}"):
        images.build(index, global_batch_size=4, progress=False, cache="none", image_size=(6, 6))
    _, kept, lines = images.check(index, skip_bad=True, progress=False)
    assert len(kept) == 8 and len(lines) == 1


def test_image_of_another_size_is_named(tmp_path):
    paths, rows = _csv_of(tmp_path)
    tf.io.write_file(paths[2], tf.io.encode_png(np.zeros((5, 7, 3), np.uint8)))
    _write_csv(tmp_path / "i.csv", rows)
    with pytest.raises(ValueError, match=r"i\.csv:3\): it is 5x7 but the other images are 8x8"):
        images.build(sources.image_csv(str(tmp_path / "i.csv")), global_batch_size=4, progress=False)
    p = images.build(sources.image_csv(str(tmp_path / "i.csv")), global_batch_size=4, progress=False,
                     image_size=(8, 8))
    assert p.num_train == 6


@pytest.mark.parametrize("row,message", [
    ("x.jpg,cat", r"i\.csv:2: class id 'cat' is not an integer"),
    ("x.jpg,7", r"i\.csv:2: class id 7 is outside \[0, 3\)"),
    ("x.jpg,-1", r"i\.csv:2: class id -1 is outside"),
    ("x.jpg", r"i\.csv:2: expected '<path>,<class id>'"),
])
def test_bad_labels_name_file_and_line(tmp_path, row, message):
    _write_csv(tmp_path / "labels.txt", ["a", "b", "c"])
    _write_csv(tmp_path / "i.csv", ["x.jpg,0", row])
    with pytest.raises(ValueError, match=message):
        sources.image_csv(str(tmp_path / "i.csv"), check_paths=False)


def test_empty_sources_each_give_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty has no class folders"):
        sources.class_folders(str(tmp_path / "empty"))
    (tmp_path / "one" / "cat").mkdir(parents=True)
    (tmp_path / "one" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"class folder .*cat has no .jpg/.jpeg/.png images"):
        sources.class_folders(str(tmp_path / "one"))
    _write_csv(tmp_path / "none.csv", [])
    with pytest.raises(ValueError, match=r"none\.csv has no rows"):
        sources.image_csv(str(tmp_path / "none.csv"))
    with pytest.raises(ValueError, match=r"no TFRecord file matches"):
        tfrecord.read_index(str(tmp_path / "nothing-*.tfrecord"))
    (tmp_path / "junk.tfrecord").write_bytes(b"not a record at all")
    with pytest.raises(ValueError, match=r"junk\.tfrecord is not a readable TFRecord"):
        tfrecord.read_index(str(tmp_path / "junk.tfrecord"))


def test_tfrecord_label_outside_the_classes_names_shard_record_and_file(tmp_path):
    _write_images(str(tmp_path / "img"))
    index = sources.class_folders(str(tmp_path / "img"))
    tfrecord.write(index, str(tmp_path / "r"), num_shards=1, progress=False)
    with pytest.raises(ValueError, match=r"r-00000-of-00001\.tfrecord#12 \(.*emu/000\.jpg\): class id 2 is "
                                         r"outside \[0, 2\)"):
        tfrecord.read_index(str(tmp_path / "r-*.tfrecord"), class_names=("cat", "dog"))


# --- The shared CIFAR-10 in three forms ------------------------------------------------

def test_shared_cifar10_folders_csv_and_tfrecord_yield_the_same_examples(cifar10_dir, tmp_path):
    folders = sources.class_folders(os.path.join(cifar10_dir, "test"))
    csv_index = sources.image_csv(os.path.join(cifar10_dir, "test.csv"))
    tfrecord.write(folders, str(tmp_path / "test"), num_shards=3, progress=False)
    records = tfrecord.read_index(str(tmp_path / "test-*.tfrecord"))
    assert len(folders) == len(csv_index) == len(records) == 10000
    assert folders.class_names == csv_index.class_names == records.class_names
    decoded = {}
    for name, index in (("folders", folders), ("csv", csv_index), ("tfrecord", records)):
        pixels, _, _ = images.scan(index, progress=False)
        order = np.argsort([os.path.realpath(p) for p in index.paths])
        decoded[name] = (pixels[order], index.labels[order])
    for name in ("csv", "tfrecord"):
        np.testing.assert_array_equal(decoded[name][1], decoded["folders"][1])
        np.testing.assert_array_equal(decoded[name][0], decoded["folders"][0])
