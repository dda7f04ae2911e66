"""Built-in backbones: small Keras functional models made of standard Keras layers only.

``resnet20`` and ``resnet56`` are the CIFAR ResNets of He et al. (2016), ``mobilenet_small`` a
MobileNetV2-style network with total stride 16. All take any ``(height, width, channels)`` input
with height and width of at least 28 pixels, output float32 logits (use ``from_logits=True``),
scale their channels with ``width`` and let ``downscale_activation`` choose the activation that
follows each stride-2 layer. See :mod:`tfmagic.models.common` for the shared conventions.

``add_squeeze_excite`` and ``set_downscaling_activation`` (:mod:`tfmagic.models.surgery`)
rewrite any functional Keras model, ``keras.applications`` ones included, into a new model
with SE blocks or another downscaling activation, and report what they changed.

Example:
    >>> from tfmagic.models import build_model
    >>> model = build_model("resnet20", (28, 28, 1), 10, downscale_activation="swish")
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tfmagic.models.common import DOWNSCALE_ACTIVATIONS
from tfmagic.models.mobilenet import mobilenet_small
from tfmagic.models.resnet import resnet20, resnet56
from tfmagic.models.surgery import SurgeryReport, add_squeeze_excite, set_downscaling_activation

__all__ = [
    "DOWNSCALE_ACTIVATIONS",
    "MODEL_NAMES",
    "SurgeryReport",
    "add_squeeze_excite",
    "build_model",
    "mobilenet_small",
    "resnet20",
    "resnet56",
    "set_downscaling_activation",
]

MODEL_NAMES = ("resnet20", "resnet56", "mobilenet_small")

_BUILDERS = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenet_small": mobilenet_small,
}


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: float = 1.0,
    downscale_activation: str = "leaky_relu",
) -> keras.Model:
    """Builds the built-in backbone called ``name`` (one of ``MODEL_NAMES``).

    Args:
        name: ``"resnet20"``, ``"resnet56"`` or ``"mobilenet_small"``.
        input_shape: ``(height, width, channels)``; height and width at least 28.
        num_classes: number of classes (>= 2); the model outputs that many logits.
        width: channel multiplier (> 0).
        downscale_activation: activation after each stride-2 layer, one of
            ``DOWNSCALE_ACTIVATIONS``.

    Returns:
        An uncompiled ``keras.Model`` that outputs float32 logits.

    Raises:
        ValueError: for an unknown ``name`` or an invalid argument, naming it.

    Example:
        >>> model = build_model("mobilenet_small", (32, 32, 3), 100, width=0.5)
        >>> model.output_shape
        (None, 100)
    """
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    return _BUILDERS[name](
        input_shape, num_classes, width=width, downscale_activation=downscale_activation
    )
