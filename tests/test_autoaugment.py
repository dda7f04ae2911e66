"""Tests for tfmagic.augment.autoaugment and tfmagic.augment.ops, against Pillow.

The references are Pillow's own functions (what torchvision's AutoAugment calls on PIL images)
with the magnitudes computed here from the documented formulas, on real Fashion-MNIST images
and on RGB images made here (gradients, shapes, texture) of a square and a non-square size.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from tfmagic.augment import ops
from tfmagic.augment.autoaugment import (
    IMAGENET_POLICY,
    V0_OPS,
    V0_POLICY,
    AutoAugment,
    sample_decisions,
    v0_spec,
)
from tfmagic.data import DataError, fashion_mnist

NO_MAGNITUDE = ("AutoContrast", "Equalize", "Invert")
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness")
BINS = (0, 2, 5, 9)
# chi-square(24 degrees of freedom) quantile at 1 - 1e-4 (scipy.stats.chi2.ppf).
CHI2_24_CRITICAL = 58.61


# ----------------------------------------------------------------------------- images


def make_rgb(height, width):
    """Four RGB images: gradients with shapes and texture, a low-contrast one (one channel in
    0..25, where Pillow's autocontrast maps the top level to 254), a two-level one, a dark one
    with few levels."""
    y, x = np.mgrid[0:height, 0:width]
    texture = (x * 7 + y * 13) % 11
    gradient = np.stack([x * 255 // (width - 1), y * 255 // (height - 1),
                         (x + 2 * y) * 3 % 256], axis=-1) + texture[..., None]
    gradient[height // 4 : height // 2, width // 5 : width // 2] = (200, 40, 90)
    gradient[(y - height * 0.7) ** 2 + (x - width * 0.7) ** 2 < (height / 5) ** 2] = (20, 230, 60)
    low = np.stack([x * 25 // (width - 1), 100 + texture, 120 + y % 9], axis=-1)
    two_levels = np.where(((x // 4 + y // 4) % 2 == 0)[..., None], 60, 190) + 0 * gradient
    dark = (gradient // 64) * 9
    return np.clip(np.stack([gradient, low, two_levels, dark]), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fashion():
    """Six Fashion-MNIST test images, a constant image and a ramp 0..25: (8, 28, 28, 1)."""
    try:
        (_, _), (images, _) = fashion_mnist()
    except DataError as e:
        pytest.skip(f"Fashion-MNIST is not available: {e}")
    ramp = np.minimum(np.arange(28 * 28).reshape(28, 28, 1) // 30, 25)
    special = np.stack([np.full((28, 28, 1), 37), ramp]).astype(np.uint8)
    return np.concatenate([images[:6], special])


@pytest.fixture(scope="module")
def rgb():
    return make_rgb(32, 32)


@pytest.fixture(scope="module")
def rgb_wide():
    return make_rgb(24, 40)


# ----------------------------------------------------------------------------- references


def to_pil(image):
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(pil, channels):
    return np.asarray(pil).reshape(pil.size[1], pil.size[0], channels)


def pil_apply(image, kind, value=None, fill=0, resample=Image.NEAREST):
    """Pillow's operation ``kind`` with its final parameter ``value`` on a uint8 HWC image."""
    channels = image.shape[-1]
    pil = to_pil(image)
    fillcolor = fill if channels == 1 else (fill,) * 3
    if kind == "rotate":
        pil = pil.rotate(value, resample=resample, fillcolor=fillcolor)
    elif kind in ("shear_x", "shear_y", "translate_x", "translate_y"):
        matrix = {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
                  "translate_x": (1, 0, -value, 0, 1, 0),
                  "translate_y": (1, 0, 0, 0, 1, -value)}[kind]
        pil = pil.transform(pil.size, Image.AFFINE, matrix, resample=resample,
                            fillcolor=fillcolor)
    elif kind in ("Brightness", "Color", "Contrast", "Sharpness"):
        pil = getattr(ImageEnhance, kind)(pil).enhance(value)
    elif kind == "posterize":
        if value == 0:
            return np.zeros_like(image)
        pil = ImageOps.posterize(pil, value)
    elif kind == "solarize":
        pil = ImageOps.solarize(pil, value)
    elif kind == "solarize_add":
        x = image.astype(np.int64)
        return np.where(x < 128, np.minimum(x + value, 255), x).astype(np.uint8)
    else:
        pil = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize,
               "Invert": ImageOps.invert}[kind](pil)
    return from_pil(pil, channels)


