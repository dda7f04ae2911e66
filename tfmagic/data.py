"""Datasets and the tf.data input pipeline.

A dataset is decoded once into uint8 numpy arrays held in memory (images ``(N, H, W, C)``,
labels int32 ``0..K-1``), or, for an image folder too large for that (``cache``), kept as a
list of files that are read and decoded in every epoch; :func:`load` then splits the images
or files (stratified, seeded) and builds the ``tf.data`` pipelines that feed ``model.fit``.
Per-step work (shuffling, decoding, cropping, resizing, augmentation, normalization) runs
inside the tf.data graph, never in Python.

Example::

    splits = load("fashion_mnist", batch_size=128, train_subset=6000, seed=1)
    model.fit(splits.train, validation_data=splits.validation, epochs=3)
    model.evaluate(splits.test)

Dataset specs:

* ``"fashion_mnist"``: the IDX ``.gz`` files, searched for in ``$TFMAGIC_DATA_DIR/fashion-mnist``,
  ``~/.keras/datasets/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist``, else downloaded
  by Keras.
* ``"folder:PATH"``: one sub-folder per class. If ``PATH`` has ``train/`` and ``test/``
  sub-folders they are the splits; otherwise a fixed stratified 1/6 of ``PATH`` is the test set.
  There must be at least 2 classes and every class sub-folder (of ``train/`` in that layout)
  must hold an image file (``.bmp .gif .jpeg .jpg .png``, any case), directly or in nested
  folders; hidden sub-folders (``.name``) are skipped. Every image file must decode: the error
  names the ones that do not.
* ``"tfds:NAME"``: the ``train`` and ``test`` splits of a tensorflow-datasets dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfmagic import records
from tfmagic._atomic import writable_problem, write_atomic
from tfmagic._checks import is_int, is_number
from tfmagic.augment import seeding
from tfmagic.augment.crops import center_crop, random_resized_crop, sample_boxes
from tfmagic.records import decode, decoder_reason

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SHARD_BYTES",
    "DataError",
    "DataSplits",
    "check_dataset_name",
    "fashion_mnist",
    "index_batch_stream",
    "load",
    "write_tfrecords",
]

# tf.data runs every function it is given through AutoGraph, which rewrites that function and
# everything it calls: seconds for a pipeline with AutoAugment, the crops and the mixing.
# tfmagic's pipeline functions branch in Python only on Python values (on tensors they use
# tf.cond, tf.where and tf.switch_case), so each one handed to tf.data is traced as written.
_as_written = tf.autograph.experimental.do_not_convert

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DATASET_FORMS = ('"fashion_mnist"', '"folder:PATH"', '"tfds:NAME"', '"tfrecord:GLOB"')

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_FASHION_COUNTS = {"train": 60000, "test": 10000}
_SYSTEM_DATA_DIR = "/usr/share/datasets"
_IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Arrays larger than this cannot be embedded in a tf.data graph (protobuf 2 GiB limit).
_MAX_IN_MEMORY_BYTES = 2**31 - 1
# Seed of the folder test hold-out: the test set must not change with the training seed.
_FOLDER_TEST_SEED = 0
_FOLDER_TEST_FRACTION = 1 / 6
# Undecodable image files named in an error message; the rest are counted.
_MAX_LISTED_FILES = 20
# cache="auto" streams a folder whose decoded images would take more than this.
MEMORY_BUDGET_BYTES = _MAX_IN_MEMORY_BYTES
CACHE_MODES = ("auto", "memory", "none")
# Training files decoded to estimate a streamed dataset's normalization statistics.
_STATS_SAMPLE = 2000
_STATS_STREAM = 3
_CROP_RATIO = (3 / 4, 4 / 3)
# Independent random streams derived from the user's seed.
_SUBSET_STREAM = 1
_VALIDATION_STREAM = 2


class DataError(ValueError):
    """A dataset is missing, unreadable or malformed, or a data argument is invalid."""


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """The batched pipelines of one dataset and what a model needs to know about them.

    ``train`` is shuffled (reshuffled every epoch) and augmented and does not repeat: its i-th
    iteration has the order of epoch i. ``train_from_epoch(k)`` is the endless stream of
    training batches from epoch k on, for ``model.fit(..., steps_per_epoch=ceil(train_size /
    batch_size), initial_epoch=k)``: each epoch in the same order as when training started at
    epoch 0, which is how a resumed run sees the data an uninterrupted run would have seen.
    ``train_from_epoch(k, worker=i, workers=n)`` is worker i's share for multi-worker
    training, in batches of ``batch_size / n``: for in-memory data and image folders its part
    of every global batch, for record sources its share of every epoch's shards; each worker
    reads and decodes only its own share.
    ``validation`` (None when no data is held out) and ``test`` are in a fixed order.
    Images are float32, normalized per channel with ``mean`` / ``std`` (0..255 scale,
    computed on the training split, or on a seeded sample of at most 2,000 of its files when
    ``streamed``); labels are int32 (float32 one-hot with ``one_hot=True``)
    unless the augment hook changes them. ``streamed`` says that the images are read from
    their files at every epoch instead of being held in memory; ``bad_files`` are the files of
    a streamed folder that do not decode, left out.
    """

    train: tf.data.Dataset
    train_from_epoch: Callable[..., tf.data.Dataset]
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    train_size: int
    validation_size: int
    test_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    streamed: bool = False
    bad_files: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- Fashion-MNIST


def _fashion_search_dirs() -> list[str]:
    dirs = []
    env_dir = os.environ.get("TFMAGIC_DATA_DIR")
    if env_dir:
        dirs.append(os.path.join(os.path.expanduser(env_dir), "fashion-mnist"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist"))
    dirs.append(os.path.join(_SYSTEM_DATA_DIR, "fashion-mnist"))
    return dirs


def _missing_fashion_files(directory: str) -> list[str]:
    return [
        name
        for name in _FASHION_FILES.values()
        if not os.path.isfile(os.path.join(directory, name))
    ]


def _read_gzip(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DataError(f"Fashion-MNIST file missing: {path}")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError as e:
        raise DataError(
            f"Fashion-MNIST file truncated: {path} (gzip stream ends early: {e})"
        ) from e
    except (OSError, zlib.error) as e:
        raise DataError(f"Fashion-MNIST file corrupt: {path} (not a valid gzip file: {e})") from e


def _read_idx(path: str, expected_dims: tuple[int, ...]) -> np.ndarray:
    """Read an IDX file of unsigned bytes and check its dimensions against ``expected_dims``."""
    data = _read_gzip(path)
    ndim = len(expected_dims)
    header_size = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"Fashion-MNIST file truncated: {path} (only {len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = 0x0800 + ndim
    if magic != expected_magic:
        raise DataError(
            f"Fashion-MNIST file corrupt: {path} (bad magic number 0x{magic:08x}, expected "
            f"0x{expected_magic:08x}: unsigned bytes in {ndim} dimension(s))"
        )
    if len(data) < header_size:
        raise DataError(f"Fashion-MNIST file truncated: {path} (header cut short)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != expected_dims:
        what = "labels" if ndim == 1 else "images"
        raise DataError(
            f"Fashion-MNIST file corrupt: {path} (holds {what} of shape {dims}, expected "
            f"{expected_dims}: one label per image, 28x28 images)"
        )
    size = int(np.prod(dims))
    found = len(data) - header_size
    if found < size:
        raise DataError(
            f"Fashion-MNIST file truncated: {path} (header says {size} bytes of data, "
            f"found {found})"
        )
    if found > size:
        raise DataError(
            f"Fashion-MNIST file corrupt: {path} ({found - size} unexpected bytes after the data)"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header_size).reshape(dims).copy()


def _read_fashion_dir(
    directory: str,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    result = []
    for split, count in _FASHION_COUNTS.items():
        images = _read_idx(
            os.path.join(directory, _FASHION_FILES[f"{split}_images"]), (count, 28, 28)
        )
        labels_path = os.path.join(directory, _FASHION_FILES[f"{split}_labels"])
        labels = _read_idx(labels_path, (count,))
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(
                f"Fashion-MNIST file corrupt: {labels_path} (label {int(labels.max())} out of "
                f"range 0..{len(FASHION_MNIST_CLASSES) - 1})"
            )
        result.append((images[..., np.newaxis], labels.astype(np.int32)))
    return result[0], result[1]


def _download_fashion(
    searched: list[str],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    notes = []
    for directory in searched:
        if not os.path.isdir(directory):
            notes.append(f"{directory} (no such directory)")
        else:
            notes.append(f"{directory} (missing {', '.join(_missing_fashion_files(directory))})")
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        raise DataError(
            "Fashion-MNIST not found and the Keras download failed "
            f"({type(e).__name__}: {e}). Searched: {'; '.join(notes)}. Put the four IDX .gz files "
            "in one of these directories (e.g. $TFMAGIC_DATA_DIR/fashion-mnist)."
        ) from e
    splits = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        count = _FASHION_COUNTS[split]
        if x.shape != (count, 28, 28) or y.shape != (count,):
            raise DataError(
                f"Fashion-MNIST from the Keras download is corrupt: {split} images {x.shape}, "
                f"labels {y.shape}, expected ({count}, 28, 28) and ({count},)"
            )
        splits.append((x.astype(np.uint8)[..., np.newaxis], y.astype(np.int32)))
    return splits[0], splits[1]


def fashion_mnist(
    data_dir: str | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``.

    Images are uint8 ``(60000, 28, 28, 1)`` and ``(10000, 28, 28, 1)``, labels int32 0..9
    (names in ``FASHION_MNIST_CLASSES``).

    Args:
        data_dir: directory holding the four IDX ``.gz`` files. When None the first of
            ``$TFMAGIC_DATA_DIR/fashion-mnist``, ``~/.keras/datasets/fashion-mnist`` and
            ``/usr/share/datasets/fashion-mnist`` that has all four files is used; if none has
            them, ``keras.datasets.fashion_mnist.load_data()`` downloads them.

    Raises:
        DataError: a file is missing, truncated or corrupt (the message names it), or no
            directory has the files and the download fails (the message lists the directories).
    """
    if data_dir is not None:
        return _read_fashion_dir(os.path.expanduser(data_dir))
    searched = _fashion_search_dirs()
    for directory in searched:
        if os.path.isdir(directory) and not _missing_fashion_files(directory):
            return _read_fashion_dir(directory)
    return _download_fashion(searched)


