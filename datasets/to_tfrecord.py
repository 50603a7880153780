"""Writes labelled images to sharded TFRecord files.

    python -m datasets.to_tfrecord --source=../shared/data/cifar10/train --output=/tmp/cifar/train --num_shards=8
    python -m datasets.to_tfrecord --source=../shared/data/cifar10/train.csv --output=/tmp/cifar/train

--source is a folder of class folders or a CSV index ("<path>,<class id>" rows);
the files' bytes are copied as they are (see datasets.tfrecord for the format).
Every image is decoded once first, so an unusable one stops the write with its
name (or, with --skip_bad_examples, is left out and counted).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from engine.errors import UserError

flags.DEFINE_string("source", None, "Folder of class folders, or a CSV index of image paths and class ids.")
flags.DEFINE_string("output", None, "Output prefix: writes <output>-00000-of-0000N.tfrecord ...")
flags.DEFINE_integer("num_shards", 4, "Number of TFRecord files.")
flags.DEFINE_string("class_names", None, "File of class names, one per line (CSV sources; default labels.txt "
                    "beside the CSV).")
flags.DEFINE_bool("skip_bad_examples", False, "Leave out images that cannot be decoded instead of stopping.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from datasets import images, sources, tfrecord

    try:
        if not FLAGS.source or not FLAGS.output:
            raise UserError("--source and --output are required")
        if not (os.path.isdir(FLAGS.source) or FLAGS.source.lower().endswith(".csv")):
            raise UserError(f"--source={FLAGS.source} is neither a folder nor a .csv file")
        names = sources.read_class_names(FLAGS.class_names) if FLAGS.class_names else None
        index = sources.image_source(FLAGS.source, names)
        _, index, skipped = images.check(index, skip_bad=FLAGS.skip_bad_examples, progress=FLAGS.progress)
        paths = tfrecord.write(index, FLAGS.output, FLAGS.num_shards, progress=FLAGS.progress)
    except ValueError as e:
        sys.exit(f"datasets.to_tfrecord: error: {e}")
    for line in skipped:
        print(f"skipped {line}")
    print(f"wrote {len(index)} images of {index.num_classes} classes to {len(paths)} files: {paths[0]} ... "
          f"({len(skipped)} bad images skipped)")


if __name__ == "__main__":
    app.run(main)
