"""Exporting a trained classifier as a SavedModel that takes raw uint8 images.

The preprocessing of training (e.g. normalisation) runs inside the serving
function, so a client sends pixels as they are and cannot preprocess differently
from training (no training-serving skew).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import keras
import tensorflow as tf

# Class names, one per line, beside the SavedModel (TF Serving's assets.extra).
CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")


def export_classifier(
    model: keras.Model,
    path: str,
    *,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    image_shape: Sequence[int],
    class_names: Sequence[str],
) -> str:
    """Writes a SavedModel whose "serving_default" signature classifies uint8 images.

    Args:
      model: maps preprocessed float images to logits [batch, num_classes].
      path: output folder (created; an existing SavedModel there is replaced).
      preprocess: uint8 [N, h, w, 3] -> the model's float input, as in training.
      image_shape: (h, w, 3) the signature accepts.
      class_names: names of the classes, by class id.

    Returns:
      The path. Load with `tf.saved_model.load(path).signatures["serving_default"]`;
      it takes `images` uint8 [N, h, w, 3] and returns `classes` int64 [N],
      `probabilities` float32 [N, num_classes] (softmax of the logits) and
      `class_names` string [N]. The names of all classes, one per line, are in
      `<path>/assets.extra/class_names.txt`.
    """
    names = tf.constant(list(class_names))

    def serve(images):
        logits = model(preprocess(images), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        classes = tf.argmax(probabilities, axis=-1)
        return {"classes": classes, "probabilities": probabilities, "class_names": tf.gather(names, classes)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve,
                         input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name="images")])
    archive.write_out(path, verbose=False)
    os.makedirs(os.path.dirname(os.path.join(path, CLASS_NAMES_FILE)), exist_ok=True)
    with open(os.path.join(path, CLASS_NAMES_FILE), "w") as f:
        f.write("".join(f"{n}\n" for n in class_names))
    return path