def torchvision_reference(image, name, b, sign, fill=0, resample=Image.NEAREST):
    """torchvision's AutoAugment op on a PIL image, magnitudes from its documented table."""
    height, width = image.shape[:2]
    if name in NO_MAGNITUDE:
        return pil_apply(image, name)
    if name in ("ShearX", "ShearY"):
        kind = "shear_x" if name == "ShearX" else "shear_y"
        return pil_apply(image, kind, sign * 0.3 * b / 9, fill, resample)
    if name in ("TranslateX", "TranslateY"):
        size = width if name == "TranslateX" else height
        kind = "translate_x" if name == "TranslateX" else "translate_y"
        return pil_apply(image, kind, int(sign * 150.0 / 331.0 * size * b / 9), fill, resample)
    if name == "Rotate":
        return pil_apply(image, "rotate", sign * 30.0 * b / 9, fill, resample)
    if name == "Posterize":
        return pil_apply(image, "posterize", int(8 - round(b / 2.25)))
    if name == "Solarize":
        return pil_apply(image, "solarize", 255.0 * (1 - b / 9))
    return pil_apply(image, name, 1.0 + sign * 0.9 * b / 9)


def v0_reference(image, name, level, sign, fill):
    """The EfficientNet reference's op at ``level``, with this module's Pillow kernels."""
    fraction = level / 10.0
    if name in NO_MAGNITUDE:
        return pil_apply(image, name)
    if name == "Rotate":
        return pil_apply(image, "rotate", sign * fraction * 30.0, fill)
    if name in ("ShearX", "ShearY"):
        return pil_apply(image, "shear_" + name[-1].lower(), sign * fraction * 0.3, fill)
    if name in ("TranslateX", "TranslateY"):
        pixels = int(sign * fraction * 250.0)
        return pil_apply(image, "translate_" + name[-1].lower(), pixels, fill)
    if name == "Posterize":
        return pil_apply(image, "posterize", int(fraction * 4))
    if name == "Solarize":
        return pil_apply(image, "solarize", int(fraction * 256))
    if name == "SolarizeAdd":
        return pil_apply(image, "solarize_add", int(fraction * 110))
    return pil_apply(image, name, fraction * 1.8 + 0.1)


def assert_batch_equal(out, images, reference, what):
    expected = np.stack([reference(image) for image in images])
    mismatched = int(np.sum(out != expected))
    assert mismatched == 0, (f"{what} {images.shape}: {mismatched} values differ from Pillow, "
                             f"max |diff| {np.abs(out.astype(int) - expected).max()}")


# ----------------------------------------------------------------------------- single ops


@pytest.mark.parametrize("name", ops.TORCHVISION_OPS)
def test_op_matches_pillow_exactly(name, fashion, rgb, rgb_wide):
    bins = (None,) if name in NO_MAGNITUDE else BINS
    signs = (1, -1) if name in SIGNED else (1,)
    for images in (fashion, rgb, rgb_wide):
        for b in bins:
            for sign in signs:
                out = ops.apply_op(images, name, b, sign).numpy()
                assert out.dtype == np.uint8 and out.shape == images.shape
                assert_batch_equal(out, images,
                                   lambda im, b=b, s=sign: torchvision_reference(im, name, b, s),
                                   f"{name} bin {b} sign {sign}")


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateY"])
def test_bilinear_warps_and_fill_match_pillow(name, fashion, rgb):
    for images in (fashion, rgb):
        for b, sign in ((3, 1), (9, -1)):
            out = ops.apply_op(images, name, b, sign, fill_value=128,
                               interpolation="bilinear").numpy()
            assert_batch_equal(
                out, images,
                lambda im, b=b, s=sign: torchvision_reference(im, name, b, s, 128,
                                                              Image.BILINEAR),
                f"bilinear {name} bin {b} sign {sign}")


