import numpy as np
import pytest
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


# --- Recipes by name ---------------------------------------------------------------------

def _float_images(n=4, size=16):
    return tf.constant(np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype(np.float32))


def test_parse_recipe_composes_in_order_and_names_unknown_or_misplaced_recipes():
    recipe, per_image = augment.parse_recipe("cifar,jitter")
    assert per_image is None and [r.name for r in recipe.recipes] == ["cifar", "jitter"]
    assert augment.parse_recipe("imagenet,flip")[1] == "imagenet"
    with pytest.raises(ValueError, match="'blur' is not a known recipe"):
        augment.parse_recipe("cifar,blur")
    with pytest.raises(ValueError, match="'imagenet' .*must come first"):
        augment.parse_recipe("flip,imagenet")


def test_composed_recipe_equals_its_parts_applied_in_turn():
    x = _float_images()
    recipe, _ = augment.parse_recipe("cifar,jitter")
    params = recipe.sample(np.random.default_rng(5), 4)
    assert len(params) == 4  # offsets, flips, brightness, contrast
    cifar, jitter = augment.PadCropFlip(), augment.ColorJitter()
    expected = jitter.apply(cifar.apply(x, *params[:2]), *params[2:])
    np.testing.assert_allclose(recipe.apply(x, *params).numpy(), expected.numpy())


def test_color_jitter_shifts_brightness_scales_contrast_and_stays_in_range():
    x = tf.constant(np.full((2, 4, 4, 3), 100.0, np.float32) + np.arange(4, dtype=np.float32)[None, :, None, None])
    out = augment.ColorJitter().apply(x, tf.constant([0.1, 0.0]), tf.constant([1.0, 2.0])).numpy()
    np.testing.assert_allclose(out[0], x[0].numpy() + 25.5, rtol=1e-6)  # brightness: +0.1 x 255
    centred = x[1].numpy() - x[1].numpy().mean()
    np.testing.assert_allclose(out[1] - out[1].mean(), 2 * centred, rtol=1e-5)  # contrast x2
    big = augment.ColorJitter(brightness=1.0).apply(x, tf.constant([1.0, -1.0]), tf.constant([1.0, 1.0])).numpy()
    assert big.min() >= 0 and big.max() <= 255


def test_affine_without_change_is_identity_and_a_shift_moves_the_content():
    x = _float_images(n=2)
    recipe = augment.Affine()
    zero = [tf.zeros(2), tf.zeros((2, 2)), tf.zeros(2), tf.ones((2, 2)), tf.constant([False, False])]
    np.testing.assert_allclose(recipe.apply(x, *zero).numpy(), x.numpy(), atol=1e-3)
    shift = list(zero)
    shift[1] = tf.constant([[0.0, 0.25], [0.25, 0.0]])  # (row, column) fractions: 4 pixels of 16
    out = recipe.apply(x, *shift).numpy()
    # Output (x, y) samples input (x + 4, y): the content moves left by 4 columns.
    np.testing.assert_allclose(out[0, :, :12], x.numpy()[0, :, 4:], atol=1e-3)
    np.testing.assert_allclose(out[1, :12], x.numpy()[1, 4:], atol=1e-3)
    # fill_mode nearest: the uncovered columns repeat the edge.
    np.testing.assert_allclose(out[0, :, 12:], np.repeat(x.numpy()[0, :, 15:16], 4, axis=1), atol=1e-3)


def test_affine_rotation_by_90_degrees_turns_the_image():
    x = _float_images(n=1)
    params = [tf.constant([np.pi / 2], tf.float32), tf.zeros((1, 2)), tf.zeros(1), tf.ones((1, 2)),
              tf.constant([False])]
    out = augment.Affine().apply(x, *params).numpy()[0]
    candidates = [np.rot90(x.numpy()[0], k) for k in (1, 3)]
    assert min(np.abs(out - c).max() for c in candidates) < 1e-2


