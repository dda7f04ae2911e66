"""AutoAugment: the learned augmentation policies of Cubuk et al. (2019), as a Keras layer.

A policy is 25 sub-policies of two operations each, ``(op, probability, magnitude)``. For
every image, independently, :class:`AutoAugment` picks one sub-policy uniformly at random and
applies its two operations in order, each with its own probability; the signed operations
(see below) flip the sign of their magnitude with probability 1/2. Images of one batch get
different sub-policies; only the images an operation is applied to pay for it.

Policies:

- ``"imagenet"`` (:data:`IMAGENET_POLICY`): the ImageNet policy of the paper (its Table 9),
  op names and magnitude bins (0..9) as torchvision spells them, with torchvision's documented
  magnitudes (:mod:`tfmagic.augment.ops` has the table): ShearX/Y ``±0.3 b/9``,
  TranslateX/Y ``±int(150/331 · size · b/9)`` pixels, Rotate ``±30 b/9`` degrees,
  Brightness/Color/Contrast/Sharpness factor ``1 ± 0.9 b/9``, Posterize ``8 - round(b/2.25)``
  bits, Solarize threshold ``255 (1 - b/9)``; AutoContrast, Equalize, Invert take none.
  Signed: Shear, Translate, Rotate, Brightness, Color, Contrast, Sharpness.
- ``"v0"`` (:data:`V0_POLICY`): the "v0" policy of the EfficientNet TPU reference
  (``tensorflow/tpu``, ``models/official/efficientnet/autoaugment.py``), a different policy
  with its own names and levels 0..10 mapped as that reference maps them (:func:`v0_spec`):
  Rotate ``±30 l/10`` degrees, ShearX/Y ``±0.3 l/10``, TranslateX/Y ``±250 l/10`` pixels,
  Brightness/Color/Contrast/Sharpness factor ``1.8 l/10 + 0.1`` (unsigned),
  Posterize ``int(4 l/10)`` bits (0 bits: black), Solarize threshold ``int(256 l/10)`` (256
  inverts nothing), SolarizeAdd ``+int(110 l/10)`` to pixels below 128; AutoContrast,
  Equalize, Invert ignore the level. Signed: Rotate, Shear, Translate. The reference fills
  with grey 128 (``fill_value=128``). The operations themselves are this module's
  Pillow-exact kernels, not the reference's TF ops, which differ in places: its Contrast
  blends with ``pixel count / 256`` instead of the mean, its grayscale uses other weights,
  its Sharpness truncates the smoothed image, its warps sample at integer coordinates, and
  on TF-CPU its 0-bit posterize keeps one bit.

Every operation reproduces the Pillow function torchvision applies to PIL images, bit for
bit (tolerance: none; :mod:`tfmagic.augment.ops` says how). Geometric operations use
``interpolation`` ("nearest", torchvision's default, or "bilinear") and ``fill_value``
outside the image; shears are about the top-left corner, rotations about the centre. Given
the same :func:`sample_decisions`, the layer's output is what Pillow makes of the images with
torchvision's ops and magnitudes (the tests check it image by image; torchvision itself
computes its magnitudes in float32, which could move a threshold at an exact tie).

Images are uint8 in 0..255, or floating in ``value_range``: floats are clipped to the range,
mapped to the 256 levels of 0..255 (rounded), augmented, and mapped back; an image that no
operation touched is returned exactly as it came. Grayscale (1 channel) and RGB (3 channels)
images work; Color is the identity on grayscale.

How it runs: the random decisions and each applied operation's parameters are computed for
the whole batch at once; the operations then run in one XLA-compiled program that loops over
the (image, operation) pairs actually applied (:func:`tfmagic.augment.ops.apply_items`), so
an image pays only for its own operations, with no per-image Python and no ``tf.map_fn``.
The program is compiled once per batch shape (about a second, the first time).

Randomness comes from a ``tf.random.Generator`` owned by the layer: with an integer ``seed``
a layer created again with that seed gives the same outputs for the same sequence of calls,
eagerly or in a ``tf.data`` map. A map with ``num_parallel_calls`` runs calls concurrently,
so which batch gets which draws then depends on scheduling; tfmagic's input pipeline
(`tfmagic.data.load`) makes each batch's draws follow from the seed and the batch's place
in the data instead (`tfmagic.augment.seeding.batch_key`).

Example:

>>> import numpy as np
>>> augment = AutoAugment(seed=0)
>>> images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
>>> out = augment(images)
>>> out.shape, out.dtype.name
(TensorShape([8, 32, 32, 3]), 'uint8')
>>> dataset = tf.data.Dataset.from_tensor_slices(images).batch(4).map(augment)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfmagic._checks import check, is_number
from tfmagic.augment import ops
from tfmagic.augment.seeding import generator

__all__ = [
    "IMAGENET_POLICY",
    "POLICIES",
    "V0_OPS",
    "V0_POLICY",
    "AutoAugment",
    "Decisions",
    "sample_decisions",
    "v0_spec",
]

IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)

V0_POLICY = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

POLICIES = {"imagenet": IMAGENET_POLICY, "v0": V0_POLICY}

V0_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
_V0_MAX_LEVEL = 10.0
# The reference's translate_const for AutoAugment.
_V0_TRANSLATE_PIXELS = 250.0
_SLOTS = 2


def v0_spec(name: str, level: float) -> ops.OpSpec:
    """The parameters of the EfficientNet reference's op ``name`` at ``level`` (0..10)."""
    check(name in V0_OPS, "name", name, f"must be one of {', '.join(V0_OPS)}")
    check(is_number(level) and 0 <= level <= _V0_MAX_LEVEL, "level", level,
          f"must be a number in [0, {_V0_MAX_LEVEL:g}]")
    fraction = level / _V0_MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ops.OpSpec(name.lower())
    if name == "Rotate":
        return ops.OpSpec("warp", fraction * 30.0, -fraction * 30.0, "rotate")
    if name in ("ShearX", "ShearY"):
        geometry = "shear_x" if name == "ShearX" else "shear_y"
        return ops.OpSpec("warp", fraction * 0.3, -fraction * 0.3, geometry)
    if name in ("TranslateX", "TranslateY"):
        geometry = "translate_x" if name == "TranslateX" else "translate_y"
        pixels = fraction * _V0_TRANSLATE_PIXELS
        return ops.OpSpec("warp", pixels, -pixels, geometry)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = fraction * 1.8 + 0.1
        return ops.OpSpec(name.lower(), factor, factor)
    if name == "Posterize":
        bits = int(fraction * 4)
        return ops.OpSpec("posterize", bits, bits)
    if name == "Solarize":
        threshold = int(fraction * 256)
        return ops.OpSpec("solarize", threshold, threshold)
    addition = int(fraction * 110)
    return ops.OpSpec("solarize_add", addition, addition)