def test_pillow_quirks_are_reproduced(fashion):
    ramp = fashion[7]
    assert ramp.max() == 25
    # Pillow's double-precision autocontrast maps the top of 0..25 to 254, not 255.
    assert ops.apply_op(ramp[None], "AutoContrast").numpy().max() == 254
    # Equalize leaves a constant image alone (step 0).
    constant = fashion[6]
    np.testing.assert_array_equal(ops.apply_op(constant[None], "Equalize").numpy()[0], constant)


def test_torchvision_magnitudes():
    assert [ops.torchvision_spec("Posterize", b).positive for b in range(10)] == [
        8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    for b in range(10):
        threshold = ops.torchvision_spec("Solarize", b).positive
        assert threshold == math.ceil(255 * (9 - b) / 9 - 1e-9)
    spec = ops.torchvision_spec("Rotate", 9)
    assert (spec.kernel, spec.geometry, spec.positive, spec.negative) == (
        "warp", "rotate", 30.0, -30.0)
    assert ops.torchvision_spec("Color", 0).is_identity
    assert ops.torchvision_spec("Brightness", 9)[1:3] == pytest.approx((1.9, 0.1))
    assert ops.torchvision_spec("TranslateX", 9).relative
    with pytest.raises(ValueError, match="magnitude_bin"):
        ops.torchvision_spec("Rotate", 10)
    with pytest.raises(ValueError, match="magnitude_bin"):
        ops.torchvision_spec("Equalize", 3)
    with pytest.raises(ValueError, match="name='Shear'"):
        ops.torchvision_spec("Shear", 3)


def test_v0_magnitudes_and_kernels(rgb):
    rotate = v0_spec("Rotate", 9)
    assert (rotate.kernel, rotate.geometry) == ("warp", "rotate")
    assert (rotate.positive, rotate.negative) == pytest.approx((27.0, -27.0))
    assert v0_spec("TranslateY", 9)[1:3] == pytest.approx((225.0, -225.0))
    assert v0_spec("Color", 0)[1:3] == pytest.approx((0.1, 0.1))
    assert v0_spec("Posterize", 2).positive == 0
    assert v0_spec("Posterize", 6).positive == 2
    assert v0_spec("Solarize", 10).is_identity
    assert v0_spec("SolarizeAdd", 3).positive == 33
    with pytest.raises(ValueError, match="level"):
        v0_spec("Rotate", 11)
    for name, level in (("SolarizeAdd", 7), ("Posterize", 2), ("TranslateY", 1),
                        ("Contrast", 3)):
        spec = v0_spec(name, level)
        shape = tf.shape(rgb)
        count = len(rgb)
        params = ops.item_params(
            tf.fill([count], ops.KERNELS.index(spec.kernel)),
            tf.fill([count], ops.GEOMETRIES.index(spec.geometry)),
            tf.fill([count], tf.constant(spec.positive, tf.float64)),
            tf.fill([count], spec.relative),
            tf.tile([ops.rotation_terms(spec.positive)], [count, 1]), shape[1], shape[2])
        out = ops.apply_items(rgb, tf.range(count), tf.fill([count], ops.KERNELS.index(
            spec.kernel)), params, fill=128).numpy()
        assert_batch_equal(out, rgb, lambda im, n=name, lv=level: v0_reference(im, n, lv, 1, 128),
                           f"v0 {name} level {level}")


# ----------------------------------------------------------------------------- the layer


def compose_reference(images, decisions, policy, reference):
    """Each image through its sub-policy with Pillow, following ``decisions``."""
    subpolicy, apply, negate = (np.asarray(d) for d in decisions)
    out = []
    for i, image in enumerate(images):
        for slot, (name, _, magnitude) in enumerate(policy[subpolicy[i]]):
            if apply[i, slot]:
                image = reference(image, name, magnitude, -1 if negate[i, slot] else 1)
        out.append(image)
    return np.stack(out)


@pytest.mark.parametrize("policy", ["imagenet", "v0"])
def test_layer_is_pillow_autoaugment_with_its_decisions(policy, fashion, rgb):
    fill = 128 if policy == "v0" else 0
    table = IMAGENET_POLICY if policy == "imagenet" else V0_POLICY
    if policy == "imagenet":
        def reference(image, name, magnitude, sign):
            return torchvision_reference(image, name, magnitude, sign, fill)
    else:
        def reference(image, name, magnitude, sign):
            return v0_reference(image, name, magnitude, sign, fill)
    for images in (fashion, rgb):
        layer = AutoAugment(policy=policy, fill_value=fill, seed=11)
        generator = tf.random.Generator.from_seed(11)
        for _ in range(6):
            out = layer(images).numpy()
            decisions = sample_decisions(len(images), generator, policy)
            expected = compose_reference(images, decisions, table, reference)
            np.testing.assert_array_equal(out, expected)


def test_sample_decisions_frequencies():
    count = 250_000
    decisions = sample_decisions(count, tf.random.Generator.from_seed(5))
    subpolicy, apply, negate = (d.numpy() for d in decisions)
    assert subpolicy.shape == (count,) and apply.shape == negate.shape == (count, 2)
    # Sub-policies uniform: chi-square test with 24 degrees of freedom.
    observed = np.bincount(subpolicy, minlength=25)
    expected = count / 25
    assert len(observed) == 25
    assert np.sum((observed - expected) ** 2 / expected) < CHI2_24_CRITICAL
    # Each op applied with its probability (binomial, 5 standard deviations).
    for index, pair in enumerate(IMAGENET_POLICY):
        chosen = subpolicy == index
        for slot, (_, probability, _) in enumerate(pair):
            rate = apply[chosen, slot].mean()
            sigma = math.sqrt(probability * (1 - probability) / chosen.sum())
            assert abs(rate - probability) <= 5 * sigma, (index, slot, rate, probability)
    # Signs flipped half of the time, independently of the rest.
    assert abs(negate.mean() - 0.5) <= 5 * math.sqrt(0.25 / negate.size)
    assert abs(negate[apply[:, 0], 0].mean() - 0.5) < 0.01


def test_seed_determinism_eager_and_in_tf_data(rgb):
    batches = [rgb, rgb[::-1].copy()]

    def run(seed):
        layer = AutoAugment(seed=seed)
        return [layer(batch).numpy() for batch in batches]

    first = run(3)
    for got, want in zip(run(3), first, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(got, want) for got, want in zip(run(4), first, strict=True))
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(len(rgb))
    for got, want in zip(dataset.map(AutoAugment(seed=3)), first, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_in_a_parallel_tf_data_pipeline(fashion):
    labels = np.arange(len(fashion), dtype=np.int32)
    layer = AutoAugment(seed=1)
    dataset = (tf.data.Dataset.from_tensor_slices((fashion, labels)).repeat(3).batch(8)
               .map(lambda x, y: (layer(x), y), num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(2))
    changed = 0
    for images, batch_labels in dataset:
        assert images.dtype == tf.uint8 and images.shape == fashion.shape
        np.testing.assert_array_equal(batch_labels.numpy(), labels)
        changed += int(np.sum(np.any(images.numpy() != fashion, axis=(1, 2, 3))))
    assert changed > 0


def test_training_false_is_identity(rgb):
    layer = AutoAugment(seed=0)
    tensor = tf.constant(rgb)
    assert layer(tensor, training=False) is tensor


def test_dtypes_value_range_and_single_images(rgb):
    out = AutoAugment(seed=5)(rgb)
    assert out.dtype == tf.uint8
    floats = rgb.astype(np.float32) / 255.0
    out_float = AutoAugment(value_range=(0, 1), seed=5)(floats).numpy()
    assert out_float.dtype == np.float32
    assert out_float.min() >= 0.0 and out_float.max() <= 1.0
    np.testing.assert_allclose(out_float * 255.0, out.numpy(), atol=1e-3)
    untouched = np.all(out.numpy() == rgb, axis=(1, 2, 3))
    np.testing.assert_array_equal(out_float[untouched], floats[untouched])
    out64 = AutoAugment(value_range=(-1, 1), seed=5)(rgb.astype(np.float64) / 127.5 - 1.0)
    assert out64.dtype == tf.float64
    single = AutoAugment(seed=9)(rgb[1])
    assert single.shape == rgb[1].shape
    np.testing.assert_array_equal(single.numpy(), AutoAugment(seed=9)(rgb[1:2]).numpy()[0])


def test_config_round_trip_and_saving(tmp_path, rgb):
    layer = AutoAugment(policy="v0", value_range=(0, 1), fill_value=0.5,
                        interpolation="bilinear", seed=7, name="aa")
    config = layer.get_config()
    clone = AutoAugment.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, AutoAugment) and restored.get_config() == config
    model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), AutoAugment(seed=2)])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
    np.testing.assert_array_equal(loaded(rgb, training=True).numpy(),
                                  AutoAugment(seed=2)(rgb).numpy())


