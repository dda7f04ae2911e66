"""Streamed image folders: real photos of mixed sizes and formats read from their files every
epoch, crops from the original resolution, bad files left out and recorded, flat memory."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from photos import PHOTO_RUN, PHOTOS, batches, photo_folder, resumed_epochs
from PIL import Image

from tfmagic import data
from tfmagic.recipe import Recipe
from tfmagic.training import train


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"))


def test_streamed_folder_trains_through_train(photos, tmp_path):
    recipe = Recipe(dataset=f"folder:{photos}", cache="none", image_size=64, epochs=2,
                    batch_size=16, crop_scheme="random_resized_crop", **PHOTO_RUN,
                    augment="autoaugment", validation_fraction=0.1,
                    output_dir=str(tmp_path / "run"))
    result = train(recipe, verbose=0)
    assert result.status == "completed" and result.epochs_run == 2
    assert result.streamed
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["streamed"] is True and saved["bad_files"] == []
    assert len(saved["input_mean"]) == 3 and all(0 < m < 255 for m in saved["input_mean"])
    assert result.test_accuracy > 0.5              # two very different photos


def test_streamed_evaluation_equals_the_in_memory_path(tmp_path):
    """Files already at the output size: both paths give the same evaluation batches."""
    root = tmp_path / "same_size"
    rng = np.random.default_rng(1)
    for label, photo in enumerate(PHOTOS):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(12):
            top, left = rng.integers(0, 427 - 48), rng.integers(0, 640 - 48)
            Image.fromarray(photo[top:top + 48, left:left + 48]).save(root / f"c{label}/{i}.png")
    common = dict(batch_size=8, image_size=48, validation_fraction=0.25, seed=3)
    memory = data.load(f"folder:{root}", cache="memory", **common)
    streamed = data.load(f"folder:{root}", cache="none", **common)
    assert not memory.streamed and streamed.streamed
    for name in ("validation", "test"):
        ours, theirs = batches(getattr(streamed, name)), batches(getattr(memory, name))
        assert len(ours) == len(theirs) > 0
        for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(y, y_ref)
            # Normalized with statistics of the whole split (memory) or of a sample of its
            # files (streamed): compare the images in 0..255.
            pixels = x * np.array(streamed.std) + np.array(streamed.mean)
            reference = x_ref * np.array(memory.std) + np.array(memory.mean)
            np.testing.assert_allclose(pixels, reference, atol=1e-3)
    # 36 training files, fewer than the 2,000 sampled: the statistics are the same numbers.
    np.testing.assert_allclose(streamed.mean, memory.mean, rtol=1e-6)


def test_random_resized_crop_comes_from_the_original_resolution(tmp_path):
    """A 1-pixel checkerboard at 512x512: a crop of about 23x23 original pixels, enlarged to
    32x32, keeps its contrast; a copy shrunk to 32x32 first is flat grey."""
    board = (np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)
    for name in ("a", "b"):
        (tmp_path / "board" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(board).convert("RGB").save(tmp_path / "board" / name / f"{i}.png")
    common = dict(batch_size=4, image_size=32, validation_fraction=0.0,
                  crop_scale=(0.002, 0.002))
    streamed = data.load(f"folder:{tmp_path / 'board'}", cache="none", **common)
    memory = data.load(f"folder:{tmp_path / 'board'}", cache="memory", **common)

    def spread(splits):
        x, _ = next(iter(splits.train))
        return float(np.std(x.numpy() * np.array(splits.std) + np.array(splits.mean)))

    assert spread(streamed) > 30
    assert spread(memory) < 5


def test_a_streamed_folder_crops_by_epoch_and_position_so_resumes_and_workers_agree(photos):
    """Training crops are drawn from the batch's number and the image's position: the stream
    from epoch 1 repeats epoch 1 of the stream from epoch 0, and two workers' halves of each
    batch are the whole batch's even and odd images."""
    splits = data.load(f"folder:{photos}", cache="none", batch_size=16, image_size=32,
                       crop_scale=(0.25, 1.0), validation_fraction=0.0, seed=3)
    steps = -(-splits.train_size // 16)
    _, from_one = resumed_epochs(splits, steps)
    halves = [batches(splits.train_from_epoch(1, worker=w, workers=2).take(steps))
              for w in (0, 1)]
    for (x, y), (x0, y0), (x1, y1) in zip(from_one, *halves, strict=True):
        np.testing.assert_array_equal(x[0::2], x0)
        np.testing.assert_array_equal(x[1::2], x1)
        np.testing.assert_array_equal(y[0::2], y0)
        np.testing.assert_array_equal(y[1::2], y1)
    # Two iterations of the one-epoch dataset crop differently: a new stream each time.
    first, second = batches(splits.train), batches(splits.train)
    assert len(first) == steps and not np.array_equal(first[0][0], second[0][0])
    assert not any(d.options().autotune.enabled for d in (
        splits.train, splits.test, splits.train_from_epoch(1, worker=1, workers=2)))


def test_undecodable_files_are_left_out_and_recorded(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("TFMAGIC_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "bad"
    shutil.copytree(photos, root)
    bad = {root / "photo0" / "empty.jpg": b"", root / "photo1" / "notes.png": b"not an image",
           root / "photo1" / "cut.jpg": (root / "photo1" / "crop000.jpg").read_bytes()[:300]}
    for path, payload in bad.items():
        path.write_bytes(payload)
    splits = data.load(f"folder:{root}", cache="none", batch_size=16, image_size=32)
    assert sorted(splits.bad_files) == sorted(str(p) for p in bad)
    assert splits.train_size + splits.validation_size + splits.test_size == 2 * 45
    assert len(os.listdir(tmp_path / "cache" / "checked-files")) == 1
    again = data.load(f"folder:{root}", cache="none", batch_size=16, image_size=32)
    assert again.bad_files == splits.bad_files
    for x, _ in splits.train:                     # a whole epoch reads only good files
        assert np.isfinite(x.numpy()).all()
    with pytest.raises(data.DataError, match="3 of its 93 image files cannot be decoded"):
        data.load(f"folder:{root}", cache="memory", batch_size=16, image_size=32)


EPOCHS_RSS = """
import json, sys
import tensorflow as tf
from tfmagic import data

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

splits = data.load("folder:" + sys.argv[1], batch_size=32, image_size=128,
                   memory_budget=5 * 2**20, validation_fraction=0.0, crop_scale=(0.25, 1.0))
samples = [rss_mib()]
for _ in range(3):
    seen = sum(int(tf.shape(x)[0]) for x, _ in splits.train)
    samples.append(rss_mib())
print(json.dumps({"streamed": splits.streamed, "seen": seen, "train_size": splits.train_size,
                  "rss_mib": samples}))
"""


def test_a_streamed_epoch_keeps_memory_flat(tmp_path):
    """300 JPEGs of 512x512 (225 MiB decoded, 45 times the 5 MiB budget), streamed for three
    epochs in a fresh process: resident memory grows by less than half the decoded size in
    all, and the third epoch adds under 25 MiB to the second."""
    rng = np.random.default_rng(2)
    for label in range(2):
        (tmp_path / "big" / f"c{label}").mkdir(parents=True)
        for i in range(150):
            top, left = rng.integers(0, 427 - 256), rng.integers(0, 640 - 256)
            image = Image.fromarray(PHOTOS[label][top:top + 256, left:left + 256])
            image.resize((512, 512)).save(tmp_path / "big" / f"c{label}" / f"{i}.jpg")
    done = subprocess.run([sys.executable, "-c", EPOCHS_RSS, str(tmp_path / "big")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["streamed"] and found["seen"] == found["train_size"]
    before, *after = found["rss_mib"]
    print(f"resident memory before: {before:.0f} MiB, after each epoch: "
          f"{', '.join(f'{s:.0f}' for s in after)} MiB")
    assert after[2] - before < 225 / 2
    assert after[2] - after[1] < 25


@pytest.mark.slow
def test_fashion_mnist_as_png_files_trains_as_well_streamed_as_in_memory(tmp_path):
    """Fashion-MNIST written out as a PNG folder (3,000 training and 1,000 test images),
    trained three seeds each in memory and streamed: the mean test accuracies differ by less
    than three standard errors of their difference, measured from the seeds' spread, plus
    half a point."""
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist()
    for split, images, labels, count in (("train", x_train, y_train, 3000),
                                         ("test", x_test, y_test, 1000)):
        for i in range(count):
            folder = tmp_path / "fmnist" / split / f"class{labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, :, :, 0]).save(folder / f"{i:05d}.png")
    accuracies = {}
    for cache in ("memory", "none"):
        accuracies[cache] = np.array([
            train(Recipe(dataset=f"folder:{tmp_path / 'fmnist'}", cache=cache, epochs=3,
                         batch_size=64, width=0.5, se=False, augment="none", seed=seed,
                         output_dir=str(tmp_path / f"{cache}{seed}")), verbose=0).test_accuracy
            for seed in range(3)])
    memory, streamed = accuracies["memory"], accuracies["none"]
    error = np.sqrt(memory.var(ddof=1) / 3 + streamed.var(ddof=1) / 3)
    print(f"test accuracy in memory {memory}, streamed {streamed}, standard error of the "
          f"difference {error:.4f}")
    assert memory.mean() > 0.7 and streamed.mean() > 0.7
    assert abs(memory.mean() - streamed.mean()) < 3 * error + 0.005
