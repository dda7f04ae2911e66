"""``keras.applications`` backbones by name, optionally pretrained, with a new classification head.

A model name ``"keras:NAME"`` picks ``keras.applications.NAME`` (``"keras:MobileNetV2"``,
``"keras:ResNet50"``, ``"keras:EfficientNetB0"``, ... every name in ``APPLICATION_NAMES``).
:func:`build_application` builds it without its ImageNet classifier and adapts it:

- **Input**: three channels (grayscale data is tiled to three channels by the input pipeline)
  and at least the smallest size the application accepts (``min_input_size``: 75 pixels for
  InceptionV3 and InceptionResNetV2, 71 for Xception, 32 for the others); the pipeline
  resizes smaller images up to it.
- **Preprocessing**: the model expects what the application's own ``preprocess_input``
  returns (``preprocess_function``); the input pipeline applies it to 0..255 images instead of
  tfmagic's per-channel standardization.
- **Weights** (``pretrained``): ``"none"`` (random initialization), ``"imagenet"`` (Keras
  downloads the ImageNet weights once into ``~/.keras/models``; that needs internet access and
  a missing connection raises :class:`PretrainedWeightsError` saying so) or the path of a
  weights file of the backbone, i.e. what
  ``keras.applications.NAME(include_top=False, weights=None, input_shape=...).save_weights(p)``
  writes (``.weights.h5``).
- **Architecture tricks**, applied after the weights are loaded, by surgery
  (:mod:`tfmagic.models.surgery`), so loaded weights of unchanged layers are kept:
  ``downscale_activation`` replaces the activation after each stride-2 convolution
  (``"keep"`` leaves the application's own), ``se=True`` inserts squeeze-and-excitation blocks
  (none where a block already has a gate, as in EfficientNet).
- **Odd batches**: every strided 1x1 convolution (the projection shortcuts of the ResNets)
  becomes the equivalent :class:`tfmagic.layers.SubsampledConv2D`, same weights, since
  TensorFlow's oneDNN kernel for it aborts the process on odd batches on some CPUs
  (:func:`tfmagic.models.subsample_strided_pointwise`).
- **Head**: global average pooling (``pooling="avg"``, layer ``avg_pool``) or
  :class:`tfmagic.layers.AttentionPooling` (``pooling="attention"``, layer
  ``attention_pool``), then ``Dense(num_classes, dtype="float32")`` named ``logits``: float32
  logits, as the built-in backbones.

The result is one flat functional model (the backbone's layers, then the head), so surgery,
auxiliary heads and saving work on it as on the built-in backbones.

Example:
    >>> model = build_application("keras:MobileNetV2", (32, 32, 3), 10, se=False,
    ...                           downscale_activation="keep")
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import keras

from tfmagic._checks import check, is_int
from tfmagic.models.common import DOWNSCALE_ACTIVATIONS, POOLINGS
from tfmagic.models.surgery import (
    add_squeeze_excite,
    set_downscaling_activation,
    subsample_strided_pointwise,
)

KERAS_PREFIX = "keras:"
APPLICATION_NAMES = tuple(sorted(name for name in dir(keras.applications) if name[:1].isupper()))
PRETRAINED_CHOICES = ("none", "imagenet")
KEEP_ACTIVATION = "keep"
DEFAULT_MIN_INPUT_SIZE = 32
_MIN_INPUT_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


class PretrainedWeightsError(RuntimeError):
    """The pretrained weights asked for could not be obtained (offline, say)."""


def is_application(model_name: str) -> bool:
    """Whether ``model_name`` names a ``keras.applications`` model (``"keras:NAME"``)."""
    return isinstance(model_name, str) and model_name.startswith(KERAS_PREFIX)


def application_name(model_name: str) -> str:
    """``"keras:MobileNetV2"`` -> ``"MobileNetV2"``; a ValueError for an unknown name."""
    name = model_name[len(KERAS_PREFIX):] if is_application(model_name) else None
    check(name in APPLICATION_NAMES, "model", model_name,
          "a keras.applications model is named 'keras:NAME' with NAME one of "
          + ", ".join(APPLICATION_NAMES))
    return name


def min_input_size(model_name: str) -> int:
    """The smallest height and width that the application accepts."""
    return _MIN_INPUT_SIZE.get(application_name(model_name), DEFAULT_MIN_INPUT_SIZE)


def preprocess_function(model_name: str) -> Callable:
    """The application's ``preprocess_input``: 0..255 RGB images -> what the model expects."""
    constructor = getattr(keras.applications, application_name(model_name))
    module = getattr(keras.applications, constructor.__module__.rpartition(".")[2])
    return module.preprocess_input


