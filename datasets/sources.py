"""Where training data comes from: every source of the TF2 tutorials, one interface.

Image sources are read into an `ImageIndex` (paths or encoded bytes, labels, and
where each example came from, for error messages); datasets.images turns an index
into a training or evaluation pipeline. The other sources give a tf.data.Dataset of
(features, labels) examples, or arrays for the index-addressed pipeline of
datasets.in_memory:

  * `arrays`: numpy arrays (features [N, ...], labels [N]).
  * `dataframe`: a pandas DataFrame with a label column (pandas is optional).
  * `generator`: a Python generator, through `tf.data.Dataset.from_generator`.
  * `image_csv`: a CSV of "<image path relative to the CSV>,<class id>" rows, no
    header (the transfer-learning tutorial's format).
  * `class_folders`: `<folder>/<class name>/<image>`; class ids are the positions
    of the sorted folder names, as `keras.utils.image_dataset_from_directory` does.
  * `tabular_csv`: a CSV with a header and a label column
    (`tf.data.experimental.make_csv_dataset`).
  * `text_lines`: one text file per class, one example per line (the "Load text"
    tutorial's layout).
  * TFRecord files of tf.train.Example: see datasets.tfrecord.

Every reader fails with one line naming the file (and line) at fault.
"""

from __future__ import annotations

import csv
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from datasets import tfrecord
from datasets.image_index import ImageIndex
from engine.errors import UserError


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_class_names(path: str) -> tuple[str, ...]:
    """Class names from a file with one name per line (line i is class id i).

    Raises:
      ValueError: if the file is missing or has no names.
    """
    if not os.path.isfile(path):
        raise UserError(f"class-name file {path} does not exist")
    with open(path) as f:
        names = tuple(line.strip() for line in f if line.strip())
    if not names:
        raise UserError(f"class-name file {path} has no names")
    return names


def image_csv(csv_path: str, class_names: Sequence[str] | None = None, *, check_paths: bool = True) -> ImageIndex:
    """Reads a CSV index of image paths and class ids.

    Args:
      csv_path: rows "<path relative to the CSV's folder>,<class id>", no header.
      class_names: names of the classes; ids must lie in [0, len(class_names)).
        None: read `labels.txt` beside the CSV if there is one, else name the
        classes "0" ... str(max id).
      check_paths: check that every listed file exists (one directory listing per
        folder: the 60,000 paths of CIFAR-10 take well under a second).

    Returns:
      ImageIndex with absolute paths and origins "<csv_path>:<line>".

    Raises:
      ValueError: naming the file and line of a malformed row, a class id that is
        not an integer or is outside [0, num_classes), or a missing image; or if
        the file is missing or has no rows.
    """
    if not os.path.isfile(csv_path):
        raise UserError(f"CSV index {csv_path} does not exist")
    if class_names is None:
        beside = os.path.join(os.path.dirname(csv_path), "labels.txt")
        class_names = read_class_names(beside) if os.path.isfile(beside) else None
    folder = os.path.dirname(os.path.abspath(csv_path))
    paths, labels, origins = [], [], []
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{csv_path}:{line_no}"
            if len(row) != 2:
                raise UserError(f"{where}: expected '<path>,<class id>', got {','.join(row)!r}")
            try:
                label = int(row[1])
            except ValueError:
                raise UserError(f"{where}: class id {row[1]!r} is not an integer") from None
            if label < 0 or (class_names is not None and label >= len(class_names)):
                bound = len(class_names) if class_names is not None else "num_classes"
                raise UserError(f"{where}: class id {label} is outside [0, {bound})")
            paths.append(os.path.join(folder, row[0].strip()))
            labels.append(label)
            origins.append(where)
    if not paths:
        raise UserError(f"CSV index {csv_path} has no rows")
    labels = np.asarray(labels, dtype=np.int32)
    if class_names is None:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    index = ImageIndex(paths, labels, tuple(class_names), origins)
    if check_paths:
        check_files_exist(index)
    return index