def test_in_a_model_trained_with_fit(fashion):
    labels = np.arange(len(fashion)) % 10
    model = keras.Sequential([keras.Input((28, 28, 1), dtype="uint8"), AutoAugment(seed=0),
                              keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(fashion, labels, batch_size=len(fashion), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Inference passes the images through: two predictions agree.
    np.testing.assert_array_equal(model.predict(fashion, verbose=0),
                                  model.predict(fashion, verbose=0))


def test_arguments_are_checked(rgb):
    for kwargs, field in (({"policy": "cifar10"}, "policy"),
                          ({"value_range": (1, 0)}, "value_range"),
                          ({"fill_value": 300}, "fill_value"),
                          ({"interpolation": "bicubic"}, "interpolation"),
                          ({"seed": -1}, "seed")):
        with pytest.raises(ValueError, match=f"{field}="):
            AutoAugment(**kwargs)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        AutoAugment()(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="value_range"):
        AutoAugment(value_range=(0, 1))(rgb)
    with pytest.raises(ValueError, match="uint8 or floating"):
        AutoAugment()(rgb.astype(np.int32))


def test_policy_tables():
    assert len(IMAGENET_POLICY) == 25 and len(V0_POLICY) == 25
    assert IMAGENET_POLICY[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
    assert IMAGENET_POLICY[3] == (("Posterize", 0.6, 7), ("Posterize", 0.6, 6))
    assert IMAGENET_POLICY[14] == (("Color", 0.6, 4), ("Contrast", 1.0, 8))
    assert IMAGENET_POLICY[18] == (("ShearX", 0.6, 5), ("Equalize", 1.0, None))
    assert IMAGENET_POLICY[24] == (("Equalize", 0.8, None), ("Equalize", 0.6, None))
    assert V0_POLICY[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
    for policy, names, magnitudes in ((IMAGENET_POLICY, ops.TORCHVISION_OPS, range(10)),
                                      (V0_POLICY, V0_OPS, range(11))):
        for pair in policy:
            assert len(pair) == 2
            for name, probability, magnitude in pair:
                assert name in names and 0.0 <= probability <= 1.0
                if policy is IMAGENET_POLICY and name in NO_MAGNITUDE:
                    assert magnitude is None
                else:
                    assert magnitude in magnitudes
