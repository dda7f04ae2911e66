"""Schedule plots: a real PNG with both curves, written without training."""

import numpy as np
import pytest
from PIL import Image

from tfmagic.plots import plot_schedules
from tfmagic.recipe import Recipe, RecipeError


def colour_pixels(path, rgb, tolerance=40):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(rgb)).sum(-1) < tolerance).sum())


def test_png_has_lr_and_weight_decay_curves(tmp_path):
    recipe = Recipe(epochs=12, lr_cycles=3, weight_decay_schedule="cycles",
                    output_dir=str(tmp_path))
    path = tmp_path / "deep" / "schedules.png"
    plot_schedules(recipe, path, steps_per_epoch=100)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 600 and image.size[1] >= 400
    assert colour_pixels(path, (31, 119, 180)) > 300     # tab:blue, the LR curve
    assert colour_pixels(path, (214, 39, 40)) > 300      # tab:red, the weight decay
    assert [p.name for p in path.parent.iterdir()] == ["schedules.png"]


def test_steps_counted_from_the_data_when_not_given(tmp_path):
    recipe = Recipe(train_subset=1000, epochs=3, batch_size=100, output_dir=str(tmp_path))
    plot_schedules(recipe, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_bad_schedule_leaves_nothing_behind(tmp_path):
    recipe = Recipe(epochs=1, lr_cycles=20, output_dir=str(tmp_path))
    with pytest.raises(RecipeError, match="lr_schedule"):
        plot_schedules(recipe, tmp_path / "new" / "s.png", steps_per_epoch=10)
    assert not (tmp_path / "new").exists()
