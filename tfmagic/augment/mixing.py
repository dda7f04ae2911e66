"""MixUp and CutMix: each image of a batch mixed with a partner from the same batch.

Both are callables for the training-pipeline hook of :func:`tfmagic.data.load`,
``(images, labels) -> (images, soft_labels)``: float32 images (B, H, W, C); labels either
integer class indices (B,) (or (B, 1)), turned into one-hot float32 (B, K) (this needs
``num_classes``), or one-hot / soft labels (B, K). The partners are a random permutation of
the batch (an image may draw itself, which leaves it unchanged). The mixing weight is drawn
per image from Beta(alpha, alpha); with probability ``1 - probability`` an image is not mixed
at all. The label mix always equals the image mix, so labels still sum to 1.

They are written here rather than wrapping ``keras.layers.MixUp`` / ``keras.layers.CutMix``
(Keras 3.15), whose semantics differ: neither has a per-image mixing probability or takes
integer labels; ``CutMix`` draws its Beta parameter uniformly from a range instead of using a
fixed alpha, keeps boxes fully inside the image instead of clipping a box with a uniform
centre, and weights the labels by the continuous box area rather than the pixels actually
pasted, so its label mix differs from its image mix.

Randomness comes from a ``tf.random.Generator`` owned by the object: ``seed=None`` is
non-deterministic; an object re-created with the same seed gives the same outputs for the same
sequence of batches (inside a parallel ``tf.data`` map the draws go to batches in the order the
map calls run).
"""


import tensorflow as tf

from tfmagic._checks import check, is_int, is_number
from tfmagic.augment.erasing import box_mask
from tfmagic.augment.seeding import generator

__all__ = ["CutMix", "MixUp"]


class _Mixing:
    """Validation, labels, partners and mixing weights shared by MixUp and CutMix."""

    def __init__(self, alpha, probability, num_classes, seed):
        check(is_number(alpha) and alpha > 0, "alpha", alpha, "must be a number > 0")
        check(is_number(probability) and 0 <= probability <= 1, "probability", probability,
              "must be a number in [0, 1]")
        check(num_classes is None or (is_int(num_classes) and num_classes >= 2),
              "num_classes", num_classes, "must be None or an integer >= 2")
        self.alpha = float(alpha)
        self.probability = float(probability)
        self.num_classes = None if num_classes is None else int(num_classes)
        self._generator = generator(seed)
        self.seed = None if seed is None else int(seed)

    def _soft_labels(self, labels):
        labels = tf.convert_to_tensor(labels)
        if labels.dtype.is_integer and self.num_classes is not None:
            return tf.one_hot(tf.reshape(labels, [-1]), self.num_classes, dtype=tf.float32)
        width = labels.shape[-1] if labels.shape.rank == 2 else None
        if labels.dtype.is_integer or labels.shape.rank != 2 or (
            self.num_classes is not None and width not in (None, self.num_classes)
        ):
            expected = ("one-hot or soft labels (B, K)" if self.num_classes is None else
                        f"integer class indices (B,) or soft labels (B, {self.num_classes})")
            raise ValueError(f"{type(self).__name__}(num_classes={self.num_classes}) needs "
                             f"{expected}, got {labels.dtype.name} labels of shape "
                             f"{labels.shape}")
        return tf.cast(labels, tf.float32)

    def _weights(self, batch):
        """Per image: the weight of its own image, Beta(alpha, alpha) or 1 when not mixed.

        Beta is ``G1 / (G1 + G2)`` with G ~ Gamma(alpha), written as a sigmoid of the log
        ratio, and each ``G = Gamma(alpha + 1) * U**(1 / alpha)``: nothing underflows to 0 in
        float32, however small alpha is.
        """
        seeds = self._generator.make_seeds(2)
        gammas = tf.random.stateless_gamma([2, batch], seeds[:, 0], self.alpha + 1.0)
        uniforms = 1.0 - tf.random.stateless_uniform([2, batch], seeds[:, 1])
        logs = tf.math.log(gammas) + tf.math.log(uniforms) / self.alpha
        own = tf.sigmoid(logs[0] - logs[1])
        mixed = self._generator.uniform([batch]) < self.probability
        return tf.where(mixed, own, 1.0)

    def _partners(self, batch):
        return tf.argsort(self._generator.uniform([batch]))

    def __call__(self, images, labels):
        images = tf.cast(images, tf.float32)
        labels = self._soft_labels(labels)
        batch = tf.shape(images)[0]
        partners = self._partners(batch)
        return self._mix(images, labels, tf.gather(images, partners),
                         tf.gather(labels, partners), self._weights(batch))

    def get_config(self):
        return {
            "alpha": self.alpha,
            "probability": self.probability,
            "num_classes": self.num_classes,
            "seed": self.seed,
        }

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class MixUp(_Mixing):
    """MixUp (Zhang et al., 2018): ``x = lam x_i + (1 - lam) x_j``, labels likewise.

    lam ~ Beta(alpha, alpha) is drawn per image; j is the image's partner in a random
    permutation of the batch. An image that is not mixed (probability ``1 - probability``)
    keeps lam = 1.

    Args:
        alpha: Beta parameter, > 0 (0.2 is the ImageNet choice; 1 is uniform).
        probability: the chance that an image is mixed, in [0, 1].
        num_classes: K (>= 2), to turn integer labels into one-hot; None when the labels
            come one-hot (or soft) already.
        seed: None (non-deterministic) or an integer >= 0.

    Example:

    >>> mixup = MixUp(alpha=0.2, num_classes=10, seed=0)
    >>> images, labels = mixup(tf.zeros([8, 28, 28, 1]), tf.range(8))
    >>> labels.shape, [round(float(s), 5) for s in tf.reduce_sum(labels, axis=1)][:3]
    (TensorShape([8, 10]), [1.0, 1.0, 1.0])
    """

    def __init__(self, alpha=0.2, probability=1.0, num_classes=None, seed=None):
        super().__init__(alpha, probability, num_classes, seed)

    def _mix(self, images, labels, partner_images, partner_labels, own):
        image_weight = own[:, None, None, None]
        label_weight = own[:, None]
        return (image_weight * images + (1.0 - image_weight) * partner_images,
                label_weight * labels + (1.0 - label_weight) * partner_labels)


