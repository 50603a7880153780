"""Loading speed of CIFAR-10's python batches: the safe unpickler against pickle.loads.

    python -m launch.benchmark_loading --data_dir=../shared/data/cifar10-bin --rounds=7

Writes the 60,000 images of --data_dir (any form datasets.cifar10 reads) as the
official python batches to a temporary folder, in the official files' encoding
(Python 2 pickles at protocol 2, pixels as one 30 MB str per batch) and in Python
3's protocol 4, then times `datasets.cifar10.load` on each, round by round,
with its safe unpickler and with plain `pickle.loads` (what Keras's loader
does, which runs any code a pickle names). Prints the median seconds of each
and their ratio.
"""

from __future__ import annotations

import os
import pickle
import statistics
import struct
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("data_dir", "../shared/data/cifar10-bin", "CIFAR-10 to rewrite as python batches.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds per reader and encoding.")
FLAGS = flags.FLAGS


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    """Writes bytes as Python 2's str (BINSTRING opcodes), as the official files hold them."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else
                   pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _write_batches(data, folder: str, encoding: str) -> None:
    os.makedirs(folder)
    chw = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # noqa: E731  official row layout
    parts = [(f"data_batch_{i + 1}", data.train, slice(i * 10000, (i + 1) * 10000)) for i in range(5)]
    for name, split, rows in parts + [("test_batch", data.test, slice(None))]:
        batch = {b"batch_label": name.encode(), b"labels": split.labels[rows].tolist(),
                 b"data": chw(split.images[rows]),
                 b"filenames": [b"%05d.png" % k for k in range(len(split.labels[rows]))]}
        with open(os.path.join(folder, name), "wb") as f:
            if encoding == "python2":
                _Python2Pickler(f, protocol=2).dump(batch)
            else:
                pickle.dump(batch, f, protocol=4)


class _PlainUnpickler:
    """The unsafe reference: pickle.loads, as datasets.cifar10 read batches before."""

    def __init__(self, raw, where):
        self._raw = raw

    def load(self):
        return pickle.loads(self._raw, encoding="bytes")


def main(argv):
    del argv
    from datasets import cifar10

    data = cifar10.load(FLAGS.data_dir)
    root = tempfile.mkdtemp(prefix="benchmark_loading-")
    safe = cifar10._BatchUnpickler
    for encoding in ("python2", "protocol4"):
        folder = os.path.join(root, encoding, "cifar-10-batches-py")
        _write_batches(data, folder, encoding)
        times = {"safe": [], "pickle.loads": []}
        for _ in range(FLAGS.rounds):
            for reader, unpickler in (("safe", safe), ("pickle.loads", _PlainUnpickler)):
                cifar10._BatchUnpickler = unpickler
                start = time.perf_counter()
                cifar10.load(folder)
                times[reader].append(time.perf_counter() - start)
        cifar10._BatchUnpickler = safe
        a, b = statistics.median(times["safe"]), statistics.median(times["pickle.loads"])
        print(f"{encoding}: cifar10.load of 60,000 images: safe unpickler {a:.3f} s, pickle.loads {b:.3f} s "
              f"(median of {FLAGS.rounds}), safe/plain {a / b:.3f}")


if __name__ == "__main__":
    app.run(main)
