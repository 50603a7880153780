"""CIFAR-10 from any of its common on-disk forms, loaded into memory as uint8 arrays.

CIFAR-10 is small (60,000 images of 32x32x3 = 184 MB as uint8), so every form is
decoded once into arrays and the training pipeline augments from memory: on 2
cores, decoding JPEGs every epoch takes CPU from the model (see BUILD_NOTES.md).

Forms read from `data_dir`, tried in this order:
  1. CSV indexes `train.csv` / `test.csv`: rows "<path relative to the CSV>,<class id>",
     no header (the transfer-learning tutorial's format).
  2. Class folders `train/<class>/*.jpg|jpeg|png` and `test/<class>/...`; class ids
     are the sorted folder names' positions, as `image_dataset_from_directory` does.
  3. The official python archive: `cifar-10-python.tar.gz`, or its extracted
     `cifar-10-batches-py/` (pickled `data_batch_1..5`, `test_batch`). The
     pickles are read by an unpickler that builds only what the format holds
     (dicts, lists, bytes, str, int, numpy arrays) and refuses any other global
     before it runs; archive members are read in memory, never extracted to disk.
  4. The official binary archive, extracted: `cifar-10-batches-bin/`
     (`data_batch_1..5.bin`, `test_batch.bin`; records of 1 label byte + 3072 pixel
     bytes in channel-major order).
`data_dir` may also be the `cifar-10-batches-py` / `-bin` folder or the .tar.gz itself.

Reference: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile

import numpy as np

from engine.errors import UserError

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCH = "test_batch"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of an in-memory image classification dataset.

    Attributes:
      images: uint8 [num_examples, height, width, 3].
      labels: int32 [num_examples], class ids in [0, NUM_CLASSES).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise UserError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclasses.dataclass(frozen=True)
class Cifar10:
    """Both splits of CIFAR-10 and where they came from.

    Attributes:
      train: 50,000 examples in the official data.
      test: 10,000 examples in the official data.
      source: a line naming the form and path read, for logs.
      skipped: one line per image file left out as unusable (load's skip_bad).
    """

    train: Split
    test: Split
    source: str
    skipped: tuple[str, ...] = ()


def load(data_dir: str | None, *, skip_bad: bool = False, progress: bool = False) -> Cifar10:
    """Loads CIFAR-10 from `data_dir`, or from Keras's download cache when None.

    Args:
      data_dir: a folder holding one of the forms in this module's docstring, the
        `cifar-10-python.tar.gz` file, or None to use `keras.datasets.cifar10`.
      skip_bad: image-file forms: leave out a missing, empty, undecodable or
        not 32x32 image (listed in `skipped`) instead of raising.
      progress: image-file forms: show a progress bar while decoding.

    Returns:
      A Cifar10 with uint8 [N, 32, 32, 3] images and int32 [N] labels.

    Raises:
      ValueError: if `data_dir` does not exist, holds none of the known forms, or a
        file in it is malformed or an image unusable (the message names the path,
        and the CSV line), unless skip_bad for images; if
        no `data_dir` is given and the Keras download fails (no network), the
        message says what was tried and how to pass `--data_dir`.
    """
    if data_dir is None:
        return _load_keras()
    data_dir = os.path.expanduser(data_dir)
    if not os.path.exists(data_dir):
        raise UserError(f"--data_dir={data_dir} does not exist")
    if os.path.isfile(data_dir):
        if data_dir.endswith(".tar.gz"):
            return _load_python_tar(data_dir)
        raise UserError(f"--data_dir={data_dir} is a file but not a cifar-10-python.tar.gz archive")
    candidates = [
        (os.path.join(data_dir, "train.csv"), lambda p: _load_csv_indexes(p, skip_bad, progress)),
        (os.path.join(data_dir, "train"), lambda p: _load_class_folders(p, skip_bad, progress)),
        (os.path.join(data_dir, "cifar-10-python.tar.gz"), _load_python_tar),
        (os.path.join(data_dir, "cifar-10-batches-py"), _load_python_batches),
        (os.path.join(data_dir, "data_batch_1"), lambda _: _load_python_batches(data_dir)),
        (os.path.join(data_dir, "cifar-10-batches-bin"), _load_binary_batches),
        (os.path.join(data_dir, "data_batch_1.bin"), lambda _: _load_binary_batches(data_dir)),
    ]
    for path, loader in candidates:
        if os.path.exists(path):
            return loader(path)
    raise UserError(
        f"--data_dir={data_dir} holds no CIFAR-10 in a known form: looked for train.csv/test.csv, "
        "train/<class>/ and test/<class>/ folders, cifar-10-python.tar.gz, cifar-10-batches-py/ "
        "and cifar-10-batches-bin/")


def _load_keras() -> Cifar10:
    import keras  # Imported here: only this path needs it, and it starts slowly.

    try:
        # keras.datasets.cifar10.load_data's download (same cache folder and checksum),
        # but its pickles are read by this module's safe unpickler, not pickle.load:
        # the cache can hold files from anywhere.
        folder = keras.utils.get_file(
            fname="cifar-10-batches-py-target", origin="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            extract=True, file_hash="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
    except Exception as e:  # Network and archive errors come in many types.
        raise UserError(
            "no --data_dir given, and Keras's CIFAR-10 download into ~/.keras/datasets failed "
            f"({type(e).__name__}: {e}); pass --data_dir=<folder> holding train.csv/test.csv, "
            "train/ and test/ class folders, cifar-10-python.tar.gz, cifar-10-batches-py/ or "
            "cifar-10-batches-bin/") from e
    data = _load_python_batches(os.path.join(folder, "cifar-10-batches-py"))
    return dataclasses.replace(data, source=f"Keras's download cache, {data.source}")


# --- The official python archive --------------------------------------------------

# The globals an official CIFAR-10 python batch names: numpy's array and dtype
# reconstruction (numpy 1 and 2 spell the module differently; protocol 5 pickles
# use _frombuffer) and, for bytes pickled by Python 3 at protocol 2, _codecs.encode.
# Each only builds a value; none runs a command, opens a file or imports a module.
_SAFE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class UnsafePickleError(UserError):
    """A pickle names a global that a CIFAR-10 python batch never holds (it could run code)."""


class _MemoryReader:
    """A file over bytes already in memory whose reads are zero-copy memoryview slices.

    pickle.Unpickler (the C one, kept when only find_class is overridden) reads a
    file through these methods; over io.BytesIO each read copies, which made a
    30 MB batch of the official (protocol 2) files load 5-10x slower than
    pickle.loads (BUILD_NOTES.md, "Files from elsewhere").
    """

    def __init__(self, raw: bytes):
        self._raw, self._view, self._pos = raw, memoryview(raw), 0

    def read(self, n: int = -1) -> memoryview:
        end = len(self._raw) if n is None or n < 0 else min(self._pos + n, len(self._raw))
        out, self._pos = self._view[self._pos:end], end
        return out

    def readinto(self, buffer) -> int:
        n = min(len(buffer), len(self._raw) - self._pos)
        buffer[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def readline(self) -> memoryview:
        newline = self._raw.find(b"\n", self._pos)
        return self.read(-1 if newline < 0 else newline + 1 - self._pos)

    def peek(self, n: int = 1) -> memoryview:
        return self._view[self._pos:self._pos + max(n, 1)]


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 python format holds: dicts, lists, bytes,
    str, int and numpy arrays. Any other global (a function or class the pickle
    would call to build an object, e.g. `posix.system`) is refused when the
    unpickler meets its name, before anything calls it."""

    def __init__(self, raw: bytes, where: str):
        super().__init__(_MemoryReader(raw), encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._where}: refused to unpickle: it names the global {module}.{name}, which a CIFAR-10 "
            "python batch never holds (only dicts, lists, bytes, str, int and numpy arrays); a pickle that "
            "names it can run code, so nothing of the file was used")


