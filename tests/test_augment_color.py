"""ColorAugment: ranges, hand-computed brightness / contrast / hue, seeds, saving."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmagic.augment import color
from tfmagic.augment.color import ColorAugment

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def random_images(batch, height=8, width=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, height, width, channels)).astype(np.float32)


def per_image_factor(out, reference, images):
    """The factor f of ``out = reference + f * (images - reference)`` per image, from the
    pixels that were not clipped, with its spread over those pixels."""
    reference = np.broadcast_to(reference, images.shape)
    factors, spreads = [], []
    for o, r, x in zip(out, reference, images, strict=True):
        keep = (o > 0.5) & (o < 254.5) & (np.abs(x - r) > 20)
        ratio = (o[keep] - r[keep]) / (x[keep] - r[keep])
        factors.append(ratio.mean())
        spreads.append(ratio.max() - ratio.min())
    return np.array(factors), np.array(spreads)


def test_docstring_example():
    assert doctest.testmod(color).failed == 0


@pytest.mark.parametrize("kwargs", [{}, dict(brightness=1.0, contrast=2.0, saturation=3.0,
                                             hue=0.5)])
def test_outputs_stay_in_the_value_range(kwargs):
    images = random_images(64)
    out = ColorAugment(seed=0, **kwargs)(tf.constant(images))
    assert out.shape == images.shape and out.dtype == tf.float32
    out = out.numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, images)


def test_value_range_other_than_0_255():
    images = random_images(16) / 255.0 * 2.0 - 1.0
    out = ColorAugment(value_range=(-1, 1), seed=0)(tf.constant(images)).numpy()
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert 0.05 < np.abs(out - images).mean() < 0.5


def test_brightness_is_image_times_a_factor_per_image():
    images = random_images(64)
    layer = ColorAugment(brightness=0.4, contrast=0, saturation=0, hue=0, seed=1)
    out = layer(tf.constant(images)).numpy()
    factors, spreads = per_image_factor(out, 0.0, images)
    assert np.all(spreads < 1e-4)
    assert np.all((factors >= 0.6 - 1e-4) & (factors <= 1.4 + 1e-4))
    want = np.minimum(images * factors[:, None, None, None], 255.0)
    np.testing.assert_allclose(out, want, atol=2e-3)
    # Per-image parameters: every image of the batch has its own factor.
    assert len(np.unique(np.round(factors, 4))) == len(factors)


def test_contrast_blends_with_the_mean_grey_level():
    images = random_images(32)
    layer = ColorAugment(brightness=0, contrast=0.5, saturation=0, hue=0, seed=2)
    out = layer(tf.constant(images)).numpy()
    grey = images @ LUMA
    mean = grey.mean(axis=(1, 2))[:, None, None, None]
    factors, spreads = per_image_factor(out, mean, images)
    assert np.all(spreads < 1e-3)
    assert np.all((factors >= 0.5 - 1e-4) & (factors <= 1.5 + 1e-4))
    want = np.clip(factors[:, None, None, None] * (images - mean) + mean, 0, 255)
    np.testing.assert_allclose(out, want, atol=2e-2)


def test_saturation_keeps_grey_pixels_and_the_luma():
    images = random_images(16)
    images[:, :4] = images[:, :4, :, :1]  # the top half grey
    layer = ColorAugment(brightness=0, contrast=0, saturation=0.8, hue=0, seed=3)
    out = layer(tf.constant(images)).numpy()
    np.testing.assert_allclose(out[:, :4], images[:, :4], atol=1e-3)
    unclipped = ((out > 0) & (out < 255)).all(axis=-1)
    np.testing.assert_allclose((out @ LUMA)[unclipped], (images @ LUMA)[unclipped], atol=0.05)


def test_hue_rotates_by_the_same_shift_within_an_image():
    images = random_images(32, channels=3)
    layer = ColorAugment(brightness=0, contrast=0, saturation=0, hue=0.1, seed=4)
    out = layer(tf.constant(images)).numpy()
    hsv_in = tf.image.rgb_to_hsv(images / 255.0).numpy()
    hsv_out = tf.image.rgb_to_hsv(out / 255.0).numpy()
    np.testing.assert_allclose(hsv_out[..., 1:], hsv_in[..., 1:], atol=1e-3)
    coloured = hsv_in[..., 1] > 0.2
    shift = (hsv_out[..., 0] - hsv_in[..., 0] + 0.5) % 1.0 - 0.5
    shifts = []
    for image_shift, mask in zip(shift, coloured, strict=True):
        values = image_shift[mask]
        assert values.max() - values.min() < 2e-3
        shifts.append(values.mean())
    assert np.all(np.abs(shifts) <= 0.1 + 1e-3)
    assert len(np.unique(np.round(shifts, 3))) > 20


def test_grayscale_gets_brightness_and_contrast_only():
    images = random_images(16, channels=1)
    out = ColorAugment(seed=5)(tf.constant(images))
    assert out.shape == (16, 8, 8, 1)
    assert not np.allclose(out.numpy(), images)
    unchanged = ColorAugment(brightness=0, contrast=0, saturation=1.0, hue=0.5, seed=5)
    np.testing.assert_allclose(unchanged(tf.constant(images)).numpy(), images, atol=1e-4)


def test_same_seed_same_outputs_and_other_seeds_differ():
    batches = [tf.constant(random_images(8, seed=s)) for s in range(3)]
    first, second = ColorAugment(seed=7), ColorAugment(seed=7)
    for images in batches:
        np.testing.assert_array_equal(first(images).numpy(), second(images).numpy())
    assert not np.allclose(ColorAugment(seed=8)(batches[0]), ColorAugment(seed=7)(batches[0]))
    unseeded = ColorAugment()
    assert not np.allclose(unseeded(batches[0]), unseeded(batches[0]))


def test_runs_inside_tf_data_map_and_passes_through_at_inference():
    layer = ColorAugment(seed=0)
    images = random_images(20)
    dataset = (tf.data.Dataset.from_tensor_slices(images).batch(8)
               .map(layer, num_parallel_calls=tf.data.AUTOTUNE))
    outs = [x.numpy() for x in dataset]
    assert [len(x) for x in outs] == [8, 8, 4]
    assert all(x.min() >= 0 and x.max() <= 255 for x in outs)
    np.testing.assert_array_equal(layer(tf.constant(images), training=False).numpy(), images)


def test_config_round_trip_and_model_reload(tmp_path):
    layer = ColorAugment(brightness=0.2, contrast=0.3, saturation=0.0, hue=0.05,
                         value_range=(0, 1), seed=3)
    config = layer.get_config()
    assert ColorAugment.from_config(config).get_config() == config
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(layer(inputs)))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    again = reloaded.get_layer(layer.name)
    assert isinstance(again, ColorAugment) and again.get_config() == config
    images = random_images(2) / 255.0
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), images.mean(axis=(1, 2)),
                               atol=1e-6)


def test_unsupported_channels_are_refused():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        ColorAugment()(tf.zeros([2, 4, 4, 2]))


@pytest.mark.parametrize("kwargs,name", [
    (dict(brightness=-0.1), "brightness"),
    (dict(contrast=float("inf")), "contrast"),
    (dict(saturation="high"), "saturation"),
    (dict(hue=0.6), "hue"),
    (dict(hue=-0.1), "hue"),
    (dict(value_range=(255, 0)), "value_range"),
    (dict(value_range=(0, 1, 2)), "value_range"),
    (dict(seed=-1), "seed"),
    (dict(seed=True), "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=.* is not allowed: "):
        ColorAugment(**kwargs)
