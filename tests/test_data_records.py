"""Record sources: TFRecord shards written by the converter, hand-made ImageNet-style shards
and a tensorflow-datasets builder of variable-size images, all streamed."""

import filecmp
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from photos import PHOTO_RUN, batches, photo_folder, resumed_epochs

from tfmagic import data, records
from tfmagic.recipe import Recipe
from tfmagic.training import train

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"), per_class=30)


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards") / "out")
    data.write_tfrecords(f"folder:{photos}", out, shard_bytes=100_000, seed=4)
    return out


def _png(value: int, size: int = 8) -> bytes:
    return tf.io.encode_png(np.full((size, size, 3), value, np.uint8)).numpy()


def _write(path, examples):
    """Write ``(image bytes, label)`` as ImageNet-schema records."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in examples:
            feature = {
                records.IMAGE_FEATURE: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[image])),
                records.LABEL_FEATURE: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


def test_converted_shards_hold_the_folder_and_stream_its_test_split_pixel_for_pixel(
        photos, shards):
    listed = sorted(os.listdir(shards))
    with open(os.path.join(shards, "dataset.json")) as f:
        described = json.load(f)
    assert described["classes"] == ["photo0", "photo1"] and described["bad_files"] == []
    train_shards = [name for name in listed if name.startswith("train-")]
    assert len(train_shards) > 3
    assert train_shards[0] == f"train-00000-of-{len(train_shards):05d}.tfrecord"
    common = dict(batch_size=8, image_size=40, crop_fraction=0.875, seed=1,
                  preprocess=lambda x: x)
    folder = data.load(f"folder:{photos}", cache="none", **common)
    streamed = data.load(f"tfrecord:{shards}", **common)
    assert streamed.streamed and streamed.class_names == ("photo0", "photo1")
    assert described["splits"] == {"train": folder.train_size + folder.validation_size,
                                   "test": folder.test_size}
    assert streamed.test_size == folder.test_size
    for (x, y), (x_folder, y_folder) in zip(batches(streamed.test), batches(folder.test),
                                            strict=True):
        np.testing.assert_array_equal(y, y_folder)
        np.testing.assert_array_equal(x, x_folder)         # same bytes, same decode and resize
    # Every training shard mixes the classes (records in a seeded order across shards).
    first = records.tfrecord_source(os.path.join(shards, train_shards[0]))
    labels = [int(records.parse_example(r)[1]) for r in tf.data.TFRecordDataset(first.shards)]
    assert len(set(labels)) == 2


def test_the_command_writes_the_same_shards_as_the_library(photos, shards, tmp_path):
    """The command's shards are the library's, and its screen is quiet whether the user set
    TensorFlow's log level (to 3 here: the lines TensorFlow writes before its level applies
    are filtered by it) or not (the refused second command)."""
    out = tmp_path / "cli"
    unset = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tfmagic-data"),
         f"--dataset=folder:{photos}", f"--output_dir={out}", "--shard_mb=1", "--seed=4"],
        capture_output=True, text=True, timeout=300, env={**unset, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "images, 2 classes" in done.stdout, done.stdout
    assert done.stderr == "", done.stderr[-4000:]        # its text shown when it is not empty
    again = tmp_path / "lib"
    data.write_tfrecords(f"folder:{photos}", str(again), shard_bytes=2**20, seed=4)
    assert sorted(os.listdir(out)) == sorted(os.listdir(again))
    assert all(filecmp.cmp(out / name, again / name, shallow=False)
               for name in os.listdir(out) if name.endswith(".tfrecord"))
    refused = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tfmagic-data"),
         f"--dataset=folder:{photos}", f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300, env=unset)
    assert refused.returncode == 1 and "already holds files" in refused.stderr
    for noise in ("I0000", "absl::InitializeLog", "cuda"):
        assert noise not in refused.stderr, refused.stderr[-4000:]


def test_a_conversion_stopped_part_way_leaves_no_output_dir(photos, tmp_path, monkeypatch):
    """The shards are written beside output_dir and renamed to it once whole: a conversion
    that fails after its training shards (here the disk fills up) leaves nothing."""
    write_shards = records.write_shards

    def full_disk_at_the_test_split(output_dir, prefix, *args):
        if prefix == "test":
            raise OSError(28, "No space left on device")
        return write_shards(output_dir, prefix, *args)

    monkeypatch.setattr(records, "write_shards", full_disk_at_the_test_split)
    with pytest.raises(OSError, match="No space left"):
        data.write_tfrecords(f"folder:{photos}", str(tmp_path / "out"), shard_bytes=100_000)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # What a conversion killed part way leaves (its process gone) goes; a running one's stays.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    killed = tmp_path / f".tmp-{ended.stdout.strip()}-{'a' * 32}-out"
    running = tmp_path / f".tmp-{os.getpid()}-{'b' * 32}-out"
    for staging in (killed, running):
        staging.mkdir()
        (staging / "train-00000-of-00002.tfrecord").write_bytes(b"part")
    written = data.write_tfrecords(f"folder:{photos}", str(tmp_path / "out"),
                                   shard_bytes=100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", running.name])
    assert json.loads((tmp_path / "out" / records.DESCRIPTION_FILE).read_text()) == written
    assert {name.split("-")[0] for name in os.listdir(tmp_path / "out")} == {
        "train", "test", records.DESCRIPTION_FILE}


def test_tfrecords_train_through_train(shards, tmp_path):
    recipe = Recipe(dataset=f"tfrecord:{shards}", image_size=48, epochs=2, batch_size=16,
                    crop_scheme="random_resized_crop", augment="autoaugment", **PHOTO_RUN,
                    output_dir=str(tmp_path / "run"))
    result = train(recipe, verbose=0)
    assert result.status == "completed" and result.epochs_run == 2 and result.streamed
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["bad_files"] == [] and all(0 < m < 255 for m in saved["input_mean"])
    assert result.test_accuracy > 0.5              # two very different photos


def test_a_streamed_epoch_follows_from_the_seed_and_its_number(shards):
    splits = data.load(f"tfrecord:{shards}", batch_size=8, image_size=32, seed=5,
                       crop_scale=(0.3, 1.0), validation_fraction=0.2)
    steps = -(-splits.train_size // 8)
    from_zero, _ = resumed_epochs(splits, steps)
    # Each epoch holds every training record once, in a new order; batches end with it.
    assert [len(y) for _, y in from_zero[:steps]] == [8] * (steps - 1) + [
        splits.train_size - 8 * (steps - 1)]
    first, second = (np.concatenate([y for _, y in part])
                     for part in (from_zero[:steps], from_zero[steps:]))
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    images = [np.concatenate([x for x, _ in part]) for part in (from_zero[:steps],
                                                                 from_zero[steps:])]
    assert not np.allclose(np.sort(images[0].ravel()), np.sort(images[1].ravel()))
    assert not any(d.options().autotune.enabled for d in (
        splits.train, splits.validation, splits.test, splits.train_from_epoch(0)))


def test_label_base_bad_records_and_splits_of_hand_made_shards(tmp_path):
    """ImageNet-style shards with labels from 1, one undecodable record, no test shards:
    labels start at 0, the bad record is named and left out, the test split is held out,
    and the validation split reads few shards."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    root.mkdir()
    for shard in range(20):
        examples = [(_png(int(v)), 1 + int(v) % 3) for v in rng.integers(0, 256, 30)]
        if shard == 7:
            examples[4] = (b"not an image", 2)
        _write(root / records.shard_name("train", shard, 20), examples)
    splits = data.load(f"tfrecord:{root}", label_base=1, batch_size=64, image_size=8,
                       validation_fraction=0.1, preprocess=lambda x: x)
    assert splits.class_names == ("0", "1", "2")
    assert splits.bad_files == (f"{root / records.shard_name('train', 7, 20)}#4",)
    assert splits.train_size + splits.validation_size + splits.test_size == 599
    assert splits.test_size == round(599 / 6)
    train_batches = batches(splits.train)
    labels = np.concatenate([y for _, y in train_batches])
    pixels = np.concatenate([x for x, _ in train_batches])
    assert set(labels) == {0, 1, 2}
    np.testing.assert_array_equal(pixels[:, 0, 0, 0].astype(int) % 3, labels)
    # The validation records come from the fewest seeded shards holding twice as many.
    index = records.index(records.tfrecord_source(str(root), label_base=1))
    rows = np.arange(len(index.label))
    held = data._shard_holdout(index, rows, 3, 0.1, np.random.default_rng(1), "validation")
    assert len(held) == 60 and len(np.unique(index.shard[held])) <= 5
    candidates = np.isin(index.shard, index.shard[held])
    np.testing.assert_allclose(np.bincount(index.label[held]),
                               60 * np.bincount(index.label[candidates]) / candidates.sum(),
                               atol=1)
    with pytest.raises(data.DataError, match="label 1 is below label_base=2"):
        data.load(f"tfrecord:{root}", label_base=2, batch_size=8, image_size=8)


