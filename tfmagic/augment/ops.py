"""The image operations of AutoAugment, bit-exact with Pillow, compiled with XLA.

Every operation works on uint8 images ``(H, W, C)``, C = 1 or 3, and reproduces the Pillow
function that torchvision's AutoAugment calls on PIL images:

=============  ===============================================================================
kernel         Pillow definition reproduced
=============  ===============================================================================
posterize      ``ImageOps.posterize(bits)``: keep the top ``bits`` bits (0 bits: black)
solarize       ``ImageOps.solarize(t)``: pixels ``>= t`` become ``255 - x``
solarize_add   pixels ``< 128`` get ``+ a``, clipped to 255 (EfficientNet's SolarizeAdd)
invert         ``ImageOps.invert``
autocontrast   ``ImageOps.autocontrast()``: per channel, ``int(x * s - lo * s)`` with
               ``s = 255.0 / (hi - lo)`` in double precision (so a level can land on 254
               where exact arithmetic gives 255, as in Pillow); identity when ``hi <= lo``
equalize       ``ImageOps.equalize()``: per channel, ``step = (N - h[last]) // 255`` and
               ``lut[i] = (step // 2 + sum(h[:i])) // step`` clipped to 255; identity when
               ``step == 0``
brightness     ``ImageEnhance.Brightness(f)``: blend with black
color          ``ImageEnhance.Color(f)``: blend with the "L" image
               ``(19595 R + 38470 G + 7471 B + 32768) >> 16``; identity on one channel
contrast       ``ImageEnhance.Contrast(f)``: blend with the constant ``int(mean(L) + 0.5)``
sharpness      ``ImageEnhance.Sharpness(f)``: blend with ``ImageFilter.SMOOTH`` (3x3 kernel
               ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``, rounded; border pixels unchanged)
warp           ``Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST)``: output pixel
               (x, y) reads the input near ``(a u + b v + c, d u + e v + f)``, ``(u, v) =
               (x + 0.5, y + 0.5)`` its centre, in Pillow's 16.16 fixed-point arithmetic
               (``affine_fixed``); outside the image: ``fill``. ``"bilinear"``: Pillow's
               BILINEAR transform (double precision, edge pixels extended, truncated)
               wherever the point lies inside the image. Rotations are ``Image.rotate``'s
               matrix (angle modulo 360, entries rounded to 15 decimals, about the centre)
=============  ===============================================================================

A blend is Pillow's ``Image.blend(degenerate, image, f)``: ``d + f * (x - d)`` in float32
(``f`` rounded to float32), truncated and clipped to 0..255.

torchvision's op names map onto the kernels with its documented magnitudes (10 bins, bin b in
0..9; :func:`torchvision_spec`):

================================  ==========================================================
op                                parameter at bin b (signed ops: sign flipped with p = 1/2)
================================  ==========================================================
ShearX, ShearY                    shear factor ``m = ±0.3 b / 9``: ``(1, m, 0, 0, 1, 0)``
                                  (x) or ``(1, 0, 0, m, 1, 0)`` (y), about the top-left
                                  corner (torchvision: ``affine(shear=atan(m), center=0)``)
TranslateX, TranslateY            ``±int(150 / 331 · size · b / 9)`` pixels, size the width
                                  (X) or height (Y); positive moves the content right / down
Rotate                            ``±30 b / 9`` degrees counter-clockwise about the centre
                                  ``(W / 2, H / 2)`` (``Image.rotate``)
Brightness, Color, Contrast,      factor ``1 ± 0.9 b / 9``
Sharpness
Posterize                         ``8 - round(b / 2.25)`` bits: 8, 8, 7, 7, 6, 6, 5, 5, 4, 4
Solarize                          threshold ``255 (1 - b / 9)`` (pixels >= it are inverted)
AutoContrast, Equalize, Invert    no magnitude
================================  ==========================================================

Tolerance: none. The tests require every kernel, at every magnitude they try, to equal
Pillow (13, the version tested) bit for bit: the float32 rounding of the blends and the
double rounding of autocontrast are reproduced (XLA's fused multiply-add is kept out of
them), and so is the fixed-point arithmetic of nearest warps (which Pillow uses for
coordinates below 32768 pixels; a larger image would differ from Pillow on rounding ties).
Pillow has no 0-bit posterize; here it is black.

All kernels run inside one XLA-compiled program per interpolation (:func:`apply_items`): a
loop over the (image, operation) pairs of a batch that switches to the kernel of each pair,
so only the images that an operation is applied to pay for it, with no per-image Python and
one compilation per batch shape.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import tensorflow as tf

from tfmagic._checks import check, is_int

__all__ = [
    "GEOMETRIES",
    "INTERPOLATIONS",
    "KERNELS",
    "NUM_BINS",
    "TORCHVISION_OPS",
    "OpSpec",
    "apply_items",
    "apply_op",
    "item_params",
    "rotation_terms",
    "to_uint8_level",
    "torchvision_spec",
    "warp_params",
]

# Branch order of the compiled program; "identity" (0) is never run.
KERNELS = (
    "identity",
    "warp",
    "posterize",
    "solarize",
    "solarize_add",
    "invert",
    "autocontrast",
    "equalize",
    "brightness",
    "color",
    "contrast",
    "sharpness",
)
GEOMETRIES = ("none", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
INTERPOLATIONS = ("nearest", "bilinear")
TORCHVISION_OPS = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
NUM_BINS = 10
# Per-item parameters: the six affine coefficients of a warp, or the kernel's value first.
NUM_PARAMS = 6

_MAX_BIN = NUM_BINS - 1
_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")
_SHEAR = {"ShearX": "shear_x", "ShearY": "shear_y"}
_TRANSLATE = {"TranslateX": "translate_x", "TranslateY": "translate_y"}
# Translations are whole pixels: int() of a rational number of pixels. The product of the
# fraction and the size is exact up to binary rounding, which this absorbs before truncating.
_TRANSLATE_EPSILON = 1e-9


class OpSpec(NamedTuple):
    """One operation with its magnitude resolved into kernel parameters.

    ``positive`` is the kernel's parameter, ``negative`` the parameter when the sign is
    flipped (equal for unsigned operations). For warps, ``geometry`` names the transform and
    the parameter is in degrees (rotate), a shear factor, or pixels (translate); with
    ``relative`` a translation is a fraction of the image width (x) or height (y) instead.
    """

    kernel: str
    positive: float = 0.0
    negative: float = 0.0
    geometry: str = "none"
    relative: bool = False

    @property
    def is_identity(self) -> bool:
        """Whether the operation leaves every image unchanged, whatever its sign."""
        values = {self.positive, self.negative}
        if self.kernel in ("brightness", "color", "contrast", "sharpness"):
            return values == {1.0}
        if self.kernel in ("warp", "solarize_add"):
            return values == {0.0}
        if self.kernel == "posterize":
            return values == {8.0}
        if self.kernel == "solarize":
            return values == {256.0}
        return self.kernel == "identity"


def torchvision_spec(name: str, magnitude_bin: int | None = None) -> OpSpec:
    """The parameters of torchvision's op ``name`` at ``magnitude_bin`` (module docstring)."""
    check(name in TORCHVISION_OPS, "name", name, f"must be one of {', '.join(TORCHVISION_OPS)}")
    if name in ("AutoContrast", "Equalize", "Invert"):
        check(magnitude_bin is None, "magnitude_bin", magnitude_bin,
              f"must be None: {name} takes no magnitude")
        return OpSpec(name.lower())
    check(is_int(magnitude_bin) and 0 <= magnitude_bin <= _MAX_BIN, "magnitude_bin",
          magnitude_bin, f"must be an integer in [0, {_MAX_BIN}] for {name}")
    b = int(magnitude_bin)
    if name in _SHEAR:
        m = 0.3 * b / _MAX_BIN
        return OpSpec("warp", m, -m, _SHEAR[name])
    if name in _TRANSLATE:
        m = 150.0 / 331.0 * b / _MAX_BIN
        return OpSpec("warp", m, -m, _TRANSLATE[name], relative=True)
    if name == "Rotate":
        m = 30.0 * b / _MAX_BIN
        return OpSpec("warp", m, -m, "rotate")
    if name in _ENHANCE:
        m = 0.9 * b / _MAX_BIN
        return OpSpec(name.lower(), 1.0 + m, 1.0 - m)
    if name == "Posterize":
        bits = 8 - round(b / (_MAX_BIN / 4))
        return OpSpec("posterize", bits, bits)
    # Solarize: x >= 255 (1 - b / 9) for an integer x is x >= ceil(255 (9 - b) / 9).
    threshold = -(-255 * (_MAX_BIN - b) // _MAX_BIN)
    return OpSpec("solarize", threshold, threshold)


def to_uint8_level(value: float, value_range=(0, 255)) -> int:
    """The 8-bit level of ``value`` in ``value_range`` (how fill values reach the kernels)."""
    low, high = value_range
    return int(min(max(round((value - low) * 255.0 / (high - low)), 0), 255))


# ----------------------------------------------------------------------------- warps


def rotation_terms(degrees: float) -> tuple[float, float]:
    """``(cos, sin)`` of Pillow's ``Image.rotate(degrees)`` matrix, computed as Pillow does.

    Pillow reduces the angle modulo 360 and rounds the entries to 15 decimals; the warp is
    exact only with these very numbers, so they are computed here, in Python, not in the graph.
    """
    angle = -math.radians(degrees % 360.0)
    return round(math.cos(angle), 15), round(math.sin(angle), 15)


def warp_params(geometry, value, relative, rotation, height, width):
    """Per-item affine coefficients ``(n, 6)`` float64, in Pillow's convention.

    ``geometry`` holds indices into :data:`GEOMETRIES`, ``value`` the signed parameters
    (degrees, shear factor, pixels or a fraction of the size when ``relative``), all ``(n,)``;
    ``rotation`` ``(n, 2)`` the :func:`rotation_terms` of rotations. The coefficients
    ``(a, b, c, d, e, f)`` map an output point to the input point it reads.
    """
    value = tf.cast(value, tf.float64)
    rotation = tf.cast(rotation, tf.float64)
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    geometry = tf.convert_to_tensor(geometry)
    size = tf.where(tf.equal(geometry, GEOMETRIES.index("translate_y")), height, width)
    pixels = tf.where(relative, value * size, value)
    pixels = tf.sign(pixels) * tf.floor(tf.abs(pixels) + _TRANSLATE_EPSILON)
    # Image.rotate: the rotation about the centre, its translation in Pillow's order.
    cos, sin = rotation[:, 0], rotation[:, 1]
    cx, cy = width / 2.0, height / 2.0
    zeros, ones = tf.zeros_like(value), tf.ones_like(value)
    rotate = [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]
    by_geometry = {
        "rotate": rotate,
        "shear_x": [ones, value, zeros, zeros, ones, zeros],
        "shear_y": [ones, zeros, zeros, value, ones, zeros],
        "translate_x": [ones, zeros, -pixels, zeros, ones, zeros],
        "translate_y": [ones, zeros, zeros, zeros, ones, -pixels],
    }
    params = tf.stack([ones, zeros, zeros, zeros, ones, zeros], axis=-1)
    for name, coefficients in by_geometry.items():
        chosen = tf.equal(geometry, GEOMETRIES.index(name))[:, None]
        params = tf.where(chosen, tf.stack(coefficients, axis=-1), params)
    return params


def _fixed(value):
    """Pillow's 16.16 fixed-point ``FIX(v) = floor(v * 65536 + 0.5)``, int32."""
    return tf.cast(tf.floor(value * 65536.0 + 0.5), tf.int32)


def _warp(image, params, fill, zero, interpolation):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    pixels = tf.reshape(image, [height * width, image.shape[-1]])
    a, b, c, d, e, f = (params[k] for k in range(6))
    if interpolation == "nearest":
        # Pillow's affine_fixed: the input pixel of output (x, y) is (xx >> 16, yy >> 16),
        # xx = FIX(c + a / 2 + b / 2) + y FIX(b) + x FIX(a) in integers, likewise yy.
        cols = tf.range(width)[None, :]
        rows = tf.range(height)[:, None]
        xx = _fixed(c + a * 0.5 + b * 0.5) + rows * _fixed(b) + cols * _fixed(a)
        yy = _fixed(f + d * 0.5 + e * 0.5) + rows * _fixed(e) + cols * _fixed(d)
        col = tf.bitwise.right_shift(xx, 16)
        row = tf.bitwise.right_shift(yy, 16)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        flat = tf.clip_by_value(row, 0, height - 1) * width + tf.clip_by_value(col, 0, width - 1)
        sampled = tf.gather(pixels, flat)
    else:
        # Pillow's generic transform with its bilinear filter, in double precision.
        size_x, size_y = tf.cast(width, tf.float64), tf.cast(height, tf.float64)
        u = tf.range(size_x)[None, :] + 0.5
        v = tf.range(size_y)[:, None] + 0.5
        x = _rounded(a * u, zero) + _rounded(b * v, zero) + c
        y = _rounded(d * u, zero) + _rounded(e * v, zero) + f
        inside = (x >= 0.0) & (x < size_x) & (y >= 0.0) & (y < size_y)
        x = tf.clip_by_value(x, 0.0, size_x) - 0.5
        y = tf.clip_by_value(y, 0.0, size_y) - 0.5
        x0, y0 = tf.floor(x), tf.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]

        def at(row, col):
            row = tf.clip_by_value(tf.cast(row, tf.int32), 0, height - 1)
            col = tf.clip_by_value(tf.cast(col, tf.int32), 0, width - 1)
            return tf.cast(tf.gather(pixels, row * width + col), tf.float64)

        def lerp(start, stop, weight):
            return start + _rounded((stop - start) * weight, zero)

        top = lerp(at(y0, x0), at(y0, x0 + 1.0), fx)
        bottom = lerp(at(y0 + 1.0, x0), at(y0 + 1.0, x0 + 1.0), fx)
        sampled = tf.cast(tf.clip_by_value(lerp(top, bottom, fy), 0.0, 255.0), tf.uint8)
    return tf.where(inside[..., None], sampled, tf.cast(fill, tf.uint8))


