"""Occlusion augmentations: Cutout and Random Erasing, with per-image boxes over a batch.

Both are Keras layers ``images (B, H, W, C) -> float32 images`` that augment when called with
``training=True`` (the default when called directly, e.g. inside a ``tf.data`` map) and pass
images through otherwise. Boxes are whole pixels; pixels outside a box are returned unchanged.

- `Cutout` (DeVries & Taylor, 2017): a square whose centre is uniform over the image, clipped
  at the borders, filled with a constant.
- `RandomErasing` (Zhong et al., 2020): a rectangle of random area and aspect ratio, fully
  inside the image, filled with random values or a constant.
"""

import math

import keras
import tensorflow as tf

from tfmagic._checks import check, is_number
from tfmagic.augment import seeding

__all__ = ["Cutout", "RandomErasing"]

# Candidate rectangles drawn per image by RandomErasing; torchvision also tries 10.
_ERASING_ATTEMPTS = 10


def _check_probability(probability) -> None:
    check(is_number(probability) and 0 <= probability <= 1, "probability", probability,
          "must be a number in [0, 1]")


def _check_range(name: str, value, high: float, allowed: str) -> tuple[float, float]:
    check(isinstance(value, tuple | list) and len(value) == 2
          and all(is_number(v) for v in value) and 0 < value[0] <= value[1] <= high,
          name, value, allowed)
    return float(value[0]), float(value[1])


def box_mask(top, bottom, left, right, height, width):
    """Boolean masks (B, H, W, 1) of the pixel boxes ``[top, bottom) x [left, right)``.

    The corners are int32 vectors (B,); empty or partly outside boxes are fine.
    """
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


class _Erasing(keras.layers.Layer):
    """What Cutout and RandomErasing share: probability, seed, and the training switch.

    Subclasses define `_erase(images, shape)` for float32 images and their dynamic shape.
    """

    def __init__(self, probability, seed, **kwargs):
        _check_probability(probability)
        generator = seeding.generator(seed)
        super().__init__(**kwargs)
        self.probability = float(probability)
        self.seed = None if seed is None else int(seed)
        self._generator = generator

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.cast(images, tf.float32)
        return self._erase(images, tf.shape(images))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfmagic")
class Cutout(_Erasing):
    """Cutout: a square of side ``round(size * min(H, W))`` filled with `fill_value`.

    Per image, with probability `probability`: the square's centre pixel is uniform over the
    image (so the square may stick out and is clipped at the borders, as in the paper); the
    centre of an even side is the pixel right of and below the middle.

    Args:
        size: the side as a fraction of the short side, in (0, 1].
        fill_value: the value written into the square (0..255 images: 0 is black).
        probability: the chance that an image gets a square, in [0, 1].
        seed: None (non-deterministic) or an integer >= 0.

    Example:

    >>> out = Cutout(size=0.5, fill_value=0.0, seed=0)(tf.ones([2, 8, 8, 1]))
    >>> out.shape
    TensorShape([2, 8, 8, 1])
    """

    def __init__(self, size=0.5, fill_value=0.0, probability=1.0, seed=None, **kwargs):
        check(is_number(size) and 0 < size <= 1, "size", size, "must be a number in (0, 1]")
        check(is_number(fill_value), "fill_value", fill_value, "must be a finite number")
        super().__init__(probability, seed, **kwargs)
        self.size = float(size)
        self.fill_value = float(fill_value)

    def _erase(self, images, shape):
        batch, height, width = shape[0], shape[1], shape[2]
        side = tf.maximum(tf.cast(tf.round(self.size * tf.cast(tf.minimum(height, width),
                                                                tf.float32)), tf.int32), 1)
        draws = self._generator.uniform([3, batch])
        centre_y = tf.cast(draws[0] * tf.cast(height, tf.float32), tf.int32)
        centre_x = tf.cast(draws[1] * tf.cast(width, tf.float32), tf.int32)
        side = tf.where(draws[2] < self.probability, side, 0)
        top = centre_y - side // 2
        left = centre_x - side // 2
        mask = box_mask(top, top + side, left, left + side, height, width)
        return tf.where(mask, tf.constant(self.fill_value, tf.float32), images)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "fill_value": self.fill_value}


@keras.saving.register_keras_serializable(package="tfmagic")
class RandomErasing(_Erasing):
    """Random Erasing: a random rectangle inside the image replaced by noise or a constant.

    Per image, with probability `probability`, up to 10 candidate rectangles are drawn: area
    fraction uniform in `scale`, aspect ratio height/width log-uniform in `ratio`, sides
    rounded to whole pixels; the first that fits inside the image (sides >= 1 pixel, <= the
    image's) is placed at a uniform position. An image where no candidate fits is left as it
    is (torchvision's rule).

    Args:
        probability: the chance that an image is erased, in [0, 1].
        scale: (min, max) area fraction, 0 < min <= max <= 1.
        ratio: (min, max) aspect ratio height/width, 0 < min <= max.
        value: "random" fills each pixel and channel with an independent value uniform in
            [0, 255) (for 0..255 images); a number fills with that constant.
        seed: None (non-deterministic) or an integer >= 0.

    Example:

    >>> out = RandomErasing(probability=1.0, value=0.0, seed=0)(tf.ones([2, 16, 16, 3]))
    >>> 0 < float(tf.reduce_mean(out)) < 1
    True
    """

    def __init__(self, probability=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value="random",
                 seed=None, **kwargs):
        scale = _check_range("scale", scale, 1.0,
                             "must be a pair (min, max) with 0 < min <= max <= 1")
        ratio = _check_range("ratio", ratio, math.inf,
                             "must be a pair (min, max) with 0 < min <= max")
        check(value == "random" or is_number(value), "value", value,
              'must be "random" or a finite number')
        super().__init__(probability, seed, **kwargs)
        self.scale = scale
        self.ratio = ratio
        self.value = value if value == "random" else float(value)

    def _erase(self, images, shape):
        batch, height, width = shape[0], shape[1], shape[2]
        float_h = tf.cast(height, tf.float32)
        float_w = tf.cast(width, tf.float32)
        draws = self._generator.uniform([2, batch, _ERASING_ATTEMPTS])
        area = (self.scale[0] + (self.scale[1] - self.scale[0]) * draws[0]) * float_h * float_w
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = tf.exp(log_low + (log_high - log_low) * draws[1])
        box_h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
        box_w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
        fits = (box_h >= 1) & (box_w >= 1) & (box_h <= height) & (box_w <= width)
        pick = tf.stack([tf.range(batch),
                         tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)],
                        axis=1)
        place = self._generator.uniform([3, batch])
        erase = tf.reduce_any(fits, axis=1) & (place[2] < self.probability)
        box_h = tf.where(erase, tf.gather_nd(box_h, pick), 0)
        box_w = tf.where(erase, tf.gather_nd(box_w, pick), 0)
        top = tf.cast(place[0] * tf.cast(height - box_h + 1, tf.float32), tf.int32)
        left = tf.cast(place[1] * tf.cast(width - box_w + 1, tf.float32), tf.int32)
        top = tf.minimum(top, height - box_h)
        left = tf.minimum(left, width - box_w)
        mask = box_mask(top, top + box_h, left, left + box_w, height, width)
        if self.value == "random":
            # Stateless with a drawn seed: much faster than the generator for a large tensor.
            seed = self._generator.make_seeds(1)[:, 0]
            fill = tf.random.stateless_uniform(shape, seed, 0.0, 255.0)
        else:
            fill = tf.constant(self.value, tf.float32)
        return tf.where(mask, fill, images)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "ratio": self.ratio,
                "value": self.value}