def test_bad_tfrecord_specs_are_refused_naming_what_is_wrong(tmp_path, photos):
    (tmp_path / "odd").mkdir()
    _write(tmp_path / "odd" / "train-0.tfrecord", [(_png(1), 0), (_png(2), 1)])
    _write(tmp_path / "odd" / "extra.tfrecord", [(_png(1), 0)])
    (tmp_path / "test_only").mkdir()
    _write(tmp_path / "test_only" / "test-0.tfrecord", [(_png(1), 0)])
    cases = {
        f"tfrecord:{tmp_path}/nothing-*": "no file matches",
        f"tfrecord:{tmp_path / 'odd'}": r"1 file\(s\) belong to no split .*extra.tfrecord",
        f"tfrecord:{tmp_path / 'test_only'}": "no training shards",
        "tfrecord:": "tfrecord: needs a glob or a directory",
    }
    for spec, message in cases.items():
        with pytest.raises(data.DataError, match=message):
            data.load(spec, batch_size=8, image_size=8)
    with pytest.raises(data.DataError, match="cache=memory is not available"):
        data.load(f"tfrecord:{tmp_path / 'odd'}", cache="memory", batch_size=8)
    with pytest.raises(data.DataError, match="must be a folder:PATH"):
        data.write_tfrecords("fashion_mnist", str(tmp_path / "x"))
    with pytest.raises(data.DataError, match="label_base must be an integer >= 0"):
        data.load(f"tfrecord:{tmp_path / 'odd'}", label_base=-1, batch_size=8)
    assert not (tmp_path / "x").exists()


