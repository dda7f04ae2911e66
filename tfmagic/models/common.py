"""Pieces shared by the built-in backbones: argument checks, channel rounding and layer helpers.

Every built-in backbone is a Keras functional model made of standard Keras layers only
(``Conv2D``, ``DepthwiseConv2D``, ``BatchNormalization``, ``ReLU``, ``LeakyReLU``,
``Activation``, ``Add``, ``GlobalAveragePooling2D``, ``Dense``), so a model saved as ``.keras``
reloads with ``safe_mode=True`` and no ``custom_objects``.

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
- The classifier is global average pooling followed by ``Dense(num_classes, dtype="float32")``
  named ``"logits"``: the model outputs logits (no softmax), in float32 even under a
  mixed-precision policy, so losses take ``from_logits=True``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras

DOWNSCALE_ACTIVATIONS = ("leaky_relu", "relu", "swish")
LEAKY_RELU_SLOPE = 0.1
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
) -> tuple[int, int, int]:
    """Validates the arguments shared by all backbones; returns ``input_shape`` as a tuple.

    Raises:
        ValueError: naming the argument, the value received and what is allowed.
    """
    try:
        shape = () if isinstance(input_shape, str) else tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(_is_int(dim) and dim >= 1 for dim in shape):
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
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if downscale_activation not in DOWNSCALE_ACTIVATIONS:
        raise ValueError(
            f"downscale_activation must be one of {DOWNSCALE_ACTIVATIONS}, "
            f"got {downscale_activation!r}"
        )
    return height, width_px, channels


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def conv(
    x: keras.KerasTensor, filters: int, kernel_size: int, strides: int, name: str
) -> keras.KerasTensor:
    """A bias-free, He-normal ``Conv2D`` with "same" padding (a batch norm follows it)."""
    return keras.layers.Conv2D(
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
    """``BatchNormalization`` with the momentum and epsilon of this package."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


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
    name = f"{prefix}_downscale_act"
    if downscale_activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, name=name)(x)
    if downscale_activation == "swish":
        return keras.layers.Activation("swish", name=name)(x)
    return keras.layers.ReLU(name=name)(x)


def classifier(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """Global average pooling and a float32 ``Dense`` that outputs logits."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
