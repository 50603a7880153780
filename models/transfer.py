"""Transfer learning: a frozen backbone (keras.applications or a saved model) and a new head.

The recipe of the TF2 transfer-learning tutorial: restore a pretrained backbone
without its top, freeze it, and add global average pooling, dropout and a dense
classifier. The backbone is called with training=False, so its BatchNorm layers
keep their moving statistics (inference mode) even while the head trains, and
later while its top layers are fine-tuned (Keras's transfer-learning guide).
"""

from __future__ import annotations

import os

import keras
from keras import layers

from engine.errors import UserError

# keras.applications constructors by name (include_top=False is always passed).
APPLICATIONS = {
    "ResNet50": keras.applications.ResNet50,
    "ResNet101": keras.applications.ResNet101,
    "MobileNetV2": keras.applications.MobileNetV2,
    "InceptionV3": keras.applications.InceptionV3,
    "EfficientNetB0": keras.applications.EfficientNetB0,
    "VGG16": keras.applications.VGG16,
    "DenseNet121": keras.applications.DenseNet121,
}


# Each application's own input preprocessing (pixels in [0, 255] in, what its
# ImageNet weights expect out).
_PREPROCESS = {
    "ResNet50": keras.applications.resnet50.preprocess_input,
    "ResNet101": keras.applications.resnet.preprocess_input,
    "MobileNetV2": keras.applications.mobilenet_v2.preprocess_input,
    "InceptionV3": keras.applications.inception_v3.preprocess_input,
    "EfficientNetB0": keras.applications.efficientnet.preprocess_input,
    "VGG16": keras.applications.vgg16.preprocess_input,
    "DenseNet121": keras.applications.densenet.preprocess_input,
}


@keras.saving.register_keras_serializable(package="models")
class ApplicationPreprocess(layers.Layer):
    """The `preprocess_input` of a keras.applications network, as a layer.

    Input float [batch, h, w, 3] RGB pixels in [0, 255]; output as the application
    expects (e.g. caffe-style BGR mean subtraction for ResNet50, [-1, 1] for
    MobileNetV2). A layer, so it is saved with the model and runs in exports.
    """

    def __init__(self, application: str, **kwargs):
        super().__init__(**kwargs)
        if application not in _PREPROCESS:
            raise UserError(f"no preprocessing known for {application!r}")
        self.application = application

    def call(self, x):
        return _PREPROCESS[self.application](x)

    def get_config(self):
        return {**super().get_config(), "application": self.application}


def applications_backbone(name: str, *, input_shape=(224, 224, 3), weights: str | None = "imagenet",
                          **kwargs) -> keras.Model:
    """A keras.applications network without its classifier.

    Args:
      name: a key of APPLICATIONS, e.g. "ResNet50", "MobileNetV2".
      input_shape: (height, width, 3) it will be fed.
      weights: "imagenet" (downloaded to ~/.keras/models), None (random), or the
        path of a local weights file for this architecture without its top.
      **kwargs: passed on (e.g. alpha=0.35 for MobileNetV2).

    Returns:
      keras.Model: images [batch, h, w, 3] (preprocessed the way the application
      expects) -> feature map [batch, h', w', channels].

    Raises:
      ValueError: unknown name, a weights path that does not exist, or a failed
        ImageNet download (offline); the message says how to pass a local file.
    """
    if name not in APPLICATIONS:
        raise UserError(f"--backbone={name!r} is not a known keras.applications network; "
                         f"choose one of {', '.join(APPLICATIONS)}")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise UserError(f"--backbone_weights={weights} does not exist")
    try:
        return APPLICATIONS[name](include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs)
    except Exception as e:  # Download failures come as URLError, OSError, Exception.
        if weights != "imagenet":
            raise
        raise UserError(f"could not fetch ImageNet weights for {name} ({type(e).__name__}: {e}); offline, "
                         "pass a local weights file with --backbone_weights=<path.h5> (the *_notop file of "
                         "keras.applications)") from e


