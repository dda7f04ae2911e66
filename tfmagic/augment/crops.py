"""Flips and crops of image batches: the geometric part shared by every augmentation setting.

Each factory returns a callable ``images -> images`` that works on a batch ``(B, H, W, C)``
(any real dtype; the result is float32), eagerly or inside a ``tf.data`` map. The random ones
draw per-image parameters from a ``tf.random.Generator`` owned by the callable: ``seed=None``
is non-deterministic; with an integer seed, a callable re-created with the same seed gives the
same outputs for the same sequence of input batches (inside a parallel ``tf.data`` map the
draws go to batches in the order the map calls run).

- :func:`random_flip`: horizontal flip of each image with probability 1/2.
- :func:`pad_and_crop`: the CIFAR crop: pad each side by ``pad`` pixels, cut a random window
  of the original size, flip (by default).
- :func:`random_resized_crop`: the Inception crop: a random box of random area and aspect
  ratio, resized (bilinear) to the output size, flip (by default).
- :func:`center_crop`: the evaluation crop: the central ``crop_fraction`` of the image resized
  to the output size.

Example:

>>> import tensorflow as tf
>>> augment = pad_and_crop(pad=4, seed=0)
>>> augment(tf.zeros([8, 32, 32, 3])).shape
TensorShape([8, 32, 32, 3])
>>> center_crop(0.875, size=224)(tf.zeros([2, 256, 320, 3])).shape
TensorShape([2, 224, 224, 3])
"""

import math
from collections.abc import Callable

import tensorflow as tf

from tfmagic._checks import check, is_int, is_number
from tfmagic.augment import seeding

__all__ = ["PAD_FILLS", "center_crop", "pad_and_crop", "random_flip", "random_resized_crop"]

PAD_FILLS = ("reflect", "constant")

# Candidate boxes drawn per image by random_resized_crop before it falls back to the centre.
_RESIZED_CROP_ATTEMPTS = 10


def _check_range(name: str, value, low: float, high: float, allowed: str) -> tuple:
    valid = (isinstance(value, tuple | list) and len(value) == 2
             and all(is_number(v) for v in value) and low < value[0] <= value[1] <= high)
    check(valid, name, value, allowed)
    return float(value[0]), float(value[1])


def _check_size(size) -> tuple[int, int] | None:
    if is_int(size):
        size = (size, size)
    valid = size is None or (isinstance(size, tuple | list) and len(size) == 2
                             and all(is_int(s) and s >= 1 for s in size))
    check(valid, "size", size, "must be None, an integer >= 1 or a pair (height, width) of them")
    return None if size is None else (int(size[0]), int(size[1]))


def _flips(generator: tf.random.Generator, batch) -> tf.Tensor:
    return generator.uniform([batch]) < 0.5


def random_flip(seed=None) -> Callable:
    """Flip each image of a batch left-right with probability 1/2.

    >>> images = tf.reshape(tf.range(3.0), [1, 1, 3, 1])
    >>> out = [int(v) for v in tf.reshape(random_flip(seed=3)(images), [-1])]
    >>> out in ([0, 1, 2], [2, 1, 0])
    True
    """
    generator = seeding.generator(seed)

    def flip(images):
        images = tf.cast(images, tf.float32)
        flipped = _flips(generator, tf.shape(images)[0])
        return tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)

    return flip


