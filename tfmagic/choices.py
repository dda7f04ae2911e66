"""The registries of the Recipe's choice fields whose parts are made from several fields.

Each of these choice fields has its registry here: the Recipe takes its allowed values and
flag help from it, `tfmagic.wiring` and the augmentation pipeline build from it, plots label
with it, and the checklist's trials name its entries. The library's own choices (optimizers,
backbones, poolings, downscaling activations, weight-decay policies) have their registries
beside their parts (`tfmagic.optimizers.OPTIMIZERS`, `tfmagic.models.BACKBONES`, ...).

- `LR_SCHEDULES`: ``build(recipe, total_steps, warmup_steps, peak_lr, min_lr)`` returns the
  learning-rate schedule. Its label is what a plot title says of the recipe's settings.
- `AUGMENTS`: ``build(recipe, seed)`` returns an images -> images transform, or None.
- `CROP_SCHEMES`: ``build(recipe, seed)`` returns an images -> images transform, or None. A
  scheme whose ``loader_crop_scale`` (in `CROP_LOADER_SCALES`) is set is cut by the input
  pipeline itself, from the original image when streamed (`tfmagic.data.load(crop_scale=)`).

This module imports the library only (not the Recipe), so `tfmagic.recipe` can read it.
A new choice is one entry here; a builder may read any Recipe field.

Example:

>>> from tfmagic.recipe import Recipe
>>> schedule = LR_SCHEDULES.build("cosine", Recipe(), 1000, 50, 0.1, 0.0)
>>> type(schedule).__name__, schedule.warmup_steps
('CosineAnnealing', 50)
>>> LR_SCHEDULES.label("cosine_power_cycles", Recipe())
'P=2, 2 cycles x0.5'
"""

from __future__ import annotations

from tfmagic.augment import AutoAugment, ColorAugment, pad_and_crop, random_resized_crop
from tfmagic.registry import Registry
from tfmagic.schedules import CosineAnnealing, CosinePowerAnnealing, GammaDecay

LR_SCHEDULES = Registry("lr_schedule")
AUGMENTS = Registry("augment")
CROP_SCHEMES = Registry("crop_scheme")
CROP_SCALE = (0.25, 1.0)
CROP_LOADER_SCALES = {"random_resized_crop": CROP_SCALE}


@LR_SCHEDULES.register(
    "cosine_power_cycles",
    help="cycles of cosine power annealing (lr_power, lr_cycles, lr_cycle_decay)",
    label=lambda r: f"P={r.lr_power:g}, {r.lr_cycles} cycles x{r.lr_cycle_decay:g}",
)
def _cosine_power_cycles(recipe, total_steps, warmup_steps, peak_lr, min_lr):
    return CosinePowerAnnealing(
        peak_lr, total_steps, power=recipe.lr_power, cycles=recipe.lr_cycles,
        cycle_decay=recipe.lr_cycle_decay, warmup_steps=warmup_steps, min_lr=min_lr)


@LR_SCHEDULES.register("cosine", help="plain cosine annealing")
def _cosine(recipe, total_steps, warmup_steps, peak_lr, min_lr):
    return CosineAnnealing(peak_lr, total_steps, warmup_steps=warmup_steps, min_lr=min_lr)


@LR_SCHEDULES.register("gamma", help="gamma (step) decay x0.1 at 50% and 75% of training")
def _gamma(recipe, total_steps, warmup_steps, peak_lr, min_lr):
    return GammaDecay(peak_lr, total_steps, warmup_steps=warmup_steps)


@AUGMENTS.register("autoaugment", help="AutoAugment, the ImageNet policy")
def _autoaugment(recipe, seed):
    return AutoAugment(value_range=(0, 255), seed=seed)


@AUGMENTS.register("color", help="the standard colour jitter")
def _color(recipe, seed):
    return ColorAugment(value_range=(0, 255), seed=seed)


@AUGMENTS.register("none", help="no policy")
def _no_policy(recipe, seed):
    return None


@CROP_SCHEMES.register("pad_and_crop", help="pad 1/8 of the size, random crop back, "
                                            "horizontal flip")
def _pad_and_crop(recipe, seed):
    return pad_and_crop(pad=None, seed=seed)


@CROP_SCHEMES.register("random_resized_crop", help="Inception-style crop of scale 0.25-1, "
                                                   "horizontal flip")
def _random_resized_crop(recipe, seed):
    return random_resized_crop(scale=CROP_SCALE, seed=seed)


@CROP_SCHEMES.register("none", help="neither crop nor flip")
def _no_crop(recipe, seed):
    return None
