"""The standard colour augmentation: random brightness, contrast, saturation and hue.

`ColorAugment` is the "colour baseline" setting of the checklist (the flip and crop that every
setting uses are in :mod:`tfmagic.augment.crops`). It follows torchvision's ``ColorJitter``,
vectorized over a batch with per-image parameters.
"""

import functools

import keras
import tensorflow as tf

from tfmagic._checks import check, is_number
from tfmagic.augment.seeding import generator

__all__ = ["ColorAugment"]


# ITU-R BT.601 luma weights; they sum to 1, so grey pixels keep their value exactly.
_LUMA = (0.299, 0.587, 0.114)


def _grey(images):
    return tf.reduce_sum(images * tf.constant(_LUMA, images.dtype), axis=-1, keepdims=True)


def _brightness(images, factor):
    return images * factor


def _contrast(images, factor):
    grey = _grey(images) if images.shape[-1] == 3 else images
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    return factor * images + (1.0 - factor) * mean


def _saturation(images, factor):
    return factor * images + (1.0 - factor) * _grey(images)


def _hue(images, shift):
    hsv = tf.image.rgb_to_hsv(images)
    hue = hsv[..., :1] + shift
    hue = hue - tf.floor(hue)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))


@keras.saving.register_keras_serializable(package="tfmagic")
class ColorAugment(keras.layers.Layer):
    """Random brightness, contrast, saturation and hue, per image (torchvision ColorJitter).

    Images are scaled from `value_range` to [0, 1] and clipped; then each operation is applied
    with its own random parameter per image, the result clipped to [0, 1] after each one, and
    scaled back:

    - brightness, factor b uniform in ``[max(0, 1 - brightness), 1 + brightness]``:
      ``x * b``.
    - contrast, factor c likewise: ``c * x + (1 - c) * m``, m the image's mean grey level
      (ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``; the mean of the image when
      grayscale).
    - saturation, factor s likewise: ``s * x + (1 - s) * grey(x)``, per pixel.
    - hue, shift h uniform in ``[-hue, hue]`` of a full turn: the HSV hue is rotated by h.

    The order of the operations is random per batch (one random permutation for the whole
    batch, new at every call; torchvision draws one per image). Grayscale images (one channel)
    get brightness and contrast only. A strength of 0 turns an operation off.

    This is a Keras layer: it augments when called with ``training=True`` (the default when
    called directly, e.g. inside a ``tf.data`` map) and passes images through otherwise.
    Input ``(B, H, W, C)`` with a known C of 1 or 3; output float32.

    Args:
        brightness: >= 0.
        contrast: >= 0.
        saturation: >= 0.
        hue: in [0, 0.5].
        value_range: (low, high) of the pixel values, low < high.
        seed: None (non-deterministic) or an integer >= 0; a layer created with the same seed
            gives the same outputs for the same sequence of inputs.

    Example:

    >>> augment = ColorAugment(seed=0)
    >>> out = augment(tf.fill([4, 8, 8, 3], 100.0))
    >>> out.shape, bool(tf.reduce_all((out >= 0) & (out <= 255)))
    (TensorShape([4, 8, 8, 3]), True)
    """

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 value_range=(0, 255), seed=None, **kwargs):
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):
            check(is_number(value) and value >= 0, name, value, "must be a number >= 0")
        check(is_number(hue) and 0 <= hue <= 0.5, "hue", hue, "must be a number in [0, 0.5]")
        check(isinstance(value_range, tuple | list) and len(value_range) == 2
              and all(is_number(v) for v in value_range) and value_range[0] < value_range[1],
              "value_range", value_range, "must be a pair (low, high) of numbers, low < high")
        super().__init__(**kwargs)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self._generator = generator(seed)
        self.seed = None if seed is None else int(seed)

    @staticmethod
    def _factor(strength: float, draw):
        """Uniform in ``[max(0, 1 - strength), 1 + strength]`` from a uniform draw in [0, 1)."""
        low = max(0.0, 1.0 - strength)
        return low + (1.0 + strength - low) * draw

    def call(self, images, training=True):
        if not training:
            return images
        channels = images.shape[-1]
        if channels not in (1, 3):
            raise ValueError(f"ColorAugment needs images (B, H, W, C) with C = 1 or 3, got "
                             f"shape {images.shape}")
        low, high = self.value_range
        x = tf.clip_by_value((tf.cast(images, tf.float32) - low) / (high - low), 0.0, 1.0)
        draws = self._generator.uniform([4, tf.shape(x)[0], 1, 1, 1])
        operations = []
        if self.brightness > 0:
            operations.append((_brightness, self._factor(self.brightness, draws[0])))
        if self.contrast > 0:
            operations.append((_contrast, self._factor(self.contrast, draws[1])))
        if self.saturation > 0 and channels == 3:
            operations.append((_saturation, self._factor(self.saturation, draws[2])))
        if self.hue > 0 and channels == 3:
            operations.append((_hue, self.hue * (2.0 * draws[3] - 1.0)))
        order = tf.argsort(self._generator.uniform([len(operations)]))
        for step in range(len(operations)):
            x = tf.switch_case(order[step], [
                functools.partial(operation, x, parameter) for operation, parameter in operations
            ])
            x = tf.clip_by_value(x, 0.0, 1.0)
        return low + (high - low) * x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "value_range": self.value_range,
            "seed": self.seed,
        }