def pad_and_crop(pad=4, fill="reflect", flip=True, seed=None) -> Callable:
    """Pad each side by `pad` pixels, then cut a random window of the original size.

    The window's offset is uniform over the ``(2 pad + 1)**2`` positions, per image. With
    `flip`, each window is also flipped left-right with probability 1/2. The crop and the flip
    are one gather, so the cost does not depend on `pad`.

    Args:
        pad: pixels added on each side, an integer >= 0 (0 with `flip` is a plain random flip),
            or None for 1/8 of the short side, rounded half up (4 for 32 x 32 and 28 x 28).
        fill: "reflect" mirrors the image at its border without repeating the edge pixel
            (numpy's "reflect"; needs ``pad < H`` and ``pad < W``), "constant" pads with 0.
        flip: also flip left-right with probability 1/2.
        seed: None (non-deterministic) or an integer >= 0.

    Returns:
        ``images (B, H, W, C) -> float32 images (B, H, W, C)``.
    """
    check(pad is None or (is_int(pad) and pad >= 0), "pad", pad,
          "must be None or an integer >= 0")
    check(fill in PAD_FILLS, "fill", fill, f"must be one of {', '.join(PAD_FILLS)}")
    check(isinstance(flip, bool), "flip", flip, "must be True or False")
    generator = seeding.generator(seed)
    mode = fill.upper()

    def crop(images):
        images = tf.cast(images, tf.float32)
        known = [side for side in images.shape[1:3] if side is not None]
        check(not (fill == "reflect" and pad is not None and known and pad >= min(known)),
              "pad", pad, f'must be < the image height and width with fill="reflect" '
              f"(images of shape {images.shape})")
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        if pad is None:
            side = tf.cast(tf.minimum(height, width), tf.float32)
            pixels = tf.cast(tf.floor(side / 8.0 + 0.5), tf.int32)
        else:
            pixels = tf.constant(int(pad))
        padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]], mode=mode)
        positions = tf.cast(2 * pixels + 1, tf.float32)
        offsets = tf.cast(tf.floor(generator.uniform([2, batch]) * positions), tf.int32)
        offsets = tf.minimum(offsets, 2 * pixels)
        rows = offsets[0][:, None] + tf.range(height)[None, :]
        cols = tf.range(width)[None, :]
        if flip:
            cols = tf.where(_flips(generator, batch)[:, None], width - 1 - cols, cols)
        cols = offsets[1][:, None] + cols
        out = tf.gather(padded, rows, axis=1, batch_dims=1)
        out = tf.gather(out, cols, axis=2, batch_dims=1)
        out.set_shape(images.shape)
        return out

    return crop


def _fallback_box(height, width, low: float, high: float):
    """The central box torchvision uses when no candidate fits: the whole image, with the
    aspect ratio clamped to ``[low, high]``; as fractions (box height, box width)."""
    aspect = width / height
    return tf.minimum(1.0, aspect / low), tf.minimum(1.0, high / aspect)