# ----------------------------------------------------------------------------- point ops


def _as_int(image):
    return tf.cast(image, tf.int32)


def _posterize(image, bits):
    mask = 256 - tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def _solarize(image, threshold):
    x = _as_int(image)
    return tf.cast(tf.where(x >= tf.cast(threshold, tf.int32), 255 - x, x), tf.uint8)


def _solarize_add(image, addition):
    x = _as_int(image)
    added = tf.minimum(x + tf.cast(addition, tf.int32), 255)
    return tf.cast(tf.where(x < 128, added, x), tf.uint8)


def _invert(image):
    return tf.constant(255, tf.uint8) - image


def _rounded(product, zero):
    """``product``, rounded on its own before any addition.

    XLA's CPU backend contracts ``a * b + c`` into one fused multiply-add (a single rounding);
    Pillow rounds the product first, and levels fall on either side of an integer accordingly.
    Adding an integer zero that the compiler cannot prove to be zero (it comes from the data)
    to the product's bits keeps the multiply and the add apart.
    """
    bits = {tf.float32: tf.int32, tf.float64: tf.int64}[product.dtype]
    return tf.bitcast(tf.bitcast(product, bits) + tf.cast(zero, bits), product.dtype)


def _apply_lut(image, lut):
    """Per-channel lookup: ``lut`` is ``(C, 256)`` int32 with values in 0..255."""
    channels = image.shape[-1]
    size = channels * 256
    # A scatter materializes the table: XLA would otherwise fuse its computation into the
    # per-pixel gather and redo it for every pixel.
    table = tf.math.unsorted_segment_max(tf.reshape(lut, [-1]), tf.range(size), size)
    index = _as_int(image) + tf.range(channels) * 256
    return tf.gather(tf.cast(table, tf.uint8), index)


