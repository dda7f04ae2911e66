"""Tests for tfmagic.data on the real Fashion-MNIST files and on real PNG folders."""

import gzip
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from PIL import Image

from tfmagic import data
from tfmagic.cli import train as train_cli
from tfmagic.data import DataError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Class folder name -> dominant colour channel; sorted names give labels blue=0, green=1, red=2.
COLOURS = {"blue": 2, "green": 1, "red": 0}

pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(DEBIAN_DIR, f)) for f in FILES),
    reason="Debian package dataset-fashion-mnist is not installed",
)


@pytest.fixture(scope="module")
def fmnist():
    return data.fashion_mnist(DEBIAN_DIR)


def _gunzip(name):
    with gzip.open(os.path.join(DEBIAN_DIR, name), "rb") as f:
        return f.read()


def _write_gz(path, payload):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(payload)


def _fashion_copy(directory, test_pixel=None, replace=None):
    """Fashion-MNIST files in ``directory`` (links to the Debian files), optionally with the first
    test image's first pixel set to ``test_pixel`` or one file's payload replaced."""
    os.makedirs(directory, exist_ok=True)
    replace = dict(replace or {})
    if test_pixel is not None:
        payload = bytearray(_gunzip("t10k-images-idx3-ubyte.gz"))
        payload[16] = test_pixel
        replace["t10k-images-idx3-ubyte.gz"] = bytes(payload)
    for name in FILES:
        path = os.path.join(directory, name)
        if name in replace:
            if replace[name] is not None:
                _write_gz(path, replace[name])
        else:
            os.symlink(os.path.join(DEBIAN_DIR, name), path)
    return str(directory)


def _write_folder(root, counts, size=(8, 8)):
    """One sub-folder per class of PNGs with the class colour; every image is unique."""
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            image = np.full((*size, 3), 20, dtype=np.uint8)
            image[..., COLOURS[name]] = 200
            image[0, 0] = (i, i, i)
            Image.fromarray(image).save(os.path.join(root, name, f"img{i:03d}.png"))
    return str(root)


def _collect(dataset):
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _raw(images, splits):
    """Undo the normalization: uint8 images as stored."""
    values = images * np.array(splits.std) + np.array(splits.mean)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _keys(images):
    return {image.tobytes() for image in images}


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_debian_files(fmnist):
    (x_train, y_train), (x_test, y_test) = fmnist
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    assert y_train.dtype == np.int32 and y_test.dtype == np.int32
    for y in (y_train, y_test):
        assert y.min() == 0 and y.max() == 9
        assert set(np.unique(y)) == set(range(10))
    assert x_train.min() == 0 and x_train.max() == 255
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_search_order(tmp_path, monkeypatch, fmnist):
    original = int(fmnist[1][0][0, 0, 0, 0])
    env_root, home = tmp_path / "env", tmp_path / "home"
    _fashion_copy(env_root / "fashion-mnist", test_pixel=(original + 101) % 256)
    _fashion_copy(home / ".keras" / "datasets" / "fashion-mnist", test_pixel=(original + 57) % 256)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TFMAGIC_DATA_DIR", str(env_root))
    assert data.fashion_mnist()[1][0][0, 0, 0, 0] == (original + 101) % 256

    monkeypatch.delenv("TFMAGIC_DATA_DIR")
    assert data.fashion_mnist()[1][0][0, 0, 0, 0] == (original + 57) % 256

    # A directory without all four files is skipped, not an error.
    incomplete = tmp_path / "incomplete"
    _fashion_copy(incomplete / "fashion-mnist", replace={"train-labels-idx1-ubyte.gz": None})
    monkeypatch.setenv("TFMAGIC_DATA_DIR", str(incomplete))
    monkeypatch.setenv("HOME", str(tmp_path / "empty_home"))
    assert data.fashion_mnist()[1][0][0, 0, 0, 0] == original


def _labels_payload(magic=0x801, count=10000, values=None, cut=0):
    labels = np.frombuffer(_gunzip("t10k-labels-idx1-ubyte.gz")[8:], dtype=np.uint8).copy()
    if values is not None:
        labels[: len(values)] = values
    payload = magic.to_bytes(4, "big") + count.to_bytes(4, "big") + labels.tobytes()
    return payload[: len(payload) - cut]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_labels_payload(magic=0x803), ("corrupt", "magic")),
        (_labels_payload(cut=10), ("truncated",)),
        (_labels_payload(count=9999, cut=1), ("corrupt", "9999")),
        (_labels_payload(values=[10]), ("corrupt", "out of range")),
        (b"\x00\x00", ("truncated",)),
    ],
    ids=["bad-magic", "short-data", "label-count", "label-range", "no-header"],
)
def test_fashion_mnist_corrupt_labels(tmp_path, payload, words):
    directory = _fashion_copy(tmp_path, replace={"t10k-labels-idx1-ubyte.gz": payload})
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as info:
        data.fashion_mnist(directory)
    for word in words:
        assert word in str(info.value)