# ----------------------------------------------------------------------------- image folders


def _unreadable_link(path: str) -> str | None:
    """Why the symbolic link ``path`` leads nowhere (broken, or a loop); None when ``path``
    is not such a link."""
    if not os.path.islink(path) or os.path.exists(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a loop of symbolic links"
    return f"a broken symbolic link (to {os.readlink(path)})"


def _class_names(directory: str) -> list[str]:
    """The class sub-folders of an image folder, sorted; hidden ones (``.name``) are skipped.

    Raises:
        DataError: an entry is a symbolic link that leads nowhere (it would be a class
            silently missing).
    """
    names = [name for name in sorted(os.listdir(directory)) if not name.startswith(".")]
    for name in names:
        broken = _unreadable_link(os.path.join(directory, name))
        if broken:
            raise DataError(f"image folder {directory}: {name} is {broken}; fix or remove it")
    return [name for name in names if os.path.isdir(os.path.join(directory, name))]


def _has_image(directory: str) -> bool:
    """Whether ``directory`` or a folder below it holds an image file; stops at the first."""
    return any(
        name.lower().endswith(_IMAGE_EXTENSIONS)
        for _, _, files in os.walk(directory)
        for name in files
    )


def _check_folder(path: str) -> None:
    """Check an image folder's layout and classes by listing folders; nothing is decoded."""
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    has_train, has_test = os.path.isdir(train_dir), os.path.isdir(test_dir)
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"image folder {path} has a {present}/ sub-folder but no {absent}/: use both "
            "(each with one sub-folder per class) or neither (one sub-folder per class)"
        )
    classes_dir = train_dir if has_train else path
    names = _class_names(classes_dir)
    if len(names) < 2:
        found = f"found {len(names)}: {', '.join(names)}" if names else "found none"
        raise DataError(
            f"image folder {classes_dir} needs at least 2 class sub-folders (one sub-folder of "
            f"images per class), {found}"
        )
    empty = [
        os.path.join(classes_dir, name)
        for name in names
        if not _has_image(os.path.join(classes_dir, name))
    ]
    if empty:
        raise DataError(
            f"image folder {classes_dir} has class sub-folders without images "
            f"({', '.join(_IMAGE_EXTENSIONS)}): {', '.join(empty)}; remove them or add images"
        )


def _folder_files(directory: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The image files of an image folder with their int32 labels, and its class names.

    Classes are in sorted order, each class's files sorted by folder, then by name (nested
    folders included), as ``keras.utils.image_dataset_from_directory`` lists them.
    """
    names = _class_names(directory)
    files, labels = [], []
    for label, name in enumerate(names):
        walk = sorted(os.walk(os.path.join(directory, name)), key=lambda entry: entry[0])
        for root, _, found in walk:
            for file in sorted(found):
                if file.lower().endswith(_IMAGE_EXTENSIONS):
                    path = os.path.join(root, file)
                    broken = _unreadable_link(path)
                    if broken:
                        raise DataError(f"image folder {directory}: {path} is {broken}; fix or "
                                        "remove it")
                    files.append(path)
                    labels.append(label)
    if not files:
        raise DataError(
            f"image folder {directory} holds no images ({', '.join(_IMAGE_EXTENSIONS)})"
        )
    return files, np.array(labels, dtype=np.int32), names


def _decode_image(file: str | tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """One image file as uint8 ``(height, width, 3)``, resized (bilinear) to ``size``."""
    image = tf.image.resize(decode(tf.io.read_file(file)), size, method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _undecodable(path: str, bad: list[tuple[str, str]], count: int) -> DataError:
    """The error that names the files that cannot be decoded (the first
    ``_MAX_LISTED_FILES``) with the decoder's reasons."""
    listed = "; ".join(f"{file} ({reason})" for file, reason in bad[:_MAX_LISTED_FILES])
    if len(bad) > _MAX_LISTED_FILES:
        listed += f"; ... (the first {_MAX_LISTED_FILES} of {len(bad)} shown)"
    return DataError(
        f"image folder {path}: {len(bad)} of its {count} image files cannot be decoded; "
        f"remove or replace them: {listed}"
    )


def _first_image_size(path: str, files: list[str]) -> tuple[int, int]:
    """Height and width of the first image in ``files`` that decodes.

    Raises:
        DataError: no file decodes, naming every file and the decoder's reason.
    """
    bad = []
    for file in files:
        try:
            shape = tf.io.decode_image(tf.io.read_file(file), expand_animations=False).shape
        except tf.errors.OpError as e:
            bad.append((file, decoder_reason(e)))
        else:
            return int(shape[0]), int(shape[1])
    raise _undecodable(path, bad, len(files))