class CutMix(_Mixing):
    """CutMix (Yun et al., 2019): a box of the partner image pasted into each image.

    Per image, lam ~ Beta(alpha, alpha); the box has sides ``round(sqrt(1 - lam) H)`` by
    ``round(sqrt(1 - lam) W)`` (area fraction about ``1 - lam``) and a centre pixel uniform over
    the image, and is clipped at the borders. The label weight of the partner is the fraction
    of pixels actually pasted, ``box pixels / (H W)``, so it matches the image exactly. An
    image that is not mixed (probability ``1 - probability``) gets no box.

    Args:
        alpha: Beta parameter, > 0 (1, uniform lam, is the paper's choice).
        probability: the chance that an image is mixed, in [0, 1].
        num_classes: K (>= 2), to turn integer labels into one-hot; None when the labels
            come one-hot (or soft) already.
        seed: None (non-deterministic) or an integer >= 0.

    Example:

    >>> cutmix = CutMix(num_classes=10, seed=0)
    >>> images, labels = cutmix(tf.zeros([8, 28, 28, 1]), tf.range(8))
    >>> images.shape, labels.shape
    (TensorShape([8, 28, 28, 1]), TensorShape([8, 10]))
    """

    def __init__(self, alpha=1.0, probability=1.0, num_classes=None, seed=None):
        super().__init__(alpha, probability, num_classes, seed)

    def _mix(self, images, labels, partner_images, partner_labels, own):
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        side = tf.sqrt(1.0 - own)
        box_h = tf.cast(tf.round(side * tf.cast(height, tf.float32)), tf.int32)
        box_w = tf.cast(tf.round(side * tf.cast(width, tf.float32)), tf.int32)
        draws = self._generator.uniform([2, batch])
        centre_y = tf.cast(draws[0] * tf.cast(height, tf.float32), tf.int32)
        centre_x = tf.cast(draws[1] * tf.cast(width, tf.float32), tf.int32)
        top = tf.clip_by_value(centre_y - box_h // 2, 0, height)
        bottom = tf.clip_by_value(centre_y - box_h // 2 + box_h, 0, height)
        left = tf.clip_by_value(centre_x - box_w // 2, 0, width)
        right = tf.clip_by_value(centre_x - box_w // 2 + box_w, 0, width)
        mask = box_mask(top, bottom, left, right, height, width)
        pasted = (tf.cast((bottom - top) * (right - left), tf.float32)
                  / tf.cast(height * width, tf.float32))[:, None]
        return (tf.where(mask, partner_images, images),
                (1.0 - pasted) * labels + pasted * partner_labels)
