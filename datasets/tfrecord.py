"""Labelled images in sharded TFRecord files of tf.train.Example, written and read.

Each record holds one image, with the feature keys of the TF Model Garden's image
classification readers:
  image/encoded      bytes: the file's bytes as they were (JPEG or PNG), not re-encoded
  image/class/label  int64: class id
  image/class/text   bytes: class name
  image/filename     bytes: the path the image was read from (for error messages)
Examples go to the shards in turn (example i to shard i mod N), so each shard holds
every class; files are named <prefix>-00000-of-00004.tfrecord.

Write with `python -m datasets.to_tfrecord --source=<folder or csv> --output=<prefix>
--num_shards=N`; read with `read_index(pattern)` and train through
datasets.images like any other image source. `read_index(pattern, keep_bytes=False)`
keeps only where each record lies (a RecordTable: shard, byte offset, length), so
sets larger than memory stream from disk (`--cache=none`): a batch of records is
read by offset (`os.pread`), which keeps every example addressable by its index
and so the shuffle exact and resumable, as with image files.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from datasets.image_index import ImageIndex
from engine.errors import UserError

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


@dataclasses.dataclass(frozen=True)
class RecordTable:
    """Where each record of a set of local TFRecord files lies, for reading by index.

    Attributes:
      files: the shard paths (local files).
      shard: int32 [N], the file of each record (an index into `files`).
      offset: int64 [N], byte offset of each record's data in its file.
      length: int64 [N], the data's length in bytes.
    """

    files: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray

    def subset(self, keep: np.ndarray) -> "RecordTable":
        """The records at positions `keep` (int [M]), in that order."""
        return RecordTable(self.files, self.shard[keep], self.offset[keep], self.length[keep])

    def read(self, ids: np.ndarray) -> np.ndarray:
        """The serialized tf.train.Examples of records `ids` (int [B]) -> object [B] of bytes."""
        fds = _open_files(self.files)
        records = np.empty(len(ids), dtype=object)
        for k, i in enumerate(ids):
            records[k] = os.pread(fds[self.shard[i]], int(self.length[i]), int(self.offset[i]))
        return records

    def encoded_images(self, ids: tf.Tensor) -> tf.Tensor:
        """Graph op: int64 [B] record ids -> string [B], the images' encoded bytes (one Python call per batch)."""
        records = tf.numpy_function(self.read, [ids], tf.string, stateful=False)
        return tf.io.parse_example(tf.reshape(records, [-1]), {"image/encoded": FEATURES["image/encoded"]})[
            "image/encoded"]


_fds: dict[str, int] = {}  # path -> descriptor, opened once per process.


def _open_files(files: Sequence[str]) -> list[int]:
    for path in files:
        if path not in _fds:
            _fds[path] = os.open(path, os.O_RDONLY)
    return [_fds[path] for path in files]


def _record_table(files: Sequence[str], counts: Sequence[int]) -> RecordTable:
    """Walks each file's record headers (8-byte length, 4-byte CRC) to find the records' offsets.

    Raises:
      ValueError: a file that is not local, or whose headers do not match the
        `counts` records tf.data read from it.
    """
    shard, offset, length = [], [], []
    for k, path in enumerate(files):
        if not os.path.isfile(path):
            raise UserError(f"{path}: streaming TFRecords (--cache=none) needs local files; use --cache=encoded")
        size, position, found = os.path.getsize(path), 0, 0
        with open(path, "rb") as f:
            while position < size:
                f.seek(position)
                (n,) = struct.unpack("<Q", f.read(8))
                shard.append(k)
                offset.append(position + 12)  # After the length and its CRC.
                length.append(n)
                position += 12 + n + 4  # ... the data and its CRC.
                found += 1
        if found != counts[k] or position != size:
            raise UserError(f"{path}: {found} record headers but tf.data read {counts[k]} records")
    return RecordTable(tuple(files), np.array(shard, np.int32), np.array(offset, np.int64),
                       np.array(length, np.int64))


