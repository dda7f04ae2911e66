"""MixUp and CutMix (image mix == label mix, exactly), and Cutout / Random Erasing boxes."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmagic.augment import erasing, mixing
from tfmagic.augment.erasing import Cutout, RandomErasing
from tfmagic.augment.mixing import CutMix, MixUp


def random_images(batch, height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, height, width, channels)).astype(np.float32)


def partners(labels):
    """Each row's partner class (its own index when it was not mixed or drew itself), from
    one-hot-per-index labels: the largest weight outside the diagonal."""
    off_diagonal = labels.copy()
    np.fill_diagonal(off_diagonal, 0.0)
    partner = off_diagonal.argmax(axis=1)
    return np.where(off_diagonal.max(axis=1) > 0, partner, np.arange(len(labels)))


def box_of(mask):
    """(rows, cols) spans of a boolean mask's bounding box, and whether it is a full box."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, 0, True
    height = rows[-1] - rows[0] + 1
    width = cols[-1] - cols[0] + 1
    return height, width, mask.sum() == height * width


def test_docstring_examples():
    assert doctest.testmod(mixing).failed == 0
    assert doctest.testmod(erasing).failed == 0


# ----------------------------------------------------------------------------- MixUp


def eager_batches(mixer, batches):
    return [mixer(tf.constant(images), tf.range(len(images))) for images in batches]


def tf_data_batches(mixer, batches):
    images = np.concatenate(batches)
    labels = np.tile(np.arange(len(batches[0]), dtype=np.int32), len(batches))
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(batches[0]))
               .map(mixer, num_parallel_calls=tf.data.AUTOTUNE))
    return list(dataset)


@pytest.mark.parametrize("run", [eager_batches, tf_data_batches])
def test_mixup_images_mix_exactly_like_labels(run):
    batch = 32
    mixup = MixUp(alpha=0.4, num_classes=batch, seed=0)
    batches = [random_images(batch, 6, 5, seed=step) for step in range(4)]
    for images, (out, labels) in zip(batches, run(mixup, batches), strict=True):
        out, labels = out.numpy(), labels.numpy()
        assert out.dtype == np.float32 and labels.dtype == np.float32
        assert labels.shape == (batch, batch)
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        partner = partners(labels)
        for i, p in enumerate(partner):
            if p == i:
                assert labels[i, i] == 1.0
                np.testing.assert_allclose(out[i], images[i], atol=1e-4)
                continue
            own, other = labels[i, i], labels[i, p]
            assert np.count_nonzero(labels[i]) == 2
            np.testing.assert_array_equal(out[i], own * images[i] + other * images[p])


def test_mixup_lambda_follows_beta():
    batch, alpha = 512, 0.2
    mixup = MixUp(alpha=alpha, num_classes=batch, seed=1)
    images = tf.zeros([batch, 1, 1, 1])
    lams = []
    for _ in range(8):
        labels = mixup(images, tf.range(batch))[1].numpy()
        keep = partners(labels) != np.arange(batch)
        lams.append(np.diagonal(labels)[keep])
    lam = np.concatenate(lams)
    beta_std = np.sqrt(1 / (4 * (2 * alpha + 1)))
    assert abs(lam.mean() - 0.5) < 4 * beta_std / np.sqrt(len(lam))
    assert abs(lam.var() - beta_std**2) < 0.015
    # Beta(0.2, 0.2) is U-shaped: most weights are near 0 or 1.
    assert np.mean((lam < 0.1) | (lam > 0.9)) > 0.5


@pytest.mark.parametrize("mixer", [MixUp(probability=0.0, num_classes=10, seed=0),
                                   CutMix(probability=0.0, num_classes=10, seed=0)])
def test_probability_zero_leaves_the_batch_alone(mixer):
    images = random_images(16, 8, 8)
    labels = np.arange(16) % 10
    out, soft = mixer(tf.constant(images), tf.constant(labels, tf.int32))
    np.testing.assert_array_equal(out.numpy(), images)
    np.testing.assert_array_equal(soft.numpy(), np.eye(10, dtype=np.float32)[labels])


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_probability_sets_the_share_of_mixed_images(cls):
    batch, rounds = 256, 8
    mixer = cls(alpha=1.0, probability=0.3, num_classes=batch, seed=2)
    unmixed = []
    for _ in range(rounds):
        labels = mixer(tf.zeros([batch, 8, 8, 1]), tf.range(batch))[1].numpy()
        unmixed.append(np.diagonal(labels) == 1.0)
    share = np.concatenate(unmixed).mean()
    # Unmixed: not chosen (0.7), or chosen but drew itself or an empty CutMix box (rare).
    assert abs(share - 0.7) < 4 * np.sqrt(0.21 / (batch * rounds)) + 0.02