def sample_boxes(generator: tf.random.Generator, count, height, width,
                 scale: tuple[float, float], ratio: tuple[float, float]):
    """`count` Inception crop boxes for an image of `height` x `width` pixels (see
    `random_resized_crop`): ``(box_h, box_w, along_h, along_w)``, float32 tensors of shape
    ``(count,)``. The box sides are fractions of the image sides; the box starts at
    ``along * (1 - side)`` of the image, so ``along`` (in [0, 1]) is its position."""
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    draws = generator.uniform([4, count, _RESIZED_CROP_ATTEMPTS])
    area = scale[0] + (scale[1] - scale[0]) * draws[0]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_low + (log_high - log_low) * draws[1])
    # Box sides as fractions of the image sides: w*h = area*H*W pixels, w/h = aspect.
    box_h = tf.sqrt(area * width / (aspect * height))
    box_w = tf.sqrt(area * aspect * height / width)
    fits = (box_h <= 1.0) & (box_w <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    pick = tf.stack([tf.range(count), first], axis=1)
    fallback_h, fallback_w = _fallback_box(height, width, ratio[0], ratio[1])
    box_h = tf.where(found, tf.gather_nd(box_h, pick), fallback_h)
    box_w = tf.where(found, tf.gather_nd(box_w, pick), fallback_w)
    along_h = tf.where(found, tf.gather_nd(draws[2], pick), 0.5)
    along_w = tf.where(found, tf.gather_nd(draws[3], pick), 0.5)
    return box_h, box_w, along_h, along_w


def random_resized_crop(size=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True,
                        seed=None) -> Callable:
    """The Inception crop: a random box of each image, resized to `size` (bilinear).

    Per image, up to 10 candidate boxes are drawn with an area fraction uniform in `scale` and
    an aspect ratio width/height (in pixels) log-uniform in `ratio`; the first that fits in the
    image is used, at a uniform position. If none fits, the box is the whole image with its
    aspect ratio clamped to `ratio`, centred (torchvision's fallback). Boxes are continuous,
    not rounded to pixels, in the coordinates of `tf.image.crop_and_resize` (0 and 1 are the
    centres of the first and last pixel); the output grid runs from edge to edge of the box,
    so it never reads outside the image. With `flip`, the box is mirrored left-right with
    probability 1/2.

    Args:
        size: output size: None (the input's), an integer or a pair (height, width).
        scale: (min, max) area fraction, 0 < min <= max <= 1.
        ratio: (min, max) aspect ratio width/height, 0 < min <= max.
        flip: also flip left-right with probability 1/2.
        seed: None (non-deterministic) or an integer >= 0.

    Returns:
        ``images (B, H, W, C) -> float32 images (B, size..., C)``.
    """
    size = _check_size(size)
    low_scale, high_scale = _check_range("scale", scale, 0.0, 1.0,
                                         "must be a pair (min, max) with 0 < min <= max <= 1")
    low_ratio, high_ratio = _check_range("ratio", ratio, 0.0, math.inf,
                                         "must be a pair (min, max) with 0 < min <= max")
    check(isinstance(flip, bool), "flip", flip, "must be True or False")
    generator = seeding.generator(seed)

    def crop(images):
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        batch = shape[0]
        box_h, box_w, along_h, along_w = sample_boxes(
            generator, batch, shape[1], shape[2], (low_scale, high_scale), (low_ratio, high_ratio))
        top = along_h * (1.0 - box_h)
        left = along_w * (1.0 - box_w)
        x1, x2 = left, left + box_w
        if flip:
            flipped = _flips(generator, batch)
            x1, x2 = tf.where(flipped, x2, x1), tf.where(flipped, x1, x2)
        boxes = tf.stack([top, x1, top + box_h, x2], axis=1)
        out_size = tf.stack([shape[1], shape[2]]) if size is None else size
        out = tf.image.crop_and_resize(images, boxes, tf.range(batch), out_size)
        out.set_shape([images.shape[0], *(images.shape[1:3] if size is None else size),
                       images.shape[3]])
        return out

    return crop


def center_crop(crop_fraction=0.875, size=None) -> Callable:
    """The evaluation crop: the central `crop_fraction` of the image, resized to `size`.

    The region is the largest box of the output's aspect ratio that fits in the image, scaled
    by `crop_fraction` about the centre and rounded to whole pixels; it is resized with
    `tf.image.resize` (bilinear). For a square output this is the usual "crop factor": resize
    the short side to ``size / crop_fraction``, then take the central ``size x size``. With
    ``size=None`` the output keeps the input size and the region is the central
    ``crop_fraction`` of each side, so ``crop_fraction=1`` is the identity.

    Args:
        crop_fraction: in (0, 1].
        size: output size: None (the input's), an integer or a pair (height, width).

    Returns:
        ``images (B, H, W, C) -> float32 images (B, size..., C)``.
    """
    check(is_number(crop_fraction) and 0 < crop_fraction <= 1, "crop_fraction",
          crop_fraction, "must be a number in (0, 1]")
    size = _check_size(size)
    fraction = float(crop_fraction)

    def crop(images):
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        height = tf.cast(shape[1], tf.float64)
        width = tf.cast(shape[2], tf.float64)
        if size is None:
            out_size = tf.stack([shape[1], shape[2]])
            fit_h, fit_w = height, width
        else:
            out_size = tf.constant(size)
            fit = tf.minimum(height / size[0], width / size[1])
            fit_h, fit_w = fit * size[0], fit * size[1]
        crop_h = tf.maximum(tf.cast(tf.round(fraction * fit_h), tf.int32), 1)
        crop_w = tf.maximum(tf.cast(tf.round(fraction * fit_w), tf.int32), 1)
        top = (shape[1] - crop_h) // 2
        left = (shape[2] - crop_w) // 2
        region = images[:, top:top + crop_h, left:left + crop_w, :]
        out = tf.image.resize(region, out_size, method="bilinear")
        out.set_shape([images.shape[0], *(images.shape[1:3] if size is None else size),
                       images.shape[3]])
        return out

    return crop
