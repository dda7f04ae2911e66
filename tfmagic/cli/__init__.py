"""Command-line entry points: thin absl apps over the library (flags -> Recipe -> call).

TensorFlow's start-up log is kept off the binaries' screen by `tfmagic._quiet_start`, which
runs before anything imports TensorFlow.
"""

from absl import app, flags

from tfmagic import recipe as recipe_lib

# Exit statuses of the binaries besides 0 (success) and 1 (absl's usage error).
EXIT_OUTPUT_DIR = 2
EXIT_DIVERGED = 3
EXIT_NO_WEIGHTS = 4
EXIT_RUNS_FAILED = 3


def recipe_from_flags(argv: list[str], flag_values: flags.FlagValues) -> recipe_lib.Recipe:
    """The Recipe of the parsed flags; a usage error (exit status 1) for stray arguments or a
    value the Recipe refuses, naming the flag."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        return recipe_lib.from_flags(flag_values)
    except recipe_lib.RecipeError as error:
        raise usage_error(error) from None


def usage_error(error: recipe_lib.RecipeError) -> app.UsageError:
    """The usage error that names the flag of a refused Recipe value."""
    return app.UsageError(f"--{error.field}={error.value}: {error.allowed}")
