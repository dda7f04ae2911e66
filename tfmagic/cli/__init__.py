"""Command-line entry points: thin absl apps over the library (flags -> Recipe -> call).

TensorFlow's start-up log is kept off the binaries' screen by `tfmagic._quiet_start`, which
runs before anything imports TensorFlow. The binaries' exit statuses are named in
`tfmagic.exit_codes` and re-exported here.

Tricks of one's own: the modules named in the environment variable ``TFMAGIC_PLUGINS``
(comma-separated, importable from ``PYTHONPATH``) are imported before the flags are
defined, so that what they register (an LR schedule in `tfmagic.choices.LR_SCHEDULES`, a
trial in `tfmagic.checklist.trials.EXTENDED_TRIALS`, ...) is a flag value of the binaries
and of every run that the local checklist runner starts, which inherit the environment.
"""

import importlib
import os
import sys

from absl import app, flags

from tfmagic import recipe as recipe_lib
from tfmagic.exit_codes import EXIT_DIVERGED as EXIT_DIVERGED
from tfmagic.exit_codes import EXIT_ERROR
from tfmagic.exit_codes import EXIT_NO_WEIGHTS as EXIT_NO_WEIGHTS
from tfmagic.exit_codes import EXIT_OUTPUT_DIR as EXIT_OUTPUT_DIR
from tfmagic.exit_codes import EXIT_RUNS_FAILED as EXIT_RUNS_FAILED


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


def parse_flags(argv: list[str]) -> list[str]:
    """The binaries' ``flags_parser``: absl's `app.parse_flags_with_usage` (a flag error is
    printed with a pointer to --helpshort, exit status 1), with an unknown flag that stands
    in a flagfile reported with that file's path."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error)
        if isinstance(error, flags.UnrecognizedFlagError):
            holder = _flagfile_holding(argv[1:], error.flagname)
            if holder is not None:
                message += f" (in --flagfile={holder})"
        print(f"FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see "
              "help on flags.", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


def _flagfile_holding(argv: list[str], name: str, seen: frozenset = frozenset()) -> str | None:
    """The first flagfile named in ``argv`` (or in a flagfile it names) with a line setting
    ``--name``; None when there is none."""
    for argument in argv:
        if not argument.startswith("--flagfile="):
            continue
        path = argument.removeprefix("--flagfile=")
        if path in seen:
            continue
        seen |= {path}
        try:
            with open(path) as f:
                lines = [line.strip() for line in f]
        except OSError:
            continue
        if any(line.split("=")[0] in (f"--{name}", f"--no{name}") for line in lines):
            return path
        nested = _flagfile_holding(lines, name, seen)
        if nested is not None:
            return nested
    return None


PLUGINS_VARIABLE = "TFMAGIC_PLUGINS"


def load_plugins() -> list[str]:
    """Import the modules named in ``$TFMAGIC_PLUGINS``; returns their names.

    Raises:
        SystemExit: a named module cannot be imported (the message names the variable, the
            module and the reason; the exit status is 1).
    """
    names = [n.strip() for n in os.environ.get(PLUGINS_VARIABLE, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise SystemExit(f"{PLUGINS_VARIABLE}={os.environ[PLUGINS_VARIABLE]}: the module "
                             f"{name!r} cannot be imported ({error})") from None
    return names


load_plugins()