def _partials(reduce, image):
    """``reduce`` over parts of the pixels of each channel: ``(H, W, C)`` -> ``(65, C)``.

    XLA's CPU reductions over the strided channels of an image are slow; over the columns of
    rows of 64 pixels they vectorize (20 times faster). Row 64 reduces the remainder.
    """
    channels = image.shape[-1]
    flat = tf.reshape(image, [-1])
    row = 64 * channels
    split = tf.size(flat) // row * row
    columns = tf.reshape(reduce(tf.reshape(flat[:split], [-1, row]), axis=0), [64, channels])
    rest = reduce(tf.reshape(flat[split:], [-1, channels]), axis=0)
    return tf.concat([columns, rest[None]], axis=0)


def _per_channel(reduce, image):
    """``reduce`` over the pixels of each channel: ``(H, W, C)`` -> ``(C,)``."""
    return reduce(_partials(reduce, image), axis=0)


def _autocontrast(image, zero):
    low = _as_int(_per_channel(tf.reduce_min, image))
    high = _as_int(_per_channel(tf.reduce_max, image))
    low64, high64 = tf.cast(low, tf.float64), tf.cast(high, tf.float64)
    scale = 255.0 / tf.maximum(high64 - low64, 1.0)
    offset = -low64 * scale
    levels = tf.range(256, dtype=tf.float64)
    mapped = _rounded(levels[None, :] * scale[:, None], zero) + offset[:, None]
    lut = tf.cast(tf.clip_by_value(mapped, 0.0, 255.0), tf.int32)
    lut = tf.where((high > low)[:, None], lut, tf.range(256)[None, :])
    return _apply_lut(image, lut)