class VariablePhotos(tfds.core.GeneratorBasedBuilder):
    """Real-photo crops of varying sizes in two classes, JPEG-encoded by tfds."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = tfds.core.Path(tempfile.mkdtemp())

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["china", "flower"]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(80, 0),
                "validation": self._generate_examples(20, 1)}

    def _generate_examples(self, count, seed):
        from photos import PHOTOS

        rng = np.random.default_rng(seed)
        for i in range(count):
            height, width = rng.integers(40, 160, 2)
            top, left = rng.integers(0, 427 - height), rng.integers(0, 640 - width)
            yield i, {"image": PHOTOS[i % 2][top:top + height, left:left + width],
                      "label": i % 2}


def test_tfds_images_of_any_size_stream_and_train(tmp_path):
    data_dir = str(tmp_path / "tfds")
    tfds.builder("variable_photos", data_dir=data_dir).download_and_prepare()
    tfds.core.add_data_dir(data_dir)
    splits = data.load("tfds:variable_photos", batch_size=16, image_size=32,
                       validation_fraction=0.25)
    assert splits.streamed and splits.class_names == ("china", "flower")
    assert (splits.train_size, splits.validation_size, splits.test_size) == (60, 20, 20)
    assert splits.input_shape == (32, 32, 3)
    with pytest.raises(data.DataError, match="cannot be held in memory"):
        data.load("tfds:variable_photos", cache="memory", batch_size=16, image_size=32)
    recipe = Recipe(dataset="tfds:variable_photos", image_size=32, epochs=2, batch_size=16,
                    crop_scheme="random_resized_crop", **PHOTO_RUN,
                    output_dir=str(tmp_path / "run"))
    result = train(recipe, verbose=0)
    assert result.status == "completed" and result.streamed and result.test_accuracy > 0.5


def test_each_worker_reads_its_own_shards(tmp_path):
    """Record (shard s, position p) is an image of value (s, p, 0): over an epoch's first
    records two workers read disjoint sets of shards, all six together, in batches of half
    the global batch."""
    for shard in range(6):
        examples = []
        for position in range(20):
            image = np.zeros((4, 4, 3), np.uint8)
            image[..., 0], image[..., 1] = shard, position
            examples.append((tf.io.encode_png(image).numpy(), position % 2))
        _write(tmp_path / records.shard_name("train", shard, 6), examples)
    splits = data.load(f"tfrecord:{tmp_path}/*-of-*", batch_size=8, image_size=4,
                       validation_fraction=0.0, preprocess=lambda x: x)
    assert splits.train_size == 100 and splits.test_size == 20
    seen = []
    for worker in range(2):
        parts = [x.numpy() for x, _ in splits.train_from_epoch(3, worker=worker,
                                                                workers=2).take(7)]
        assert all(len(x) == 4 for x in parts)
        pixels = np.concatenate(parts)[:, 0, 0, :2].astype(int)
        seen.append(pixels)
        assert len({tuple(p) for p in pixels}) == len(pixels)       # no record twice
    shards = [set(pixels[:, 0]) for pixels in seen]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 6