def shard_paths(prefix: str, num_shards: int) -> list[str]:
    """The file names of `num_shards` shards of `prefix`."""
    return [f"{prefix}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]


def _example(encoded: bytes, label: int, class_name: str, filename: str) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[class_name.encode()])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write(index: ImageIndex, prefix: str, num_shards: int, *, progress: bool = True) -> list[str]:
    """Writes the images of `index` to `num_shards` TFRecord files.

    The files are written under temporary names and renamed when complete, so an
    interrupted write leaves no shard that looks finished.

    Args:
      index: the images (their bytes are copied as they are).
      prefix: output path prefix; its folder is created.
      num_shards: number of files, 1 <= num_shards <= len(index).
      progress: show a progress bar.

    Returns:
      The shard paths written.

    Raises:
      ValueError: if num_shards is out of range, or a file is missing or empty
        (named with its CSV line).
    """
    if not 1 <= num_shards <= len(index):
        raise UserError(f"--num_shards={num_shards} must be in [1, {len(index)}] (the number of images)")
    paths = shard_paths(prefix, num_shards)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    writers = [tf.io.TFRecordWriter(p + ".partial") for p in paths]
    try:
        for i in tqdm(range(len(index)), desc="writing TFRecords", unit="img", disable=not progress):
            if index.encoded is not None:
                data = index.encoded[i]
            else:
                try:
                    with open(index.paths[i], "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise UserError(f"{index.describe(i)}: cannot be read ({e.strerror})") from None
            if not data:
                raise UserError(f"{index.describe(i)}: the file is empty")
            label = int(index.labels[i])
            writers[i % num_shards].write(_example(data, label, index.class_names[label], str(index.paths[i])))
    finally:
        for w in writers:
            w.close()
    for p in paths:
        os.replace(p + ".partial", p)
    return paths


def read_index(pattern: str, class_names: Sequence[str] | None = None, *, keep_bytes: bool = True) -> ImageIndex:
    """Reads TFRecord files into an ImageIndex (encoded bytes, or where they lie).

    Every record is read once (labels, class names, source file names).

    Args:
      pattern: a file or glob pattern, e.g. "/data/train-*.tfrecord".
      class_names: names of the classes; None takes them from the records'
        image/class/text (or "0", "1", ... where that is empty).
      keep_bytes: keep the encoded images in memory; False keeps a RecordTable
        instead (local files only), for sets larger than memory.

    Returns:
      ImageIndex with encoded bytes or a RecordTable; origins
      "<shard>#<record number>".

    Raises:
      ValueError: if nothing matches, a file is not a TFRecord of the expected
        features, there are no records, or a label is outside [0, num_classes)
        (naming the shard, record and source file).
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise UserError(f"no TFRecord file matches {pattern}")
    encoded, labels, texts, filenames, origins, counts = [], [], [], [], [], []
    for path in files:
        try:
            ds = tf.data.TFRecordDataset(path).batch(4096).map(lambda s: tf.io.parse_example(s, FEATURES))
            offset = 0
            for batch in ds.as_numpy_iterator():
                if keep_bytes:
                    encoded += list(batch["image/encoded"])
                labels.append(batch["image/class/label"])
                texts += [t.decode() for t in batch["image/class/text"]]
                filenames += [f.decode() for f in batch["image/filename"]]
                origins += [f"{path}#{offset + k}" for k in range(len(batch["image/class/label"]))]
                offset += len(batch["image/class/label"])
            counts.append(offset)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            detail = str(e).strip().splitlines()[0][:150]
            raise UserError(f"{path} is not a readable TFRecord file of image examples ({detail})") from None
    if not origins:
        raise UserError(f"TFRecord files {pattern} hold no records")
    labels = np.concatenate(labels).astype(np.int32)
    if class_names is None:
        names: dict[int, str] = {}
        for label, text in zip(labels, texts):
            names.setdefault(int(label), text)
        count = int(labels.max()) + 1
        class_names = tuple(names.get(k) or str(k) for k in range(count))
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{origins[i]} ({filenames[i]}): class id {labels[i]} is outside [0, {len(class_names)})")
    return ImageIndex([f or o for f, o in zip(filenames, origins)], labels, tuple(class_names), origins,
                      encoded if keep_bytes else None, records=None if keep_bytes else _record_table(files, counts))