def _unpickle_batch(raw: bytes, where: str) -> Split:
    try:
        batch = _BatchUnpickler(raw, where).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int32)
    except UnsafePickleError:
        raise
    except Exception as e:
        raise UserError(f"{where} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{where}: data has shape {data.shape}, expected [N, 3072]")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    split = Split(np.ascontiguousarray(images), labels)
    _check_labels(split.labels, where)
    return split


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def _load_python_batches(folder: str) -> Cifar10:
    def read(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing from the CIFAR-10 python batches")
        with open(path, "rb") as f:
            return _unpickle_batch(f.read(), path)

    return Cifar10(_concat([read(n) for n in _TRAIN_BATCHES]), read(_TEST_BATCH),
                   f"python batches in {folder}")


def _load_python_tar(path: str) -> Cifar10:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}

            def read(name):
                if name not in members:
                    raise UserError(f"{path} has no member {name}")
                return _unpickle_batch(tar.extractfile(members[name]).read(), f"{path}:{name}")

            return Cifar10(_concat([read(n) for n in _TRAIN_BATCHES]), read(_TEST_BATCH),
                           f"python archive {path}")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a readable .tar.gz archive ({e})") from e


# --- The official binary archive ----------------------------------------------------

def _read_binary(path: str) -> Split:
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing from the CIFAR-10 binary batches")
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + 3072
    if raw.size == 0 or raw.size % record:
        raise UserError(f"{path} has {raw.size} bytes, not a multiple of the {record}-byte record")
    raw = raw.reshape(-1, record)
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    split = Split(np.ascontiguousarray(images), raw[:, 0].astype(np.int32))
    _check_labels(split.labels, path)
    return split