class _Table(NamedTuple):
    """A policy as arrays ``(sub-policies, 2)``: one row per sub-policy, one column per op."""

    probability: np.ndarray
    kernel: np.ndarray
    geometry: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    relative: np.ndarray
    rotation_positive: np.ndarray  # (sub-policies, 2, 2): ops.rotation_terms(positive)
    rotation_negative: np.ndarray


@functools.cache
def _table(policy: str) -> _Table:
    spec = ops.torchvision_spec if policy == "imagenet" else v0_spec
    rows = [[(probability, spec(name, magnitude)) for name, probability, magnitude in pair]
            for pair in POLICIES[policy]]
    entries = [entry for row in rows for entry in row]
    shape = (len(rows), _SLOTS)

    def column(values, dtype):
        return np.array(values, dtype).reshape(shape)

    def rotations(values):
        rotate = [s.geometry == "rotate" for _, s in entries]
        terms = [ops.rotation_terms(v) if r else (1.0, 0.0) for v, r in zip(values, rotate,
                                                                            strict=True)]
        return np.array(terms, np.float64).reshape(shape + (2,))

    return _Table(
        probability=column([p for p, _ in entries], np.float32),
        kernel=column([ops.KERNELS.index("identity" if s.is_identity else s.kernel)
                       for _, s in entries], np.int32),
        geometry=column([ops.GEOMETRIES.index(s.geometry) for _, s in entries], np.int32),
        positive=column([s.positive for _, s in entries], np.float64),
        negative=column([s.negative for _, s in entries], np.float64),
        relative=column([s.relative for _, s in entries], bool),
        rotation_positive=rotations([s.positive for _, s in entries]),
        rotation_negative=rotations([s.negative for _, s in entries]),
    )