def _histograms(image):
    """``(C, 256)`` int32 per-channel histograms (one scatter per channel is the fastest)."""
    x = _as_int(image)
    return tf.stack([
        tf.math.unsorted_segment_sum(tf.ones_like(x[..., c]), x[..., c], 256)
        for c in range(image.shape[-1])
    ])


def _equalize(image):
    hist = _histograms(image)
    levels = tf.range(256)
    last = tf.reduce_max(tf.where(hist > 0, levels[None, :], -1), axis=1)
    last_count = tf.reduce_sum(tf.where(levels[None, :] == last[:, None], hist, 0), axis=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    lut = tf.where((step > 0)[:, None], tf.minimum(lut, 255), levels[None, :])
    return _apply_lut(image, lut)


# ----------------------------------------------------------------------------- blends


def _blend(degenerate, image, factor, zero):
    """Pillow's ``Image.blend(degenerate, image, factor)`` for uint8 images."""
    x = tf.cast(image, tf.float32)
    product = _rounded(factor * (x - degenerate), zero)
    return tf.cast(tf.clip_by_value(degenerate + product, 0.0, 255.0), tf.uint8)


def _luma(image):
    """Pillow's "L" conversion of an RGB image, ``(H, W)`` int32."""
    x = _as_int(image)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768) // 65536