def saved_backbone(path: str, cut: str | int | None = None) -> keras.Model:
    """A backbone loaded from a saved model, cut at one layer.

    Args:
      path: a `.keras` or `.h5` file (or a SavedModel folder, used whole).
      cut: the layer whose output becomes the backbone's output: its name
        (e.g. "mixed7") or index (e.g. -3, as the tutorials cut at layers[-3]);
        None keeps the whole model.

    Returns:
      keras.Model from the saved model's inputs to that layer's output.

    Raises:
      ValueError: if the path does not exist, the layer is not found, or a cut is
        asked of a SavedModel (which has no layers to cut at).
    """
    if not os.path.exists(path):
        raise UserError(f"--backbone={path} does not exist")
    if os.path.isdir(path):
        if cut is not None:
            raise UserError(f"--backbone={path} is a SavedModel, which cannot be cut at a layer; "
                             "save it as .keras to cut it")
        return keras.Sequential([keras.layers.TFSMLayer(path, call_endpoint="serving_default")])
    model = load_trusted_layers(path, what=f"--backbone={path}")
    if cut is None:
        return model
    try:
        layer = model.get_layer(cut) if isinstance(cut, str) else model.layers[cut]
    except (ValueError, IndexError):
        names = ", ".join(layer.name for layer in model.layers[-5:])
        raise UserError(f"--backbone_cut={cut!r} is not a layer of {path} (its last layers: {names})") from None
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_to_{layer.name}")


def load_trusted_layers(path: str, *, what: str) -> keras.Model:
    """`keras.models.load_model(path)` in Keras's safe mode, its refusal said in one line.

    A `.keras` or `.h5` file names its layers by class; safe mode builds only
    Keras's own and registered classes and refuses a Lambda layer's Python
    bytecode, the one way such a file can carry code. Safe mode is never turned
    off here: a file from elsewhere runs no code of its own (BUILD_NOTES.md,
    "Files from elsewhere").

    Args:
      path: the model file.
      what: how the message names it, e.g. "--backbone=<path>".

    Raises:
      ValueError: naming `what`, if the file holds Python code that safe mode refuses.
    """
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as e:
        if "safe_mode" not in str(e):
            raise
        layer = "a Lambda layer" if "Lambda" in str(e) else "an object"
        raise UserError(f"{what} holds {layer} with Python code, which Keras's safe mode refuses to load "
                         "(it could run anything); rebuild that layer in code and save the model without "
                         "it") from None


def parse_cut(text: str | None) -> str | int | None:
    """A layer index if the text is an integer ("-3"), else the layer name, else None."""
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def transfer_model(backbone: keras.Model, *, num_classes: int, input_shape=None, resize_to=None,
                   dropout: float = 0.5, preprocess=(), name: str = "transfer") -> keras.Model:
    """Frozen backbone -> global average pooling -> dropout -> dense logits.

    Args:
      backbone: its weights are frozen (trainable=False) and it runs in inference
        mode (training=False), BatchNorm included.
      num_classes: output logits.
      input_shape: (h, w, c) of the images fed; the backbone's own when None.
      resize_to: (h, w) to resize inputs to before the backbone (small images into
        a large backbone), or None.
      dropout: dropout rate before the classifier.
      preprocess: Keras layers applied (in order, after any resize) before the
        backbone, e.g. un-normalising and an ApplicationPreprocess.

    Returns:
      keras.Model: images [batch, *input_shape] -> logits [batch, num_classes].
    """
    backbone.trainable = False
    input_shape = tuple(input_shape or backbone.input_shape[1:])
    inputs = keras.Input(input_shape, name="images")
    x = layers.Resizing(*resize_to, name="resize")(inputs) if resize_to else inputs
    for layer in preprocess:
        x = layer(x)
    x = backbone(x, training=False)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # [batch, channels]
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def unfreeze_top(backbone: keras.Model, num_layers: int) -> list[str]:
    """Makes the top `num_layers` layers of the backbone trainable, BatchNorm excepted.

    For fine-tuning after the head has trained; recompile the step functions (a new
    Trainer) and use a lower learning rate. BatchNorm layers stay frozen, and the
    backbone keeps running in inference mode.

    Returns:
      Names of the layers made trainable.
    """
    backbone.trainable = True
    names = []
    for i, layer in enumerate(backbone.layers):
        top = i >= len(backbone.layers) - num_layers
        layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
        if layer.trainable and layer.weights:
            names.append(layer.name)
    return names