def test_soft_labels_in_soft_labels_out():
    rng = np.random.default_rng(0)
    soft = rng.dirichlet(np.ones(5), size=12).astype(np.float32)
    for mixer in (MixUp(alpha=1.0, seed=0), CutMix(seed=0, num_classes=5)):
        _, labels = mixer(tf.constant(random_images(12, 8, 8)), tf.constant(soft))
        np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mixer,labels", [
    (MixUp(), tf.range(4)),
    (CutMix(num_classes=3), tf.ones([4, 5])),
    (MixUp(num_classes=3), tf.ones([4, 3, 1])),
])
def test_labels_that_do_not_fit_are_refused(mixer, labels):
    with pytest.raises(ValueError, match="needs"):
        mixer(tf.zeros([4, 8, 8, 3]), labels)


# ----------------------------------------------------------------------------- CutMix


def test_cutmix_pasted_pixels_match_the_label_weight():
    batch, height, width = 64, 12, 20
    cutmix = CutMix(alpha=1.0, num_classes=batch, seed=3)
    # Image i is the constant i + 1, so every output pixel names the image it came from.
    images = np.broadcast_to(np.arange(1, batch + 1, dtype=np.float32)[:, None, None, None],
                             (batch, height, width, 3)).copy()
    at_border = 0
    for _ in range(4):
        out, labels = (t.numpy() for t in cutmix(tf.constant(images), tf.range(batch)))
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        partner = partners(labels)
        for i, p in enumerate(partner):
            source = out[i, :, :, 0] - 1
            assert np.all((source == i) | (source == p))
            assert np.all(out[i] == out[i, :, :, :1])
            if p == i:
                continue
            pasted = source == p
            assert np.count_nonzero(labels[i]) == 2
            assert labels[i, p] == np.float32(pasted.sum()) / np.float32(height * width)
            assert labels[i, i] == np.float32(1) - labels[i, p]
            assert box_of(pasted)[2]
            at_border += bool(pasted[[0, -1]].any() or pasted[:, [0, -1]].any())
    assert at_border > 0  # the check covered boxes clipped at the border


