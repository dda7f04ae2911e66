"""The directories that runs and checklists write, in one place: names, policy and reading.

A training run (`tfmagic.training.train`) writes into its output directory `recipe.cfg`,
`schedules.png`, `history.csv`, `tensorboard/`, `model.keras` and, last, `result.json`,
whose presence marks a finished run; `backup/` holds the checkpoints of an unfinished run and
`.replaced/` a run that `overwrite=True` is replacing.

A checklist (`tfmagic.checklist.runner`) writes into its directory OUT::

    plan.json                      the baseline, the seeds, the trials and the skipped ones
    baseline.cfg                   the baseline as a flagfile
    commands/<trial>-seed<k>.cfg   one flagfile per run: `tfmagic-train --flagfile=...`
    logs/<trial>-seed<k>.log       the run's output
    trials/<trial>/seed<k>/        the run's directory, written by `tfmagic.training.train`,
                                   with failure.json when the run failed or was skipped
    report.md, summary.csv, report.png, curves.png, best.cfg     (tfmagic.checklist.report)

Besides the names, this module holds the lock of a directory being written (`exclusive`),
what a new run may do with an existing output directory (`lock_output_dir`,
`check_output_dir`, `set_aside`, `put_back`), the repair of a history.csv after a kill, and
the reading of a run's state (`read_run`, `run_outcome`) and of a checklist's plan.json
(`read_plan`). `read_run` gives each run directory one state: "done", "failed", "skipped",
"pending", or "unreadable" when its result.json or failure.json is not what train() or the
runner writes (invalid JSON, not an object, a status other than theirs, a completed result
without numeric test_accuracy and wall_time_s, ...).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from tfmagic._atomic import writable_problem, write_atomic
from tfmagic._checks import check, is_int, is_number
from tfmagic.checklist import stats
from tfmagic.recipe import FlagfileError, Recipe, RecipeError

# --- a run's directory -----------------------------------------------------------------------

RESULT_FILE = "result.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
RECIPE_FILE = "recipe.cfg"
SCHEDULES_PLOT = "schedules.png"
AUGMENT_PREVIEW = "augment_preview.png"          # tfmagic-train --preview_augment_only
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"
REPLACED_DIR = ".replaced"
# Held by the process writing a run's (or a checklist's) directory, with its pid (`exclusive`).
LOCK_FILE = ".lock"
# The result first: a directory without it is never taken for a finished run.
_RUN_FILES = (RESULT_FILE, HISTORY_FILE, MODEL_FILE, RECIPE_FILE, SCHEDULES_PLOT, BACKUP_DIR,
              TENSORBOARD_DIR)

# --- a checklist's directory -----------------------------------------------------------------

PLAN_FILE = "plan.json"
BASELINE_CFG = "baseline.cfg"
TRIALS_DIR = "trials"
COMMANDS_DIR = "commands"
LOGS_DIR = "logs"
FAILURE_FILE = "failure.json"
REPORT_MD = "report.md"
SUMMARY_CSV = "summary.csv"
REPORT_PNG = "report.png"
CURVES_PNG = "curves.png"
BEST_CFG = "best.cfg"
BEST_DIR = "best"

UNREADABLE = "unreadable"
RESULT_STATUSES = ("completed", "diverged")
FAILURE_STATUSES = ("failed", "skipped")
_JSON_TYPES = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}
# The result.json values the report and the runner read: key -> (check, what it must be).
# Null is allowed, except for the keys a result of its status needs.
_RESULT_VALUES = {
    "test_accuracy": (is_number, "a finite number"),
    "val_accuracy": (is_number, "a finite number"),
    "test_loss": (is_number, "a finite number"),
    "best_val_accuracy": (is_number, "a finite number"),
    "wall_time_s": (is_number, "a finite number"),
    "params": (is_int, "an integer"),
}


def seed_key(trial: str, seed_index: int) -> str:
    """The name of a trial's run at one seed; its flagfile and log are named after it.

    >>> seed_key("se_off", 1)
    'se_off-seed1'
    >>> log_path("/runs/checklist", seed_key("se_off", 1))
    '/runs/checklist/logs/se_off-seed1.log'
    """
    return f"{trial}-seed{seed_index}"


def seed_dir(out_dir: str, trial: str, seed_index: int) -> str:
    """The run directory of a trial at one seed.

    >>> seed_dir("/runs/checklist", "se_off", 1)
    '/runs/checklist/trials/se_off/seed1'
    """
    return os.path.join(out_dir, TRIALS_DIR, trial, f"seed{seed_index}")


def flagfile_path(out_dir: str, key: str) -> str:
    """The flagfile of a checklist run: ``OUT/commands/<key>.cfg``."""
    return os.path.join(out_dir, COMMANDS_DIR, f"{key}.cfg")


def log_path(out_dir: str, key: str) -> str:
    """The log of a checklist run: ``OUT/logs/<key>.log``."""
    return os.path.join(out_dir, LOGS_DIR, f"{key}.log")


# --- the output-directory policy of train() --------------------------------------------------


class OutputDirError(RuntimeError):
    """The output directory cannot receive this run (not writable, or holds another run)."""


class RunExistsError(OutputDirError):
    """The output directory holds a run that this call must not continue or replace."""


class DiskFullError(OutputDirError):
    """The disk filled up under a run. Run again once there is room: it continues from its
    last finished epoch."""


@contextlib.contextmanager
def exclusive(directory: str, refuse: Callable[[str], Exception]):
    """Hold the lock file `directory/.lock` while the block runs; `directory` is created if
    need be, and removed again at the end if it was created here and is still empty.

    The lock is the operating system's (``flock``): it is released when its holder ends in any
    way, so the lock file of a killed process is taken over without a word. The file holds
    its holder's pid, and goes when the block ends. When another process holds the lock,
    ``refuse("process <pid>")`` is raised.
    """
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    try:
        descriptor = _take_lock(path, refuse)
        try:
            os.ftruncate(descriptor, 0)
            # The pid is for the message of a refused second run: without room for it (a
            # full disk), the lock holds all the same.
            with contextlib.suppress(OSError):
                os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.remove(path)
            os.close(descriptor)
    finally:
        if created and not os.listdir(directory):
            os.rmdir(directory)


def _take_lock(path: str, refuse: Callable[[str], Exception]) -> int:
    """A descriptor of the lock file at `path`, locked. Taken again when the file was removed
    by the holder that just let it go: a lock on a removed file keeps nobody out."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise refuse(f"process {holder}" if holder.isdigit() else "another process") from None
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)