class Decisions(NamedTuple):
    """The random choices for a batch: ``subpolicy`` ``(B,)`` int32, the index of each image's
    sub-policy; ``apply`` ``(B, 2)`` bool, whether each of its two ops is applied; ``negate``
    ``(B, 2)`` bool, whether each op's magnitude is negated (unsigned ops ignore it)."""

    subpolicy: tf.Tensor
    apply: tf.Tensor
    negate: tf.Tensor


def sample_decisions(batch_size, generator: tf.random.Generator,
                     policy: str = "imagenet") -> Decisions:
    """Draw the sub-policy and the op decisions of ``batch_size`` images from ``generator``."""
    check(policy in POLICIES, "policy", policy, f"must be one of {', '.join(POLICIES)}")
    table = _table(policy)
    subpolicy = generator.uniform([batch_size], 0, len(table.probability), dtype=tf.int32)
    draws = generator.uniform([batch_size, _SLOTS])
    apply = draws < tf.gather(tf.constant(table.probability), subpolicy)
    negate = tf.equal(generator.uniform([batch_size, _SLOTS], 0, 2, dtype=tf.int32), 1)
    return Decisions(subpolicy, apply, negate)


# Floating images: one fused pass each way (plain TF ops would take several).
@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _to_levels(images, low, high):
    x = (tf.cast(images, tf.float32) - low) * (255.0 / (high - low))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _from_levels(levels, images, touched, low, high):
    """``levels`` mapped back to ``value_range``; the untouched images as they came."""
    back = tf.cast(tf.cast(levels, tf.float32) * ((high - low) / 255.0) + low, images.dtype)
    return tf.where(touched[:, None, None, None], back, images)