def _read_folder(
    path: str, files: list[str], size: tuple[int, int]
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode the image files of folder ``path`` in parallel inside tf.data, resized to ``size``.

    Every element carries its file's index through the pipeline and failing elements are
    dropped; the files whose index is missing are decoded again one by one for the decoder's
    reason.

    Returns:
        The uint8 images ``(len(files), height, width, 3)`` and ``(file, reason)`` of every
        file that cannot be decoded (its image is then left undefined).
    """
    count = len(files)
    if count * size[0] * size[1] * 3 > _MAX_IN_MEMORY_BYTES:
        raise DataError(
            f"image folder {path}: {count} images of {size[0]}x{size[1]} do not fit in memory "
            "(2 GiB); pass a smaller image_size"
        )
    images = np.empty((count, size[0], size[1], 3), dtype=np.uint8)
    decoded = np.zeros((count,), dtype=bool)
    dataset = tf.data.Dataset.from_tensor_slices((files, np.arange(count)))
    dataset = dataset.map(
        _as_written(lambda file, index: (_decode_image(file, size), index)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()
    for batch, indices in records.untuned(dataset.batch(256)).as_numpy_iterator():
        images[indices] = batch
        decoded[indices] = True
    bad = []
    for index in np.flatnonzero(~decoded):
        try:
            images[index] = _decode_image(files[index], size).numpy()
        except tf.errors.OpError as e:
            bad.append((files[index], decoder_reason(e)))
    return images, bad


@dataclasses.dataclass(frozen=True)
class _Folder:
    """An image folder's splits: uint8 images in memory, or file paths when streamed."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    names: tuple[str, ...]
    size: tuple[int, int]
    streamed: bool
    bad_files: tuple[str, ...]


def _load_folder(path: str, image_size: int | None, cache: str, memory_budget: int) -> _Folder:
    """Read an image folder whose layout and classes :func:`check_dataset_name` accepted.

    Decoded into memory when ``cache="memory"``, or ``"auto"`` and the decoded images fit in
    ``memory_budget`` bytes (undecodable files are then an error naming them); otherwise the
    splits hold file paths, and the undecodable files are left out and listed in
    ``bad_files``.
    """
    path = os.path.expanduser(path)
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    has_train = os.path.isdir(train_dir)
    train_root = train_dir if has_train else path
    train_files, y_train, names = _folder_files(train_root)
    test_files, y_test = [], np.zeros((0,), np.int32)
    if has_train:
        test_files, y_test, test_names = _folder_files(test_dir)
        if test_names != names:
            raise DataError(
                f"image folder {path}: test/ classes {test_names} differ from train/ "
                f"classes {names}"
            )
    if image_size is None:
        size = _first_image_size(train_root, train_files)
    else:
        size = (image_size, image_size)
    decoded_bytes = (len(train_files) + len(test_files)) * size[0] * size[1] * 3
    streamed = cache == "none" or (cache == "auto" and decoded_bytes > memory_budget)
    bad_files: tuple[str, ...] = ()
    if streamed:
        bad_files = tuple(file for file, _ in _undecodable_files(train_files + test_files))
        x_train, y_train = _without(train_files, y_train, bad_files)
        x_test, y_test = _without(test_files, y_test, bad_files)
    else:
        x_train, bad = _read_folder(train_root, train_files, size)
        if has_train:
            x_test, test_bad = _read_folder(test_dir, test_files, size)
            bad += test_bad
        if bad:
            raise _undecodable(path, bad, len(train_files) + len(test_files))
    if not has_train:
        rng = np.random.default_rng(_FOLDER_TEST_SEED)
        test_idx = _stratified_holdout(
            y_train, len(names), _FOLDER_TEST_FRACTION, rng,
            f"image folder {path} (test hold-out)",
        )
        train_mask = np.ones(len(y_train), dtype=bool)
        train_mask[test_idx] = False
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_mask], y_train[train_mask]
    return _Folder(x_train, y_train, x_test, y_test, tuple(names), size, streamed, bad_files)