def check_writable(out: str) -> None:
    """An OutputDirError, naming `out` and why, when it cannot be created or written to."""
    problem = writable_problem(out)
    if problem:
        raise OutputDirError(f"output_dir={out!r} cannot be used: {problem}")


def lock_output_dir(out: str):
    """`exclusive` use of train()'s output directory `out`, for the whole run: an
    OutputDirError when it cannot be written to, or when another run is writing it."""
    check_writable(out)
    return exclusive(out, lambda holder: OutputDirError(
        f"output_dir={out!r} is in use by another run ({holder}); wait for it to end, or "
        "choose another output_dir"))


def check_output_dir(recipe: Recipe, overwrite: bool) -> bool:
    """Refuse an output directory whose run this call must not touch; allow a resume.
    Returns whether a run there is to be replaced (`overwrite`)."""
    out = recipe.output_dir
    conflict = None
    recipe_file = os.path.join(out, RECIPE_FILE)
    if os.path.exists(os.path.join(out, RESULT_FILE)):
        conflict = f"output_dir={out!r} holds a finished run ({RESULT_FILE})"
    elif os.path.exists(recipe_file):
        try:
            previous = Recipe.from_flagfile(recipe_file)
        except (FlagfileError, RecipeError) as error:
            conflict = (f"output_dir={out!r} holds an unfinished run whose {RECIPE_FILE} cannot "
                        f"be read ({error}); fix or remove {recipe_file}")
        else:
            changed = [
                f.name
                for f in dataclasses.fields(Recipe)
                if f.name != "output_dir" and getattr(previous, f.name) != getattr(recipe, f.name)
            ]
            if changed:
                conflict = (
                    f"output_dir={out!r} holds an unfinished run of a different recipe "
                    f"(changed: {', '.join(changed)})"
                )
    if conflict is None:
        return False
    if not overwrite:
        raise RunExistsError(
            f"{conflict}; pass overwrite=True (--overwrite) to replace it, "
            "or choose another output_dir"
        )
    return True