def test_imagenet_recipe_crops_224_in_training_and_centre_crops_for_eval():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (300, 400, 3)).astype(np.uint8))
    sides, corners, flips = augment.sample_imagenet(np.random.default_rng(0), 50)
    assert sides.min() >= 256 and sides.max() <= 512
    out = augment.imagenet_train(image, sides[0], corners[0], flips[0])
    assert out.shape == (224, 224, 3)
    ev = augment.imagenet_eval(image).numpy()
    resized = tf.image.resize(tf.cast(image, tf.float32), (256, 341)).numpy()  # shorter side 300 -> 256
    np.testing.assert_allclose(ev, resized[16:240, 58:282], atol=1e-4)


def test_normalizers_by_name():
    x = _float_images(n=2)
    per_image = augment.normalizer({"kind": "per_image"})(x).numpy()
    np.testing.assert_allclose(per_image.reshape(2, -1).mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(per_image.reshape(2, -1).std(1), 1, atol=1e-3)
    np.testing.assert_allclose(augment.normalizer({"kind": "imagenet"})(x).numpy(),
                               x.numpy() - np.array(augment.IMAGENET_MEAN, np.float32), rtol=1e-6)
    old_style = augment.normalizer({"mean": [1, 2, 3], "std": [2, 2, 2]})  # run.json of earlier runs
    np.testing.assert_allclose(old_style(x).numpy(), (x.numpy() - [1, 2, 3]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="'sepia' is not one of"):
        augment.normalizer({"kind": "sepia"})


def test_translate2_reflects_the_edges_and_shifts_by_at_most_two_pixels():
    x = np.arange(2 * 5 * 6 * 1, dtype=np.float32).reshape(2, 5, 6, 1)
    recipe = augment.parse_recipe("translate2")[0]
    all_offsets, _ = recipe.sample(np.random.default_rng(0), 2000)
    assert all_offsets.min() == 0 and all_offsets.max() == 4  # shifts of -2 ... +2
    out = augment.Translate2Flip().apply(tf.constant(x), tf.constant([[0, 4], [2, 2]], tf.int32),
                                         tf.constant([False, True])).numpy()
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(out[0], padded[0, 0:5, 4:10])  # moved down 2 and left 2, edges mirrored
    np.testing.assert_array_equal(out[1], x[1, :, ::-1])  # centred crop, flipped


def test_alternating_flips_mirror_each_example_every_other_epoch_in_the_pipeline():
    from datasets import in_memory

    n = 64
    # Each image brightens left to right, so its mirror image darkens: the sign of
    # (right half - left half) says whether the pipeline flipped it, despite the shifts.
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, None, :, None] * 8, (n, 32, 32, 3))
    images, labels = np.ascontiguousarray(ramp).astype(np.uint8), np.arange(n, dtype=np.int32)
    recipe = augment.parse_recipe("translate2_alternating")[0]
    fn = in_memory.train_dataset_fn(images, labels, global_batch_size=16, seed=3, recipe=recipe, normalize=None)

    def flipped(epoch):
        out = np.zeros(n, bool)
        for x, y in fn(tf.distribute.InputContext(), epoch, 0):
            x = x.numpy()
            out[y.numpy()] = x[:, :, 16:].mean(axis=(1, 2, 3)) < x[:, :, :16].mean(axis=(1, 2, 3))
        return out

    first, second, third = flipped(0), flipped(1), flipped(2)
    assert 0.25 < first.mean() < 0.75  # a random half at first
    np.testing.assert_array_equal(second, ~first)  # then every example the other way
    np.testing.assert_array_equal(third, first)
    # The bits come from the run's seed, whatever the epoch's generator.
    np.testing.assert_array_equal(recipe.sample_epoch(np.random.default_rng(9), n, seed=3, epoch=2)[1], first)
    assert not np.array_equal(recipe.sample_epoch(np.random.default_rng(9), n, seed=4, epoch=0)[1], first)
    # The shifts are still drawn anew each epoch.
    offsets = [recipe.sample_epoch(np.random.default_rng(e), n, seed=3, epoch=e)[0] for e in (0, 1)]
    assert not np.array_equal(*offsets)
