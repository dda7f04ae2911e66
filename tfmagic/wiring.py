"""From a Recipe to the library's parts: the steps of an epoch and the schedules.

The names of the choices live in `tfmagic.choices` (and in the library's own registries);
this module builds what a Recipe's choices name.

Example:

>>> from tfmagic.recipe import Recipe
>>> lr, wd = build_schedules(Recipe(epochs=10, warmup_epochs=0.5), steps_per_epoch=100)
>>> type(lr).__name__, lr.total_steps, lr.warmup_steps, wd
('CosinePowerAnnealing', 1000, 50, None)
"""

from __future__ import annotations

import math

import keras

from tfmagic import distribute
from tfmagic.choices import LR_SCHEDULES
from tfmagic.recipe import Recipe, RecipeError
from tfmagic.schedules import RegularizationSchedule


def steps_in_epoch(recipe: Recipe, train_size: int) -> int:
    """Optimizer steps per epoch: one per batch, the last one possibly smaller."""
    return math.ceil(train_size / recipe.batch_size)


def build_schedules(
    recipe: Recipe, steps_per_epoch: int
) -> tuple[keras.optimizers.schedules.LearningRateSchedule, RegularizationSchedule | None]:
    """The recipe's LR schedule and weight-decay schedule (None for a constant decay).

    The LR schedule is `LR_SCHEDULES`' entry for `recipe.lr_schedule`, given the training's
    steps, the warm-up's steps and the peak and floor of the rate. With
    `lr_scaling="linear"`, lr and min_lr are multiplied by `batch_size / 128`
    (`tfmagic.distribute`).

    Raises:
        RecipeError: the schedule or the weight-decay policy refuses these steps.
    """
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    factor = distribute.lr_factor(recipe.batch_size, recipe.lr_scaling)
    peak, floor = recipe.lr * factor, recipe.min_lr * factor
    try:
        lr = LR_SCHEDULES.build(recipe.lr_schedule, recipe, total, warmup, peak, floor)
    except ValueError as error:
        raise RecipeError("lr_schedule", recipe.lr_schedule,
                          f"{error} ({total} steps, {warmup} of warm-up)") from None
    policy = recipe.weight_decay_schedule
    if policy == "constant":
        return lr, None
    end = recipe.final_weight_decay if policy in ("linear", "cycles") else None
    try:
        wd = RegularizationSchedule(recipe.weight_decay, policy, end=end, lr_schedule=lr,
                                    total_steps=total)
    except ValueError as error:
        raise RecipeError("weight_decay_schedule", policy, str(error)) from None
    return lr, wd
