"""Exports a trained run as a SavedModel that takes uint8 images, or as a .keras file.

    python -m launch.export --model_dir=/tmp/cifar10_resnet --output=/tmp/export [--checkpoint=best]
    python -m launch.export --model_dir=/tmp/pretrain --output=/tmp/backbone.keras

The serving signature takes `images` uint8 [N, 32, 32, 3], normalises them as the
run did, and returns `classes`, `probabilities` and `class_names`. An --output
ending in .keras is the trained model itself (normalised float images in, logits
out, as in training): what `launch.train --backbone` takes for transfer learning.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "A launch.train --model_dir.", required=True)
flags.DEFINE_string("output", None, "Folder to write the SavedModel to, or a .keras file to write the "
                    "trained model to (e.g. a --backbone for launch.train).", required=True)
flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path prefix.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    from engine.export import export_classifier
    from engine.errors import UserError
    from launch import experiment

    try:
        model, info, path = experiment.load_trained(FLAGS.model_dir, FLAGS.checkpoint)
    except UserError as e:  # One line; any other error shows its traceback.
        sys.exit(f"launch.export: error: {e}")
    if FLAGS.output.endswith(".keras"):
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        model.save(FLAGS.output)
        print(f"saved {path} as {FLAGS.output}")
        return
    export_classifier(model, FLAGS.output, preprocess=experiment.normalizer(info),
                      image_shape=info["image_shape"], class_names=info["class_names"])
    print(f"exported {path} to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
