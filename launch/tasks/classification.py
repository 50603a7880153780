"""Image classification: today's CIFAR-10 path (ResNet or a transfer head), cross-entropy and accuracy.

    python -m launch.train --flagfile=launch/cifar.flags --data_dir=../shared/data/cifar10

Data: CIFAR-10 from --data_dir in any of its forms, or any image source from
--train_data/--eval_data (class folders, CSV index, TFRecords). Model: --model
(ResNet for CIFAR, He et al. 2016) or a head on --backbone. Loss: sparse
cross-entropy with --label_smoothing in training (none in evaluation). Metrics:
accuracy. Saves the class names and normalisation in run.json, so launch.export,
launch.predict and launch.evaluate serve the model as trained.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

import models
from datasets import augment, cifar10, images, in_memory, sources, subsets
from engine import Trainer, sparse_accuracy
from engine.losses import sparse_categorical_crossentropy
from launch.tasks.base import Task, TaskData
from models import transfer
from models.airbench import PatchWhitening
from engine.errors import UserError


class Classification(Task):
    name = "classification"
    metrics = ("accuracy",)
    selects_classes = True

    def data(self, config, global_batch: int, progress: bool) -> TaskData:
        pipelines, source = load_images(config, global_batch, progress)
        runtime = {}
        if pipelines.train_images is not None:
            # 5,000 training images at random (the shared CSV lists them class by class),
            # normalised as the model sees them: what a whitening layer is initialised from.
            rng = np.random.default_rng(config.run.seed)
            pick = rng.choice(len(pipelines.train_images), min(5000, len(pipelines.train_images)), replace=False)
            runtime["whitening_images"] = np.asarray(
                augment.normalizer(pipelines.normalize)(pipelines.train_images[np.sort(pick)]))
        return TaskData(runtime=runtime, train_fn=pipelines.train_fn, steps_per_epoch=pipelines.steps_per_epoch,
                        eval_data=pipelines.eval_data, input_shape=tuple(int(d) for d in pipelines.image_shape),
                        num_train=pipelines.num_train, num_eval=pipelines.num_eval, source=source,
                        skipped=list(pipelines.skipped),
                        info={"image_shape": [int(d) for d in pipelines.image_shape],
                              "class_names": list(pipelines.class_names), "normalize": pipelines.normalize})

    def model(self, config, data: TaskData) -> keras.Model:
        model, backbone = build_classifier(config, data.input_shape, len(data.info["class_names"]),
                                           data.info["normalize"])
        data.runtime["backbone"] = backbone  # launch.experiment unfreezes it for --finetune_after_epochs
        # A whitening layer inside a --backbone keeps the filters it was trained with.
        if not config.model.backbone and any(isinstance(layer, PatchWhitening)
                                             for layer in model._flatten_layers(include_self=False)):
            sample = data.runtime.get("whitening_images")
            if sample is None:
                raise UserError(f"--model={config.model.name} initialises its whitening layer from the training "
                                 "images of --data_dir (CIFAR-10 in memory); --train_data is not supported for it")
            models.initialize_whitening(model, sample, eps=config.model.whitening_eps)
        return model

    def model_label(self, config, model) -> str:
        return config.model.backbone or config.model.name

    def loss(self, config):
        return sparse_categorical_crossentropy(label_smoothing=config.optimizer.label_smoothing)

    def trainer(self, config, *, model, optimizer, data, **kwargs):

        return Trainer(model=model, optimizer=optimizer, loss=self.loss(config),
                       eval_loss=sparse_categorical_crossentropy(), metrics=sparse_accuracy, **kwargs)


TASK = Classification()


def load_images(config, global_batch: int, progress: bool) -> tuple[images.ImagePipelines, str]:
    """--train_data/--eval_data through datasets.images, or CIFAR-10 from --data_dir; returns (pipelines, source)."""
    if config.data.train_data:
        # --cache=none streams TFRecords from disk; the other modes hold the bytes anyway.
        keep_bytes = config.data.cache != "none"
        train = sources.image_source(config.data.train_data, keep_bytes=keep_bytes)
        eval_index = (sources.image_source(config.data.eval_data, train.class_names, keep_bytes=keep_bytes)
                      if config.data.eval_data else None)
        train = _select_index(train, config, f"--train_data={config.data.train_data}", per_class=True)
        if eval_index is not None:
            eval_index = _select_index(eval_index, config, f"--eval_data={config.data.eval_data}", per_class=False)
        if eval_index is not None and eval_index.num_classes != train.num_classes:
            raise UserError(f"--eval_data={config.data.eval_data} has {eval_index.num_classes} classes but "
                             f"--train_data={config.data.train_data} has {train.num_classes}")
        p = images.build(train, eval_index, global_batch_size=global_batch, seed=config.run.seed,
                         augment_names=config.data.augment, image_size=config.data.image_size or None,
                         cache=config.data.cache,
                         normalize=config.data.normalize, skip_bad=config.data.skip_bad_examples, progress=progress)
        return p, f"{config.data.train_data} (cache {config.data.cache})"
    data = cifar10.load(config.data.data_dir, skip_bad=config.data.skip_bad_examples, progress=progress)
    data, class_names = _select_cifar10(data, config)
    recipe, per_image = augment.parse_recipe(config.data.augment)
    if per_image:
        raise UserError("--augment=imagenet needs --train_data (image files); CIFAR-10 from --data_dir is 32x32")
    spec = {"kind": "channel", "mean": list(augment.CIFAR10_MEAN), "std": list(augment.CIFAR10_STD)}
    train_fn = in_memory.train_dataset_fn(data.train.images, data.train.labels, global_batch_size=global_batch,
                                          seed=config.run.seed, recipe=recipe)
    eval_data = in_memory.eval_dataset(data.test.images, data.test.labels, global_batch_size=global_batch)
    steps = in_memory.steps_per_epoch(len(data.train.labels), global_batch)
    pipelines = images.ImagePipelines(
        train_fn=train_fn, steps_per_epoch=steps, eval_data=eval_data, image_shape=data.train.images.shape[1:],
        normalize=spec, class_names=class_names, num_train=len(data.train.labels),
        num_eval=len(data.test.labels), skipped=list(data.skipped), train_images=data.train.images)
    return pipelines, data.source


def _select_cifar10(data: cifar10.Cifar10, config) -> tuple[cifar10.Cifar10, tuple[str, ...]]:
    """--classes and --labels_per_class applied to CIFAR-10 in memory; returns (data, class names)."""
    classes, per_class = config.data.classes or None, config.data.labels_per_class
    if classes is None and per_class is None:
        return data, tuple(cifar10.CLASS_NAMES)
    what = f"--data_dir={config.data.data_dir}"
    keep, labels = subsets.select(data.train.labels, classes, per_class, seed=config.run.seed,
                                  what=f"{what} (training split)")
    train = cifar10.Split(data.train.images[keep], labels)
    keep, labels = subsets.select(data.test.labels, classes, None, what=f"{what} (test split)")
    test = cifar10.Split(data.test.images[keep], labels)
    names = tuple(cifar10.CLASS_NAMES[c] for c in classes) if classes else tuple(cifar10.CLASS_NAMES)
    shown = f"classes {','.join(map(str, classes))}" if classes else "all classes"
    limit = f", {per_class} training images per class (seed {config.run.seed})" if per_class else ""
    return dataclasses.replace(data, train=train, test=test, source=f"{data.source}; {shown}{limit}"), names


def _select_index(index, config, what: str, *, per_class: bool):
    """--classes (and, for training data, --labels_per_class) applied to an ImageIndex."""
    classes = config.data.classes or None
    limit = config.data.labels_per_class if per_class else None
    if classes is None and limit is None:
        return index
    keep, labels = subsets.select(index.labels, classes, limit, seed=config.run.seed, what=what)
    kept = index.subset(keep)
    names = tuple(index.class_names[c] for c in classes) if classes else index.class_names
    return dataclasses.replace(kept, labels=labels, class_names=names)


def build_classifier(config, image_shape, num_classes: int,
                     normalize: dict) -> tuple[keras.Model, keras.Model | None]:
    """The --model network, or a transfer model on --backbone; returns (model, backbone or None)."""
    if not config.model.backbone:
        return models.build(config.model.name, num_classes=num_classes, input_shape=tuple(int(d) for d in image_shape),
                            weight_decay=config.optimizer.weight_decay), None
    preprocess = []
    if config.model.backbone in transfer.APPLICATIONS:
        shape = (*(config.model.resize_to or image_shape[:2]), 3)
        backbone = transfer.applications_backbone(config.model.backbone, input_shape=shape,
                                                  weights=config.model.backbone_weights_or_none)
        # The pipeline normalises images; the application wants its own preprocessing of [0, 255] pixels.
        preprocess = [_undo_normalization(normalize), transfer.ApplicationPreprocess(config.model.backbone)]
    else:
        backbone = transfer.saved_backbone(config.model.backbone, transfer.parse_cut(config.model.backbone_cut))
    model = transfer.transfer_model(backbone, num_classes=num_classes, input_shape=tuple(image_shape),
                                    resize_to=config.model.resize_to or None, dropout=config.model.dropout,
                                    preprocess=preprocess)
    return model, backbone


def _undo_normalization(spec: dict) -> keras.layers.Layer:
    """A layer mapping the pipeline's normalised images back to [0, 255] pixels."""
    kind = spec.get("kind", "channel")
    if kind == "channel":
        return keras.layers.Normalization(mean=spec["mean"], variance=[s * s for s in spec["std"]], invert=True)
    if kind == "unit":
        return keras.layers.Rescaling(255.0)
    if kind == "imagenet":
        return keras.layers.Normalization(mean=[-m for m in augment.IMAGENET_MEAN], variance=[1.0, 1.0, 1.0])
    raise UserError(f"--normalize={kind} cannot be undone for a keras.applications backbone; use channel, "
                     "unit or imagenet")