def _brightness(image, factor, zero):
    return _blend(tf.constant(0.0), image, factor, zero)


def _color(image, factor, zero):
    if image.shape[-1] == 1:
        return image
    return _blend(tf.cast(_luma(image), tf.float32)[..., None], image, factor, zero)


def _contrast(image, factor, zero):
    grey = _luma(image)[..., None] if image.shape[-1] == 3 else _as_int(image)
    # Each partial sum covers 1/64 of the pixels, well within int32; the total is int64.
    total = tf.reduce_sum(tf.cast(_partials(tf.reduce_sum, grey), tf.int64))
    mean = tf.cast(total, tf.float64) / tf.cast(tf.size(grey), tf.float64)
    degenerate = tf.cast(tf.floor(mean + 0.5), tf.float32)
    return _blend(degenerate, image, factor, zero)


def _sharpness(image, factor, zero):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    x = _as_int(image)
    padded = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
    total = 4 * x
    for dy in range(3):
        for dx in range(3):
            total += padded[dy : dy + height, dx : dx + width]
    smooth = (2 * total + 13) // 26
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    border = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
    degenerate = tf.cast(tf.where(border, x, smooth), tf.float32)
    return _blend(degenerate, image, factor, zero)


# ----------------------------------------------------------------------------- the program


def _branches(image, params, fill, zero, interpolation):
    value = params[0]
    factor = tf.cast(value, tf.float32)
    kernels = {
        "identity": lambda: image,
        "warp": lambda: _warp(image, params, fill, zero, interpolation),
        "posterize": lambda: _posterize(image, value),
        "solarize": lambda: _solarize(image, value),
        "solarize_add": lambda: _solarize_add(image, value),
        "invert": lambda: _invert(image),
        "autocontrast": lambda: _autocontrast(image, zero),
        "equalize": lambda: _equalize(image),
        "brightness": lambda: _brightness(image, factor, zero),
        "color": lambda: _color(image, factor, zero),
        "contrast": lambda: _contrast(image, factor, zero),
        "sharpness": lambda: _sharpness(image, factor, zero),
    }
    return [kernels[name] for name in KERNELS]


