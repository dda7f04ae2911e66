"""The atomic-write helper, on a local path and on a path of another file system (``ram://``,
TensorFlow's in-memory one, written through ``tf.io.gfile`` as ``gs://`` would be): a reader
finds the old file or the whole new one, and no temporary file is left behind."""

import json
import uuid

import pytest
import tensorflow as tf
from photos import photo_folder

from tfmagic import data
from tfmagic._atomic import atomic_path, write_atomic


@pytest.fixture(params=["local", "ram"])
def directory(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"ram://atomic-{uuid.uuid4().hex}/out"


def _read(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def test_write_atomic_creates_the_directory_and_replaces_the_whole_file(directory):
    target = f"{directory}/nested/result.json"
    write_atomic(target, "first\n")
    assert _read(target) == b"first\n"
    write_atomic(target, b"second")
    assert _read(target) == b"second"
    assert tf.io.gfile.listdir(f"{directory}/nested") == ["result.json"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(directory):
    target = f"{directory}/model.keras"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as partial:
        assert partial.endswith("-model.keras") and partial != target
        with tf.io.gfile.GFile(partial, "wb") as f:
            f.write(b"half of the new one")
        raise RuntimeError("interrupted")
    assert _read(target) == b"old"
    assert tf.io.gfile.listdir(directory) == ["model.keras"]


def test_tfrecord_shards_and_their_description_go_to_another_file_system(tmp_path):
    photos = photo_folder(tmp_path / "photos", per_class=6)
    out = f"ram://atomic-{uuid.uuid4().hex}/shards"
    written = data.write_tfrecords(f"folder:{photos}", out, shard_bytes=50_000, seed=0)
    names = sorted(tf.io.gfile.listdir(out))
    shards = [name for name in names if name.endswith(".tfrecord")]
    assert names == sorted([*shards, "dataset.json"]) and len(shards) > 2
    assert json.loads(_read(f"{out}/dataset.json")) == written
    records = tf.data.TFRecordDataset([f"{out}/{name}" for name in shards])
    assert sum(1 for _ in records) == sum(written["splits"].values())
