"""Image classification records: TFRecord shards and tensorflow-datasets files.

A record source is a list of shard files and a parser from one serialized record to its
encoded image (the bytes of a JPEG, PNG, GIF or BMP file) and its label. Shards are read
through ``tf.io.gfile``, so any file system TensorFlow has (``gs://`` among them) works.

Before a source is streamed it is indexed once (:func:`index`): every record is read, its
label parsed and its image decoded, in parallel inside tf.data; the shard and position of
every record that decodes, its label, and the records that do not decode are kept in
``~/.cache/tfmagic/record-index`` (or ``$TFMAGIC_CACHE_DIR/record-index``), keyed by the
shards' paths, sizes and modification times, so later runs over the same shards skip it.
Splits are then chosen on the labels, stratified and seeded, without reading images again.

TFRecord shards use the schema of the usual ImageNet shards: ``image/encoded`` (the file's
bytes) and ``image/class/label`` (int64), with ``image/class/text`` and ``image/filename``
written by :func:`write_shards` and read by nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmagic._atomic import atomic_path, write_atomic

IMAGE_FEATURE = "image/encoded"
LABEL_FEATURE = "image/class/label"
TEXT_FEATURE = "image/class/text"
FILENAME_FEATURE = "image/filename"
# Written beside the shards by `write_shards`' callers: class names and split sizes.
DESCRIPTION_FILE = "dataset.json"
# Basename prefixes of the shards of each split.
TRAIN_PREFIXES = ("train",)
TEST_PREFIXES = ("test", "validation", "val")

_INDEX_DIR = "record-index"
_FEATURES = {
    IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
    LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
}


class RecordError(ValueError):
    """A record source is missing, unreadable or malformed."""


def decode(contents: tf.Tensor) -> tf.Tensor:
    """The bytes of a JPEG, PNG, GIF (first frame) or BMP file as uint8 RGB ``(h, w, 3)``."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decoder_reason(error: tf.errors.OpError) -> str:
    """TensorFlow's error message without its op and function annotations."""
    return re.sub(r"\{\{[^}]*\}\}|\[Op:.*", "", error.message).strip().rstrip(".")


def cache_dir(name: str) -> str:
    """``$TFMAGIC_CACHE_DIR/name``, or ``~/.cache/tfmagic/name``."""
    root = os.environ.get("TFMAGIC_CACHE_DIR")
    return os.path.join(root, name) if root else os.path.expanduser(
        os.path.join("~", ".cache", "tfmagic", name))


@dataclasses.dataclass(frozen=True)
class Source:
    """Shards and how to read them.

    ``parse(serialized)`` gives ``(encoded image bytes, int64 label)`` with the label as
    stored; ``label_base`` is subtracted from it (1 for shards whose first class is 1).
    ``train`` and ``test`` are indices into ``shards``; ``test`` is empty when the source has
    no test shards.
    """

    what: str
    shards: tuple[str, ...]
    train: tuple[int, ...]
    test: tuple[int, ...]
    parse: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
    class_names: tuple[str, ...] | None
    label_base: int = 0