def test_fashion_mnist_truncated_gzip(tmp_path):
    directory = _fashion_copy(tmp_path, replace={"train-labels-idx1-ubyte.gz": None})
    with open(os.path.join(DEBIAN_DIR, "train-labels-idx1-ubyte.gz"), "rb") as f:
        raw = f.read()
    with open(os.path.join(directory, "train-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        data.fashion_mnist(directory)
    assert os.path.join(directory, "train-labels-idx1-ubyte.gz") in str(info.value)


def test_fashion_mnist_not_gzip_and_missing(tmp_path):
    directory = _fashion_copy(tmp_path / "a", replace={"t10k-images-idx3-ubyte.gz": None})
    with open(os.path.join(directory, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(b"this is not gzip data at all")
    with pytest.raises(DataError, match="corrupt.*t10k-images-idx3-ubyte.gz"):
        data.fashion_mnist(directory)

    directory = _fashion_copy(tmp_path / "b", replace={"t10k-images-idx3-ubyte.gz": None})
    with pytest.raises(DataError, match="missing.*t10k-images-idx3-ubyte.gz"):
        data.fashion_mnist(directory)


# ----------------------------------------------------------------------------- image folders


def _check_colours(images, labels, splits):
    raw = _raw(images, splits).astype(np.float64)
    dominant = raw[:, 1:, :, :].mean(axis=(1, 2)).argmax(axis=-1)
    expected = np.array([COLOURS[splits.class_names[k]] for k in labels])
    np.testing.assert_array_equal(dominant, expected)


def test_folder_with_train_and_test(tmp_path):
    _write_folder(tmp_path / "train", dict.fromkeys(COLOURS, 12))
    _write_folder(tmp_path / "test", dict.fromkeys(COLOURS, 4))
    splits = data.load(f"folder:{tmp_path}", batch_size=8, validation_fraction=0.25)
    assert splits.class_names == ("blue", "green", "red")
    assert splits.num_classes == 3
    assert splits.input_shape == (8, 8, 3)
    assert (splits.train_size, splits.validation_size, splits.test_size) == (27, 9, 12)
    x_test, y_test = _collect(splits.test)
    assert x_test.shape == (12, 8, 8, 3) and x_test.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y_test), [4, 4, 4])
    _check_colours(x_test, y_test, splits)
    x_train, y_train = _collect(splits.train)
    np.testing.assert_array_equal(np.bincount(y_train), [9, 9, 9])
    _check_colours(x_train, y_train, splits)
    x_val, y_val = _collect(splits.validation)
    np.testing.assert_array_equal(np.bincount(y_val), [3, 3, 3])
    assert not _keys(_raw(x_val, splits)) & _keys(_raw(x_train, splits))


def test_folder_holds_out_fixed_test_set(tmp_path):
    root = _write_folder(tmp_path, dict.fromkeys(COLOURS, 12))
    splits = data.load(f"folder:{root}", batch_size=8, validation_fraction=0, image_size=16)
    assert splits.validation is None and splits.validation_size == 0
    assert (splits.train_size, splits.test_size) == (30, 6)
    assert splits.input_shape == (16, 16, 3)
    x_test, y_test = _collect(splits.test)
    assert x_test.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(np.bincount(y_test), [2, 2, 2])
    _check_colours(x_test, y_test, splits)
    x_train, y_train = _collect(splits.train)
    _check_colours(x_train, y_train, splits)
    assert not _keys(_raw(x_test, splits)) & _keys(_raw(x_train, splits))
    other = data.load(f"folder:{root}", batch_size=8, validation_fraction=0, seed=5,
                      image_size=16)
    np.testing.assert_array_equal(_collect(other.test)[0], x_test)


def test_folder_splits_stratified_and_seeded(tmp_path):
    root = _write_folder(tmp_path, {"blue": 60, "green": 40, "red": 20})

    def split(seed):
        splits = data.load(f"folder:{root}", batch_size=16, seed=seed, train_subset=50,
                           validation_fraction=0.2)
        x_train, y_train = _collect(splits.train)
        x_val, y_val = _collect(splits.validation)
        return _raw(x_train, splits), y_train, _raw(x_val, splits), y_val

    x_train, y_train, x_val, y_val = split(seed=3)
    assert len(y_train) == 40 and len(y_val) == 10
    # Proportions 3:2:1 are kept in the subset (25:17:8 of 50) and in the validation split.
    np.testing.assert_allclose(np.bincount(y_train) + np.bincount(y_val), [25, 17, 8], atol=1)
    np.testing.assert_allclose(np.bincount(y_val), [5, 3.3, 1.7], atol=1)
    assert not _keys(x_train) & _keys(x_val)

    same = split(seed=3)
    assert _keys(same[0]) == _keys(x_train) and _keys(same[2]) == _keys(x_val)
    other = split(seed=4)
    assert _keys(other[0]) != _keys(x_train) and _keys(other[2]) != _keys(x_val)


def _write_bad_files(root, names):
    """Files named as images that no decoder accepts: empty, text, a PNG cut short."""
    good = os.path.join(root, "red", "img000.png")
    with open(good, "rb") as f:
        png = f.read()
    payloads = {"empty": b"", "text": b"not an image", "cut": png[: len(png) // 2]}
    paths = []
    for name, kind in names.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(payloads[kind])
        paths.append(path)
    return paths


def test_folder_undecodable_images_are_all_named(tmp_path):
    root = _write_folder(tmp_path, dict.fromkeys(COLOURS, 4))
    # blue/a_empty.jpg sorts first: image_size=None must skip it to find the size.
    bad = _write_bad_files(root, {"blue/a_empty.jpg": "empty", "green/deep/notes.PNG": "text",
                                  "red/img999.png": "cut"})
    with pytest.raises(DataError, match="remove or replace them") as info:
        data.load(f"folder:{root}", batch_size=4)
    message = str(info.value)
    assert "3 of its 15 image files cannot be decoded" in message
    for path, reason in zip(bad, ("Input is empty", "Unknown image file format", "Invalid PNG"),
                            strict=True):
        assert f"{path} ({reason}" in message
    assert "Traceback" not in message and "{{" not in message and "[Op:" not in message


def test_folder_undecodable_images_list_the_first_20(tmp_path):
    root = _write_folder(tmp_path / "train", dict.fromkeys(COLOURS, 2))
    _write_folder(tmp_path / "test", dict.fromkeys(COLOURS, 1))
    bad = _write_bad_files(root, {f"green/bad{i:02d}.gif": "text" for i in range(25)})
    bad += _write_bad_files(tmp_path / "test", {"blue/bad.bmp": "empty"})
    with pytest.raises(DataError, match="26 of its 35 image files") as info:
        data.load(f"folder:{tmp_path}", batch_size=4, image_size=8)
    message = str(info.value)
    assert sum(path in message for path in bad) == 20
    assert "first 20 of 26" in message


def test_folder_with_one_class_is_refused_up_front(tmp_path):
    one = _write_folder(tmp_path / "one", {"red": 3})
    with pytest.raises(DataError, match=re.escape(f"image folder {one} needs at least 2 class")):
        data.check_dataset_name(f"folder:{one}")
    _write_folder(tmp_path / "split" / "train", {"blue": 3})
    _write_folder(tmp_path / "split" / "test", {"blue": 1, "red": 1})
    train = os.path.join(tmp_path, "split", "train")
    with pytest.raises(DataError, match=re.escape(f"image folder {train} needs at least 2")):
        data.check_dataset_name(f"folder:{tmp_path / 'split'}")


def test_folder_with_an_empty_class_is_refused_up_front(tmp_path):
    root = _write_folder(tmp_path, dict.fromkeys(COLOURS, 3))
    os.makedirs(tmp_path / "yellow" / "nested")
    (tmp_path / "yellow" / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "white")
    with pytest.raises(DataError, match="remove them or add images") as info:
        data.check_dataset_name(f"folder:{root}")
    assert f"{tmp_path / 'white'}, {tmp_path / 'yellow'}" in str(info.value)
    # An image below a nested sub-folder counts.
    _write_folder(tmp_path / "yellow" / "nested", {"red": 1})
    os.rmdir(tmp_path / "white")
    data.check_dataset_name(f"folder:{root}")


def test_train_cli_refuses_a_one_class_folder(tmp_path, capsys):
    one = _write_folder(tmp_path / "one", {"red": 12})
    out = tmp_path / "run"
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as caught:
        app.run(train_cli.main, argv=["tfmagic-train", f"--dataset=folder:{one}",
                                      "--image_size=28", f"--output_dir={out}"])
    flags.FLAGS.unparse_flags()
    assert caught.value.code == 1
    assert f"image folder {one} needs at least 2 class sub-folders" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- Fashion-MNIST splits


def test_train_subset_stratified_on_fashion_mnist():
    splits = data.load("fashion_mnist", batch_size=256, train_subset=1000, validation_fraction=0.1)
    assert (splits.train_size, splits.validation_size, splits.test_size) == (900, 100, 10000)
    _, y_train = _collect(splits.train)
    _, y_val = _collect(splits.validation)
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [90] * 10)
    np.testing.assert_array_equal(np.bincount(y_val, minlength=10), [10] * 10)
    tiny = data.load("fashion_mnist", batch_size=8, train_subset=10, validation_fraction=0)
    np.testing.assert_array_equal(np.bincount(_collect(tiny.train)[1], minlength=10), [1] * 10)


def test_pipeline_batches_and_normalization(fmnist):
    splits = data.load("fashion_mnist", batch_size=64, train_subset=3000, eval_batch_size=500)
    assert splits.num_classes == 10 and splits.class_names == data.FASHION_MNIST_CLASSES
    assert splits.input_shape == (28, 28, 1) and len(splits.mean) == len(splits.std) == 1
    x, y = next(iter(splits.train))
    assert x.shape == (64, 28, 28, 1) and x.dtype == tf.float32
    assert y.shape == (64,) and y.dtype == tf.int32
    assert next(iter(splits.test))[0].shape == (500, 28, 28, 1)
    x_train, y_train = _collect(splits.train)
    assert x_train.shape == (2700, 28, 28, 1)
    assert abs(x_train.mean()) < 1e-4 and abs(x_train.std() - 1) < 1e-4
    # Eval sets keep the dataset order, and iterate identically twice.
    x_test, y_test = _collect(splits.test)
    np.testing.assert_array_equal(y_test, fmnist[1][1])
    np.testing.assert_array_equal(_raw(x_test, splits), fmnist[1][0])
    np.testing.assert_array_equal(_collect(splits.validation)[1], _collect(splits.validation)[1])
    # No autotuning thread, whose iterator waits for its next wake to be deleted
    # (benchmarks/iterator_stall.py).
    assert not any(d.options().autotune.enabled for d in (
        splits.train, splits.validation, splits.test, splits.train_from_epoch(0)))


def test_pipeline_resize_and_channels():
    splits = data.load("fashion_mnist", batch_size=32, train_subset=100, image_size=32,
                       channels=3)
    assert splits.input_shape == (32, 32, 3)
    assert len(splits.mean) == 3 and splits.mean[0] == splits.mean[2]
    x, _ = next(iter(splits.train))
    assert x.shape == (32, 32, 32, 3) and x.dtype == tf.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    assert next(iter(splits.test))[0].shape == (32, 32, 32, 3)


def test_preprocess_replaces_the_normalization_in_every_split(fmnist):
    splits = data.load("fashion_mnist", batch_size=50, train_subset=100, validation_fraction=0.2,
                       channels=3, preprocess=lambda images: images / 127.5 - 1.0)
    for split in (splits.train, splits.validation, splits.test):
        x, _ = _collect(split)
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() > 0.9
    x_test, _ = _collect(splits.test)
    np.testing.assert_allclose((x_test[..., :1] + 1.0) * 127.5, fmnist[1][0], atol=1e-3)


def test_min_image_size_enlarges_only_smaller_sides():
    splits = data.load("fashion_mnist", batch_size=16, train_subset=100, min_image_size=32)
    assert splits.input_shape == (32, 32, 1)
    assert next(iter(splits.test))[0].shape == (16, 32, 32, 1)
    kept = data.load("fashion_mnist", batch_size=16, train_subset=100, image_size=40,
                     min_image_size=32)
    assert kept.input_shape == (40, 40, 1)


def test_augment_hook_on_train_batches_only():
    seen = []

    def blank(images, labels):
        seen.append((images.dtype, labels.dtype, images.shape.as_list()))
        tf.debugging.assert_less_equal(tf.reduce_max(images), 255.0)
        tf.debugging.assert_greater(tf.reduce_max(images), 1.0)
        return tf.zeros_like(images), tf.one_hot(labels, 10)

    splits = data.load("fashion_mnist", batch_size=50, train_subset=200, image_size=20,
                       augment=blank)
    x_train, y_train = _collect(splits.train)
    np.testing.assert_allclose(x_train, -splits.mean[0] / splits.std[0], rtol=1e-6)
    assert y_train.shape == (180, 10) and y_train.dtype == np.float32
    assert seen and all(s == (tf.float32, tf.int32, [None, 20, 20, 1]) for s in seen)
    for dataset in (splits.validation, splits.test):
        x, y = next(iter(dataset))
        assert x.numpy().std() > 0.5 and y.dtype == tf.int32


def test_train_order_reshuffles_per_epoch_and_is_seeded():
    def epochs(seed):
        splits = data.load("fashion_mnist", batch_size=100, train_subset=500, seed=seed,
                           validation_fraction=0)
        return _collect(splits.train)[1], _collect(splits.train)[1]

    first, second = epochs(seed=7)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))
    again = epochs(seed=7)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[1], second)
    assert not np.array_equal(epochs(seed=8)[0], first)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"train_subset": 0}, "train_subset"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": -0.1}, "validation_fraction"),
        ({"image_size": 0}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"augment": "flip"}, "augment"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"preprocess": "caffe"}, "preprocess"),
        ({"min_image_size": 0}, "min_image_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    kwargs = {"batch_size": 32, **kwargs}
    with pytest.raises(DataError, match=name):
        data.load("fashion_mnist", **kwargs)


def test_bad_arguments_that_depend_on_the_data(tmp_path):
    with pytest.raises(DataError, match="train_subset=60001"):
        data.load("fashion_mnist", batch_size=32, train_subset=60001)
    with pytest.raises(DataError, match="train_subset=9 .*between 10"):
        data.load("fashion_mnist", batch_size=32, train_subset=9)
    with pytest.raises(DataError, match="validation_fraction"):
        data.load("fashion_mnist", batch_size=32, train_subset=10, validation_fraction=0.01)
    root = _write_folder(tmp_path, dict.fromkeys(COLOURS, 6))
    with pytest.raises(DataError, match="channels=1"):
        data.load(f"folder:{root}", batch_size=4, channels=1)


def test_dataset_names(tmp_path):
    data.check_dataset_name("fashion_mnist")
    data.check_dataset_name(f"folder:{_write_folder(tmp_path / 'ok', dict.fromkeys(COLOURS, 1))}")
    data.check_dataset_name("tfds:cifar10")
    for bad in ("mnist", "folder:", f"folder:{tmp_path / 'absent'}", "tfds:", "tfds: ", None):
        with pytest.raises(DataError, match="dataset"):
            data.check_dataset_name(bad)
    with pytest.raises(DataError, match="fashion_mnist.*folder:PATH.*tfds:NAME"):
        data.load("cifar10", batch_size=32)
    empty = tmp_path / "empty"
    os.makedirs(empty)
    with pytest.raises(DataError, match="needs at least 2 class sub-folders .*found none"):
        data.load(f"folder:{empty}", batch_size=32)
    os.makedirs(empty / "train" / "a")
    with pytest.raises(DataError, match="no test/"):
        data.load(f"folder:{empty}", batch_size=32)
    split = _write_folder(tmp_path / "split" / "train", {"blue": 1, "red": 1})
    os.makedirs(tmp_path / "split" / "test" / "blue")
    with pytest.raises(DataError, match=f"{os.path.dirname(split)}/test holds no images"):
        data.load(f"folder:{os.path.dirname(split)}", batch_size=32)


def test_tfds_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)      # as if not installed
    with pytest.raises(DataError, match=r'pip install "tfmagic\[tfds\]"'):
        data.load("tfds:mnist", batch_size=32)


def test_one_hot_labels_and_eval_transform_reach_only_their_splits():
    def halve(images):
        return images * 0.5

    plain = data.load("fashion_mnist", batch_size=50, train_subset=500, seed=4)
    shaped = data.load("fashion_mnist", batch_size=50, train_subset=500, seed=4,
                           one_hot=True, eval_transform=halve)
    mean, std = np.array(shaped.mean), np.array(shaped.std)
    for split, factor in (("train", 1.0), ("validation", 0.5), ("test", 0.5)):
        x_plain, y_plain = next(iter(getattr(plain, split)))
        x_shaped, y_shaped = next(iter(getattr(shaped, split)))
        assert y_shaped.shape == (50, 10) and y_shaped.dtype == tf.float32
        np.testing.assert_array_equal(y_shaped.numpy().sum(-1), 1.0)
        np.testing.assert_allclose(x_shaped.numpy() * std + mean,
                                   (x_plain.numpy() * std + mean) * factor, atol=1e-3)
        np.testing.assert_array_equal(y_shaped.numpy().argmax(-1), y_plain.numpy())
