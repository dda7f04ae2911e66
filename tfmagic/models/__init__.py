"""Built-in backbones: small Keras functional models made of standard Keras layers only.

``resnet8``, ``resnet20`` and ``resnet56`` are the CIFAR ResNets of He et al. (2016),
``mobilenet_small`` a MobileNetV2-style network with total stride 16. All take any
``(height, width, channels)`` input with height and width of at least 28 pixels, output float32
logits (use ``from_logits=True``), scale their channels with ``width`` and let
``downscale_activation`` choose the activation that follows each stride-2 layer. Three options
set architecture tricks: ``se`` (squeeze-and-excitation in every block, on by default),
``drop_path_rate`` (stochastic depth, rising linearly with depth; off by default) and
``pooling`` (``"avg"`` or ``"attention"``, one of ``POOLING_TYPES``).
See :mod:`tfmagic.models.common` for the shared conventions.

``add_squeeze_excite`` and ``set_downscaling_activation`` (:mod:`tfmagic.models.surgery`)
rewrite any functional Keras model, ``keras.applications`` ones included, into a new model
with SE blocks or another downscaling activation, and report what they changed.

Example:
    >>> from tfmagic.models import build_model
    >>> model = build_model("resnet20", (28, 28, 1), 10, downscale_activation="swish")
    >>> model.output_shape
    (None, 10)
    >>> model = build_model("resnet20", (28, 28, 1), 10, se=False, drop_path_rate=0.1,
    ...                     pooling="attention")
    >>> model.get_layer("stage3_block3_drop_path").rate
    0.1
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfmagic.layers import with_auxiliary_head
from tfmagic.models.applications import (
    APPLICATION_NAMES,
    KEEP_ACTIVATION,
    KERAS_PREFIX,
    PretrainedWeightsError,
    build_application,
    check_pretrained,
    is_application,
    min_input_size,
    preprocess_function,
)
from tfmagic.models.common import DOWNSCALE_ACTIVATIONS, POOLING_TYPES, POOLINGS
from tfmagic.models.mobilenet import mobilenet_small
from tfmagic.models.resnet import resnet8, resnet20, resnet56
from tfmagic.models.surgery import (
    SurgeryReport,
    add_squeeze_excite,
    set_downscaling_activation,
    subsample_strided_pointwise,
)
from tfmagic.registry import Registry

__all__ = [
    "APPLICATION_NAMES",
    "BACKBONES",
    "DOWNSCALE_ACTIVATIONS",
    "KEEP_ACTIVATION",
    "KERAS_PREFIX",
    "MODEL_NAMES",
    "POOLINGS",
    "POOLING_TYPES",
    "PretrainedWeightsError",
    "SurgeryReport",
    "add_squeeze_excite",
    "auxiliary_feature_layer",
    "build_application",
    "build_model",
    "check_pretrained",
    "is_application",
    "min_input_size",
    "mobilenet_small",
    "preprocess_function",
    "resnet8",
    "resnet20",
    "resnet56",
    "set_downscaling_activation",
    "subsample_strided_pointwise",
]

BACKBONES = Registry("model")
"""The built-in backbones: name -> ``build(input_shape, num_classes, *, width,
downscale_activation, se, drop_path_rate, pooling)``, a functional Keras model."""
BACKBONES.register("resnet8", resnet8,
                   help="the CIFAR ResNet-8 of He et al. (2016): one block per stage, a quick try")
BACKBONES.register("resnet20", resnet20, help="the CIFAR ResNet-20 of He et al. (2016)")
BACKBONES.register("resnet56", resnet56, help="the CIFAR ResNet-56 of He et al. (2016)")
BACKBONES.register("mobilenet_small", mobilenet_small,
                   help="a small MobileNetV2-style network, total stride 16")
MODEL_NAMES = BACKBONES


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: float = 1.0,
    downscale_activation: str = "leaky_relu",
    se: bool = True,
    drop_path_rate: float = 0.0,
    pooling: str = "avg",
    aux_loss_weight: float = 0.0,
    pretrained: str = "none",
) -> keras.Model:
    """Builds the backbone called ``name``: a built-in one or ``"keras:NAME"``.

    Args:
        name: ``"resnet8"``, ``"resnet20"``, ``"resnet56"``, ``"mobilenet_small"``, or
            ``"keras:NAME"`` for ``keras.applications.NAME`` with a new head (see
            :func:`tfmagic.models.applications.build_application`).
        input_shape: ``(height, width, channels)``; height and width at least 28 (a
            ``keras:`` model needs 3 channels and at least ``min_input_size(name)`` pixels).
        num_classes: number of classes (>= 2); the model outputs that many logits.
        width: channel multiplier (> 0) of a built-in backbone.
        downscale_activation: activation after each stride-2 layer, one of
            ``DOWNSCALE_ACTIVATIONS`` (or ``"keep"`` for a ``keras:`` model).
        se: whether every block has a squeeze-and-excitation (True or False).
        drop_path_rate: stochastic-depth rate of the last block, in [0, 1); block ``l`` of
            ``L`` gets ``drop_path_rate * l / L``, and 0 means no ``DropPath`` layers.
            Built-in backbones only.
        pooling: the global pooling before the logits, one of ``POOLING_TYPES``.
        aux_loss_weight: when > 0, return the *training* model of
            :func:`tfmagic.layers.with_auxiliary_head`: outputs ``[logits, auxiliary
            logits]``, the auxiliary classifier reading ``auxiliary_feature_layer(model)``
            and its loss weighted by ``aux_loss_weight``. ``tfmagic.layers.strip_auxiliary``
            gives the inference model.
        pretrained: initial weights of a ``keras:`` model: ``"none"``, ``"imagenet"`` or a
            weights file path.

    Returns:
        An uncompiled ``keras.Model`` that outputs float32 logits.

    Raises:
        ValueError: for an unknown ``name`` or an invalid argument, naming it.
        PretrainedWeightsError: ImageNet weights asked for and not obtainable.

    Example:
        >>> model = build_model("mobilenet_small", (32, 32, 3), 100, width=0.5)
        >>> model.output_shape
        (None, 100)
        >>> training_model = build_model("resnet20", (28, 28, 1), 10, aux_loss_weight=0.4)
        >>> [output.shape for output in training_model.outputs]
        [(None, 10), (None, 10)]
    """
    if isinstance(aux_loss_weight, bool) or not isinstance(aux_loss_weight, int | float) or not (
        aux_loss_weight >= 0
    ):
        raise ValueError(f"aux_loss_weight={aux_loss_weight!r} is not allowed: a number >= 0")
    if is_application(name):
        if drop_path_rate:
            raise ValueError(f"drop_path_rate={drop_path_rate!r} is not allowed: 0 for a "
                             f"keras.applications model ({name})")
        model = build_application(name, input_shape, num_classes, pretrained=pretrained, se=se,
                                  downscale_activation=downscale_activation, pooling=pooling)
    elif name in BACKBONES:
        if pretrained != "none":
            raise ValueError(f"pretrained={pretrained!r} is not allowed: 'none' for the "
                             f"built-in backbone {name}")
        model = BACKBONES.build(
            name,
            input_shape,
            num_classes,
            width=width,
            downscale_activation=downscale_activation,
            se=se,
            drop_path_rate=drop_path_rate,
            pooling=pooling,
        )
    else:
        raise ValueError(f"name must be one of {tuple(BACKBONES)} or 'keras:NAME' with NAME in "
                         f"APPLICATION_NAMES, got {name!r}")
    if aux_loss_weight > 0:
        return with_auxiliary_head(model, auxiliary_feature_layer(model), weight=aux_loss_weight)
    return model


def auxiliary_feature_layer(model: keras.Model) -> str:
    """The layer an auxiliary classifier reads: the last one before the final downscaling.

    That is the last layer (in graph order) whose output is a feature map larger than the
    final one: the end of stage 2 of a CIFAR ResNet, the end of ``conv4`` of ResNet50.

    Raises:
        ValueError: the model has no feature map larger than its last one.
    """
    maps = []
    for layer in model.layers:
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and None not in shape[1:3]:
            maps.append((layer.name, shape[1] * shape[2]))
    larger = [name for name, area in maps if maps and area > maps[-1][1]]
    if larger:
        return larger[-1]
    raise ValueError(f"model={model.name!r} is not allowed: an auxiliary head needs a feature "
                     "map larger than the model's last one")
