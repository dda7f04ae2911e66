"""CIFAR-style ResNets (He et al. 2016, "Deep Residual Learning", section 4.2).

A network of depth ``6n + 2``: a stem, three stages of ``n`` basic blocks each, a global
pooling and a dense layer (``resnet8``: n=1, ``resnet20``: n=3, ``resnet56``: n=9)::

    stem      conv3x3(16) - BN - act          stride 1 if min(H, W) < 64, else stride 2
    stage1    n x BasicBlock(16)              stride 1
    stage2    n x BasicBlock(32)              first block stride 2
    stage3    n x BasicBlock(64)              first block stride 2
    head      global pool - Dense(num_classes) -> logits

    BasicBlock(f):  conv3x3(f, stride s) - BN - act - conv3x3(f) - BN - [SE] - [DropPath]
                    (+) shortcut - ReLU
    shortcut:       identity, or conv1x1(f, stride s) - BN where the shape changes
                    (the first block of stage2 and stage3: option B of the paper)

The stem stride keeps large inputs affordable: 32x32 images keep the paper's 32/16/8 feature
maps, while 224x224 images start at 112x112 instead of 224x224 (a quarter of the compute).
When the stem has stride 2 its activation is the downscale activation, otherwise a ReLU. The
activation after the first batch norm of the first block of stage2 and stage3 (the stride-2
convolutions) is the downscale activation too; every other activation is a ReLU.

Filters are ``16, 32, 64`` times ``width``, rounded by
:func:`tfmagic.models.common.round_channels`: to the nearest multiple of 8, at least 8, never
losing more than 10% (width 1 keeps 16/32/64 exactly; width 0.5 gives 8/16/32; width 2 gives
32/64/128).

Options of every block (see :mod:`tfmagic.models.common`):

- ``se=True`` (the default): a squeeze-and-excitation on the residual branch after its last
  batch norm, before the addition (the SE-ResNet placement of Hu et al. 2018), with bottleneck
  ``max(8, round(f / 4))``: 8/8/16 channels at width 1.
- ``drop_path_rate > 0``: stochastic depth on the residual branch, after the SE, in every block
  (also those with a projection shortcut; the shortcut is never dropped); block ``l`` of the
  ``3n`` blocks gets ``drop_path_rate * l / (3n)``.
- ``pooling``: ``"avg"`` (global average pooling) or ``"attention"`` (attention pooling).

Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu`` or ``stem_downscale_act``, and per block
``stage{i}_block{j}_`` + ``conv1``, ``bn1``, ``relu1`` or ``downscale_act``, ``conv2``, ``bn2``,
``se``, ``drop_path``, ``shortcut_conv``, ``shortcut_bn``, ``add``, ``out_relu``; then
``avg_pool`` or ``attention_pool``, and ``logits``.
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
    residual_add,
    round_channels,
    squeeze_excite,
)

STAGE_FILTERS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
LARGE_INPUT_SIZE = 64
SE_RATIO = 0.25


_DOC = """

    Parameters at width 1 and 10 classes (``model.count_params()``, batch-norm moving
    statistics included): {params}.

    Args:
        input_shape: ``(height, width, channels)``; height and width at least 28.
        num_classes: number of classes (>= 2); the model outputs that many logits.
        width: multiplier of the 16/32/64 stage filters (> 0).
        downscale_activation: activation after each stride-2 layer, one of
            ``DOWNSCALE_ACTIVATIONS``.
        se: whether each block has a squeeze-and-excitation before its addition.
        drop_path_rate: stochastic-depth rate of the last block, in [0, 1); the rates rise
            linearly from the first block, and 0 means no ``DropPath`` layers.
        pooling: the global pooling before the logits, one of ``POOLING_TYPES``.

    Returns:
        An uncompiled ``keras.Model`` named ``"{name}"``.

    Example:
{example}
    """


def _builder(name: str, blocks_per_stage: int, summary: str, params: str, example: str):
    """The public builder of the ResNet with ``blocks_per_stage`` basic blocks per stage,
    documented by ``summary``, its parameter counts and a doctest ``example``."""

    def build(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        width: float = 1.0,
        downscale_activation: str = "leaky_relu",
        se: bool = True,
        drop_path_rate: float = 0.0,
        pooling: str = "avg",
    ) -> keras.Model:
        return _resnet(
            name,
            blocks_per_stage,
            input_shape,
            num_classes,
            width=width,
            downscale_activation=downscale_activation,
            se=se,
            drop_path_rate=drop_path_rate,
            pooling=pooling,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = summary + _DOC.format(name=name, params=params, example=example)
    return build


resnet8 = _builder(
    "resnet8",
    1,
    """ResNet-8 (n=1 basic block per stage) for small images: a quick first model, about half
    the training time of a ResNet-20 on a short run, and a third of its graph to trace.""",
    """81,386 for 28x28x1 inputs and 81,674 for 32x32x3 inputs with SE
    (the default); 78,426 and 78,714 with ``se=False``""",
    """        >>> model = resnet8((28, 28, 1), 10, se=False)
        >>> [layer.name for layer in model.layers if layer.name.endswith("_add")]
        ['stage1_block1_add', 'stage2_block1_add', 'stage3_block1_add']""",
)

resnet20 = _builder(
    "resnet20",
    3,
    """ResNet-20 (n=3 basic blocks per stage) for small images.""",
    """282,634 for 28x28x1 inputs and 282,922 for 32x32x3 inputs with SE
    (the default); 273,754 and 274,042 with ``se=False``""",
    """        >>> model = resnet20((32, 32, 3), 10)
        >>> model.compile(
        ...     optimizer="sgd",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ... )
        >>> model.output_shape
        (None, 10)""",
)

resnet56 = _builder(
    "resnet56",
    9,
    """ResNet-56 (n=9 basic blocks per stage) for small images.""",
    """886,378 for 28x28x1 inputs and 886,666 for 32x32x3 inputs with SE
    (the default); 859,738 and 860,026 with ``se=False``""",
    """        >>> model = resnet56((28, 28, 1), 10, width=0.5, downscale_activation="swish")
        >>> model.output_shape
        (None, 10)""",
)


def _resnet(
    name: str,
    blocks_per_stage: int,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: float,
    downscale_activation: str,
    se: bool,
    drop_path_rate: float,
    pooling: str,
) -> keras.Model:
    shape = check_arguments(
        input_shape, num_classes, width, downscale_activation, se, drop_path_rate, pooling
    )
    filters = [round_channels(base * width) for base in STAGE_FILTERS]

    inputs = keras.Input(shape=shape)
    stem_strides = 2 if min(shape[:2]) >= LARGE_INPUT_SIZE else 1
    x = conv(inputs, filters[0], 3, stem_strides, "stem_conv")
    x = batch_norm(x, "stem_bn")
    x = activation(x, stem_strides, downscale_activation, "stem", "relu")

    total_blocks = len(STAGE_FILTERS) * blocks_per_stage
    for stage, (stage_filters, stage_strides) in enumerate(
        zip(filters, STAGE_STRIDES, strict=True), start=1
    ):
        for block in range(1, blocks_per_stage + 1):
            depth = (stage - 1) * blocks_per_stage + block
            x = _basic_block(
                x,
                stage_filters,
                stage_strides if block == 1 else 1,
                downscale_activation,
                se,
                block_drop_rate(drop_path_rate, depth, total_blocks),
                f"stage{stage}_block{block}",
            )

    return keras.Model(inputs, classifier(x, num_classes, pooling), name=name)


def _basic_block(
    x: keras.KerasTensor,
    filters: int,
    strides: int,
    downscale_activation: str,
    se: bool,
    drop_rate: float,
    prefix: str,
) -> keras.KerasTensor:
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(x, filters, 1, strides, f"{prefix}_shortcut_conv")
        shortcut = batch_norm(shortcut, f"{prefix}_shortcut_bn")

    x = conv(x, filters, 3, strides, f"{prefix}_conv1")
    x = batch_norm(x, f"{prefix}_bn1")
    x = activation(x, strides, downscale_activation, prefix, "relu1")
    x = conv(x, filters, 3, 1, f"{prefix}_conv2")
    x = batch_norm(x, f"{prefix}_bn2")
    if se:
        x = squeeze_excite(x, SE_RATIO, prefix)
    x = residual_add(x, shortcut, drop_rate, prefix)
    return keras.layers.ReLU(name=f"{prefix}_out_relu")(x)