def remove_if_no_checkpoint(out: str) -> None:
    """Remove the run files from `out` when it holds no checkpoint yet: what a run that
    failed before its first epoch was saved leaves (started again, it starts over)."""
    backup = os.path.join(out, BACKUP_DIR)
    if os.path.isdir(backup) and any(name.startswith("epoch-") for name in os.listdir(backup)):
        return
    for name in _RUN_FILES:
        _remove(os.path.join(out, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def set_aside(out: str) -> None:
    """Move the run in `out` to `out/.replaced/` (result first), to be deleted once the new
    run has finished. A run already set aside by an interrupted replacement is the one kept:
    the unfinished run in `out` is then removed."""
    aside = os.path.join(out, REPLACED_DIR)
    earlier = os.path.isdir(aside)
    os.makedirs(aside, exist_ok=True)
    for name in _RUN_FILES:
        path = os.path.join(out, name)
        if earlier:
            _remove(path)
        elif os.path.lexists(path):
            os.replace(path, os.path.join(aside, name))


def put_back(out: str) -> None:
    """Undo `set_aside` after the new run failed: its files go, the old run comes back."""
    aside = os.path.join(out, REPLACED_DIR)
    for name in reversed(_RUN_FILES):
        _remove(os.path.join(out, name))
        if os.path.lexists(os.path.join(aside, name)):
            os.replace(os.path.join(aside, name), os.path.join(out, name))
    os.rmdir(aside)


# --- history.csv -----------------------------------------------------------------------------


def drop_partial_line(path: str) -> None:
    """Cut a history file after its last complete line (a kill may interrupt a row)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        text = f.read()
        f.truncate(text.rfind(b"\n") + 1)


def tidy_history(path: str) -> list[dict[str, float]]:
    """Keep the last row of each epoch (a killed run may have logged an epoch twice)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = {int(row["epoch"]): row for row in reader}
    ordered = [rows[epoch] for epoch in sorted(rows)]
    lines = [",".join(columns)] + [",".join(row[c] for c in columns) for row in ordered]
    write_atomic(path, "\n".join(lines) + "\n")
    return [{c: float(row[c]) for c in columns if row[c] not in ("", "NA")} for row in ordered]


def read_history(run_dir: str) -> dict[str, np.ndarray]:
    """The columns of a run's history.csv (NaN for an empty or "NA" cell); empty without one."""
    path = os.path.join(run_dir, HISTORY_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: np.array([float(r[c]) if r[c] not in ("", "NA") else np.nan for r in rows])
            for c in columns}


# --- a run's state ---------------------------------------------------------------------------


def read_run(run_dir: str, relative_to: str | None = None
             ) -> tuple[str, dict[str, Any] | None, str | None]:
    """(state, result, reason) of one run directory.

    state is "done" (a completed result.json), "failed" (a diverged result.json, or a
    failure.json that says so), "skipped", "pending" (neither file) or "unreadable" (see the
    module docstring). result is the parsed result.json of a done or diverged run, else
    None. reason says why a run is not done; an unreadable run's names the file (relative to
    ``relative_to`` when given), what is wrong with it and what to do.
    """
    result_path = os.path.join(run_dir, RESULT_FILE)
    if os.path.isfile(result_path):
        result, problem = _read_record(result_path, _result_problems)
        if problem is not None:
            return UNREADABLE, None, (
                f"{_shown(result_path, relative_to)} is not a result: {problem}; fix it, or "
                "remove it to train this seed again")
        if result["status"] == "diverged":
            return "failed", result, "diverged (the loss became NaN or infinite)"
        return "done", result, None
    failure_path = os.path.join(run_dir, FAILURE_FILE)
    if os.path.isfile(failure_path):
        failure, problem = _read_record(failure_path, _failure_problems)
        if problem is not None:
            return UNREADABLE, None, (
                f"{_shown(failure_path, relative_to)} is not a failure record: {problem}; fix "
                "it, or remove it to try this seed again")
        return failure["status"], None, str(failure.get("reason") or "no reason given")
    return "pending", None, None


def _shown(path: str, relative_to: str | None) -> str:
    return path if relative_to is None else os.path.relpath(path, relative_to)


def _read_record(path: str, problems_of: Callable[[Any], list[str]]
                 ) -> tuple[Any, str | None]:
    """The parsed JSON file and what makes it unusable (None when nothing does)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as error:
        return None, f"it cannot be read ({error.strerror})"
    except ValueError as error:                      # invalid JSON or not UTF-8 text
        return None, f"it is not valid JSON ({error})"
    problems = problems_of(value)
    return value, ", ".join(problems) if problems else None


def _object_problems(value: Any, statuses: tuple[str, ...]) -> list[str]:
    if not isinstance(value, dict):
        return [f"it holds a JSON {_JSON_TYPES[type(value)]}, not an object"]
    if "status" not in value:
        return ["status is missing"]
    if value["status"] not in statuses:
        return [f"status={json.dumps(value['status'])} is not "
                + " or ".join(json.dumps(status) for status in statuses)]
    return []


def _result_problems(result: Any) -> list[str]:
    """What keeps a parsed result.json from being read as train()'s result."""
    problems = _object_problems(result, RESULT_STATUSES)
    if problems:
        return problems
    required = ("test_accuracy", "wall_time_s") if result["status"] == "completed" else (
        "wall_time_s",)
    for key, (valid, kind) in _RESULT_VALUES.items():
        if key not in result:
            if key in required:
                problems.append(f"{key} is missing")
        elif (result[key] is not None or key in required) and not valid(result[key]):
            problems.append(f"{key}={json.dumps(result[key])} is not {kind}")
    return problems


def _failure_problems(failure: Any) -> list[str]:
    """What keeps a parsed failure.json from being read as the runner's failure record."""
    return _object_problems(failure, FAILURE_STATUSES)


def val_accuracy(result: dict[str, Any], run_dir: str) -> float | None:
    """The last epoch's validation accuracy of a finished run; None without a validation
    split. Runs from before result.json held it give the last row of their history.csv."""
    if result.get("val_accuracy") is not None:
        return float(result["val_accuracy"])
    history = read_history(run_dir).get("val_accuracy")
    if history is None or not len(history) or not math.isfinite(history[-1]):
        return None
    return float(history[-1])


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one checklist run ended: ``completed``, ``failed`` (diverged included) or
    ``skipped``; ``val_accuracy`` is a completed run's last-epoch validation accuracy."""

    key: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    val_accuracy: float | None = None

    @property
    def shown(self) -> str:
        """The run as the progress lines name it: ``se_off seed1``."""
        trial, _, seed = self.key.rpartition("-seed")
        return f"{trial} seed{seed}"


def run_outcome(key: str, run_dir: str) -> RunOutcome | None:
    """The outcome of the checklist run ``key`` in ``run_dir`` when it needs no (more)
    running, or None (pending, or failed without a result: those are run again).

    A run whose result.json or failure.json cannot be read is failed and not run again (the
    file is not the runner's to overwrite); its reason names the file and says to fix or
    remove it.
    """
    state, result, reason = read_run(run_dir)
    if state == "done":
        return RunOutcome(key, "completed", seconds=result["wall_time_s"],
                          val_accuracy=val_accuracy(result, run_dir))
    if state == "failed" and result is not None:
        return RunOutcome(key, "failed", reason, result["wall_time_s"])
    if state == "skipped":
        return RunOutcome(key, "skipped", reason)
    if state == UNREADABLE:
        return RunOutcome(key, "failed", reason)
    return None


# --- plan.json -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checklist's plan.json, checked (see `tfmagic.checklist.report` for its fields)."""

    baseline: Recipe
    seeds: int
    trials: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    policy: dict[str, Any]
    notes: list[str]

    @property
    def min_effect(self) -> float:
        return float(self.policy.get("min_effect", stats.MIN_EFFECT))

    def seeds_of(self, trial: dict[str, Any]) -> int:
        return int(trial.get("seeds", self.seeds))


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_plan(out_dir: str) -> Plan:
    """The plan.json of the checklist in ``out_dir``.

    Raises:
        FileNotFoundError: ``out_dir`` has no plan.json.
        ValueError: plan.json is not a plan, naming the file and what is wrong.
    """
    path = os.path.join(out_dir, PLAN_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{out_dir!r} is not a checklist directory: it has no {PLAN_FILE} "
            "(tfmagic-checklist writes it before training anything)")
    plan = _read_json(path)
    missing = [key for key in ("baseline", "seeds", "trials")
               if not isinstance(plan, dict) or key not in plan]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(map(repr, missing))}: a plan holds "
                         "'baseline', 'seeds', 'trials' and optionally 'skipped'")
    check(is_int(plan["seeds"]) and plan["seeds"] >= 1, f"{path}: seeds",
          plan["seeds"], "must be an integer >= 1")
    known = {field.name for field in dataclasses.fields(Recipe)}
    unknown = sorted(set(plan["baseline"]) - known)
    check(not unknown, f"{path}: baseline fields", unknown, "must all be Recipe fields")
    baseline = Recipe(**plan["baseline"])
    names = set()
    for trial in plan["trials"]:
        missing = [key for key in ("name", "group", "description", "change")
                   if key not in trial]
        if missing:
            raise ValueError(f"{path}: trial {trial!r} lacks {', '.join(map(repr, missing))}")
        check(trial["name"] not in names, f"{path}: trial name", trial["name"], "must be unique")
        names.add(trial["name"])
        unknown = sorted(set(trial["change"]) - known)
        check(not unknown, f"{path}: fields changed by trial {trial['name']!r}", unknown,
              "must all be Recipe fields")
        seeds = trial.get("seeds", plan["seeds"])
        check(is_int(seeds) and seeds >= 1, f"{path}: seeds of trial {trial['name']!r}", seeds,
              "must be an integer >= 1")
    skipped = plan.get("skipped", [])
    for entry in skipped:
        if "name" not in entry or "reason" not in entry:
            raise ValueError(f"{path}: skipped entry {entry!r} needs 'name' and 'reason'")
    policy = plan.get("seed_policy", {})
    check(isinstance(policy, dict) and is_number(policy.get("min_effect", 0.0)),
          f"{path}: seed_policy", policy, "must be an object whose min_effect is a number")
    return Plan(baseline, plan["seeds"], plan["trials"], skipped, policy,
                [str(note) for note in plan.get("notes", [])])


def write_plan(out_dir: str, baseline: Recipe, seeds: int, trials: list[dict[str, Any]],
               skipped: list[dict[str, str]], policy: dict[str, Any], notes: list[str]) -> None:
    """Write the plan.json that `read_plan` reads (atomically)."""
    write_atomic(os.path.join(out_dir, PLAN_FILE), json.dumps({
        "baseline": dataclasses.asdict(baseline),
        "seeds": seeds,
        "trials": trials,
        "skipped": skipped,
        "seed_policy": policy,
        "notes": notes,
    }, indent=2) + "\n")
