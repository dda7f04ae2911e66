"""Shared by the data tests: real photos (crops of the two that scikit-learn ships) and
checks on the batches of a pipeline."""

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

PHOTOS = load_sample_images().images            # two 427x640 RGB photos, shipped by sklearn

# What the runs that train on crops of the two photos use: a ResNet-8 with Adam, which tells
# them apart within two short epochs (chance 0.5); their subject is the data source.
PHOTO_RUN = dict(model="resnet8", width=0.25, optimizer="adam", lr=0.01)


def photo_folder(root, per_class=40, seed=0):
    """Two classes (one per photo) of JPEG crops of mixed sizes, plus a PNG, a grayscale
    JPEG, an RGBA PNG, a palette GIF and a CMYK JPEG in each class."""
    rng = np.random.default_rng(seed)
    for label, photo in enumerate(PHOTOS):
        folder = root / f"photo{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            height, width = rng.integers(60, 200), rng.integers(60, 200)
            top, left = rng.integers(0, 427 - height), rng.integers(0, 640 - width)
            crop = Image.fromarray(photo[top:top + height, left:left + width])
            crop.save(folder / f"crop{i:03d}.jpg", quality=90)
        piece = Image.fromarray(photo[100:228, 200:328])
        piece.save(folder / "piece.png")
        piece.convert("L").save(folder / "gray.jpg")
        piece.convert("RGBA").save(folder / "alpha.png")
        piece.convert("P").save(folder / "palette.gif")
        piece.convert("CMYK").save(folder / "cmyk.jpg")
    return root


def batches(dataset):
    """The ``(images, labels)`` batches of ``dataset`` as numpy arrays."""
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def resumed_epochs(splits, steps):
    """Two epochs streamed from epoch 0, and one from epoch 1, ``steps`` batches an epoch;
    asserts that the stream from epoch 1 repeats epoch 1 of the stream from epoch 0, batch for
    batch and pixel for pixel, and returns both."""
    from_zero = batches(splits.train_from_epoch(0).take(2 * steps))
    from_one = batches(splits.train_from_epoch(1).take(steps))
    for (x, y), (x_resumed, y_resumed) in zip(from_zero[steps:], from_one, strict=True):
        np.testing.assert_array_equal(y, y_resumed)
        np.testing.assert_array_equal(x, x_resumed)
    return from_zero, from_one