@dataclasses.dataclass(frozen=True)
class Index:
    """Where every decodable record of a source is: ``shard`` (index into the source's
    shards), ``position`` in its shard, and ``label`` (``label_base`` subtracted), in shard
    and position order; ``counts`` is the number of records read from each shard, decodable
    or not; ``bad`` names each record that does not decode (``shard#position``)."""

    shard: np.ndarray
    position: np.ndarray
    label: np.ndarray
    counts: np.ndarray
    bad: tuple[str, ...]

    def global_ids(self, rows: np.ndarray) -> np.ndarray:
        """Ids of records ``rows`` unique across shards: the shard's offset plus position."""
        offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        return offsets[self.shard[rows]] + self.position[rows]


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A ``tf.train.Example`` of the ImageNet schema: ``(image bytes, int64 label)``."""
    features = tf.io.parse_single_example(serialized, _FEATURES)
    return features[IMAGE_FEATURE], features[LABEL_FEATURE]


def _split_of(shard: str) -> str | None:
    name = os.path.basename(shard).lower()
    for split, prefixes in (("train", TRAIN_PREFIXES), ("test", TEST_PREFIXES)):
        if name.startswith(prefixes):
            return split
    return None


# A member of a numbered shard set: ``train-00003-of-00032.tfrecord``.
_NUMBERED = re.compile(r"^(?P<stem>.*)-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>.*)$")


def _missing_members(shards: list[str]) -> list[str]:
    """The members that a numbered shard set (``-NNNNN-of-NNNNN``) among ``shards`` lacks."""
    sets: dict[tuple[str, str, str, str], set[int]] = {}
    for shard in shards:
        found = _NUMBERED.match(os.path.basename(shard))
        if found:
            key = (os.path.dirname(shard), found["stem"], found["count"], found["suffix"])
            sets.setdefault(key, set()).add(int(found["index"]))
    missing = []
    for (directory, stem, count, suffix), present in sorted(sets.items()):
        missing += [tf.io.gfile.join(directory, f"{stem}-{index:0{len(count)}d}-of-{count}{suffix}")
                    for index in range(int(count)) if index not in present]
    return missing


def tfrecord_source(pattern: str, label_base: int = 0) -> Source:
    """The TFRecord shards matched by ``pattern`` (a glob, or a directory for all its files).

    Shards whose names start with ``train`` are the training split, ``test``, ``validation``
    or ``val`` the test split; without test shards the caller holds out a test split.
    Class names come from ``dataset.json`` beside the shards when there is one.

    Raises:
        RecordError: nothing matches, a matched file belongs to neither split, a directory's
            numbered set (``train-00003-of-00032.tfrecord``) lacks members (a glob may pick
            some members), or there are no training shards; each names the pattern and the
            files.
    """
    whole_set = tf.io.gfile.isdir(pattern)          # a glob may choose some shards of a set
    if whole_set:
        shards = [tf.io.gfile.join(pattern, name) for name in tf.io.gfile.listdir(pattern)
                  if not name.startswith(".") and name != DESCRIPTION_FILE]
    else:
        shards = [path for path in tf.io.gfile.glob(pattern)
                  if os.path.basename(path) != DESCRIPTION_FILE]
    shards = sorted(path for path in shards if not tf.io.gfile.isdir(path))
    what = f'dataset "tfrecord:{pattern}"'
    if not shards:
        raise RecordError(f"{what}: no file matches {pattern}")
    splits = [_split_of(shard) for shard in shards]
    stray = [shard for shard, split in zip(shards, splits, strict=True) if split is None]
    if stray:
        raise RecordError(
            f"{what}: {len(stray)} file(s) belong to no split ({', '.join(stray[:5])}); shard "
            f"names start with {' or '.join(TRAIN_PREFIXES)} (training) or "
            f"{', '.join(TEST_PREFIXES)} (test)")
    missing = _missing_members(shards) if whole_set else []
    if missing:
        raise RecordError(
            f"{what}: {len(missing)} member(s) of a numbered shard set are missing "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); a conversion "
            "that did not finish? Write the set again")
    train = tuple(i for i, split in enumerate(splits) if split == "train")
    if not train:
        raise RecordError(f"{what}: no training shards (names starting with "
                          f"{' or '.join(TRAIN_PREFIXES)}) among {len(shards)} files")
    names = None
    description = tf.io.gfile.join(os.path.dirname(shards[0]), DESCRIPTION_FILE)
    if tf.io.gfile.exists(description):
        with tf.io.gfile.GFile(description) as f:
            names = tuple(json.load(f)["classes"])
    return Source(what, tuple(shards), train,
                  tuple(i for i, split in enumerate(splits) if split == "test"),
                  parse_example, names, label_base)


def tfds_source(builder, image_key: str, label_key: str, test_split: str) -> Source:
    """The TFRecord files of a prepared tensorflow-datasets builder, images left encoded."""
    import tensorflow_datasets as tfds

    info = builder.info
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def parse(serialized):
        example = info.features.deserialize_example(serialized, decoders=decoders)
        return example[image_key], tf.cast(example[label_key], tf.int64)

    train = [str(path) for path in info.splits["train"].filepaths]
    test = [str(path) for path in info.splits[test_split].filepaths]
    names = getattr(info.features[label_key], "names", None)
    return Source(f'dataset "tfds:{builder.name}"', tuple(train + test),
                  tuple(range(len(train))), tuple(range(len(train), len(train) + len(test))),
                  parse, tuple(names) if names else None)


def _key(source: Source) -> str:
    """A digest of the shards' paths, sizes and modification times and the label base."""
    digest = hashlib.sha256(f"{source.label_base}\n".encode())
    for shard in source.shards:
        info = tf.io.gfile.stat(shard)
        digest.update(f"{shard}\0{info.length}\0{info.mtime_nsec}\n".encode())
    return digest.hexdigest()


