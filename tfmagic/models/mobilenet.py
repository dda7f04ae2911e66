"""``mobilenet_small``: a MobileNetV2-style network (Sandler et al. 2018) for small images.

Built from inverted residual blocks::

    InvertedResidual(t, c, s):
        conv1x1(t * c_in) - BN - ReLU          expand (left out when t == 1)
        depthwise3x3(stride s) - BN - act      act: downscale activation if s == 2, else ReLU
        [SE]                                   squeeze-and-excitation, when se=True
        conv1x1(c) - BN                        linear projection, no activation
        [DropPath] (+) input                   only when s == 1 and c_in == c

The stage plan is MobileNetV2's (same blocks, channels and parameters) with the stride of the
160-channel stage set to 1, so the total stride is 16 instead of 32: a 28x28 or 32x32 image
ends on a 2x2 feature map, a 224x224 image on 14x14::

    stage    t    c     n   s     feature map for 28x28 / 32x32 / 224x224 inputs
    stem     -    32    1   2     14 / 16 / 112   conv3x3 - BN - downscale activation
    stage1   1    16    1   1     14 / 16 / 112
    stage2   6    24    2   2      7 /  8 /  56
    stage3   6    32    3   2      4 /  4 /  28
    stage4   6    64    4   2      2 /  2 /  14
    stage5   6    96    3   1      2 /  2 /  14
    stage6   6    160   3   1      2 /  2 /  14
    stage7   6    320   1   1      2 /  2 /  14
    head     -    1280  1   -     conv1x1 - BN - ReLU, global average pool, Dense -> logits

(t: expansion factor, c: output channels, n: blocks, s: stride of the first block.)

Channels: every ``c`` above (stem and head included) is multiplied by ``width`` and rounded by
:func:`tfmagic.models.common.round_channels`: to the nearest multiple of 8, at least 8, never
losing more than 10%. The expanded width of a block is ``t`` times its (already rounded) input
channels, hence a multiple of 8 as well. Activations are plain ReLU (not MobileNetV2's ReLU6).

Options of every block (see :mod:`tfmagic.models.common`):

- ``se=True`` (the default): a squeeze-and-excitation on the expanded features, after the
  depthwise activation and before the projection (the MobileNetV3 / EfficientNet placement).
  As in EfficientNet its bottleneck is a quarter of the block's *input* channels, not of the
  ``t * c_in`` channels it gates: the layer gets ``ratio = 0.25 / t``, i.e. a bottleneck of
  ``max(8, round(c_in / 4))`` channels (8 to 40 at width 1; the ReLU and sigmoid gate of
  :class:`tfmagic.layers.SqueezeExcite`, not MobileNetV3's hard sigmoid). Every block gets
  one, with or without a residual add.
- ``drop_path_rate > 0``: stochastic depth on the residual branch (after the projection's
  batch norm, before the addition) of the blocks that have a residual add: 10 at width 1, 11
  where the stem and stage1 round to the same channels (width 0.25: 8 and 8, so stage1_block1
  adds too). The rate follows the position among all 17 blocks: block ``l`` gets
  ``drop_path_rate * l / 17``; the last block (stage7) has no residual add, so the highest
  rate used is ``drop_path_rate * 16 / 17`` (stage6_block3).
- ``pooling``: ``"avg"`` (global average pooling) or ``"attention"`` (attention pooling).

Layer names: ``stem_conv``, ``stem_bn``, ``stem_downscale_act``; per block ``stage{i}_block{j}_``
+ ``expand_conv``, ``expand_bn``, ``expand_relu``, ``dw_conv``, ``dw_bn``, ``dw_relu`` or
``downscale_act``, ``se``, ``project_conv``, ``project_bn``, ``drop_path``, ``add``; then
``head_conv``, ``head_bn``, ``head_relu``, ``avg_pool`` or ``attention_pool``, and ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfmagic.models.common import (
    activation,
    batch_norm,
    block_drop_rate,
    check_arguments,
    classifier,
    conv,
    depthwise_conv,
    residual_add,
    round_channels,
    squeeze_excite,
)

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (expansion t, output channels c, blocks n, stride s of the first block) per stage.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)
# The SE bottleneck is this fraction of a block's input channels (EfficientNet's rule).
SE_INPUT_RATIO = 0.25


def mobilenet_small(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: float = 1.0,
    downscale_activation: str = "leaky_relu",
    se: bool = True,
    drop_path_rate: float = 0.0,
    pooling: str = "avg",
) -> keras.Model:
    """A MobileNetV2-style network with total stride 16 (see the module docstring).

    Parameters at width 1 and 10 classes (``model.count_params()``, batch-norm moving
    statistics included): 2,656,034 for 28x28x1 inputs and 2,656,610 for 32x32x3 inputs with
    SE (the default); 2,270,218 and 2,270,794 with ``se=False``.

    Args:
        input_shape: ``(height, width, channels)``; height and width at least 28.
        num_classes: number of classes (>= 2); the model outputs that many logits.
        width: channel multiplier (> 0) of every layer, stem and head included.
        downscale_activation: activation after each stride-2 layer (the stem and the
            stride-2 depthwise convolutions), one of ``DOWNSCALE_ACTIVATIONS``.
        se: whether each block has a squeeze-and-excitation before its projection.
        drop_path_rate: stochastic-depth rate of the last of the 17 blocks, in [0, 1); the
            rates rise linearly from the first block, and 0 means no ``DropPath`` layers.
        pooling: the global pooling before the logits, one of ``POOLING_TYPES``.

    Returns:
        An uncompiled ``keras.Model`` named ``"mobilenet_small"``.

    Example:
        >>> model = mobilenet_small((28, 28, 1), 10, width=0.5)
        >>> model.compile(
        ...     optimizer="adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ... )
        >>> model.output_shape
        (None, 10)
    """
    shape = check_arguments(
        input_shape, num_classes, width, downscale_activation, se, drop_path_rate, pooling
    )

    inputs = keras.Input(shape=shape)
    x = conv(inputs, round_channels(STEM_CHANNELS * width), 3, 2, "stem_conv")
    x = batch_norm(x, "stem_bn")
    x = activation(x, 2, downscale_activation, "stem", "relu")

    total_blocks = sum(blocks for _, _, blocks, _ in STAGES)
    depth = 0
    for stage, (expansion, channels, blocks, strides) in enumerate(STAGES, start=1):
        for block in range(1, blocks + 1):
            depth += 1
            x = _inverted_residual(
                x,
                expansion,
                round_channels(channels * width),
                strides if block == 1 else 1,
                downscale_activation,
                se,
                block_drop_rate(drop_path_rate, depth, total_blocks),
                f"stage{stage}_block{block}",
            )

    x = conv(x, round_channels(HEAD_CHANNELS * width), 1, 1, "head_conv")
    x = batch_norm(x, "head_bn")
    x = keras.layers.ReLU(name="head_relu")(x)
    return keras.Model(inputs, classifier(x, num_classes, pooling), name="mobilenet_small")


def _inverted_residual(
    x: keras.KerasTensor,
    expansion: int,
    channels: int,
    strides: int,
    downscale_activation: str,
    se: bool,
    drop_rate: float,
    prefix: str,
) -> keras.KerasTensor:
    shortcut = x
    in_channels = x.shape[-1]
    if expansion != 1:
        x = conv(x, expansion * in_channels, 1, 1, f"{prefix}_expand_conv")
        x = batch_norm(x, f"{prefix}_expand_bn")
        x = keras.layers.ReLU(name=f"{prefix}_expand_relu")(x)
    x = depthwise_conv(x, 3, strides, f"{prefix}_dw_conv")
    x = batch_norm(x, f"{prefix}_dw_bn")
    x = activation(x, strides, downscale_activation, prefix, "dw_relu")
    if se:
        x = squeeze_excite(x, SE_INPUT_RATIO / expansion, prefix)
    x = conv(x, channels, 1, 1, f"{prefix}_project_conv")
    x = batch_norm(x, f"{prefix}_project_bn")
    if strides == 1 and in_channels == channels:
        x = residual_add(x, shortcut, drop_rate, prefix)
    return x
