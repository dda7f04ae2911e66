"""A recipe's augmentation in the real input pipeline: training only, previews, real runs."""

import json

import numpy as np
import pytest
import tensorflow as tf
from photos import batches
from PIL import Image
from tensorflow.python.autograph.impl import api as autograph_api

from tfmagic import data
from tfmagic.augment import pipeline
from tfmagic.recipe import Recipe
from tfmagic.training import train

# Without SE: its gates slow the first epochs of a small ResNet, and these runs measure the
# augmentation, not the architecture.
QUICK = dict(train_subset=3000, batch_size=64, eval_batch_size=1000, width=0.5, lr=0.05,
             warmup_epochs=0.3, seed=5, se=False)


def _load(recipe, **extra):
    return data.load(recipe.dataset, batch_size=64, seed=recipe.seed, train_subset=600,
                     validation_fraction=0.1, augment=pipeline.build_train_augment(recipe),
                     eval_transform=pipeline.build_eval_transform(recipe),
                     one_hot=recipe.mixes_labels, **extra)


def test_nothing_to_do_gives_no_hook():
    recipe = Recipe(augment="none", crop_scheme="none")
    assert pipeline.build_train_augment(recipe) is None
    assert pipeline.build_eval_transform(recipe) is None


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory):
    """Two 12-image classes of 40x40 noise with a bright square where the class says, as a
    folder and as shards."""
    root = tmp_path_factory.mktemp("augment_sources")
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / "folder" / f"c{label}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            pixels[label * 20:label * 20 + 20, 10:30] = 250
            Image.fromarray(pixels).save(root / "folder" / f"c{label}" / f"{i}.png")
    data.write_tfrecords(f"folder:{root / 'folder'}", str(root / "shards"))
    return {"memory": (f"folder:{root / 'folder'}", "memory"),
            "streamed": (f"folder:{root / 'folder'}", "none"),
            "records": (f"tfrecord:{root / 'shards'}", "none")}