def test_cutmix_box_area_follows_lambda():
    batch = 1024
    cutmix = CutMix(alpha=1.0, num_classes=2, seed=4)
    images = tf.constant(np.concatenate([np.zeros([batch // 2, 64, 64, 1]),
                                         np.ones([batch // 2, 64, 64, 1])]), tf.float32)
    labels = tf.constant(np.repeat([0, 1], batch // 2), tf.int32)
    out, soft = cutmix(images, labels)
    # Pasted fractions are at most 1 - lam; clipping makes them smaller on average.
    pasted = tf.reduce_mean(tf.abs(out - images), axis=[1, 2, 3]).numpy()
    mixed = pasted > 0
    assert 0.25 < pasted[mixed].mean() < 0.5
    own = soft.numpy()[np.arange(batch), labels.numpy()]
    np.testing.assert_allclose(1 - own[mixed], pasted[mixed], atol=1e-6)


# ----------------------------------------------------------------------------- both


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_same_seed_same_outputs(cls):
    batches = [tf.constant(random_images(8, 8, 8, seed=s)) for s in range(3)]
    first, second = cls(num_classes=8, seed=7), cls(num_classes=8, seed=7)
    for images in batches:
        a, b = first(images, tf.range(8)), second(images, tf.range(8))
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    other = cls(num_classes=8, seed=8)(batches[0], tf.range(8))
    assert not np.array_equal(other[1].numpy(), cls(num_classes=8, seed=7)(batches[0],
                                                                             tf.range(8))[1])


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_mixing_runs_inside_tf_data_map(cls):
    images = random_images(40, 10, 10)
    labels = np.arange(40, dtype=np.int32) % 4
    mixer = cls(num_classes=4, seed=0)
    dataset = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
               .map(mixer, num_parallel_calls=tf.data.AUTOTUNE))
    assert dataset.element_spec[1].shape.as_list() == [None, 4]
    count = 0
    for x, y in dataset:
        assert x.shape[1:] == (10, 10, 3)
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-6)
        count += len(y)
    assert count == 40


def test_get_config_recreates_the_mixer():
    for mixer in (MixUp(alpha=0.3, probability=0.5, num_classes=7, seed=2),
                  CutMix(alpha=2.0, num_classes=None)):
        config = mixer.get_config()
        assert type(mixer)(**config).get_config() == config
    assert repr(MixUp(num_classes=3)) == (
        "MixUp(alpha=0.2, probability=1.0, num_classes=3, seed=None)")


@pytest.mark.parametrize("call,name", [
    (lambda: MixUp(alpha=0), "alpha"),
    (lambda: MixUp(alpha=-1.0), "alpha"),
    (lambda: CutMix(alpha=float("nan")), "alpha"),
    (lambda: MixUp(probability=1.5), "probability"),
    (lambda: CutMix(probability=-0.1), "probability"),
    (lambda: MixUp(num_classes=1), "num_classes"),
    (lambda: CutMix(num_classes=2.0), "num_classes"),
    (lambda: MixUp(seed=-1), "seed"),
    (lambda: Cutout(size=0), "size"),
    (lambda: Cutout(size=1.2), "size"),
    (lambda: Cutout(fill_value="black"), "fill_value"),
    (lambda: Cutout(probability=2), "probability"),
    (lambda: RandomErasing(probability=-0.5), "probability"),
    (lambda: RandomErasing(scale=(0.4, 0.2)), "scale"),
    (lambda: RandomErasing(scale=(0.0, 0.2)), "scale"),
    (lambda: RandomErasing(scale=(0.1, 1.5)), "scale"),
    (lambda: RandomErasing(ratio=(-1, 2)), "ratio"),
    (lambda: RandomErasing(ratio=(3.0, 0.3)), "ratio"),
    (lambda: RandomErasing(value="noise"), "value"),
    (lambda: RandomErasing(seed=1.5), "seed"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}=.* is not allowed: "):
        call()


# ----------------------------------------------------------------------------- Cutout


def test_cutout_square_size_fill_and_untouched_pixels():
    batch, height, width = 2000, 20, 40
    images = random_images(batch, height, width, channels=1) + 1.0
    out = Cutout(size=0.5, fill_value=-3.0, seed=0)(tf.constant(images)).numpy()
    erased = out == -3.0
    np.testing.assert_array_equal(out[~erased], images[~erased])
    inside = 0
    for mask in erased[..., 0]:
        box_h, box_w, full = box_of(mask)
        assert full and 1 <= box_h <= 10 and 1 <= box_w <= 10
        inside += box_h == box_w == 10
    # Side 10 of the short side 20; the square is whole when its centre row is in [5, 15] and
    # its centre column in [5, 35]: (11 / 20) * (31 / 40) of the time.
    expected = 11 / 20 * 31 / 40
    assert abs(inside / batch - expected) < 4 * np.sqrt(expected * (1 - expected) / batch)


def test_cutout_probability_and_channels():
    batch = 2000
    images = np.full([batch, 16, 16, 3], 100.0, np.float32)
    out = Cutout(size=0.25, probability=0.4, seed=1)(tf.constant(images)).numpy()
    erased = (out == 0.0).all(axis=-1)
    assert np.array_equal(erased, (out == 0.0).any(axis=-1))
    share = erased.any(axis=(1, 2)).mean()
    assert abs(share - 0.4) < 4 * np.sqrt(0.24 / batch)


# ----------------------------------------------------------------------------- Random Erasing


def test_random_erasing_rectangles_follow_scale_and_ratio():
    batch, size = 1000, 64
    scale, ratio = (0.05, 0.3), (0.5, 2.0)
    images = random_images(batch, size, size) + 1.0
    layer = RandomErasing(probability=1.0, scale=scale, ratio=ratio, value=-1.0, seed=2)
    out = layer(tf.constant(images)).numpy()
    erased = out == -1.0
    np.testing.assert_array_equal(out[~erased], images[~erased])
    assert np.array_equal(erased.all(axis=-1), erased.any(axis=-1))
    areas, aspects = [], []
    for mask in erased[..., 0]:
        box_h, box_w, full = box_of(mask)
        assert full and box_h > 0
        # Sides are rounded: some continuous box within half a pixel obeys scale and ratio.
        assert (box_h - 0.5) * (box_w - 0.5) <= scale[1] * size * size
        assert (box_h + 0.5) * (box_w + 0.5) >= scale[0] * size * size
        assert (box_h - 0.5) / (box_w + 0.5) <= ratio[1]
        assert (box_h + 0.5) / (box_w - 0.5) >= ratio[0]
        areas.append(box_h * box_w / size**2)
        aspects.append(box_h / box_w)
    assert abs(np.mean(areas) - 0.175) < 0.01
    assert abs(np.mean(np.log(aspects))) < 0.05


def test_random_erasing_probability_and_random_fill():
    batch = 2000
    images = random_images(batch, 16, 16)
    layer = RandomErasing(probability=0.25, seed=3)
    out = layer(tf.constant(images)).numpy()
    changed = out != images
    share = changed.any(axis=(1, 2, 3)).mean()
    assert abs(share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / batch)
    values = out[changed]
    assert values.min() >= 0.0 and values.max() < 255.0
    assert len(np.unique(values)) > 0.9 * len(values)


@pytest.mark.parametrize("cls,kwargs", [(Cutout, {"size": 0.3, "fill_value": 7.0}),
                                        (RandomErasing, {"probability": 0.9, "value": 3.0})])
def test_erasing_layers_seed_config_and_inference(cls, kwargs):
    images = tf.constant(random_images(8, 16, 16))
    first, second = cls(seed=5, **kwargs), cls(seed=5, **kwargs)
    for _ in range(2):
        np.testing.assert_array_equal(first(images).numpy(), second(images).numpy())
    np.testing.assert_array_equal(first(images, training=False).numpy(), images.numpy())
    layer = cls(seed=5, **kwargs)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is cls and clone.get_config() == layer.get_config()
    dataset = tf.data.Dataset.from_tensor_slices(random_images(20, 16, 16)).batch(8).map(layer)
    assert [tuple(x.shape) for x in dataset] == [(8, 16, 16, 3), (8, 16, 16, 3), (4, 16, 16, 3)]