@keras.saving.register_keras_serializable(package="tfmagic")
class AutoAugment(keras.layers.Layer):
    """AutoAugment with a learned policy, per image, in one compiled program per batch.

    See the module docstring for the policies, the magnitudes and the conventions.

    This is a Keras layer: it augments when called with ``training=True`` (the default when
    called directly, e.g. inside a ``tf.data`` map) and returns its input otherwise. Input
    ``(B, H, W, C)`` or one image ``(H, W, C)``, with a known C of 1 or 3, uint8 or floating;
    the output has the input's shape and dtype.

    Args:
        policy: "imagenet" (the paper's ImageNet policy, torchvision's magnitudes) or "v0"
            (the EfficientNet TPU reference's policy and magnitudes).
        value_range: (low, high) of floating pixel values; uint8 images must use (0, 255).
        fill_value: the value outside warped images, in ``value_range`` (0: black).
        interpolation: "nearest" or "bilinear", for the geometric operations.
        seed: None (non-deterministic) or an integer >= 0; a layer created with the same seed
            gives the same outputs for the same sequence of inputs.

    Example:

    >>> augment = AutoAugment(policy="v0", fill_value=128, seed=1)
    >>> augment(tf.zeros([2, 16, 16, 3], tf.uint8)).dtype.name
    'uint8'
    """

    def __init__(self, policy="imagenet", value_range=(0, 255), fill_value=0,
                 interpolation="nearest", seed=None, **kwargs):
        check(policy in POLICIES, "policy", policy, f"must be one of {', '.join(POLICIES)}")
        check(isinstance(value_range, tuple | list) and len(value_range) == 2
              and all(is_number(v) for v in value_range) and value_range[0] < value_range[1],
              "value_range", value_range, "must be a pair (low, high) of numbers, low < high")
        low, high = float(value_range[0]), float(value_range[1])
        check(is_number(fill_value) and low <= fill_value <= high, "fill_value", fill_value,
              f"must be a number in value_range [{low:g}, {high:g}]")
        check(interpolation in ops.INTERPOLATIONS, "interpolation", interpolation,
              f"must be one of {', '.join(ops.INTERPOLATIONS)}")
        super().__init__(**kwargs)
        self.policy = policy
        self.value_range = (low, high)
        self.fill_value = float(fill_value)
        self.interpolation = interpolation
        self.supports_jit = False
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self._table = _table(policy)
        self._generator = generator(seed)
        self.seed = None if seed is None else int(seed)

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images)
        rank, channels = images.shape.rank, images.shape[-1]
        if rank not in (3, 4) or channels not in (1, 3):
            raise ValueError(f"AutoAugment needs images (B, H, W, C) or (H, W, C) with C = 1 "
                             f"or 3, got shape {images.shape}")
        if not (images.dtype == tf.uint8 or images.dtype.is_floating):
            raise ValueError(f"AutoAugment needs uint8 or floating images, got "
                             f"{images.dtype.name}")
        if images.dtype == tf.uint8 and self.value_range != (0.0, 255.0):
            raise ValueError(f"uint8 images are in 0..255: value_range={self.value_range} is "
                             f"for floating images")
        batch = images if rank == 4 else images[None]
        if batch.dtype == tf.uint8:
            out = self._augment_levels(batch)[0]
        else:
            low, high = self.value_range
            out, kernel = self._augment_levels(_to_levels(batch, low, high))
            touched = tf.reduce_any(kernel != 0, axis=1)
            out = _from_levels(out, batch, touched, low, high)
        return out if rank == 4 else out[0]

    def _augment_levels(self, levels):
        """Augment a uint8 batch; returns it with the ``(B, 2)`` kernel index of each op."""
        shape = tf.shape(levels)
        batch = shape[0]
        table = self._table
        decisions = sample_decisions(batch, self._generator, self.policy)
        subpolicy = decisions.subpolicy
        kernel = tf.where(decisions.apply, tf.gather(tf.constant(table.kernel), subpolicy), 0)
        # Items: the applied ops in (image, slot) order, so each image's ops run in order.
        items = tf.cast(tf.where(kernel != 0), tf.int32)
        entries = tf.stack([tf.gather(subpolicy, items[:, 0]), items[:, 1]], axis=1)

        def lookup(array):
            return tf.gather_nd(tf.constant(array), entries)

        negate = tf.gather_nd(decisions.negate, items)
        value = tf.where(negate, lookup(table.negative), lookup(table.positive))
        rotation = tf.where(negate[:, None], lookup(table.rotation_negative),
                            lookup(table.rotation_positive))
        item_kernel = tf.gather_nd(kernel, items)
        params = ops.item_params(item_kernel, lookup(table.geometry), value,
                                 lookup(table.relative), rotation, shape[1], shape[2])
        fill = ops.to_uint8_level(self.fill_value, self.value_range)
        out = ops.apply_items(levels, items[:, 0], item_kernel, params, fill, self.interpolation)
        return out, kernel

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, images, training=True):
        return keras.KerasTensor(images.shape, dtype=images.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "policy": self.policy,
            "value_range": self.value_range,
            "fill_value": self.fill_value,
            "interpolation": self.interpolation,
            "seed": self.seed,
        }
