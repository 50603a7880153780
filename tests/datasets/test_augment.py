import numpy as np
import tensorflow as tf

from datasets import augment


def _images(n=3, size=6):
    return np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def test_centre_offset_without_flip_is_identity():
    x = _images()
    out = augment.pad_crop_flip(x, np.full((3, 2), 4, np.int32), np.zeros(3, bool))
    np.testing.assert_array_equal(out, x)


def test_corner_offset_shifts_in_zeros_and_flip_mirrors():
    x = _images()
    offsets = np.array([[0, 0], [8, 8], [0, 8]], np.int32)
    out = augment.pad_crop_flip(x, offsets, np.array([False, False, True])).numpy()
    # Top-left crop: the image moves down-right by 4 and zeros come in at top/left.
    np.testing.assert_array_equal(out[0, 4:, 4:], x[0, :-4, :-4])
    assert not out[0, :4].any() and not out[0, :, :4].any()
    np.testing.assert_array_equal(out[1, :-4, :-4], x[1, 4:, 4:])
    # Row offset 0, column offset 8, then mirrored.
    unflipped = augment.pad_crop_flip(x[2:], offsets[2:], np.array([False])).numpy()[0]
    np.testing.assert_array_equal(out[2], unflipped[:, ::-1])


def test_same_in_eager_and_inside_dataset_map():
    x = _images(8)
    offsets, flips = augment.sample_pad_crop_flip(np.random.default_rng(3), 8)
    eager = augment.normalize(augment.pad_crop_flip(x, offsets, flips)).numpy()
    ds = tf.data.Dataset.from_tensors((x, offsets, flips)).map(
        lambda a, o, f: augment.normalize(augment.pad_crop_flip(a, o, f)))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)


def test_sampled_offsets_cover_the_padding_range_and_flips_both_ways():
    offsets, flips = augment.sample_pad_crop_flip(np.random.default_rng(0), 2000, pad=4)
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.4 < flips.mean() < 0.6


def test_normalize_maps_the_mean_colour_to_zero_and_scales_by_std():
    mean = np.array(augment.CIFAR10_MEAN, np.float32)
    std = np.array(augment.CIFAR10_STD, np.float32)
    x = np.stack([np.broadcast_to(mean, (2, 2, 3)), np.broadcast_to(mean + std, (2, 2, 3))])
    out = augment.normalize(x).numpy()
    np.testing.assert_allclose(out[0], 0, atol=1e-5)
    np.testing.assert_allclose(out[1], 1, atol=1e-5)
