"""Flips and crops against numpy slicing and tf.image.resize, on real image batches."""

import doctest

import numpy as np
import pytest
import tensorflow as tf

from tfmagic.augment import crops
from tfmagic.augment.crops import center_crop, pad_and_crop, random_flip, random_resized_crop


def random_images(batch, height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, height, width, channels)).astype(np.float32)


def ramp_images(batch, height, width):
    """Channel 0 holds each pixel's row, channel 1 its column: bilinear sampling of a ramp
    returns the sampled coordinate exactly, so the crop box can be read off the output."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ramp = np.stack([rows, cols], axis=-1).astype(np.float32)
    return np.broadcast_to(ramp, (batch, height, width, 2)).copy()


def read_boxes(out, height, width):
    """Fractions (top, bottom, left, right) in crop_and_resize coordinates."""
    top = out[:, 0, 0, 0] / (height - 1)
    bottom = out[:, -1, 0, 0] / (height - 1)
    left = out[:, 0, 0, 1] / (width - 1)
    right = out[:, 0, -1, 1] / (width - 1)
    return top, bottom, left, right


def test_docstring_examples():
    assert doctest.testmod(crops).failed == 0


@pytest.mark.parametrize("fill,mode", [("reflect", "reflect"), ("constant", "constant")])
def test_pad_and_crop_outputs_are_windows_of_the_padded_image(fill, mode):
    pad = 3
    images = random_images(64, 9, 11)
    out = pad_and_crop(pad=pad, fill=fill, seed=1)(tf.constant(images)).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode=mode)
    offsets, flips = set(), []
    for image, padded_image in zip(out, padded, strict=True):
        found = [
            (dy, dx, flipped)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flipped in (False, True)
            if np.array_equal(
                image,
                padded_image[dy:dy + 9, dx:dx + 11][:, ::-1] if flipped
                else padded_image[dy:dy + 9, dx:dx + 11],
            )
        ]
        assert found, "output is not a window of the padded input"
        offsets.add(found[0][:2])
        flips.append(found[0][2])
    assert len(offsets) > 20  # offsets vary per image (49 possible)
    assert 0.2 < np.mean(flips) < 0.8


def test_pad_and_crop_covers_every_offset_without_flip():
    pad = 2
    images = ramp_images(800, 6, 6)
    out = pad_and_crop(pad=pad, fill="constant", flip=False, seed=2)(tf.constant(images))
    out = out.numpy()
    # With constant padding the ramp's value at the centre pixel gives the shift.
    shifts = out[:, 3, 3, :] - 3
    assert np.all(np.isin(shifts, np.arange(-pad, pad + 1)))
    counts = np.unique(shifts, axis=0, return_counts=True)[1]
    assert len(counts) == (2 * pad + 1) ** 2
    assert counts.min() > 800 / 25 * 0.4


@pytest.mark.parametrize("side,pad", [(28, 4), (32, 4), (12, 2), (20, 3)])
def test_pad_none_is_an_eighth_of_the_short_side(side, pad):
    images = ramp_images(400, side, side + 7)
    out = pad_and_crop(pad=None, fill="constant", flip=False, seed=4)(tf.constant(images))
    shifts = out.numpy()[:, side // 2, side // 2, :] - side // 2
    assert shifts.min() == -pad and shifts.max() == pad


def test_reflect_pad_must_be_smaller_than_the_image():
    with pytest.raises(ValueError, match=r"^pad=8 is not allowed: must be < the image height"):
        pad_and_crop(pad=8)(tf.zeros([2, 8, 16, 3]))
    assert pad_and_crop(pad=8, fill="constant")(tf.zeros([2, 8, 16, 3])).shape == (2, 8, 16, 3)


def test_random_flip_flips_about_half():
    images = tf.constant(ramp_images(4000, 2, 5)[..., 1:])
    out = random_flip(seed=0)(images).numpy()
    flipped = out[:, 0, 0, 0] == 4
    unflipped = out[:, 0, 0, 0] == 0
    assert np.all(flipped | unflipped)
    np.testing.assert_array_equal(out[flipped], images.numpy()[flipped][:, :, ::-1])
    np.testing.assert_array_equal(out[unflipped], images.numpy()[unflipped])
    assert abs(flipped.mean() - 0.5) < 4 * 0.5 / np.sqrt(4000)


@pytest.mark.parametrize("size,expected", [(None, (30, 50)), (16, (16, 16)), ((12, 20), (12, 20))])
def test_random_resized_crop_output_size(size, expected):
    out = random_resized_crop(size=size, seed=0)(tf.constant(random_images(3, 30, 50)))
    assert tuple(out.shape) == (3, *expected, 3)
    assert out.dtype == tf.float32


def test_random_resized_crop_box_statistics():
    height, width, n = 40, 60, 3000
    crop = random_resized_crop(size=(8, 8), scale=(0.1, 0.5), ratio=(0.8, 1.25), seed=3)
    out = crop(tf.constant(ramp_images(n, height, width))).numpy()
    top, bottom, left, right = read_boxes(out, height, width)
    flipped = right < left
    box_h = bottom - top
    box_w = np.abs(right - left)
    area = box_h * box_w
    aspect = box_w * width / (box_h * height)
    assert np.all((top >= -1e-5) & (bottom <= 1 + 1e-5))
    assert np.all((np.minimum(left, right) >= -1e-5) & (np.maximum(left, right) <= 1 + 1e-5))
    assert np.all((area > 0.1 - 1e-4) & (area < 0.5 + 1e-4))
    assert np.all((aspect > 0.8 - 1e-3) & (aspect < 1.25 + 1e-3))
    # Every candidate fits in a 40 x 60 image here, so the area is uniform on [0.1, 0.5] and
    # log(aspect) uniform on [-log 1.25, log 1.25].
    assert abs(area.mean() - 0.3) < 4 * (0.4 / np.sqrt(12)) / np.sqrt(n)
    assert abs(np.log(aspect).mean()) < 4 * (2 * np.log(1.25) / np.sqrt(12)) / np.sqrt(n)
    assert abs(flipped.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    # Positions are uniform over the free space: the box centre averages the image centre.
    assert abs(((top + bottom) / 2).mean() - 0.5) < 0.02


def test_random_resized_crop_falls_back_to_the_clamped_centre_box():
    crop = random_resized_crop(scale=(0.9, 1.0), ratio=(3.0, 4.0), flip=False, seed=0)
    out = crop(tf.constant(ramp_images(5, 30, 30))).numpy()
    top, bottom, left, right = read_boxes(out, 30, 30)
    np.testing.assert_allclose(bottom - top, 1 / 3, atol=1e-5)
    np.testing.assert_allclose((top + bottom) / 2, 0.5, atol=1e-5)
    np.testing.assert_allclose(left, 0.0, atol=1e-5)
    np.testing.assert_allclose(right, 1.0, atol=1e-5)


def test_center_crop_fraction_one_is_the_identity():
    images = random_images(4, 28, 28, channels=1)
    out = center_crop(1.0)(tf.constant(images)).numpy()
    np.testing.assert_array_equal(out, images)


def test_center_crop_half_is_numpy_crop_then_resize():
    images = random_images(4, 32, 32)
    out = center_crop(0.5)(tf.constant(images)).numpy()
    want = tf.image.resize(images[:, 8:24, 8:24, :], (32, 32), method="bilinear").numpy()
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-4)


def test_center_crop_to_a_square_size_uses_the_short_side():
    images = random_images(2, 40, 60)
    out = center_crop(0.5, size=20)(tf.constant(images)).numpy()
    np.testing.assert_allclose(out, images[:, 10:30, 20:40, :], atol=1e-4)
    out = center_crop(0.875, size=(7, 7))(tf.constant(images)).numpy()
    side = round(0.875 * 40)
    want = tf.image.resize(images[:, 2:2 + side, 12:12 + side], (7, 7)).numpy()
    np.testing.assert_allclose(out, want, atol=1e-4)


@pytest.mark.parametrize("factory", [
    lambda seed: pad_and_crop(seed=seed),
    lambda seed: random_resized_crop(seed=seed),
    lambda seed: random_flip(seed=seed),
])
def test_same_seed_same_outputs(factory):
    batches = [tf.constant(random_images(8, 16, 16, seed=s)) for s in range(3)]
    first, second = factory(5), factory(5)
    outs = [(first(b).numpy(), second(b).numpy()) for b in batches]
    for a, b in outs:
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(factory(5)(batches[0]), factory(6)(batches[0]))


def test_crops_run_inside_tf_data_map():
    images = random_images(20, 16, 16)
    labels = np.arange(20, dtype=np.int32)
    train_crop = random_resized_crop(size=12, seed=0)
    cifar_crop = pad_and_crop(seed=0)
    evaluation = center_crop(0.875, size=12)
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
               .map(lambda x, y: (train_crop(cifar_crop(x)), evaluation(x), y),
                    num_parallel_calls=tf.data.AUTOTUNE))
    shapes = [(a.shape, b.shape) for a, b, _ in dataset]
    assert [s[0] for s in shapes] == [(8, 12, 12, 3), (8, 12, 12, 3), (4, 12, 12, 3)]
    assert dataset.element_spec[0].shape.as_list() == [None, 12, 12, 3]
    assert dataset.element_spec[1].shape.as_list() == [None, 12, 12, 3]


@pytest.mark.parametrize("call,name", [
    (lambda: pad_and_crop(pad=-1), "pad"),
    (lambda: pad_and_crop(pad=2.5), "pad"),
    (lambda: pad_and_crop(fill="wrap"), "fill"),
    (lambda: pad_and_crop(flip=1), "flip"),
    (lambda: pad_and_crop(seed=-3), "seed"),
    (lambda: random_resized_crop(scale=(0.5, 0.2)), "scale"),
    (lambda: random_resized_crop(scale=(0.0, 1.0)), "scale"),
    (lambda: random_resized_crop(scale=(0.5, 1.5)), "scale"),
    (lambda: random_resized_crop(ratio=(0, 1)), "ratio"),
    (lambda: random_resized_crop(ratio=(2.0, 1.0)), "ratio"),
    (lambda: random_resized_crop(size=0), "size"),
    (lambda: random_resized_crop(size=(3, 4, 5)), "size"),
    (lambda: center_crop(0.0), "crop_fraction"),
    (lambda: center_crop(1.5), "crop_fraction"),
    (lambda: center_crop(0.5, size=-2), "size"),
    (lambda: random_flip(seed="a"), "seed"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}=.* is not allowed: "):
        call()