@functools.cache
def _program(interpolation: str, channels: int):
    signature = [
        tf.TensorSpec([None, None, None, channels], tf.uint8),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None, NUM_PARAMS], tf.float64),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32),
    ]

    @tf.function(input_signature=signature, jit_compile=True, autograph=False)
    def program(images, item_image, item_kernel, item_params, count, fill):
        def body(j, images):
            i = item_image[j]
            # A gather, not images[i]: XLA would take a slice's start for a compile-time
            # constant and compile the program again for every new batch.
            image = tf.gather(images, i)
            # Zero, from the data: see _rounded.
            zero = tf.minimum(i, 0)
            branches = _branches(image, item_params[j], fill, zero, interpolation)
            image = tf.switch_case(item_kernel[j], branches)
            return j + 1, tf.tensor_scatter_nd_update(images, [[i]], image[None])

        return tf.while_loop(lambda j, _: j < count, body, (tf.constant(0), images))[1]

    return program


def apply_items(images, item_image, item_kernel, item_params, fill=0, interpolation="nearest"):
    """Apply n operations to the images of a uint8 batch, in order, in one compiled program.

    Item j applies kernel ``KERNELS[item_kernel[j]]`` with parameters ``item_params[j]``
    (``(NUM_PARAMS,)`` float64, :func:`item_params`) to image ``item_image[j]``; an image's
    items run in the order given. ``fill`` is the 8-bit level outside warped images.

    The item arrays are padded to two per image (or n if more), so a batch of a given shape
    with up to two operations per image runs one program, compiled once.
    """
    check(interpolation in INTERPOLATIONS, "interpolation", interpolation,
          f"must be one of {', '.join(INTERPOLATIONS)}")
    images = tf.convert_to_tensor(images)
    check(images.dtype == tf.uint8 and images.shape.rank == 4 and images.shape[-1] in (1, 3),
          "images", f"{images.dtype.name} {images.shape}",
          "must be a uint8 batch (B, H, W, C) with a known C of 1 or 3")
    count = tf.shape(item_image)[0]
    padding = [[0, tf.maximum(2 * tf.shape(images)[0] - count, 0)]]
    return _program(interpolation, images.shape[-1])(
        images,
        tf.pad(tf.cast(item_image, tf.int32), padding),
        tf.pad(tf.cast(item_kernel, tf.int32), padding),
        tf.pad(tf.cast(item_params, tf.float64), padding + [[0, 0]]),
        count,
        tf.cast(fill, tf.float32),
    )


def item_params(kernel, geometry, value, relative, rotation, height, width):
    """The ``(n, NUM_PARAMS)`` parameters of n items.

    ``kernel`` and ``geometry`` index :data:`KERNELS` and :data:`GEOMETRIES`, ``value`` is each
    item's signed parameter, ``relative`` whether a translation is a fraction of the size and
    ``rotation`` ``(n, 2)`` the :func:`rotation_terms` of a rotation's signed angle.
    """
    warps = warp_params(geometry, value, relative, rotation, height, width)
    plain = tf.pad(tf.cast(value, tf.float64)[:, None], [[0, 0], [0, NUM_PARAMS - 1]])
    return tf.where(tf.equal(kernel, KERNELS.index("warp"))[:, None], warps, plain)


def apply_op(images, name, magnitude_bin=None, sign=1, fill_value=0, interpolation="nearest"):
    """Apply torchvision's op ``name`` at ``magnitude_bin`` to every image of a uint8 batch.

    The same compiled program as :class:`tfmagic.augment.autoaugment.AutoAugment`, one item
    per image. ``sign`` is +1 or -1 (ignored by unsigned ops); ``fill_value`` an 8-bit level.

    >>> import numpy as np
    >>> images = np.full((2, 4, 4, 1), 200, np.uint8)
    >>> int(apply_op(images, "Solarize", 5)[0, 0, 0, 0])   # 200 >= 113.3: inverted
    55
    """
    spec = torchvision_spec(name, magnitude_bin)
    check(sign in (1, -1), "sign", sign, "must be 1 or -1")
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    count = shape[0]
    kernel = tf.fill([count], KERNELS.index(spec.kernel))
    geometry = tf.fill([count], GEOMETRIES.index(spec.geometry))
    signed = spec.positive if sign == 1 else spec.negative
    value = tf.fill([count], tf.constant(signed, tf.float64))
    relative = tf.fill([count], spec.relative)
    rotation = tf.tile(tf.constant([rotation_terms(signed)], tf.float64), [count, 1])
    params = item_params(kernel, geometry, value, relative, rotation, shape[1], shape[2])
    return apply_items(images, tf.range(count), kernel, params, fill_value, interpolation)
