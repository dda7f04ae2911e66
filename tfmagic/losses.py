"""Label-smoothing cross-entropy in the article's convention and in Keras'.

With K classes and smoothing epsilon, a one-hot target becomes:

- `convention="article"`: the true class gets `1 - eps`, every other class `eps / (K - 1)`
  (the checklist's convention: the wrong classes share exactly eps);
- `convention="keras"`: `(1 - eps) * y + eps / K` (Keras' `label_smoothing`; the true class
  keeps `1 - eps + eps / K`).

Soft targets (mixup, cutmix) are smoothed by the same affine maps, per class:
article `y' = (1 - eps) * y + eps * (1 - y) / (K - 1)`, keras `y' = (1 - eps) * y + eps / K`.
Both keep a target summing to 1. The article map mixes the target with its complement
distribution `(1 - y) / (K - 1)` in proportion eps, so the order of the classes is kept: a
50/50 mix of two classes gets `0.5 - eps / 2 + eps / (2 (K - 1))` on each of them and
`eps / (K - 1)` on every other class.

Example:

>>> import numpy as np
>>> loss = LabelSmoothingCrossEntropy(0.1, from_logits=True)
>>> round(float(loss(np.array([2]), np.array([[0.0, 0.0, 0.0, 0.0]]))), 4)   # ln 4
1.3863
"""

import keras
from keras import ops

from tfmagic._checks import check, is_number

__all__ = ["CONVENTIONS", "LabelSmoothingCrossEntropy", "smooth_labels"]

CONVENTIONS = ("article", "keras")


def smooth_labels(targets, epsilon, convention="article"):
    """Smooth a (batch, K) float target distribution; see the module docstring."""
    num_classes = ops.shape(targets)[-1]
    if convention == "article":
        other = ops.cast(epsilon, targets.dtype) / ops.cast(num_classes - 1, targets.dtype)
        return (1.0 - epsilon) * targets + other * (1.0 - targets)
    return (1.0 - epsilon) * targets + epsilon / ops.cast(num_classes, targets.dtype)


@keras.saving.register_keras_serializable(package="tfmagic")
class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Cross-entropy against label-smoothed targets.

    Args:
        epsilon: smoothing in [0, 1); 0 is plain cross-entropy.
        convention: "article" (true class 1 - eps, others eps / (K - 1)) or "keras"
            ((1 - eps) * y + eps / K).
        from_logits: whether predictions are logits (tfmagic's backbones return logits) or
            probabilities.

    Labels may be integer class indices, shape (batch,) or (batch, 1), or (soft) one-hot
    targets of shape (batch, K).
    """

    def __init__(self, epsilon=0.1, convention="article", from_logits=False,
                 reduction="sum_over_batch_size", name="label_smoothing_cross_entropy",
                 dtype=None):
        check(is_number(epsilon) and 0 <= epsilon < 1, "epsilon", epsilon, "must be in [0, 1)")
        check(convention in CONVENTIONS, "convention", convention,
              f"must be one of {', '.join(CONVENTIONS)}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = float(epsilon)
        self.convention = convention
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        num_classes = y_pred.shape[-1]
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes:
            targets = ops.cast(y_true, y_pred.dtype)
        else:
            indices = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            targets = ops.one_hot(indices, num_classes, dtype=y_pred.dtype)
        if self.epsilon > 0:
            targets = smooth_labels(targets, self.epsilon, self.convention)
        if self.from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            log_probs = ops.log(ops.clip(probs, keras.backend.epsilon(), 1.0))
        return -ops.sum(targets * log_probs, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "convention": self.convention,
            "from_logits": self.from_logits,
        }
