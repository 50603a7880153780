import keras
import numpy as np
import pytest

import models
from models.resnet_cifar import ZeroPadShortcut, resnet_cifar


def _trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("name,paper_millions,digits", [
    ("resnet20", 0.27, 2), ("resnet56", 0.85, 2), ("resnet110", 1.7, 1)])
def test_parameter_counts_match_the_paper(name, paper_millions, digits):
    # He et al. 2016, table 6 gives the counts to 2 significant digits.
    assert round(_trainable_params(models.build(name)) / 1e6, digits) == paper_millions


def test_depth_sets_the_number_of_conv_layers():
    model = resnet_cifar(32)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert len(convs) + len(dense) == 32


def test_outputs_logits_for_each_class():
    model = models.build("resnet20", num_classes=7)
    out = model(np.zeros((3, 32, 32, 3), np.float32), training=False)
    assert tuple(out.shape) == (3, 7)


def test_weight_decay_adds_one_loss_per_kernel():
    model = models.build("resnet20", weight_decay=1e-4)
    kernels = [v for v in model.trainable_variables if "kernel" in v.path]
    assert len(model.losses) == len(kernels) == 20
    w = kernels[0].numpy()
    # L2 of weight_decay / 2, so that the gradient gains weight_decay * w.
    assert any(np.isclose(float(l), 0.5e-4 * float(np.sum(w ** 2)), rtol=1e-4) for l in model.losses)
    assert models.build("resnet20", weight_decay=0).losses == []


def test_bad_depth_and_unknown_name_are_refused():
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)
    with pytest.raises(ValueError, match="resnet19"):
        models.build("resnet19")


def test_zero_pad_shortcut_subsamples_and_pads_channels_with_zeros():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
    y = np.asarray(ZeroPadShortcut(8)(x))
    assert y.shape == (2, 4, 4, 8)
    np.testing.assert_array_equal(y[..., 2:6], x[:, ::2, ::2, :])
    assert not y[..., :2].any() and not y[..., 6:].any()
