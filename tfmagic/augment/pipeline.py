"""A recipe's augmentation, assembled for the input pipeline, and a preview of it.

This module belongs to the run layer (it reads a Recipe and draws with matplotlib); the
`tfmagic.augment` package imports it only when one of its names is asked for.

Training batches (float32, 0..255) go through, in this order:

1. the crop scheme (`crop_scheme`, from `tfmagic.choices.CROP_SCHEMES`): `pad_and_crop` (pad
   1/8 of the image side, reflect, random crop back to size, horizontal flip),
   `random_resized_crop` (scale 0.25-1, aspect 3/4-4/3, flip) or nothing;
2. the policy (`augment`, from `tfmagic.choices.AUGMENTS`): AutoAugment's ImageNet policy,
   the colour jitter baseline, or nothing;
3. Cutout (`cutout` > 0): a square of that fraction of the side, filled with black (0);
4. mixing (`mixup_alpha`, `cutmix_alpha` > 0): labels become soft; with both on, each batch
   is mixed by one of the two, chosen with probability 1/2.

Validation and test batches only get the evaluation crop (`crop_fraction` < 1).
"""

import os

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from tfmagic import data
from tfmagic.augment import seeding
from tfmagic.augment.crops import center_crop
from tfmagic.augment.erasing import Cutout
from tfmagic.augment.mixing import CutMix, MixUp
from tfmagic.choices import AUGMENTS, CROP_LOADER_SCALES, CROP_SCALE, CROP_SCHEMES
from tfmagic.plots import save_figure

__all__ = ["CROP_SCALE", "build_eval_transform", "build_train_augment", "preview"]


def _seed(recipe, part: int) -> int:
    """A seed per component, derived from the recipe's seed."""
    return recipe.seed * 16 + part


def build_train_augment(recipe, resized_crop: bool = True):
    """The recipe's training augmentation as an `(images, labels) -> (images, labels)`
    callable for `tfmagic.data.load(augment=...)`, or None when it does nothing.

    With `resized_crop=False` a crop scheme that the input pipeline cuts itself
    (`random_resized_crop`: `data.load(crop_scale=CROP_SCALE)`, from the original file when
    the data is streamed; see `tfmagic.choices.CROP_LOADER_SCALES`) is left out.

    With mixing on, the pipeline must give one-hot labels (`data.load(one_hot=True)`).
    """
    steps = []
    crop = (None if recipe.crop_scheme in CROP_LOADER_SCALES and not resized_crop
            else CROP_SCHEMES.build(recipe.crop_scheme, recipe, _seed(recipe, 1)))
    policy = AUGMENTS.build(recipe.augment, recipe, _seed(recipe, 2))
    steps += [_images_only(transform) for transform in (crop, policy) if transform is not None]
    if recipe.cutout > 0:
        steps.append(_images_only(Cutout(size=recipe.cutout, seed=_seed(recipe, 3))))
    mixers = []
    if recipe.mixup_alpha > 0:
        mixers.append(MixUp(alpha=recipe.mixup_alpha, seed=_seed(recipe, 4)))
    if recipe.cutmix_alpha > 0:
        mixers.append(CutMix(alpha=recipe.cutmix_alpha, seed=_seed(recipe, 5)))
    if len(mixers) == 2:
        steps.append(_either(*mixers, seed=_seed(recipe, 6)))
    elif mixers:
        steps.append(mixers[0])
    if not steps:
        return None

    def augment(images, labels):
        for step in steps:
            images, labels = step(images, labels)
        return images, labels

    # Every step takes uint8 images as well as float32 ones, with the same result.
    augment.accepts_uint8 = True
    return augment


def build_eval_transform(recipe):
    """The evaluation crop of the recipe (`crop_fraction`), or None for the whole image."""
    if recipe.crop_fraction >= 1.0:
        return None
    return center_crop(crop_fraction=recipe.crop_fraction)


def _images_only(transform):
    def step(images, labels):
        return transform(images), labels

    return step


def _either(first, second, seed: int):
    """Apply `first` or `second` to a whole batch, each with probability 1/2."""
    generator = seeding.generator(seed)

    def step(images, labels):
        pick_first = generator.uniform(()) < 0.5
        return tf.cond(pick_first, lambda: first(images, labels),
                       lambda: second(images, labels))

    return step


def preview(recipe, path: str | os.PathLike, num_images: int = 8, versions: int = 5) -> None:
    """Write a PNG grid: each row one training image, first the original, then `versions`
    augmented draws of it (the recipe's whole training augmentation, mixing included).

    Args:
        recipe: a `tfmagic.recipe.Recipe`.
        path: where the PNG goes (written atomically; its directory is created).
        num_images: rows of the grid.
        versions: augmented columns.
    """
    splits = data.load(recipe.dataset, batch_size=num_images, seed=recipe.seed,
                       train_subset=recipe.train_subset or None,
                       validation_fraction=recipe.validation_fraction,
                       image_size=recipe.image_size or None, one_hot=recipe.mixes_labels)
    images, labels = next(iter(splits.train))
    mean = np.array(splits.mean, np.float32)
    std = np.array(splits.std, np.float32)
    originals = tf.constant(np.clip(images.numpy() * std + mean, 0, 255))
    augment = build_train_augment(recipe)
    columns = [originals.numpy()]
    for _ in range(versions):
        augmented = originals if augment is None else augment(originals, labels)[0]
        columns.append(np.clip(np.asarray(augmented), 0, 255))

    figure = Figure(figsize=(1.3 * (versions + 1), 1.3 * num_images + 0.4), layout="constrained")
    axes = figure.subplots(num_images, versions + 1, squeeze=False)
    gray = originals.shape[-1] == 1
    for row in range(num_images):
        for column, batch in enumerate(columns):
            axis = axes[row, column]
            picture = batch[row].astype(np.uint8)
            axis.imshow(picture[..., 0] if gray else picture, cmap="gray" if gray else None,
                        vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"augmented {column}",
                               fontsize=8)
    figure.suptitle(
        f"augment={recipe.augment}, crop={recipe.crop_scheme}, cutout={recipe.cutout:g}, "
        f"mixup={recipe.mixup_alpha:g}, cutmix={recipe.cutmix_alpha:g}", fontsize=9
    )
    save_figure(figure, path)
