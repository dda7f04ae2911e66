"""tfmagic-train: train one Recipe.

Every flag is a field of `tfmagic.recipe.Recipe` (see --helpfull). A flagfile holds one
flag per line:

    tfmagic-train --flagfile=flags/quickstart.cfg
    tfmagic-train --flagfile=flags/quickstart.cfg --epochs=1 --output_dir=runs/try

Running again into the same --output_dir continues an unfinished run and refuses a
finished one unless --overwrite is given.

Exit status: 0 the run completed; 1 a bad flag value (nothing is written); 2 the
output directory cannot be written to, or holds a run that must not be touched; 3 the run
diverged (recorded in result.json); 4 the pretrained weights asked for cannot be had
(offline, say).
"""

import os
import sys

from absl import app, flags

from tfmagic import recipe as recipe_lib
from tfmagic._atomic import no_space_message
from tfmagic.cli import parse_flags, recipe_from_flags, usage_error
from tfmagic.exit_codes import EXIT_DIVERGED, EXIT_NO_WEIGHTS, EXIT_OK, EXIT_OUTPUT_DIR

FLAGS = flags.FLAGS
recipe_lib.define_flags(FLAGS)
flags.DEFINE_bool(
    "plot_schedules_only",
    False,
    "Write OUTPUT_DIR/schedules.png (learning rate and weight decay over training) and exit "
    "without training.",
)
flags.DEFINE_bool(
    "preview_augment_only",
    False,
    "Write OUTPUT_DIR/augment_preview.png (training images before and after the recipe's "
    "augmentation) and exit without training.",
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace a finished run (or an unfinished run of another recipe) in --output_dir.",
)


def summary_line(result) -> str:
    """One line that says how a run ended."""
    r = result.recipe
    head = f"{r.model} on {r.dataset}"
    if result.status != "completed":
        return f"{head}: {result.status} after {result.epochs_run} epochs -> {result.output_dir}"
    return (
        f"{head}: test accuracy {result.test_accuracy:.4f}, test loss {result.test_loss:.4f}, "
        f"best val accuracy {result.best_val_accuracy or float('nan'):.4f}, "
        f"{result.epochs_run} epochs, {result.wall_time_s:.0f} s, "
        f"{result.train_images_per_s:.0f} train images/s -> {result.output_dir}"
    )


def main(argv: list[str]) -> int:
    recipe = recipe_from_flags(argv, FLAGS)

    from tfmagic import data, models, rundir, training

    try:
        if FLAGS.plot_schedules_only or FLAGS.preview_augment_only:
            rundir.check_writable(recipe.output_dir)
        if FLAGS.plot_schedules_only:
            return _plot_schedules(recipe)
        if FLAGS.preview_augment_only:
            return _preview_augment(recipe)
        result = training.train(recipe, overwrite=FLAGS.overwrite)
    except recipe_lib.RecipeError as error:
        raise usage_error(error) from None
    except data.DataError as error:
        raise app.UsageError(str(error)) from None
    except rundir.OutputDirError as error:
        print(f"tfmagic-train: {error}", file=sys.stderr)
        return EXIT_OUTPUT_DIR
    except models.PretrainedWeightsError as error:
        print(f"tfmagic-train: {error}", file=sys.stderr)
        return EXIT_NO_WEIGHTS
    except OSError as error:              # a picture of --*_only mode on a full disk
        full = no_space_message(error, recipe.output_dir)
        if full is None:
            raise
        print(f"tfmagic-train: {full}", file=sys.stderr)
        return EXIT_OUTPUT_DIR
    print(summary_line(result))
    return EXIT_OK if result.status == "completed" else EXIT_DIVERGED


def _plot_schedules(recipe) -> int:
    from tfmagic import plots, rundir

    path = os.path.join(recipe.output_dir, rundir.SCHEDULES_PLOT)
    plots.plot_schedules(recipe, path)
    print(f"schedules of {recipe.epochs} epochs -> {path}")
    return EXIT_OK


def _preview_augment(recipe) -> int:
    from tfmagic import rundir
    from tfmagic.augment import pipeline

    path = os.path.join(recipe.output_dir, rundir.AUGMENT_PREVIEW)
    pipeline.preview(recipe, path)
    print(f"augmentation preview -> {path}")
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