def check_pretrained(pretrained: str) -> None:
    """Raises a ValueError unless ``pretrained`` is "none", "imagenet" or an existing file."""
    known = pretrained in PRETRAINED_CHOICES or (
        isinstance(pretrained, str) and os.path.isfile(pretrained))
    check(known, "pretrained", pretrained,
          "'none', 'imagenet' or the path of an existing weights file (.weights.h5)")


def build_application(
    model_name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    pretrained: str = "none",
    se: bool = True,
    downscale_activation: str = "leaky_relu",
    pooling: str = "avg",
) -> keras.Model:
    """Builds ``keras.applications.NAME`` with a new head (see the module docstring).

    Args:
        model_name: ``"keras:NAME"`` with NAME in ``APPLICATION_NAMES``.
        input_shape: ``(height, width, 3)``; height and width at least
            ``min_input_size(model_name)``.
        num_classes: number of classes (>= 2) of the new head.
        pretrained: ``"none"``, ``"imagenet"`` or the path of a weights file of the backbone.
        se: insert squeeze-and-excitation blocks (``add_squeeze_excite``).
        downscale_activation: one of ``DOWNSCALE_ACTIVATIONS`` or ``"keep"``.
        pooling: ``"avg"`` or ``"attention"``.

    Returns:
        An uncompiled functional model that outputs float32 logits, named after the
        application in lower case.

    Raises:
        ValueError: an invalid argument, named with what is allowed.
        PretrainedWeightsError: ``pretrained="imagenet"`` and the weights could not be
            downloaded.
    """
    name = application_name(model_name)
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    smallest = min_input_size(model_name)
    check(len(shape) == 3 and shape[2] == 3 and min(shape[:2]) >= smallest, "input_shape",
          input_shape, f"(height, width, 3) with height and width of at least {smallest} for "
          f"{model_name}")
    check(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes,
          "an integer >= 2")
    check_pretrained(pretrained)
    check(isinstance(se, bool), "se", se, "True or False")
    activations = (*DOWNSCALE_ACTIVATIONS, KEEP_ACTIVATION)
    check(downscale_activation in activations, "downscale_activation", downscale_activation,
          f"one of {activations}")
    check(pooling in POOLINGS, "pooling", pooling, f"one of {tuple(POOLINGS)}")

    backbone, _ = subsample_strided_pointwise(_backbone(name, shape, pretrained))
    if downscale_activation != KEEP_ACTIVATION:
        backbone, _ = set_downscaling_activation(backbone, downscale_activation)
    if se:
        backbone, _ = add_squeeze_excite(backbone)
    x = POOLINGS.build(pooling)(backbone.output)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(backbone.input, logits, name=name.lower())


def _backbone(name: str, shape: tuple[int, int, int], pretrained: str) -> keras.Model:
    constructor = getattr(keras.applications, name)
    weights = None if pretrained == "none" else pretrained
    if pretrained != "imagenet":
        return constructor(include_top=False, weights=weights, input_shape=shape)
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=shape)
    except ValueError:
        raise
    except Exception as error:
        raise PretrainedWeightsError(
            f"pretrained='imagenet' needs the ImageNet weights of {name}, which Keras downloads "
            "once into ~/.keras/models; the download failed, most likely because this machine "
            "has no internet access. Run once where there is internet and copy "
            "~/.keras/models here, or pass pretrained=PATH to a weights file. Cause: "
            f"{error}"
        ) from error
