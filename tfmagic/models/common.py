"""Pieces shared by the built-in backbones: argument checks, channel rounding and layer helpers.

Every built-in backbone is a Keras functional model made of standard Keras layers
(``Conv2D``, ``DepthwiseConv2D``, ``BatchNormalization``, ``ReLU``, ``LeakyReLU``,
``Activation``, ``Add``, ``GlobalAveragePooling2D``, ``Dense``) and the registered layers of
:mod:`tfmagic.layers` (``SqueezeExcite``, ``DropPath``, ``AttentionPooling``,
``SubsampledConv2D``), so a model saved
as ``.keras`` reloads with ``safe_mode=True`` and no ``custom_objects`` once ``tfmagic`` is
imported.

Conventions kept by every backbone:

- Convolutions feeding a batch normalization have ``use_bias=False`` and He-normal initial
  weights. No kernel regularizer is attached: weight decay belongs to the optimizer.
- Batch normalization uses ``momentum=0.9`` and ``epsilon=1e-5`` (the values of the reference
  ResNet and MobileNetV2 training code); with momentum 0.9 the moving statistics settle within a
  few dozen steps, which matters for the short runs of a checklist trial.
- The *downscale activation* is the activation that directly follows the batch normalization of
  each stride-2 layer of the main path. It is chosen by ``downscale_activation``:

  ``"leaky_relu"`` -> ``keras.layers.LeakyReLU(negative_slope=0.1)``; 0.1 is the slope used by
  the Darknet/YOLO family, leaky enough to let gradients through the subsampled positions
  (Keras' default 0.3 bends the response much more, PyTorch's default 0.01 is nearly a ReLU);
  ``"relu"`` -> ``keras.layers.ReLU()``; ``"swish"`` -> ``keras.layers.Activation("swish")``.

  Those layers are named ``<block>_downscale_act``. Every other activation is a plain
  ``keras.layers.ReLU()`` named ``..._relu...``.
- ``se`` (default True) puts a :class:`tfmagic.layers.SqueezeExcite` (ReLU, sigmoid gate,
  bottleneck of at least 8 channels) named ``<block>_se`` in every block; each backbone's
  docstring says where and with which bottleneck ratio.
- ``drop_path_rate`` (default 0) is stochastic depth (Huang et al. 2016): a
  :class:`tfmagic.layers.DropPath` named ``<block>_drop_path`` at the end of each residual
  branch, just before the ``<block>_add`` that merges it with the shortcut (the shortcut is
  never dropped). The rate rises linearly with depth: block ``l`` of the ``L`` blocks of the
  network (1-based, every block counted, with or without a residual add) gets
  ``drop_path_rate * l / L``, so the last block gets the full rate (:func:`block_drop_rate`).
  A rate of 0 adds no layer at all; blocks without a residual add never get one.
- The classifier is a global pooling followed by ``Dense(num_classes, dtype="float32")`` named
  ``"logits"``: the model outputs logits (no softmax), in float32 even under a
  mixed-precision policy, so losses take ``from_logits=True``. The pooling is chosen by
  ``pooling``: ``"avg"`` -> ``keras.layers.GlobalAveragePooling2D`` named ``"avg_pool"``,
  ``"attention"`` -> :class:`tfmagic.layers.AttentionPooling` (one head, a learned query that
  starts at zero, i.e. as exactly average pooling) named ``"attention_pool"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfmagic._checks import is_int, is_number
from tfmagic.layers import AttentionPooling, DropPath, SqueezeExcite, SubsampledConv2D
from tfmagic.registry import Registry

LEAKY_RELU_SLOPE = 0.1
DOWNSCALE_ACTIVATIONS = Registry("downscale_activation")
"""name -> ``build(name, dtype=None)``: the layer after each stride-2 layer."""
DOWNSCALE_ACTIVATIONS.register(
    "leaky_relu", help=f"LeakyReLU, negative slope {LEAKY_RELU_SLOPE}",
    build=lambda name, dtype=None: keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE,
                                                          name=name, dtype=dtype))
DOWNSCALE_ACTIVATIONS.register(
    "relu", help="ReLU", build=lambda name, dtype=None: keras.layers.ReLU(name=name, dtype=dtype))
DOWNSCALE_ACTIVATIONS.register(
    "swish", help="Swish (SiLU)",
    build=lambda name, dtype=None: keras.layers.Activation("swish", name=name, dtype=dtype))
POOLINGS = Registry("pooling")
"""name -> ``build()``: the global pooling layer before the logits."""
POOLINGS.register("avg", help="global average pooling",
                  build=lambda: keras.layers.GlobalAveragePooling2D(name="avg_pool"))
POOLINGS.register("attention", help="attention pooling: a learned query, at first exactly "
                                    "average pooling",
                  build=lambda: AttentionPooling(name="attention_pool"))
POOLING_TYPES = POOLINGS
MIN_INPUT_SIZE = 28
CHANNEL_DIVISOR = 8
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def round_channels(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor``, never below ``divisor``.

    If rounding down would lose more than 10% of the channels, the next multiple is taken
    instead. Multiples of 8 map to themselves, so the published widths are kept at width 1.

    Example:
        >>> round_channels(16 * 0.5), round_channels(16 * 0.3), round_channels(64 * 1.3)
        (8, 8, 80)
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def check_arguments(
    input_shape: Sequence[int],
    num_classes: int,
    width: float,
    downscale_activation: str,
    se: bool,
    drop_path_rate: float,
    pooling: str,
) -> tuple[int, int, int]:
    """Validates the arguments shared by all backbones; returns ``input_shape`` as a tuple.

    Raises:
        ValueError: naming the argument, the value received and what is allowed.
    """
    try:
        shape = () if isinstance(input_shape, str) else tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(is_int(dim) and dim >= 1 for dim in shape):
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive integers, "
            f"got {input_shape!r}"
        )
    height, width_px, channels = (int(dim) for dim in shape)
    if min(height, width_px) < MIN_INPUT_SIZE:
        raise ValueError(
            f"input_shape must have height and width of at least {MIN_INPUT_SIZE} pixels, "
            f"got {input_shape!r}"
        )
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not is_number(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if downscale_activation not in DOWNSCALE_ACTIVATIONS:
        raise ValueError(
            f"downscale_activation must be one of {tuple(DOWNSCALE_ACTIVATIONS)}, "
            f"got {downscale_activation!r}"
        )
    if not isinstance(se, bool):
        raise ValueError(f"se must be True or False, got {se!r}")
    if not is_number(drop_path_rate) or not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
    if not isinstance(pooling, str) or pooling not in POOLING_TYPES:
        raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {pooling!r}")
    return height, width_px, channels


def conv(
    x: keras.KerasTensor, filters: int, kernel_size: int, strides: int, name: str
) -> keras.KerasTensor:
    """A bias-free, He-normal ``Conv2D`` with "same" padding (a batch norm follows it).

    A strided 1x1 convolution (a projection shortcut) is a
    :class:`tfmagic.layers.SubsampledConv2D`: the same layer computed without the oneDNN
    kernel that aborts on odd batches (BUILD_NOTES.md, "Odd batches").
    """
    layer = SubsampledConv2D if kernel_size == 1 and strides > 1 else keras.layers.Conv2D
    return layer(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def depthwise_conv(
    x: keras.KerasTensor, kernel_size: int, strides: int, name: str
) -> keras.KerasTensor:
    """A bias-free, He-normal ``DepthwiseConv2D`` with "same" padding."""
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer="he_normal",
        name=name,
    )(x)


def batch_norm(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """``BatchNormalization`` with the momentum and epsilon of this package.

    Built under a ``tf.distribute`` strategy with several replicas, it is synchronized: the
    statistics are those of the global batch, as on one device.
    """
    strategy = tf.distribute.get_strategy()
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=strategy.num_replicas_in_sync > 1,
        name=name,
    )(x)


def activation(
    x: keras.KerasTensor,
    strides: int,
    downscale_activation: str,
    prefix: str,
    relu_name: str,
) -> keras.KerasTensor:
    """The activation after a convolution's batch norm.

    After a stride-2 layer it is the downscale activation, named ``<prefix>_downscale_act``;
    otherwise a plain ReLU named ``<prefix>_<relu_name>``.
    """
    if strides == 1:
        return keras.layers.ReLU(name=f"{prefix}_{relu_name}")(x)
    return DOWNSCALE_ACTIVATIONS.build(downscale_activation, f"{prefix}_downscale_act")(x)


def squeeze_excite(x: keras.KerasTensor, ratio: float, prefix: str) -> keras.KerasTensor:
    """A ``SqueezeExcite`` named ``<prefix>_se``; bottleneck ``max(8, round(C * ratio))``."""
    return SqueezeExcite(ratio=ratio, name=f"{prefix}_se")(x)


def block_drop_rate(drop_path_rate: float, block: int, blocks: int) -> float:
    """The stochastic-depth rate of block ``block`` (1-based) of ``blocks``, linear in depth.

    Example:
        >>> [block_drop_rate(0.5, block, 4) for block in (1, 2, 3, 4)]
        [0.125, 0.25, 0.375, 0.5]
    """
    return drop_path_rate * block / blocks


def residual_add(
    branch: keras.KerasTensor, shortcut: keras.KerasTensor, drop_rate: float, prefix: str
) -> keras.KerasTensor:
    """``Add`` named ``<prefix>_add`` of ``shortcut`` and ``branch``.

    With ``drop_rate > 0`` the branch first goes through ``DropPath(drop_rate)`` named
    ``<prefix>_drop_path``; with 0 there is no such layer.
    """
    if drop_rate > 0:
        branch = DropPath(drop_rate, name=f"{prefix}_drop_path")(branch)
    return keras.layers.Add(name=f"{prefix}_add")([branch, shortcut])


def classifier(x: keras.KerasTensor, num_classes: int, pooling: str) -> keras.KerasTensor:
    """Global pooling (one of `POOLINGS`) and a float32 ``Dense`` for logits."""
    x = POOLINGS.build(pooling)(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