def class_folders(folder: str, *, check_paths: bool = False) -> ImageIndex:
    """Lists `folder/<class>/*.jpg|jpeg|png`, class ids from the sorted class names.

    Args:
      folder: one folder per class; files with other extensions are ignored.
      check_paths: unused for listed files (they exist); kept for symmetry.

    Returns:
      ImageIndex with paths sorted within each class; origins are the paths.

    Raises:
      ValueError: if the folder is missing, has no class folders, or a class folder
        has no images.
    """
    del check_paths
    if not os.path.isdir(folder):
        raise UserError(f"image folder {folder} does not exist")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise UserError(f"image folder {folder} has no class folders (expected {folder}/<class name>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise UserError(f"class folder {class_dir} has no .jpg/.jpeg/.png images")
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return ImageIndex(paths, np.asarray(labels, dtype=np.int32), tuple(classes), list(paths))


def check_files_exist(index: ImageIndex) -> None:
    """Checks that every path of `index` is an existing file, quickly.

    Lists each distinct folder once (os.scandir) instead of a stat per file.

    Raises:
      ValueError: naming the first missing file and where it was listed.
    """
    listings: dict[str, set[str]] = {}
    for i, path in enumerate(index.paths):
        folder, name = os.path.split(path)
        files = listings.get(folder)
        if files is None:
            try:
                with os.scandir(folder or ".") as entries:
                    files = {e.name for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                files = set()
            listings[folder] = files
        if name not in files:
            raise UserError(f"{index.origins[i]}: image {path} does not exist")


def source_kind(path: str) -> str:
    """Which image_source reader serves `path`: "folders", "csv" or "tfrecord"."""
    if os.path.isdir(path):
        return "folders"
    return "csv" if path.lower().endswith(".csv") else "tfrecord"


def image_source(path: str, class_names: Sequence[str] | None = None, *, keep_bytes: bool = True) -> ImageIndex:
    """An ImageIndex from a class folder, a CSV index or TFRecord files, by the path's form.

    Args:
      path: a folder (class folders), a .csv file (index of paths), or a file or
        glob pattern of TFRecord files (e.g. "/data/train-*.tfrecord").
      class_names: see image_csv (CSV and TFRecord sources).
      keep_bytes: TFRecord sources: keep the encoded images in memory (False:
        only where each record lies, to stream from disk with cache="none").

    Raises:
      ValueError: if nothing matches `path`, or as the matching reader does.
    """
    kind = source_kind(path)
    if kind == "folders":
        return class_folders(path)
    if kind == "csv":
        return image_csv(path, class_names)

    return tfrecord.read_index(path, class_names, keep_bytes=keep_bytes)


# --- Sources that are not image files ------------------------------------------------

def arrays(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checks in-memory arrays for datasets.in_memory (features [N, ...], labels [N]).

    Raises:
      ValueError: if the lengths differ or there are no examples.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise UserError(f"{len(features)} feature rows but {len(labels)} labels")
    if not len(labels):
        raise UserError("no examples (the arrays are empty)")
    return features, labels


def dataframe(frame, label_column: str, feature_columns: Sequence[str] | None = None,
              dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a pandas DataFrame, as arrays for datasets.in_memory.

    Args:
      frame: pandas.DataFrame with numeric feature columns.
      label_column: name of the label column.
      feature_columns: columns to use, in order; default all but the label.
      dtype: dtype of the feature matrix.

    Returns:
      (features dtype [N, F], labels [N] as stored).

    Raises:
      ValueError: if a column is missing or not numeric, or the frame is empty.
    """
    if label_column not in frame.columns:
        raise UserError(f"label column {label_column!r} is not in the DataFrame (columns: {list(frame.columns)})")
    columns = list(feature_columns) if feature_columns is not None else [c for c in frame.columns
                                                                         if c != label_column]
    for c in columns:
        if c not in frame.columns:
            raise UserError(f"feature column {c!r} is not in the DataFrame")
        if not np.issubdtype(frame[c].dtype, np.number) and frame[c].dtype != bool:
            raise UserError(f"feature column {c!r} has dtype {frame[c].dtype}, not numeric; encode it first")
    return arrays(frame[columns].to_numpy(dtype=dtype), frame[label_column].to_numpy())


def generator(fn: Callable[[], Iterable], output_signature, *, batch_size: int | None = None) -> tf.data.Dataset:
    """A dataset from a Python generator function, optionally batched.

    Args:
      fn: called with no arguments at the start of each pass; yields examples
        matching `output_signature`, e.g. (features, label) tuples.
      output_signature: nested tf.TensorSpec of one example.
      batch_size: batch the examples (last partial batch kept) when given.

    Returns:
      tf.data.Dataset (finite when the generator ends). Python generators run
      under the GIL in one thread, so this source is the slowest; datasets.in_memory
      over arrays is preferred when the data fit in memory.
    """
    ds = tf.data.Dataset.from_generator(fn, output_signature=output_signature)
    return ds.batch(batch_size) if batch_size else ds


def tabular_csv(file_pattern: str, label_column: str, *, batch_size: int, shuffle: bool = False,
                seed: int | None = None) -> tf.data.Dataset:
    """Batches of (float32 features [B, F], labels [B]) from CSV files with a header.

    Numeric columns only; the feature order is the header's order, label excluded.
    One pass over the files (the last partial batch kept).

    Raises:
      ValueError: if no file matches, a file has no rows, or the label column is
        not in the header.
    """
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise UserError(f"no CSV file matches {file_pattern}")
    with open(files[0], newline="") as f:
        header = next(csv.reader(f), None)
        if header is None or next(csv.reader(f), None) is None:
            raise UserError(f"CSV file {files[0]} has no rows")
    if label_column not in header:
        raise UserError(f"label column {label_column!r} is not in the header of {files[0]} ({', '.join(header)})")
    features = [c for c in header if c != label_column]
    ds = tf.data.experimental.make_csv_dataset(files, batch_size=batch_size, label_name=label_column,
                                               num_epochs=1, shuffle=shuffle, shuffle_seed=seed)

    def pack(columns, labels):
        return tf.stack([tf.cast(columns[c], tf.float32) for c in features], axis=-1), labels

    return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def text_lines(files: Sequence[str], *, batch_size: int, shuffle_buffer: int = 0,
               seed: int | None = None) -> tf.data.Dataset:
    """Batches of (string lines [B], int64 labels [B]): file i's lines have label i.

    The layout of the TF "Load text" tutorial (one file per translator). Empty lines
    are dropped.

    Raises:
      ValueError: if `files` is empty or a file is missing or has no lines.
    """
    if not files:
        raise UserError("no text files given")
    sets = []
    for label, path in enumerate(files):
        if not os.path.isfile(path):
            raise UserError(f"text file {path} does not exist")
        if os.path.getsize(path) == 0:
            raise UserError(f"text file {path} has no lines")
        lines = tf.data.TextLineDataset(path).filter(lambda s: tf.strings.length(tf.strings.strip(s)) > 0)
        sets.append(lines.map(lambda s, label=label: (s, tf.constant(label, tf.int64))))
    ds = tf.data.Dataset.sample_from_datasets(sets, seed=seed, stop_on_empty_dataset=False) if len(sets) > 1 \
        else sets[0]
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    return ds.batch(batch_size)