def _load_binary_batches(folder: str) -> Cifar10:
    train = _concat([_read_binary(os.path.join(folder, n + ".bin")) for n in _TRAIN_BATCHES])
    return Cifar10(train, _read_binary(os.path.join(folder, _TEST_BATCH + ".bin")),
                   f"binary batches in {folder}")


# --- Image files: CSV indexes and class folders ----------------------------------

def _check_labels(labels: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise UserError(f"{where}: label {labels[bad[0]]} of example {bad[0]} is outside [0, {NUM_CLASSES})")


def read_csv_index(csv_path: str) -> tuple[list[str], np.ndarray]:
    """Reads a CSV index of image paths and CIFAR-10 class ids (datasets.sources.image_csv).

    Returns:
      (absolute paths, int32 [N] labels).

    Raises:
      ValueError: naming the file and line of a malformed row, a label that is not
        an integer in [0, NUM_CLASSES), or a path that does not exist; or if the file
        has no rows.
    """
    from datasets import sources  # TensorFlow loads only for the image-file forms.

    index = sources.image_csv(csv_path, CLASS_NAMES)
    return list(index.paths), index.labels


def list_class_folders(split_dir: str) -> tuple[list[str], np.ndarray]:
    """Lists `split_dir/<class>/*.jpg|jpeg|png` with labels from sorted class names.

    Returns:
      (paths, int32 [N] labels), paths sorted within each class.

    Raises:
      ValueError: if the folder is missing or has no class folders, a class folder
        has no images, or there are more classes than NUM_CLASSES.
    """
    index = _class_folder_index(split_dir)
    return list(index.paths), index.labels


def _class_folder_index(split_dir: str):
    from datasets import sources

    index = sources.class_folders(split_dir)
    if index.num_classes > NUM_CLASSES:
        raise UserError(f"{split_dir} has {index.num_classes} class folders, CIFAR-10 has {NUM_CLASSES}")
    return index


def decode_images(paths: list[str]) -> np.ndarray:
    """Decodes image files into one uint8 [N, 32, 32, 3] array, in parallel.

    Raises:
      ValueError: naming the first file that is empty, not a decodable JPEG/PNG, or
        not 32x32 pixels.
    """
    import tensorflow as tf  # Only the image-file forms need TensorFlow here.

    from datasets.images import decode as decode_bytes  # decode_jpeg: 2x decode_image's speed here

    def decode(path):
        return tf.ensure_shape(decode_bytes(tf.io.read_file(path)), IMAGE_SHAPE)

    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(2048))
    try:
        return np.concatenate([b.numpy() for b in ds]) if paths else np.zeros((0, *IMAGE_SHAPE), np.uint8)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        # The batched error does not say which file; find it one by one.
        for path in paths:
            try:
                decode(path)
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, ValueError) as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"image {path} could not be decoded as a 32x32 RGB image ({msg})") from None
        raise


def _load_index(train, test, source: str, skip_bad: bool, progress: bool) -> Cifar10:
    """Decodes two ImageIndexes through datasets.images.scan: bad images named by path and CSV line."""
    from datasets import images

    splits, skipped = [], []
    for index, what in ((train, "train images"), (test, "test images")):
        pixels, kept, lines = images.scan(index, skip_bad=skip_bad, progress=progress, what=what)
        if pixels.shape[1:] != IMAGE_SHAPE:
            raise UserError(f"{index.describe(0)}: CIFAR-10 images are 32x32 RGB, these are "
                             f"{pixels.shape[1]}x{pixels.shape[2]}")
        splits.append(Split(pixels, kept.labels))
        skipped += lines
    return Cifar10(splits[0], splits[1], source, tuple(skipped))


def _load_csv_indexes(train_csv: str, skip_bad: bool = False, progress: bool = False) -> Cifar10:
    from datasets import sources

    test_csv = os.path.join(os.path.dirname(train_csv), "test.csv")
    if not os.path.isfile(test_csv):
        raise UserError(f"{train_csv} exists but {test_csv} is missing")
    return _load_index(sources.image_csv(train_csv, CLASS_NAMES, check_paths=not skip_bad),
                       sources.image_csv(test_csv, CLASS_NAMES, check_paths=not skip_bad),
                       f"CSV indexes {train_csv}, {test_csv}", skip_bad, progress)


def _load_class_folders(train_dir: str, skip_bad: bool = False, progress: bool = False) -> Cifar10:
    test_dir = os.path.join(os.path.dirname(train_dir), "test")
    return _load_index(_class_folder_index(train_dir), _class_folder_index(test_dir),
                       f"class folders {train_dir}, {test_dir}", skip_bad, progress)
