"""PNG plots of what a recipe does: its learning-rate and weight-decay schedules."""

import math
import os

import numpy as np
from matplotlib.figure import Figure

from tfmagic import data
from tfmagic._atomic import atomic_path
from tfmagic.choices import LR_SCHEDULES
from tfmagic.recipe import Recipe
from tfmagic.wiring import build_schedules, steps_in_epoch


def save_figure(figure: Figure, path: str | os.PathLike) -> None:
    """Save a figure as PNG atomically (`tfmagic._atomic`), creating its directory."""
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=110)


def plot_schedules(recipe: Recipe, path: str | os.PathLike,
                   steps_per_epoch: int | None = None) -> None:
    """Write a PNG of the learning rate and the weight decay over the recipe's training.

    The data is read (when needed) and the schedules are built before anything is written,
    so a bad recipe leaves no file or directory behind.

    Args:
        recipe: the run to draw.
        path: where the PNG goes (written atomically).
        steps_per_epoch: optimizer steps per epoch; when None the dataset is read to count
            its training images.
    """
    if steps_per_epoch is None:
        splits = data.load(recipe.dataset, batch_size=recipe.batch_size, seed=recipe.seed,
                           train_subset=recipe.train_subset or None,
                           validation_fraction=recipe.validation_fraction)
        steps_per_epoch = steps_in_epoch(recipe, splits.train_size)
    lr, wd = build_schedules(recipe, steps_per_epoch)
    draw_schedules(recipe, lr, wd, steps_per_epoch, path)


def draw_schedules(recipe: Recipe, lr, wd, steps_per_epoch: int,
                   path: str | os.PathLike) -> None:
    """Write the PNG of `plot_schedules` from schedules already built for the recipe
    (`wd` None: the constant `recipe.weight_decay`)."""
    total = recipe.epochs * steps_per_epoch
    steps = np.arange(0, total + 1, max(1, total // 2000))
    epochs = steps / steps_per_epoch
    lr_values = np.asarray(lr(steps))
    wd_values = (np.asarray(wd(steps)) if wd is not None
                 else np.full(len(steps), recipe.weight_decay))

    figure = Figure(figsize=(8, 5.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(epochs, lr_values, color="tab:blue")
    top.set_ylabel("learning rate")
    settings = LR_SCHEDULES.label(recipe.lr_schedule, recipe)
    top.set_title(
        f"{recipe.lr_schedule} (peak {recipe.lr:g}{', ' + settings if settings else ''}"
        f", warm-up {recipe.warmup_epochs:g} epochs), {recipe.optimizer}"
    )
    bottom.plot(epochs, wd_values, color="tab:red")
    bottom.set_ylabel(f"weight decay ({recipe.weight_decay_mode})")
    bottom.set_title(f"weight decay: {recipe.weight_decay_schedule}")
    bottom.set_xlabel(f"epoch ({steps_per_epoch} steps each, {total} in all)")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.set_xlim(0, math.ceil(epochs[-1]))
        axis.set_ylim(bottom=0)
    save_figure(figure, path)