@pytest.fixture
def autograph_conversions(monkeypatch):
    """The names of the functions AutoGraph is asked to rewrite while the test runs."""
    asked = []
    convert = autograph_api._convert_actual

    def counted(entity, program_ctx):
        asked.append(getattr(entity, "__qualname__", repr(entity)))
        return convert(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", counted)
    return asked


@pytest.mark.parametrize("source", ["memory", "streamed", "records"])
def test_every_augmentation_follows_from_the_seed_and_the_batch(small_sources, source,
                                                                autograph_conversions):
    """AutoAugment, the crop, Cutout and the mixing draw from the seed and the batch's place
    in the data: a second load with the seed, streamed from epoch 1, repeats epoch 1 of the
    first load's stream from epoch 0, and the epochs differ from each other. No function of
    the pipelines goes through AutoGraph (each is traced as written: the rewrite took seconds
    per pipeline)."""
    dataset, cache = small_sources[source]
    recipe = Recipe(dataset=dataset, augment="autoaugment", crop_scheme="random_resized_crop",
                    cutout=0.3, mixup_alpha=0.2, cutmix_alpha=1.0, seed=4)

    def load():
        return data.load(dataset, cache=cache, batch_size=6, image_size=32, seed=recipe.seed,
                         validation_fraction=0.0, crop_scale=pipeline.CROP_SCALE,
                         augment=pipeline.build_train_augment(recipe, resized_crop=False),
                         one_hot=recipe.mixes_labels)

    first = load()
    steps = -(-first.train_size // 6)
    from_zero = batches(first.train_from_epoch(0).take(2 * steps))
    from_one = batches(load().train_from_epoch(1).take(steps))
    for (x, y), (x_resumed, y_resumed) in zip(from_zero[steps:], from_one, strict=True):
        np.testing.assert_array_equal(x, x_resumed)
        np.testing.assert_array_equal(y, y_resumed)
    assert not np.array_equal(from_zero[0][0], from_zero[steps][0])
    assert (from_zero[0][1].max(-1) < 1).any()                   # labels mixed
    one, two = batches(first.train), batches(first.train)        # a new draw at each pass
    assert len(one) == steps and not np.array_equal(one[0][0], two[0][0])
    batches(first.test)
    assert autograph_conversions == []


@pytest.mark.parametrize("change", [
    dict(),
    dict(augment="color", crop_scheme="random_resized_crop"),
    dict(cutout=0.5, mixup_alpha=0.2, cutmix_alpha=1.0),
])
def test_training_batches_change_and_evaluation_batches_do_not(change):
    recipe = Recipe(**change)
    plain = _load(Recipe(augment="none", crop_scheme="none"))
    augmented = _load(recipe)
    x_plain, y_plain = next(iter(plain.train))
    x_aug, y_aug = next(iter(augmented.train))
    assert x_aug.shape == x_plain.shape
    changed = np.mean(np.abs(x_aug.numpy() - x_plain.numpy()).reshape(64, -1).max(-1) > 1e-3)
    assert changed > 0.5
    if recipe.mixes_labels:
        np.testing.assert_allclose(y_aug.numpy().sum(-1), 1.0, rtol=1e-6)
        assert (y_aug.numpy().max(-1) < 1.0).mean() > 0.3
    else:
        np.testing.assert_array_equal(y_aug.numpy(), y_plain.numpy())
    for split in ("validation", "test"):
        x_eval_plain, y_eval_plain = next(iter(getattr(plain, split)))
        x_eval_aug, y_eval_aug = next(iter(getattr(augmented, split)))
        np.testing.assert_allclose(x_eval_aug.numpy(), x_eval_plain.numpy(), atol=1e-5)
        labels = y_eval_aug.numpy().argmax(-1) if recipe.mixes_labels else y_eval_aug.numpy()
        np.testing.assert_array_equal(labels, y_eval_plain.numpy())


@pytest.mark.parametrize("change", [
    dict(augment="autoaugment", crop_scheme="pad_and_crop"),
    dict(augment="color", crop_scheme="random_resized_crop", cutout=0.4),
    dict(augment="autoaugment", crop_scheme="none", mixup_alpha=0.2, cutmix_alpha=1.0),
])
def test_uint8_images_give_what_their_float32_copies_give(change):
    """The augmentation says it takes uint8 batches (streamed crops come as uint8): every
    step gives the same images from them as from float32 copies, draw for draw."""
    recipe = Recipe(**change)
    images = np.random.default_rng(4).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    labels = tf.one_hot(np.arange(6) % 10, 10)
    from_uint8, from_float = (pipeline.build_train_augment(recipe) for _ in range(2))
    assert from_uint8.accepts_uint8
    for _ in range(3):
        a, a_labels = from_uint8(tf.constant(images), labels)
        b, b_labels = from_float(tf.constant(images, tf.float32), labels)
        np.testing.assert_array_equal(tf.cast(a, tf.float32).numpy(), b.numpy())
        np.testing.assert_array_equal(a_labels.numpy(), b_labels.numpy())
    assert not np.array_equal(tf.cast(a, tf.float32).numpy(), images.astype(np.float32))


def test_evaluation_crop_applies_to_evaluation_only():
    recipe = Recipe(augment="none", crop_scheme="none", crop_fraction=0.5)
    plain = _load(Recipe(augment="none", crop_scheme="none"))
    cropped = _load(recipe)
    x_train_plain, _ = next(iter(plain.train))
    x_train_crop, _ = next(iter(cropped.train))
    np.testing.assert_allclose(x_train_crop.numpy(), x_train_plain.numpy(), atol=1e-5)
    x_test_plain, _ = next(iter(plain.test))
    x_test_crop, _ = next(iter(cropped.test))
    raw = x_test_plain.numpy() * np.array(plain.std) + np.array(plain.mean)
    centre = tf.image.resize(raw[:, 7:21, 7:21, :], (28, 28), method="bilinear").numpy()
    got = x_test_crop.numpy() * np.array(cropped.std) + np.array(cropped.mean)
    np.testing.assert_allclose(got, centre, atol=0.5)


def test_preview_png_shows_originals_and_versions(tmp_path):
    path = tmp_path / "preview" / "augment.png"
    pipeline.preview(Recipe(train_subset=500, mixup_alpha=0.2), path, num_images=4, versions=3)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height * 0.9
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.std() > 20


# Each augmentation trained alone; the default run trains every regularizer at once, with the
# auxiliary head (`test_training.py::test_every_regularizer_and_the_auxiliary_head_train_together`).
@pytest.mark.slow
@pytest.mark.parametrize("change,floor", [
    (dict(augment="autoaugment"), 0.55),
    (dict(augment="color"), 0.55),
    (dict(augment="none"), 0.55),
])
def test_real_training_run_with_each_setting(change, floor, tmp_path):
    recipe = Recipe(epochs=2, output_dir=str(tmp_path / "run"), **QUICK, **change)
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    assert result.test_accuracy > floor, change
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["recipe"]["augment"] == change["augment"]
