"""Classifies image files with an exported SavedModel or a launch.train model_dir.

    python -m launch.predict --model=/tmp/export [--top_k=3] cat.jpg ship.png ...

Prints, per file, the top-k class names with their probabilities. Images of
another size than the model's are resized (bilinear) first.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model", None, "An exported SavedModel folder (launch.export) or a launch.train model_dir.",
                    required=True)
flags.DEFINE_integer("top_k", 3, "How many classes to print per image.", lower_bound=1)
flags.DEFINE_string("checkpoint", "latest", "With a model_dir: latest, best, or a checkpoint path prefix.")
FLAGS = flags.FLAGS


def load_classifier(path: str, checkpoint: str = "latest"):
    """Returns (serve: uint8 [N, h, w, 3] -> {"probabilities", ...}, (h, w, 3), class names).

    Raises:
      ValueError: if `path` is neither an export nor a launch.train model_dir.
    """
    import tensorflow as tf

    from engine.export import CLASS_NAMES_FILE
    from launch import experiment

    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        signature = tf.saved_model.load(path).signatures["serving_default"]
        with open(os.path.join(path, CLASS_NAMES_FILE)) as f:
            names = f.read().splitlines()
        return (lambda images: signature(images=images)), \
            tuple(signature.structured_input_signature[1]["images"].shape[1:]), names
    model, info, _ = experiment.load_trained(path, checkpoint)
    preprocess = experiment.normalizer(info)

    def serve(images):
        return {"probabilities": tf.nn.softmax(model(preprocess(images), training=False), axis=-1)}

    return serve, tuple(info["image_shape"]), info["class_names"]


def main(argv: list[str]) -> None:
    files = argv[1:]
    if not files:
        raise app.UsageError("give one or more image files")
    import numpy as np
    import tensorflow as tf

    from engine.errors import UserError

    try:
        serve, shape, names = load_classifier(FLAGS.model, FLAGS.checkpoint)
    except UserError as e:  # One line; any other error shows its traceback.
        sys.exit(f"launch.predict: error: {e}")
    images = []
    for path in files:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            sys.exit(f"launch.predict: error: {path} is not a readable image ({type(e).__name__})")
        if tuple(image.shape) != shape:
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, shape[:2])), 0, 255), tf.uint8)
        images.append(image)
    probabilities = np.asarray(serve(tf.stack(images))["probabilities"])
    for path, probs in zip(files, probabilities):
        top = np.argsort(-probs)[: FLAGS.top_k]
        print(f"{path}: " + ", ".join(f"{names[i]} {probs[i]:.3f}" for i in top))


if __name__ == "__main__":
    app.run(main)