def _records(source: Source) -> tf.data.Dataset:
    """``(shard, position, label, height)`` of every record of every shard, read, parsed and
    decoded in parallel; records that fail to parse or decode are dropped."""
    @tf.autograph.experimental.do_not_convert
    def read(shard, path):
        return tf.data.TFRecordDataset(path).enumerate().map(
            tf.autograph.experimental.do_not_convert(
                lambda position, record: (shard, position, record)))

    @tf.autograph.experimental.do_not_convert
    def inspect(shard, position, record):
        image, label = source.parse(record)
        return shard, position, label - source.label_base, tf.shape(decode(image))[0]

    paths = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(source.shards), dtype=np.int64), list(source.shards)))
    return paths.interleave(
        read, cycle_length=min(len(source.shards), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).map(inspect, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` without tf.data's autotuning thread.

    Deleting an autotuned iterator waits for that thread's next wake, and its wakes grow
    further apart the longer the iterator lives (to 60 s): on one core, an iterator read
    for 25 s took 16 s to delete (`benchmarks/iterator_stall.py`), and `fit` and `evaluate`
    delete theirs at every end. Without autotuning a parallel map runs as many calls at once
    as there are cores (16 at most) and a prefetch keeps its first buffer size.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _read_all(dataset: tf.data.Dataset) -> list[np.ndarray]:
    parts = [[], [], []]
    for shard, position, label, _ in untuned(dataset.batch(4096)).as_numpy_iterator():
        for part, values in zip(parts, (shard, position, label), strict=True):
            part.append(values)
    return [np.concatenate(part) if part else np.zeros((0,), np.int64) for part in parts]


def index(source: Source) -> Index:
    """Index every record of ``source`` (see the module docstring); cached.

    Raises:
        RecordError: a shard cannot be read, a label is below 0 after subtracting
            ``label_base``, or no record decodes.
    """
    record = os.path.join(cache_dir(_INDEX_DIR), _key(source) + ".npz")
    if os.path.isfile(record):
        with np.load(record) as saved:
            return Index(saved["shard"], saved["position"], saved["label"], saved["counts"],
                         tuple(str(bad) for bad in saved["bad"]))
    try:
        read_shard, read_position, _ = _read_all(_records_read(source))
        shard, position, label = _read_all(_records(source))
    except tf.errors.OpError as e:
        raise _unreadable_shard(source, e) from e
    counts = np.zeros(len(source.shards), np.int64)
    np.maximum.at(counts, read_shard, read_position + 1)
    order = np.lexsort((position, shard))
    shard, position, label = shard[order].astype(np.int32), position[order], label[order]
    good = set(zip(shard.tolist(), position.tolist(), strict=True))
    bad = tuple(f"{source.shards[s]}#{p}"
                for s, p in sorted(zip(read_shard.tolist(), read_position.tolist(),
                                       strict=True)) if (s, p) not in good)
    if len(label) and label.min() < 0:
        raise RecordError(
            f"{source.what}: label {int(label.min()) + source.label_base} is below "
            f"label_base={source.label_base}; labels must start at label_base")
    if not len(label):
        raise RecordError(f"{source.what}: none of its {int(counts.sum())} records decodes")
    result = Index(shard, position, label.astype(np.int32), counts, bad)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(record), exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, shard=result.shard, position=result.position, label=result.label,
                 counts=result.counts, bad=np.array(result.bad, dtype=str))
        write_atomic(record, buffer.getvalue())
    return result


def _unreadable_shard(source: Source, error: tf.errors.OpError) -> RecordError:
    """The error naming the first shard of ``source`` that cannot be read to its end, and
    where it breaks (each shard is read again, one at a time: this runs only after a read
    failed)."""
    for shard in source.shards:
        try:
            tf.data.TFRecordDataset(shard).reduce(np.int64(0), lambda count, _: count + 1)
        except tf.errors.OpError as e:
            found = re.search(r"(corrupted|truncated) record at (\d+)", e.message)
            reason = (f"a {found[1]} record at byte {found[2]}" if found
                      else decoder_reason(e))
            return RecordError(f"{source.what}: shard {shard} cannot be read: {reason}; write "
                               "it again (tfmagic-data) or remove the set")
    return RecordError(f"{source.what}: {decoder_reason(error)}")


def _records_read(source: Source) -> tf.data.Dataset:
    """``(shard, position, label, height)`` of every record that can be read at all: the
    label is -1 and nothing is parsed or decoded."""
    @tf.autograph.experimental.do_not_convert
    def read(shard, path):
        return tf.data.TFRecordDataset(path).enumerate().map(
            tf.autograph.experimental.do_not_convert(
                lambda position, _: (shard, position, tf.constant(-1, tf.int64), tf.constant(-1))))

    paths = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(source.shards), dtype=np.int64), list(source.shards)))
    return paths.interleave(read, cycle_length=min(len(source.shards), 16),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)


def shard_name(prefix: str, shard: int, count: int) -> str:
    """``prefix-00003-of-00016.tfrecord``."""
    return f"{prefix}-{shard:05d}-of-{count:05d}.tfrecord"


def _example(contents: bytes, label: int, text: str, filename: str) -> bytes:
    feature = {
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[contents])),
        LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        TEXT_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
        FILENAME_FEATURE: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[filename.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def write_shards(output_dir: str, prefix: str, items: list[tuple[str, int]],
                 class_names: tuple[str, ...], shard_bytes: int) -> list[str]:
    """Write ``(file, label)`` items, in the given order, as TFRecord shards of about
    ``shard_bytes`` each (by the files' sizes), every file's bytes as they are.

    Each shard is written atomically (`tfmagic._atomic`), so a shard with its final name is
    whole. Returns the shards' paths.
    """
    sizes = np.array([tf.io.gfile.stat(file).length for file, _ in items], np.int64)
    count = max(1, int(np.ceil(sizes.sum() / shard_bytes)))
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    paths = []
    for shard in range(count):
        path = tf.io.gfile.join(output_dir, shard_name(prefix, shard, count))
        with atomic_path(path) as partial, tf.io.TFRecordWriter(partial) as writer:
            for file, label in items[bounds[shard]:bounds[shard + 1]]:
                with tf.io.gfile.GFile(file, "rb") as f:
                    contents = f.read()
                writer.write(_example(contents, label, class_names[label],
                                      os.path.basename(file)))
        paths.append(path)
    return paths