def _without(files: list[str], labels: np.ndarray,
             bad: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The files (as an array of paths) and their labels, those in ``bad`` left out."""
    keep = np.array([file not in bad for file in files], dtype=bool)
    return np.array(files, dtype=object)[keep] if files else np.array([], object), labels[keep]


def _file_key(files: list[str]) -> str:
    """A digest of the files' paths, sizes and modification times."""
    digest = hashlib.sha256()
    for file in files:
        info = os.stat(file)
        digest.update(f"{os.path.abspath(file)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _undecodable_files(files: list[str]) -> list[tuple[str, str]]:
    """``(file, reason)`` of every file that does not decode, found by decoding all of them in
    parallel once. The answer is kept under ``~/.cache/tfmagic/checked-files`` (or
    ``$TFMAGIC_CACHE_DIR/checked-files``), keyed by the files' paths, sizes and modification
    times, so later runs over the same unchanged files do not decode them again."""
    record = os.path.join(records.cache_dir("checked-files"), _file_key(files) + ".json")
    if os.path.isfile(record):
        with open(record) as f:
            return [(file, reason) for file, reason in json.load(f)["bad"]]
    count = len(files)
    decoded = np.zeros((count,), dtype=bool)
    dataset = tf.data.Dataset.from_tensor_slices((files, np.arange(count))).map(
        _as_written(lambda file, index: (tf.shape(decode(tf.io.read_file(file)))[0], index)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False,
    ).ignore_errors()
    for _, indices in records.untuned(dataset.batch(1024)).as_numpy_iterator():
        decoded[indices] = True
    bad = []
    for index in np.flatnonzero(~decoded):
        try:
            decode(tf.io.read_file(files[index]))
        except tf.errors.OpError as e:
            bad.append((files[index], decoder_reason(e)))
    with contextlib.suppress(OSError):
        write_atomic(record, json.dumps({"bad": bad}) + "\n")
    return bad


# ----------------------------------------------------------------------------- tensorflow-datasets


def _load_tfds(name: str, cache: str, memory_budget: int):
    """A tensorflow-datasets dataset: ``(x_train, y_train, x_test, y_test, class names)`` of
    uint8 images in memory for fixed-size images that fit ``memory_budget`` (unless
    ``cache="none"``), else a `records.Source` over its files. The test split is ``test``,
    or ``validation`` when there is no ``test``."""
    try:
        tfds = importlib.import_module("tensorflow_datasets")
    except ImportError as e:
        raise DataError(
            f'dataset "tfds:{name}" needs tensorflow-datasets: pip install "tfmagic[tfds]"'
        ) from e
    try:
        builder = tfds.builder(name)
        builder.download_and_prepare()
    except Exception as e:
        raise DataError(f'tfds dataset "{name}" could not be loaded: {e}') from e
    info = builder.info
    test_split = next((split for split in ("test", "validation") if split in info.splits), None)
    if "train" not in info.splits or test_split is None:
        raise DataError(
            f'tfds dataset "{name}" needs a train split and a test or validation split '
            f"(it has {', '.join(sorted(info.splits))})"
        )
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise DataError(f'tfds dataset "{name}" has no (image, label) supervised keys')
    image_key, label_key = info.supervised_keys
    shape = tuple(info.features[image_key].shape)
    label_feature = info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    if len(shape) != 3 or num_classes is None or type(
            info.features[image_key]).__name__ != "Image":
        raise DataError(
            f'tfds dataset "{name}" is not an image classification dataset (image feature '
            f"{type(info.features[image_key]).__name__} of shape {shape}, label "
            f"{type(label_feature).__name__})"
        )
    count = info.splits["train"].num_examples + info.splits[test_split].num_examples
    fits = None not in shape and count * int(np.prod(shape)) <= min(memory_budget,
                                                                    _MAX_IN_MEMORY_BYTES)
    if cache == "memory" and not fits:
        raise DataError(
            f'tfds dataset "{name}" ({count} images of shape {shape}) cannot be held in memory '
            f"(cache=memory needs fixed-size images within {memory_budget} bytes); use "
            "cache=auto or cache=none to stream it"
        )
    if cache == "none" or not fits:
        if str(info.file_format).lower().rsplit(".", 1)[-1] != "tfrecord":
            raise DataError(f'tfds dataset "{name}" is stored as {info.file_format}; only '
                            "tfrecord files can be streamed")
        return records.tfds_source(builder, image_key, label_key, test_split)
    arrays = []
    for split in ("train", test_split):
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, as_supervised=True, batch_size=-1)
        )
        if images.dtype != np.uint8:
            raise DataError(f'tfds dataset "{name}" images are {images.dtype}, expected uint8')
        arrays += [images, labels.astype(np.int32)]
    names = getattr(label_feature, "names", None) or [str(i) for i in range(num_classes)]
    return arrays[0], arrays[1], arrays[2], arrays[3], tuple(names)


@dataclasses.dataclass(frozen=True)
class _Records:
    """A record source's splits as rows of its index (int64) with their labels."""

    source: records.Source
    index: records.Index
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    names: tuple[str, ...]


def _load_records(source: records.Source) -> _Records:
    """Index a record source and split its records; without test shards a stratified 1/6
    of the training records, the same for every seed, is the test set."""
    try:
        index = records.index(source)
    except records.RecordError as e:
        raise DataError(str(e)) from e
    num_classes = int(index.label.max()) + 1
    names = source.class_names or tuple(str(k) for k in range(num_classes))
    if num_classes > len(names):
        raise DataError(f"{source.what}: label {num_classes - 1} is beyond its "
                        f"{len(names)} classes (labels start at label_base="
                        f"{source.label_base})")
    in_test = np.isin(index.shard, source.test)
    x_train, x_test = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    if not source.test:
        held = _shard_holdout(index, x_train, len(names), _FOLDER_TEST_FRACTION,
                              np.random.default_rng(_FOLDER_TEST_SEED),
                              f"{source.what} (test hold-out)")
        x_test, x_train = x_train[held], np.delete(x_train, held)
    return _Records(source, index, x_train, index.label[x_train], x_test, index.label[x_test],
                    tuple(names))


def _first_record_size(data: _Records, rows: np.ndarray) -> tuple[int, int]:
    """Height and width of the first training record's image."""
    read, shards = _record_reader(data.source, data.index, rows[:1])
    image, _ = next(iter(read(tf.data.Dataset.from_tensor_slices(shards))))
    shape = decode(image).shape
    return int(shape[0]), int(shape[1])


def _shard_order(shards: np.ndarray, rows: np.ndarray, wanted: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Positions (into ``rows``) of the rows in the fewest shards, taken in a seeded order,
    that hold at least ``wanted`` of them: a sample drawn from them reads few shards."""
    shard_of = shards[rows]
    chosen, total = [], 0
    counts = np.bincount(shard_of)
    for shard in rng.permutation(np.flatnonzero(counts)):
        if total >= wanted:
            break
        chosen.append(shard)
        total += counts[shard]
    return np.flatnonzero(np.isin(shard_of, chosen))


def _shard_holdout(index: records.Index, rows: np.ndarray, num_classes: int, fraction: float,
                   rng: np.random.Generator, what: str) -> np.ndarray:
    """Positions (into ``rows``) of a stratified ``fraction`` of the records ``rows``, drawn
    from the fewest seeded shards holding twice as many, so that reading the held-out
    records reads about twice their bytes, not the whole dataset."""
    n = int(round(fraction * len(rows)))
    candidates = _shard_order(index.shard, rows, 2 * n, rng)
    labels = index.label[rows[candidates]]
    if n == 0 or n > len(candidates) - np.count_nonzero(np.bincount(labels)):
        raise DataError(
            f"{what}: a fraction of {fraction:g} of {len(rows)} records is {n} records; "
            "use more records or a different fraction"
        )
    held = _stratified_holdout(labels, num_classes, n / len(candidates), rng, what)
    return np.sort(candidates[held])


SHARD_BYTES = 128 * 2**20


def write_tfrecords(dataset: str, output_dir: str, *, shard_bytes: int = SHARD_BYTES,
                    seed: int = 0) -> dict:
    """Write an image folder as TFRecord shards that ``"tfrecord:OUTPUT_DIR"`` reads back.

    ``dataset`` is ``"folder:PATH"``; its test split is the one :func:`load` uses (``test/``,
    or the fixed stratified 1/6 hold-out), so a ``tfrecord:`` run sees the same test images.
    Training records are in a seeded random order across shards (every shard mixes the
    classes, as streaming with a bounded shuffle buffer needs); each file's bytes are stored
    as they are (ImageNet schema: ``image/encoded``, ``image/class/label`` from 0,
    ``image/class/text``, ``image/filename``), shards of about ``shard_bytes`` named
    ``train-00000-of-00008.tfrecord`` and ``test-...``, and ``dataset.json`` with the class
    names, split sizes and the files left out because they do not decode. Paths go through
    ``tf.io.gfile`` (``gs://`` works where TensorFlow has that file system).

    A local ``output_dir`` is written as a hidden folder beside it
    (``.tmp-<pid>-<random>-<name>``) and renamed to it once whole, so a conversion stopped
    part-way leaves no ``output_dir``; the hidden folder that a killed one leaves is removed
    by the next conversion to that ``output_dir``. Elsewhere the shards are written in place;
    a set left incomplete there is refused when its directory is read
    (`records.tfrecord_source` names the missing ``-of-N`` members).

    Returns:
        The contents of ``dataset.json``.

    Raises:
        DataError: ``dataset`` is not a folder spec, ``output_dir`` cannot be written or
            already holds files, or a bad argument; shards written before an error are
            removed.
    """
    check_dataset_name(dataset)
    kind, _, path = dataset.partition(":")
    if kind != "folder":
        raise DataError(f"dataset must be a folder:PATH to write as TFRecords, got {dataset!r}")
    _check_int("shard_bytes", shard_bytes, 1)
    _check_int("seed", seed, 0)
    local = "://" not in output_dir       # gs://... and other file systems of tf.io.gfile
    if local:                            # checked before the folder is read
        problem = writable_problem(output_dir)
        if problem:
            raise DataError(f"output_dir={output_dir!r} cannot be used: {problem}")
    if tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
        raise DataError(f"output_dir {output_dir} already holds files; give an empty or new "
                        "directory")
    folder = _load_folder(path, 1, "none", 0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(folder.y_train))
    splits = {"train": [(folder.x_train[i], int(folder.y_train[i])) for i in order],
              "test": list(zip(folder.x_test, folder.y_test.tolist(), strict=True))}
    if local:                            # written beside it, renamed to it when whole
        target = os.path.abspath(output_dir)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _remove_stale_staging(target)
        staging = os.path.join(os.path.dirname(target),
                               f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{os.path.basename(target)}")
        os.mkdir(staging)
    else:
        staging = output_dir
        tf.io.gfile.makedirs(output_dir)
    written = []
    try:
        for prefix, items in splits.items():
            written += records.write_shards(staging, prefix, items, folder.names, shard_bytes)
        description = {"classes": list(folder.names), "label_base": 0,
                       "splits": {name: len(items) for name, items in splits.items()},
                       "bad_files": list(folder.bad_files), "source": dataset}
        write_atomic(tf.io.gfile.join(staging, records.DESCRIPTION_FILE),
                     json.dumps(description, indent=1) + "\n")
        if local:
            os.replace(staging, target)      # over a missing or an empty directory
    except BaseException:
        if local:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for shard in written:
                with contextlib.suppress(tf.errors.OpError):
                    tf.io.gfile.remove(shard)
        raise
    return description


# ----------------------------------------------------------------------------- splitting


def _allocate(n: int, counts: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per-class numbers summing to ``n``, each within ``[low, high]`` and as close as possible to
    the proportional quota ``n * counts / counts.sum()`` (ties go to the lower class index).
    Callers ensure ``low.sum() <= n <= high.sum()``."""
    quota = n * counts / counts.sum()
    alloc = np.clip(np.floor(quota).astype(np.int64), low, high)
    while alloc.sum() < n:
        alloc[np.argmax(np.where(alloc < high, quota - alloc, -np.inf))] += 1
    while alloc.sum() > n:
        alloc[np.argmax(np.where(alloc > low, alloc - quota, -np.inf))] -= 1
    return alloc


def _pick(labels: np.ndarray, per_class: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = [
        rng.permutation(np.flatnonzero(labels == k))[:count]
        for k, count in enumerate(per_class)
        if count
    ]
    return np.sort(np.concatenate(chosen))


def _remove_stale_staging(target: str) -> None:
    """Remove the hidden folders that conversions to `target` killed part way (``kill -9``)
    left beside it: named ``.tmp-<pid>-<random>-<name>``, with a pid that no longer runs."""
    parent, name = os.path.split(target)
    pattern = re.compile(rf"\.tmp-(\d+)-[0-9a-f]{{32}}-{re.escape(name)}")
    for entry in os.listdir(parent):
        found = pattern.fullmatch(entry)
        if found and not _running(int(found.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # another user's process
        return True
    return True


def _stratified_subset(
    labels: np.ndarray, num_classes: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``n`` examples, class proportions preserved, every present class kept."""
    available = np.bincount(labels, minlength=num_classes)
    present = (available > 0).astype(np.int64)
    per_class = _allocate(n, available, present, available)
    return _pick(labels, per_class, rng)


def _stratified_holdout(
    labels: np.ndarray, num_classes: int, fraction: float, rng: np.random.Generator, what: str
) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the examples; every class keeps one example."""
    available = np.bincount(labels, minlength=num_classes)
    n = int(round(fraction * len(labels)))
    keep = np.maximum(available - 1, 0)
    if n == 0 or n > keep.sum():
        raise DataError(
            f"{what}: a fraction of {fraction:g} of {len(labels)} images is {n} images; "
            "use more images or a different fraction"
        )
    per_class = _allocate(n, available, np.zeros(num_classes, np.int64), keep)
    return _pick(labels, per_class, rng)


# ----------------------------------------------------------------------------- pipeline


def _stats_from_histograms(hists: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..255 scale) from ``(channels, 256)`` value counts."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for hist in hists.astype(np.float64):
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(float(np.sqrt(var)) if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _histograms(images: np.ndarray) -> np.ndarray:
    """``(channels, 256)`` value counts of uint8 images ``(..., channels)``."""
    return np.stack([np.bincount(images[..., c].ravel(), minlength=256)
                     for c in range(images.shape[-1])])


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (0..255 scale) from per-channel histograms."""
    return _stats_from_histograms(_histograms(images))


def _file_stats(files: np.ndarray, size: tuple[int, int],
                seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a seeded sample of at most ``_STATS_SAMPLE`` image files,
    each seen as evaluation sees it (the central crop resized to ``size``), rounded to uint8."""
    rng = np.random.default_rng((seed, _STATS_STREAM))
    sample = files[np.sort(rng.permutation(len(files))[:_STATS_SAMPLE])]
    view = center_crop(1.0, size=size)
    dataset = tf.data.Dataset.from_tensor_slices(list(sample)).map(
        _as_written(lambda file: tf.cast(tf.round(view(decode(tf.io.read_file(file))[None])[0]),
                                         tf.uint8)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False,
    )
    hists = np.zeros((3, 256), dtype=np.int64)
    for batch in records.untuned(dataset.batch(64)).as_numpy_iterator():
        hists += _histograms(batch)
    return _stats_from_histograms(hists)


def index_batch_stream(count: int, batch_size: int, seed: int,
                       train: bool) -> Callable[..., tf.data.Dataset]:
    """``batches(first_epoch, worker, workers)``: batches of example indices, each as
    ``(number, positions, indices)`` with the batch's number in the stream and the positions
    of its indices in the whole batch.

    For training the order of the indices is the epoch's: a seeded shuffle drawn anew for every
    epoch. ``batches(None)`` is one epoch, reshuffled at every iteration (iteration i has epoch
    i's order); ``batches(k)`` is an endless stream of epochs from epoch k on, each with the
    same order as in a stream from epoch 0 (the shuffles of the epochs before k are drawn and
    skipped, over indices only), its batches numbered from ``k * steps``. Evaluation splits
    are in their stored order. ``batches(k, worker, workers)`` is worker ``worker``'s part of
    every batch of ``batches(k)``: the examples at positions ``worker, worker + workers, ...``
    of it, so the workers together see every batch and each prepares (reads, decodes) only
    its own part.
    """
    steps = math.ceil(count / batch_size)

    def batches(first_epoch: int | None = None, worker: int = 0,
                workers: int = 1) -> tf.data.Dataset:
        # A new shuffle each call: its sequence of epoch orders starts again from the seed.
        order = tf.data.Dataset.range(count)
        if train:
            order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        order = order.batch(batch_size, drop_remainder=False)
        indices = order if first_epoch is None else order.repeat().skip(first_epoch * steps)
        numbered = indices.enumerate(start=(first_epoch or 0) * steps)

        @_as_written
        def part(number, batch):
            positions = tf.range(tf.size(batch, out_type=tf.int64), dtype=tf.int64)
            return number, positions[worker::workers], batch[worker::workers]

        return numbered.map(part)

    return batches


def _augment_key(base: tf.Tensor, number: tf.Tensor, worker: int) -> tf.Tensor:
    """The key of a training batch's augmentation (`seeding.batch_key`): from its stream's
    base key, the batch's number in the stream and the worker whose part it is."""
    fold = tf.random.experimental.stateless_fold_in
    return fold(fold(base, number), -1 - worker)


def _base_key(seed: int, stream=0) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(stream, tf.int64)])


def _streams(seed: int, fresh: bool) -> tf.data.Dataset:
    """Stream numbers to zip with a split's batches, for their keys: with ``fresh`` a seeded
    random number per batch, drawn anew at each iteration (``batches(None)`` of a training
    split augments every pass afresh), otherwise 0 for every batch."""
    if fresh:
        return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()


def _epochs(count: int, batch_size: int, seed: int, train: bool,
            prepare: Callable) -> Callable[..., tf.data.Dataset]:
    """``batches(first_epoch, worker, workers)``: batches of ``prepare(key, indices)``, the
    indices batched as `index_batch_stream` gives them, ``key`` the batch's augmentation key
    (`_augment_key`)."""
    indices = index_batch_stream(count, batch_size, seed, train)

    def batches(first_epoch: int | None = None, worker: int = 0,
                workers: int = 1) -> tf.data.Dataset:
        numbered = tf.data.Dataset.zip(indices(first_epoch, worker, workers),
                                       _streams(seed, first_epoch is None and train))
        dataset = numbered.map(
            _as_written(lambda batch, stream: prepare(
                _augment_key(_base_key(seed, stream), batch[0], worker), batch[2])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _final(dataset.prefetch(tf.data.AUTOTUNE))

    return batches


def _final(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` as tfmagic hands it out: its elements in their defined order, whatever the
    global options, and without tf.data's autotuning thread (`records.untuned`)."""
    options = tf.data.Options()
    options.deterministic = True
    return records.untuned(dataset.with_options(options))


def _finish(x, y, *, key: tf.Tensor | None, train: bool, augment: Callable | None,
            eval_transform: Callable | None, one_hot: int | None, preprocess: Callable | None,
            mean: tuple[float, ...], std: tuple[float, ...]):
    """A batch of 0..255 images after cropping, made float32: labels one-hot when asked, the
    augmentation (training, its draws from ``key``: see `seeding.batch_key`) or evaluation
    transform, then preprocessing or normalization. An augmentation with ``accepts_uint8``
    gets uint8 batches as they come (AutoAugment's operations are cheaper on them), any
    other float32."""
    if one_hot:
        y = tf.one_hot(y, one_hot, dtype=tf.float32)
    if train and augment is not None:
        if x.dtype != tf.uint8 or not getattr(augment, "accepts_uint8", False):
            x = tf.cast(x, tf.float32)
        with seeding.batch_key(key):
            x, y = augment(x, y)
    x = tf.cast(x, tf.float32)
    if not train and eval_transform is not None:
        x = tf.cast(eval_transform(x), tf.float32)
    if preprocess is not None:
        return tf.cast(preprocess(x), tf.float32), y
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32), y


def _pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    size: tuple[int, int],
    channels: int,
    seed: int,
    train: bool,
    crop: Callable | None,
    crop_fraction: float,
    **finish,
) -> Callable[[int | None], tf.data.Dataset]:
    """``batches(first_epoch)`` of images held in memory, gathered by index (see `_epochs`):
    resized to ``size`` (and tiled to ``channels``), then the training crop or the
    evaluation's central crop."""
    resize = tuple(images.shape[1:3]) != size
    tile = images.shape[-1] != channels
    images_t, labels_t = tf.constant(images), tf.constant(labels)
    view = center_crop(crop_fraction) if crop_fraction < 1 else None

    def prepare(key, indices):
        x = tf.cast(tf.gather(images_t, indices), tf.float32)
        if tile:
            x = tf.tile(x, [1, 1, 1, channels])
        if resize:
            x = tf.image.resize(x, size, method="bilinear")
        if train and crop is not None:
            with seeding.batch_key(key):
                x = crop(x)
        if not train and view is not None:
            x = view(x)
        return _finish(x, tf.gather(labels_t, indices), key=key, train=train, **finish)

    return _epochs(len(labels), batch_size, seed, train, prepare)


def _crop_window(generator, height, width, scale):
    """``(top, left, crop_height, crop_width)`` in whole pixels of an Inception crop box."""
    box_h, box_w, along_h, along_w = sample_boxes(generator, 1, height, width, scale,
                                                  _CROP_RATIO)
    rows, columns = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    crop_h = tf.clip_by_value(tf.cast(tf.round(box_h[0] * rows), tf.int32), 1, height)
    crop_w = tf.clip_by_value(tf.cast(tf.round(box_w[0] * columns), tf.int32), 1, width)
    top = tf.cast(tf.round(along_h[0] * tf.cast(height - crop_h, tf.float32)), tf.int32)
    left = tf.cast(tf.round(along_w[0] * tf.cast(width - crop_w, tf.float32)), tf.int32)
    return top, left, crop_h, crop_w


def _cropped(contents: tf.Tensor, draws, size: tuple[int, int],
             scale: tuple[float, float]) -> tf.Tensor:
    """An Inception crop of an encoded image at full resolution (for a JPEG only the crop
    window is decoded), resized (bilinear) to ``size``, rounded to uint8 (a quarter of the
    float32 bytes to batch and move), flipped with probability 1/2; ``draws`` has a
    ``uniform(shape)`` method."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)
        window = tf.stack(_crop_window(draws, shape[0], shape[1], scale))
        return tf.image.decode_and_crop_jpeg(contents, window, channels=3)

    def other():
        image = decode(contents)
        shape = tf.shape(image)
        top, left, height, width = _crop_window(draws, shape[0], shape[1], scale)
        return image[top:top + height, left:left + width]

    image = tf.image.resize(tf.cond(tf.image.is_jpeg(contents), jpeg, other), size,
                            method="bilinear")
    # Bilinear weights are convex: the resized values stay within 0..255.
    image = tf.cast(tf.round(image), tf.uint8)
    return tf.cond(draws.uniform(()) < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _file_pipeline(
    files: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    size: tuple[int, int],
    seed: int,
    train: bool,
    crop_scale: tuple[float, float] | None,
    crop_fraction: float,
    **finish,
) -> Callable[..., tf.data.Dataset]:
    """``batches(first_epoch, worker, workers)`` of image files read and decoded in every
    epoch, in the order of `index_batch_stream`.

    The images of a batch are read and decoded in parallel, one map call per image. A training
    image with ``crop_scale`` is an Inception crop cut from the file at its full resolution
    (see `_cropped`), drawn from the seed, the batch's number and the image's position in it:
    ``batches(k)`` crops as an uninterrupted stream would have from epoch k on, and each
    worker's part of a batch as the whole batch would have; the rest of the augmentation
    draws from the seed, the batch's number and the worker (`_augment_key`). ``batches(None)``
    draws a new stream number for each batch at every iteration. Every other image is the
    central ``crop_fraction`` of its largest centred box of ``size``'s aspect ratio, resized
    to ``size`` (the short side resized to ``size / crop_fraction``, then the central crop:
    the standard ImageNet evaluation).
    """
    files_t, labels_t = tf.constant(list(files), tf.string), tf.constant(labels)
    view = center_crop(1.0 if train else crop_fraction, size=size)
    count = len(labels)
    steps = math.ceil(count / batch_size)
    index_batches = index_batch_stream(count, batch_size, seed, train)
    cropping = train and crop_scale is not None

    @_as_written
    def load_one(stream, number, position, index):
        contents = tf.io.read_file(files_t[index])
        if cropping:
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(_base_key(seed, stream), number),
                position)
            image = _cropped(contents, seeding.StatelessDraws(key), size, crop_scale)
        else:
            image = view(decode(contents)[None])[0]
        return stream, number, image, labels_t[index]

    def batches(first_epoch: int | None = None, worker: int = 0,
                workers: int = 1) -> tf.data.Dataset:
        @_as_written
        def part_size(number):
            whole = tf.where(number % steps < steps - 1, tf.constant(batch_size, tf.int64),
                             tf.constant(count - batch_size * (steps - 1), tf.int64))
            return (whole - worker + workers - 1) // workers

        @_as_written
        def each(batch, stream):
            number, positions, indices = batch
            n = tf.size(indices, out_type=tf.int64)
            return tf.fill([n], stream), tf.fill([n], number), positions, indices

        @_as_written
        def finished(streams, numbers, x, y):
            key = _augment_key(_base_key(seed, streams[0]), numbers[0], worker)
            return _finish(x, y, key=key, train=train, **finish)

        # Every image in its own map call, in parallel; the batches formed again by number.
        dataset = tf.data.Dataset.zip(
            index_batches(first_epoch, worker, workers),
            _streams(seed, first_epoch is None and train),
        ).map(each).unbatch().map(
            load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        ).group_by_window(
            key_func=_as_written(lambda stream, number, image, label: number),
            reduce_func=_as_written(lambda number, window: window.batch(part_size(number))),
            window_size_func=part_size,
        ).map(finished, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if first_epoch is None:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        return _final(dataset.prefetch(tf.data.AUTOTUNE))

    return batches


# Encoded images shuffled together in a streamed training split (read from 16 shards at once,
# in a new seeded order every epoch).
_SHUFFLE_RECORDS = 4096
_SHARDS_AT_ONCE = 16


def _record_reader(source: records.Source, index: records.Index, rows: np.ndarray):
    """``read(shards)``: the records of ``rows`` in the given shards (a tf.data dataset of
    shard indices), 16 shards interleaved one record at a time in a fixed order, each as
    ``(encoded image, label)``; the other records are skipped unparsed."""
    member = np.zeros(int(index.counts.sum()), dtype=bool)
    member[index.global_ids(rows)] = True
    member_t = tf.constant(member)
    offsets = tf.constant(np.concatenate([[0], np.cumsum(index.counts)[:-1]]), tf.int64)
    paths = tf.constant(list(source.shards), tf.string)

    @_as_written
    def shard_records(shard):
        first = tf.gather(offsets, shard)
        return tf.data.TFRecordDataset(tf.gather(paths, shard)).enumerate().filter(
            _as_written(lambda position, _: tf.gather(member_t, first + position))
        ).map(_as_written(lambda _, record: record))

    def read(shards: tf.data.Dataset) -> tf.data.Dataset:
        return shards.interleave(
            shard_records, cycle_length=_SHARDS_AT_ONCE, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        ).map(_as_written(source.parse), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True).map(
            _as_written(lambda image, label: (image, tf.cast(label - source.label_base, tf.int32))))

    return read, np.unique(index.shard[rows]).astype(np.int64)


def _record_pipeline(
    source: records.Source,
    index: records.Index,
    rows: np.ndarray,
    *,
    batch_size: int,
    size: tuple[int, int],
    seed: int,
    train: bool,
    crop_scale: tuple[float, float] | None,
    crop_fraction: float,
    **finish,
) -> Callable[[int | None], tf.data.Dataset]:
    """``batches(first_epoch)`` of the records ``rows`` of a record source, streamed.

    Evaluation reads the shards in order. Training epoch ``e`` reads the shards in a new order
    drawn from ``(seed, e)``, shuffles each block of ``_SHUFFLE_RECORDS`` consecutive records in
    an order drawn from ``(seed, e)`` and the block's number, and crops the j-th image of the
    epoch with draws seeded by ``(seed, e, j)``: an epoch's batches follow from the seed and the
    epoch alone, so ``batches(k)`` gives the epochs an uninterrupted run would have seen from
    epoch k on, with no need to read epochs 0..k-1. ``batches(None)`` is one epoch, with a new
    seeded epoch number at each iteration. Images are viewed as `_file_pipeline` views them;
    batches never straddle two epochs. ``batches(k, worker, workers)`` reads only the worker's
    share of each epoch's shards (every ``workers``-th, or of the records when there are
    fewer shards than workers), in batches of ``batch_size / workers``: the workers' epochs
    then differ in length by up to a shard's records.
    """
    read, shards = _record_reader(source, index, rows)
    view = center_crop(1.0 if train else crop_fraction, size=size)
    buffer = min(len(rows), _SHUFFLE_RECORDS)
    steps = math.ceil(len(rows) / batch_size)

    @_as_written
    def whole(image, label):
        return view(decode(image)[None])[0], label

    if not train:
        def evaluation(first_epoch=None):
            images = read(tf.data.Dataset.from_tensor_slices(shards)).map(
                whole, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return _final(images.batch(batch_size).map(
                _as_written(lambda x, y: _finish(x, y, key=None, train=False, **finish)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).apply(
                tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE))
        return evaluation

    def epoch(number, worker, workers):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(number, tf.int64)])
        order = tf.argsort(tf.random.stateless_uniform([len(shards)], epoch_seed))
        ordered = tf.data.Dataset.from_tensor_slices(tf.gather(shards, order))
        if len(shards) >= workers:
            images = read(ordered.shard(workers, worker))
        else:
            images = read(ordered).shard(workers, worker)

        @_as_written
        def mixed(block_number, block):
            image, label = block
            draws = tf.random.stateless_uniform(
                tf.shape(label), tf.random.experimental.stateless_fold_in(
                    epoch_seed, -1 - block_number))
            order = tf.argsort(draws)
            return tf.gather(image, order), tf.gather(label, order)

        images = images.batch(buffer).enumerate().map(mixed).unbatch().enumerate()

        @_as_written
        def load_one(j, example):
            image, label = example
            key = tf.random.experimental.stateless_fold_in(epoch_seed, j)
            if crop_scale is not None:
                return _cropped(image, seeding.StatelessDraws(key), size, crop_scale), label
            return whole(image, label)

        images = images.map(load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return images.batch(math.ceil(batch_size / workers)).enumerate().map(
            _as_written(lambda b, batch: _finish(*batch, key=_augment_key(epoch_seed, b, worker),
                                                 train=True, **finish)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def batches(first_epoch: int | None = None, worker: int = 0,
                workers: int = 1) -> tf.data.Dataset:
        if first_epoch is not None:
            return _final(tf.data.Dataset.counter(start=first_epoch).flat_map(
                _as_written(lambda number: epoch(number, worker, workers))).prefetch(
                tf.data.AUTOTUNE))
        number = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        return _final(number.flat_map(_as_written(lambda number: epoch(number, 0, 1))).apply(
            tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE))

    return batches


def _record_stats(source: records.Source, index: records.Index, rows: np.ndarray,
                  size: tuple[int, int], seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a seeded sample of at most ``_STATS_SAMPLE`` of the
    records ``rows``, drawn from the fewest seeded shards that hold that many, each seen as
    evaluation sees it (the central crop resized to ``size``), rounded to uint8."""
    rng = np.random.default_rng((seed, _STATS_STREAM))
    candidates = _shard_order(index.shard, rows, _STATS_SAMPLE, rng)
    sample = rows[np.sort(rng.permutation(candidates)[:_STATS_SAMPLE])]
    read, shards = _record_reader(source, index, sample)
    view = center_crop(1.0, size=size)
    images = read(tf.data.Dataset.from_tensor_slices(shards)).map(
        _as_written(lambda image, _: tf.cast(tf.round(view(decode(image)[None])[0]), tf.uint8)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    hists = np.zeros((3, 256), dtype=np.int64)
    for batch in records.untuned(images.batch(64)).as_numpy_iterator():
        hists += _histograms(batch)
    return _stats_from_histograms(hists)


# ----------------------------------------------------------------------------- public entry points


def check_dataset_name(dataset: str) -> None:
    """Check a dataset spec without loading any data.

    Accepted: ``"fashion_mnist"``, ``"folder:PATH"`` (an existing directory with ``train/``
    and ``test/`` sub-folders or neither, and at least 2 class sub-folders, of ``train/`` in
    that layout, each holding an image file) and ``"tfds:NAME"`` (a nonempty name). Folders are
    only listed, up to the first image file of each class; no image is decoded.

    Raises:
        DataError: the spec is malformed, naming the value and the accepted forms, or the
            folder breaks one of the rules above, naming the folder.
    """
    forms = ", ".join(DATASET_FORMS)
    if not isinstance(dataset, str):
        raise DataError(f"dataset must be a string ({forms}), got {dataset!r}")
    if dataset == "fashion_mnist":
        return
    kind, sep, rest = dataset.partition(":")
    if sep and kind == "folder":
        if not rest:
            raise DataError(f'dataset "{dataset}": folder: needs a directory path')
        if not os.path.isdir(os.path.expanduser(rest)):
            raise DataError(f'dataset "{dataset}": {rest} is not an existing directory')
        _check_folder(os.path.expanduser(rest))
        return
    if sep and kind == "tfds":
        if not rest.strip():
            raise DataError(f'dataset "{dataset}": tfds: needs a dataset name, e.g. "tfds:mnist"')
        return
    if sep and kind == "tfrecord":
        if not rest.strip():
            raise DataError(f'dataset "{dataset}": tfrecord: needs a glob or a directory, '
                            'e.g. "tfrecord:/data/imagenet/*-of-*"')
        return
    raise DataError(f"dataset {dataset!r} is not recognized; accepted forms: {forms}")


def _check_int(name: str, value: object, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not is_int(value) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise DataError(f"{name} must be {allowed}, got {value!r}")


def _check_arguments(
    batch_size, seed, train_subset, validation_fraction, image_size, channels, augment,
    eval_batch_size, eval_transform, preprocess,
) -> None:
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("train_subset", train_subset, 1, optional=True)
    _check_int("image_size", image_size, 1, optional=True)
    _check_int("eval_batch_size", eval_batch_size, 1, optional=True)
    if not is_number(validation_fraction) or not 0 <= validation_fraction < 1:
        raise DataError(
            f"validation_fraction must be a number with 0 <= fraction < 1, "
            f"got {validation_fraction!r}"
        )
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    if augment is not None and not callable(augment):
        raise DataError(f"augment must be a callable (images, labels) -> (images, labels), "
                        f"got {augment!r}")
    if eval_transform is not None and not callable(eval_transform):
        raise DataError(f"eval_transform must be a callable images -> images, "
                        f"got {eval_transform!r}")
    if preprocess is not None and not callable(preprocess):
        raise DataError(f"preprocess must be a callable images -> images, got {preprocess!r}")


def load(
    dataset: str,
    *,
    batch_size: int,
    seed: int = 0,
    train_subset: int | None = None,
    validation_fraction: float = 0.1,
    image_size: int | None = None,
    channels: int | None = None,
    augment: Callable | None = None,
    eval_batch_size: int | None = None,
    eval_transform: Callable | None = None,
    one_hot: bool = False,
    preprocess: Callable | None = None,
    min_image_size: int | None = None,
    cache: str = "auto",
    memory_budget: int = MEMORY_BUDGET_BYTES,
    crop_scale: tuple[float, float] | None = None,
    crop_fraction: float = 1.0,
    label_base: int = 0,
) -> DataSplits:
    """Load a dataset and build its train / validation / test pipelines.

    Args:
        dataset: ``"fashion_mnist"``, ``"folder:PATH"`` or ``"tfds:NAME"``. A folder holds one
            sub-folder per class, or ``train/`` and ``test/`` sub-folders that each do; without
            them a stratified 1/6 of the images, the same for every ``seed``, is the test set.
            A folder needs at least 2 class sub-folders, and none may be empty (no image file
            in it or below it). Folder images are decoded once and resized at load time to
            ``image_size`` (when None, to the size of the first decodable image in sorted
            order), three channels; files that cannot be decoded are an error that names them.
        batch_size: training batch size (the last batch may be smaller).
        seed: seeds the subset, the validation hold-out and the per-epoch shuffle.
        train_subset: use only this many training images, chosen stratified (class
            proportions kept, every class present) before the validation hold-out.
        validation_fraction: stratified fraction of the training images held out for
            validation, 0 <= fraction < 1; 0 means ``validation`` is None.
        image_size: resize images to ``(image_size, image_size)`` (bilinear) in the pipeline.
        channels: 1 or 3; grayscale is tiled to 3 channels. None keeps the dataset's channels.
        augment: ``(images, labels) -> (images, labels)`` applied to training batches only:
            float32 images in 0..255 after resizing, int32 labels; it may return other labels
            (e.g. soft one-hot). Runs inside the tf.data graph. A callable with an attribute
            ``accepts_uint8 = True`` gets the uint8 images of streamed crops as they are,
            without the float32 copy (`build_train_augment`'s augmentation does).
        eval_batch_size: batch size of validation and test (default ``batch_size``).
        eval_transform: ``images -> images`` applied to validation and test batches (float32,
            0..255, after resizing), e.g. a centre crop; never to training batches.
        one_hot: give every split float32 one-hot labels ``(batch, num_classes)`` instead of
            int32 class indices (for soft-label augmentation such as mixup).
        preprocess: ``images -> model input`` replacing the normalization of every split
            (float32 0..255 images in, after augmentation or ``eval_transform``), e.g. a
            ``keras.applications`` model's ``preprocess_input``.
        min_image_size: resize (bilinear) so that height and width are at least this many
            pixels, for models with a minimum input size; sides already larger are kept.
        cache: where the images of a ``folder:`` dataset live: ``"memory"`` (decoded once,
            at the output size), ``"none"`` (streamed: read and decoded from their files in
            every epoch, in parallel inside tf.data, so memory does not grow with the
            dataset) or ``"auto"``: memory when the decoded images fit in ``memory_budget``
            bytes, else streamed. A streamed folder's files are all decoded once to find the
            undecodable ones, which are left out and listed in ``bad_files`` (the answer is
            kept in ``~/.cache/tfmagic``, so the next run over unchanged files skips the
            check); in memory an undecodable file is an error. Other datasets are in memory.
        memory_budget: bytes of decoded images that ``cache="auto"`` keeps in memory.
        crop_scale: ``(min, max)`` area fraction of an Inception (random-resized) crop of
            every training image (aspect ratio 3/4 to 4/3, then a flip with probability
            1/2), resized to the output size; None for no crop. A streamed image is cropped
            from its file at full resolution (a JPEG decodes only the crop window).
        crop_fraction: evaluation images are the central ``crop_fraction`` of the image: in
            memory the central part of the resized image resized back; streamed, the short
            side resized to ``size / crop_fraction`` and the central crop (1 = the whole
            image; a streamed image keeps its aspect ratio, a square crop of its centre).
        label_base: the first label of a ``tfrecord:`` dataset (1 for shards whose labels
            run from 1, as in the ImageNet shards of the Inception scripts); subtracted.

    Returns:
        DataSplits. Unless ``preprocess`` is given, images are normalized ``(x - mean) / std``
        per channel with statistics of the training split (0..255 scale).

    Raises:
        DataError: a bad argument (named in the message) or a dataset that cannot be loaded.
    """
    check_dataset_name(dataset)
    _check_arguments(
        batch_size, seed, train_subset, validation_fraction, image_size, channels, augment,
        eval_batch_size, eval_transform, preprocess,
    )
    _check_int("min_image_size", min_image_size, 1, optional=True)
    _check_int("memory_budget", memory_budget, 0)
    _check_int("label_base", label_base, 0)
    if cache not in CACHE_MODES:
        raise DataError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    if crop_scale is not None and not (
            isinstance(crop_scale, tuple | list) and len(crop_scale) == 2
            and 0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise DataError(f"crop_scale must be None or (min, max) with 0 < min <= max <= 1, "
                        f"got {crop_scale!r}")
    if not is_number(crop_fraction) or not 0 < crop_fraction <= 1:
        raise DataError(f"crop_fraction must be a number in (0, 1], got {crop_fraction!r}")
    streamed, bad_files, size, from_records = False, (), None, None
    if dataset == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = fashion_mnist()
        class_names = FASHION_MNIST_CLASSES
    elif dataset.startswith("folder:"):
        folder = _load_folder(dataset.partition(":")[2], image_size, cache, memory_budget)
        x_train, y_train, x_test, y_test = (folder.x_train, folder.y_train, folder.x_test,
                                            folder.y_test)
        class_names, streamed, bad_files = folder.names, folder.streamed, folder.bad_files
        size = folder.size
    else:
        kind, _, rest = dataset.partition(":")
        if kind == "tfds":
            loaded = _load_tfds(rest, cache, memory_budget)
        elif cache == "memory":
            raise DataError(f"cache=memory is not available for {dataset}: tfrecord: datasets "
                            "are streamed (cache=auto or cache=none)")
        else:
            try:
                loaded = records.tfrecord_source(rest, label_base)
            except records.RecordError as e:
                raise DataError(str(e)) from e
        if isinstance(loaded, records.Source):
            from_records = _load_records(loaded)
            x_train, y_train, x_test, y_test = (from_records.x_train, from_records.y_train,
                                                from_records.x_test, from_records.y_test)
            class_names, streamed = from_records.names, True
            bad_files = from_records.index.bad
        else:
            x_train, y_train, x_test, y_test, class_names = loaded
    num_classes = len(class_names)

    source_channels = 3 if streamed else x_train.shape[-1]
    target_channels = source_channels if channels is None else channels
    if (source_channels, target_channels) not in ((1, 1), (1, 3), (3, 3)):
        raise DataError(
            f"channels={channels} is not supported for {dataset} ({source_channels}-channel "
            "images): grayscale can become 3 channels, colour cannot become 1"
        )

    if train_subset is not None:
        available = len(y_train)
        present = int(np.count_nonzero(np.bincount(y_train, minlength=num_classes)))
        if not present <= train_subset <= available:
            raise DataError(
                f"train_subset={train_subset} must be between {present} (one image per class) "
                f"and {available} (training images of {dataset})"
            )
        rng = np.random.default_rng((seed, _SUBSET_STREAM))
        keep = _stratified_subset(y_train, num_classes, train_subset, rng)
        x_train, y_train = x_train[keep], y_train[keep]

    x_val = y_val = None
    if validation_fraction > 0:
        rng = np.random.default_rng((seed, _VALIDATION_STREAM))
        what = f"validation_fraction for {dataset}"
        if from_records is None:
            val_idx = _stratified_holdout(y_train, num_classes, float(validation_fraction),
                                          rng, what)
        else:
            val_idx = _shard_holdout(from_records.index, x_train, num_classes,
                                     float(validation_fraction), rng, what)
        train_mask = np.ones(len(y_train), dtype=bool)
        train_mask[val_idx] = False
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_mask], y_train[train_mask]

    if from_records is not None and image_size is None:
        size = _first_record_size(from_records, x_train)
    if size is None or not streamed:
        size = (image_size, image_size) if image_size else tuple(x_train.shape[1:3])
    if min_image_size:
        size = tuple(max(side, min_image_size) for side in size)
    if from_records is not None:
        mean, std = _record_stats(from_records.source, from_records.index, x_train, size, seed)
    elif streamed:
        mean, std = _file_stats(x_train, size, seed)
    else:
        mean, std = _channel_stats(x_train)
    if target_channels != source_channels:
        mean, std = mean * target_channels, std * target_channels
    finish = {"eval_transform": eval_transform, "one_hot": num_classes if one_hot else None,
              "preprocess": preprocess, "mean": mean, "std": std, "augment": None}
    common = {"size": size, "seed": seed, "crop_fraction": float(crop_fraction)}
    if from_records is not None:
        def make(x, y, batch, train):
            return _record_pipeline(from_records.source, from_records.index, x,
                                    batch_size=batch, train=train, crop_scale=crop_scale,
                                    **common, **{**finish, "augment": augment if train else None})
    elif streamed:
        def make(x, y, batch, train):
            return _file_pipeline(x, y, batch_size=batch, train=train,
                                  crop_scale=crop_scale, **common,
                                  **{**finish, "augment": augment if train else None})
    else:
        crop = None if crop_scale is None else random_resized_crop(
            scale=tuple(crop_scale), seed=seed * 16 + 1)

        def make(x, y, batch, train):
            return _pipeline(x, y, batch_size=batch, train=train, channels=target_channels,
                             crop=crop, **common,
                             **{**finish, "augment": augment if train else None})
    eval_batch = eval_batch_size or batch_size
    train = make(x_train, y_train, batch_size, True)
    validation = None if x_val is None else make(x_val, y_val, eval_batch, False)()
    test = make(x_test, y_test, eval_batch, False)()
    return DataSplits(
        train=train(),
        train_from_epoch=train,
        validation=validation,
        test=test,
        num_classes=num_classes,
        input_shape=(size[0], size[1], target_channels),
        train_size=len(y_train),
        validation_size=0 if y_val is None else len(y_val),
        test_size=len(y_test),
        class_names=tuple(class_names),
        mean=mean,
        std=std,
        streamed=streamed,
        bad_files=tuple(bad_files),
    )
