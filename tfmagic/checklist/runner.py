"""`run(baseline, out_dir)`: train the baseline and the trials, each in its own process.

The layout of ``out_dir`` (plan.json, baseline.cfg, one flagfile, log and run directory per
trial and seed, the report) is described in `tfmagic.rundir`.

Seed ``k`` of a trial trains with ``seed = baseline.seed + k``.

Seeds (``seeds="auto"``, the default): the baseline and every trial start with 2 seeds. After
each round the report is written, and every trial whose verdict is still undecided (neither
called nor shown within +-``min_effect``, `tfmagic.checklist.stats`) and likely to be decided
within ``max_seeds`` seeds (`Verdict.seeds_needed`) gets its next seed, a block shared with
the baseline, which gets that seed too; the trials closest to deciding run first. Nothing is
added once no undecided trial could still be decided. ``seeds=N`` trains every trial with N
seeds. plan.json records each trial's seeds, so an interrupted checklist continues with the
seeds it had planned.

Verdicts are chosen on validation (`tfmagic.checklist.report`): a baseline without a
validation split gets the Recipe's default one (``validation_fraction=0.1``), and the report
says so.

Nothing is lost and nothing is redone: a run with a ``result.json`` is finished and never
started again (a diverged run included: it is reported failed). A run without one is started
again by the next invocation of the same command and continues from its last finished epoch
(``train`` restores it). A run that crashed, ran out of memory or was killed is marked with a
``failure.json`` (``status`` ``failed`` and the reason, or ``skipped`` for pretrained weights
that cannot be had) and the other runs go on; the next invocation tries failed runs again.
A run whose ``result.json`` or ``failure.json`` cannot be read (edited by hand, say) is
reported failed, with the file and what is wrong, and left alone until it is fixed or removed.
Every worker process dies with the runner (``PR_SET_PDEATHSIG`` on Linux), so a killed runner
leaves no orphan writing into a run directory, and a lock file keeps a second runner out of
the same ``out_dir``.

Runners (`tfmagic.checklist.executors`): ``"local"`` trains ``workers`` runs at a time, each
worker a warm process that loads TensorFlow once and trains ``runs_per_worker`` runs one after
another before a new one replaces it (the run directories and logs are those of separate
``tfmagic-train`` processes; a run that crashes its worker fails alone). With GPUs each
worker gets its own ``gpus_per_trial`` GPUs (``CUDA_VISIBLE_DEVICES``); without, the CPU
cores are shared out between the workers (CPU affinity and TensorFlow's thread counts).
``"ray"`` trains the runs on the cluster at ``ray_address`` through Ray actors
(``gpus_per_trial`` GPUs each where the cluster has GPUs), each keeping a warm worker on its
node; ``out_dir`` must then be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from tfmagic import rundir
from tfmagic._atomic import writable_problem
from tfmagic._checks import check, is_int, is_number
from tfmagic.checklist import report as report_lib
from tfmagic.checklist import stats
from tfmagic.checklist.best import best_recipe
from tfmagic.checklist.executors import (
    RUNS_PER_WORKER,
    ChecklistError,
    Executor,
    Job,
    LocalExecutor,
    RayExecutor,
    Slot,
)
from tfmagic.checklist.executors import job_state as job_state
from tfmagic.checklist.summaries import BASELINE, CONFIRM_GROUP, TrialSummary, collect
from tfmagic.checklist.trials import (
    SkippedTrial,
    Trial,
    baseline_trial,
    check_trial,
    checklist_trials,
)
from tfmagic.recipe import Recipe
from tfmagic.rundir import (
    BASELINE_CFG,
    COMMANDS_DIR,
    LOGS_DIR,
    PLAN_FILE,
    REPORT_MD,
    RunOutcome,
)

RUNNERS = ("local", "ray")
AUTO = "auto"
FIRST_SEEDS = 2
MAX_SEEDS = 5


@dataclasses.dataclass(frozen=True)
class ChecklistResult:
    """What `run` did: the outcome of every job, the skipped trials and the report."""

    out_dir: str
    outcomes: tuple[RunOutcome, ...]
    skipped: tuple[SkippedTrial, ...]
    report: report_lib.Report
    elapsed_s: float

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def completed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "completed"]


def check_seeds(seeds: int | str, min_effect: float = stats.MIN_EFFECT,
                max_seeds: int = MAX_SEEDS) -> None:
    """A ValueError naming the argument unless seeds is ``"auto"`` or an integer >= 1,
    min_effect a number >= 0 and max_seeds an integer >= 2."""
    check(seeds == AUTO or (is_int(seeds) and seeds >= 1), "seeds", seeds,
          f"{AUTO!r} or an integer >= 1")
    check(is_number(min_effect) and min_effect >= 0, "min_effect", min_effect,
          "a fraction of accuracy >= 0 (0.003 is 0.3 points)")
    check(is_int(max_seeds) and max_seeds >= FIRST_SEEDS, "max_seeds", max_seeds,
          f"an integer >= {FIRST_SEEDS}")


def with_validation(baseline: Recipe) -> tuple[Recipe, list[str]]:
    """The baseline with a validation split (the Recipe's default fraction when it has none,
    since verdicts are chosen on validation), and a note saying so when one was added."""
    if baseline.validation_fraction > 0:
        return baseline, []
    fraction = Recipe().validation_fraction
    return dataclasses.replace(baseline, validation_fraction=fraction), [
        f"The baseline had no validation split (validation_fraction=0): the checklist holds "
        f"out {fraction:g} of the training images for validation in every run, because "
        "verdicts and best.cfg are chosen on validation, never on test."]


def next_seeds(summaries: Sequence[TrialSummary], counts: dict[str, int], *,
               max_seeds: int = MAX_SEEDS) -> dict[str, int]:
    """The arms that get another seed in the next round of ``seeds="auto"``, name -> new
    number of seeds: the baseline first, then the trials closest to deciding.

    A trial gets one when every seed it has is finished, it has fewer than max_seeds, its
    verdict is undecided, and it is likely to be decided within max_seeds seeds
    (`Verdict.seeds_needed`). Its next seed pairs with the baseline's seed of the same
    index: the baseline is brought up to the most seeds any trial gets. Empty when nothing
    undecided could still be decided.
    """
    wanted = [s for s in summaries
              if s.name != BASELINE and s.group != CONFIRM_GROUP and s.verdict is not None
              and s.name in counts and s.seeds_done >= counts[s.name]
              and counts[s.name] < max_seeds and s.verdict.undecided
              and s.verdict.seeds_needed is not None and s.verdict.seeds_needed <= max_seeds]
    wanted.sort(key=lambda s: s.verdict.seeds_needed)
    more = {s.name: counts[s.name] + 1 for s in wanted}
    if more and counts.get(BASELINE, 0) < max(more.values()):
        more = {BASELINE: max(more.values()), **more}
    return more


def default_workers(gpus_per_trial: int = 1) -> int:
    """One worker per ``gpus_per_trial`` visible GPUs, else 1."""
    return max(1, len(_gpu_ids()) // gpus_per_trial)


def plan(
    baseline: Recipe,
    out_dir: str,
    *,
    seeds: int = 1,
    trials: Iterable[str | Trial] | None = None,
    extended: bool = False,
) -> tuple[list[Job], list[SkippedTrial]]:
    """The jobs of a checklist (baseline first) and the trials that cannot run.

    ``trials`` holds checklist trial names and/or custom :class:`Trial` objects; None for
    the whole checklist (with ``extended``, the extended trials too). The baseline always
    runs. Every trial's recipe is validated here, before anything runs: one the Recipe
    refuses is skipped with the reason.
    """
    check(is_int(seeds) and seeds >= 1, "seeds", seeds, "an integer >= 1")
    chosen, custom = None, []
    if trials is not None:
        items = list(trials)
        chosen = [item for item in items if isinstance(item, str)]
        custom = [item for item in items if isinstance(item, Trial)]
        others = [item for item in items if not isinstance(item, str | Trial)]
        check(not others, "trials", others, "trial names or Trial objects")
    made, skipped = checklist_trials(baseline, extended=extended, names=chosen)
    for trial in custom:
        problem = check_trial(trial, baseline)
        if problem is None:
            made.append(trial)
        else:
            skipped.append(problem)
    everything = [baseline_trial(), *made]
    names = [trial.name for trial in everything]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    check(not duplicates, "trials", duplicates, "trial names must be unique")
    return _jobs(everything, baseline, seeds, os.path.abspath(out_dir)), skipped


def _jobs(trials: list[Trial], baseline: Recipe, seeds: int | dict[str, int],
          out: str) -> list[Job]:
    """One job per trial and seed (seeds: one number for all, or per trial name); seed k
    trains with ``baseline.seed + k``."""
    jobs = []
    for trial in trials:
        recipe = trial.recipe(baseline)
        for k in range(seeds if isinstance(seeds, int) else seeds[trial.name]):
            job = Job(trial, k, recipe, out)
            jobs.append(dataclasses.replace(job, recipe=dataclasses.replace(
                recipe, seed=baseline.seed + k, output_dir=job.run_dir)))
    return jobs


def run(
    baseline: Recipe,
    out_dir: str,
    *,
    workers: int | None = None,
    seeds: int | str = AUTO,
    min_effect: float = stats.MIN_EFFECT,
    max_seeds: int = MAX_SEEDS,
    trials: Iterable[str | Trial] | None = None,
    extended: bool = False,
    confirm: bool = False,
    runner: str = "local",
    ray_address: str | None = None,
    gpus_per_trial: int = 1,
    runs_per_worker: int = RUNS_PER_WORKER,
    progress: TextIO | None = sys.stdout,
) -> ChecklistResult:
    """Train the baseline and the trials, then write the report into ``out_dir``.

    Args:
        baseline: the recipe every trial changes (its ``output_dir`` is not used). Without
            a validation split it gets the Recipe's default one (verdicts read validation).
        out_dir: the checklist's directory; running the same call again continues it.
        workers: runs at a time with the local runner; None for one per
            ``gpus_per_trial`` GPUs, else 1.
        seeds: ``"auto"`` (2 seeds each, more for undecided trials, see the module
            docstring) or runs per trial, with seeds ``baseline.seed + k``.
        min_effect: with ``seeds="auto"``, the smallest difference in accuracy worth
            deciding (a fraction: 0.003 is 0.3 points).
        max_seeds: with ``seeds="auto"``, the most seeds a trial (and the baseline) gets.
        trials: trial names and/or custom Trial objects; None for the checklist.
        extended: add the extended trials (with ``trials=None``).
        confirm: afterwards train best.cfg and its leave-one-out variants (one per merged
            winner, with as many seeds as the baseline) to check that the winning tricks
            combine, and to give best.cfg its test accuracy.
        runner: ``"local"`` or ``"ray"``.
        ray_address: the Ray cluster to use (``ray.init(address=...)``); None starts or
            joins a local one.
        gpus_per_trial: GPUs each run gets (its recipe's ``strategy=auto`` then mirrors over
            them); the local runner hands out disjoint sets, Ray asks for that many.
        runs_per_worker: the runs a worker process trains one after another (loading
            TensorFlow once) before a new one replaces it; 1 for a fresh process per run.
        progress: where to write the progress bar and each run's result; None for silence.
            On a terminal the bar redraws in place; elsewhere (a log) it prints lines.

    Returns:
        A ChecklistResult; the report is in ``out_dir``.

    Raises:
        ValueError: a bad argument, named.
        ChecklistError: ``out_dir`` holds a checklist of another baseline, or another runner
            is using it.
    """
    check(runner in RUNNERS, "runner", runner, f"one of {RUNNERS}")
    check(is_int(gpus_per_trial) and gpus_per_trial >= 1, "gpus_per_trial", gpus_per_trial,
          "an integer >= 1")
    check_seeds(seeds, min_effect, max_seeds)
    if workers is None:
        workers = default_workers(gpus_per_trial)
    check(is_int(workers) and workers >= 1, "workers", workers, "an integer >= 1")
    check(is_int(runs_per_worker) and runs_per_worker >= 1, "runs_per_worker",
          runs_per_worker, "an integer >= 1")
    started = time.perf_counter()
    baseline, notes = with_validation(baseline)
    first = FIRST_SEEDS if seeds == AUTO else seeds
    jobs, skipped = plan(baseline, out_dir, seeds=first, trials=trials, extended=extended)
    executor = _executor(runner, workers, ray_address, gpus_per_trial, runs_per_worker)
    out = _make_out_dir(out_dir)
    policy = {"seeds": seeds, "min_effect": min_effect, "max_seeds": max_seeds}
    for note in notes:
        _say(progress, note)
    if runner == "local":
        _say(progress, f"{len(jobs)} runs{' to start with' if seeds == AUTO else ''}, "
                       f"{workers} at a time, {_slots_text(_slots(workers, gpus_per_trial))}")
    live = _Progress(progress, workers)
    with _exclusive(out), contextlib.closing(executor):
        trial_list = list({job.trial.name: job.trial for job in jobs}.values())
        counts = {trial.name: first for trial in trial_list}
        if seeds == AUTO:
            counts = _planned_seeds(out, counts)
        outcomes: dict[str, RunOutcome] = {}
        order = [trial.name for trial in trial_list]
        while True:
            jobs = _jobs(trial_list, baseline, counts, out)
            rank = {name: i for i, name in enumerate(order)}
            jobs.sort(key=lambda job: (job.seed_index, rank[job.trial.name]))
            _write_plan(out, baseline, first, trial_list, counts, jobs, skipped, policy, notes)
            outcomes.update((o.key, o) for o in executor.execute(jobs, live))
            report = report_lib.write_report(out, total_time_s=time.perf_counter() - started)
            more = {} if seeds != AUTO else next_seeds(report.summaries, counts,
                                                       max_seeds=max_seeds)
            if not more:
                break
            live.say(f"{len(more) - (BASELINE in more)} undecided trials get another seed: "
                     + ", ".join(f"{name} ({count})" for name, count in more.items()))
            counts.update(more)
            order = [*more, *(name for name in order if name not in more)]
        if confirm:
            confirm_trials = _confirm_trials(baseline, out, live)
            if confirm_trials:
                trial_list += confirm_trials
                counts.update({trial.name: counts[BASELINE] for trial in confirm_trials})
                confirm_jobs = _jobs(confirm_trials, baseline, counts, out)
                _write_plan(out, baseline, first, trial_list, counts, jobs + confirm_jobs,
                            skipped, policy, notes)
                outcomes.update((o.key, o) for o in executor.execute(confirm_jobs, live))
                report = report_lib.write_report(
                    out, total_time_s=time.perf_counter() - started)
    live.close()
    _say(progress, _verdicts_line(report))
    _say(progress, f"report -> {os.path.join(out, REPORT_MD)}")
    return ChecklistResult(out, tuple(outcomes.values()), tuple(skipped), report,
                           time.perf_counter() - started)


def _verdicts_line(report: report_lib.Report) -> str:
    """The checklist's conclusion in one line: how the trials were judged on validation and
    what best.cfg merges."""
    labels = [s.verdict.label for s in report.summaries
              if s.verdict is not None and s.group != CONFIRM_GROUP]
    counts = ", ".join(f"{labels.count(label)} {label}" for label in stats.LABELS)
    if report.best_cfg is None:
        return f"on validation: {counts}; {report.incomplete}: best.cfg not written"
    merged = ", ".join(report.best_trials) or "nothing (no trial was judged better)"
    return f"on validation: {counts}; best.cfg merges {merged}"


def _planned_seeds(out: str, counts: dict[str, int]) -> dict[str, int]:
    """counts raised to the seeds an earlier invocation planned (plan.json), so that an
    interrupted ``seeds="auto"`` checklist continues where it was."""
    if not os.path.exists(os.path.join(out, PLAN_FILE)):
        return counts
    plan = rundir.read_plan(out)
    planned = {t["name"]: plan.seeds_of(t) for t in plan.trials}
    return {name: max(count, planned.get(name, 0)) for name, count in counts.items()}


def commands(jobs: Sequence[Job]) -> list[str]:
    """One shell command per job, for a scheduler's job array (SLURM, Kubernetes)."""
    return [" ".join(job.command()) for job in jobs]


def write_commands(baseline: Recipe, out_dir: str, jobs: Sequence[Job],
                   skipped: Sequence[SkippedTrial], seeds: int,
                   notes: Sequence[str] = ()) -> None:
    """Write plan.json, baseline.cfg and the jobs' flagfiles, without running anything."""
    out = _make_out_dir(out_dir)
    trial_list = list({job.trial.name: job.trial for job in jobs}.values())
    with _exclusive(out):
        _write_plan(out, baseline, seeds, trial_list, {t.name: seeds for t in trial_list},
                    list(jobs), list(skipped), {"seeds": seeds}, list(notes))


# ---------------------------------------------------------------------------------- planning


def _make_out_dir(out_dir: str) -> str:
    """The checklist directory, created; a ChecklistError naming it when it cannot be."""
    problem = writable_problem(out_dir)
    if problem:
        raise ChecklistError(f"out_dir={out_dir!r} cannot be used: {problem}")
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    return out


def _write_plan(out: str, baseline: Recipe, seeds: int, trial_list: list[Trial],
                counts: dict[str, int], jobs: list[Job], skipped: list[SkippedTrial],
                policy: dict[str, Any], notes: list[str]) -> None:
    baseline_fields = _fields_without_output(baseline)
    if os.path.exists(os.path.join(out, PLAN_FILE)):
        previous_fields = _fields_without_output(rundir.read_plan(out).baseline)
        if previous_fields != baseline_fields:
            changed = sorted(k for k in baseline_fields
                             if previous_fields.get(k) != baseline_fields[k])
            raise ChecklistError(
                f"out_dir={out!r} holds a checklist of another baseline (changed: "
                f"{', '.join(changed)}); choose another --out or remove it")
    trials = [{**trial.to_json(), "seeds": counts[trial.name]} for trial in trial_list]
    os.makedirs(os.path.join(out, COMMANDS_DIR), exist_ok=True)
    os.makedirs(os.path.join(out, LOGS_DIR), exist_ok=True)
    baseline.to_flagfile(os.path.join(out, BASELINE_CFG))
    for job in jobs:
        job.recipe.to_flagfile(job.flagfile)
    rundir.write_plan(out, baseline, seeds, trials, [s.to_json() for s in skipped], policy,
                      notes)


def _fields_without_output(recipe: Recipe) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k != "output_dir"}


def _confirm_trials(baseline: Recipe, out: str, live: _Progress) -> list[Trial]:
    best, merged = best_recipe(out)
    if not merged:
        live.say("confirm: no trial was judged better; nothing to combine")
        return []
    best_fields = _fields_without_output(best)
    base_fields = _fields_without_output(baseline)
    change = {k: v for k, v in best_fields.items() if v != base_fields[k]}
    trials = [Trial("confirm_best", CONFIRM_GROUP, f"best.cfg: {' + '.join(merged)}", change)]
    if len(merged) > 1:
        changes = {summary.name: summary.change for summary in collect(out)}
        for name in merged:
            without = {k: v for k, v in change.items() if k not in changes[name]}
            trials.append(Trial(f"confirm_without_{name}", CONFIRM_GROUP,
                                f"best.cfg without {name}", without))
    return trials


def _exclusive(out: str):
    """Hold the lock of ``out`` (released by the OS if this process dies)."""
    return rundir.exclusive(out, lambda holder: ChecklistError(
        f"out_dir={out!r} is in use by another checklist runner ({holder})"))


# --------------------------------------------------------------------------------- execution


def _executor(runner: str, workers: int, ray_address: str | None, gpus_per_trial: int,
              runs_per_worker: int) -> Executor:
    if runner == "ray":
        return RayExecutor(ray_address, gpus_per_trial, runs_per_worker)
    return LocalExecutor(_slots(workers, gpus_per_trial), runs_per_worker)


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU")]


def _slots(workers: int, gpus_per_trial: int = 1) -> list[Slot]:
    """What each worker may use: ``gpus_per_trial`` GPUs of its own where there are GPUs
    (an error when there are not enough for every worker), else a share of the CPU cores."""
    gpus = _gpu_ids()
    if gpus:
        if workers * gpus_per_trial > len(gpus):
            raise ValueError(
                f"workers={workers} is not allowed with gpus_per_trial={gpus_per_trial}: "
                f"{len(gpus)} GPUs are visible, enough for {len(gpus) // gpus_per_trial} "
                "workers")
        return [Slot((), tuple(gpus[i * gpus_per_trial:(i + 1) * gpus_per_trial]))
                for i in range(workers)]
    cores = sorted(os.sched_getaffinity(0))
    shares = [tuple(cores[i::workers]) or tuple(cores) for i in range(workers)]
    return [Slot(share, None) for share in shares]


def _slots_text(slots: list[Slot]) -> str:
    """What the workers run on, in words."""
    if slots[0].gpus is not None:
        return "GPUs " + "; ".join(",".join(slot.gpus) for slot in slots)
    cores = len(slots[0].cores)
    return f"CPU only, {cores} core{'s' if cores > 1 else ''} each"


# ----------------------------------------------------------------------------------- progress


class _Progress:
    """The checklist's progress: one bar (runs done, running, failed and skipped, elapsed
    time, ETA) and one line per run as its result lands (``se_off seed1: val 91.20% (Δ
    +0.40)``, Δ against the mean of the baseline's finished seeds).

    On a terminal the bar is redrawn in place below the result lines; anywhere else (a log
    file, a pipe) each change prints a line. The ETA is the mean duration of the runs finished
    by this invocation times the rounds of ``workers`` runs left. Rounds of ``seeds="auto"``
    add runs: each call of `start` brings the total up to date.
    """

    def __init__(self, stream: TextIO | None, workers: int):
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.workers = workers
        self.total = 0
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.running: list[str] = []
        self.durations: list[float] = []
        self.baseline: dict[str, float] = {}
        self.announced: set[str] = set()
        self.began = time.perf_counter()
        self.drawn = False

    def start(self, total: int, already: list[RunOutcome]) -> None:
        first = not self.announced and not self.total
        self.total, self.done, self.failed, self.skipped = total, 0, 0, 0
        for outcome in already:
            self._count(outcome)
            if outcome.status == "failed" and outcome.key not in self.announced:
                self.say(f"{outcome.shown}: failed, not run again: {outcome.reason}")
            self.announced.add(outcome.key)
        if already and first:
            self.say(f"{len(already)} of {total} runs already done; continuing")
        self._draw()

    def started(self, key: str) -> None:
        self.running.append(RunOutcome(key, "running").shown)
        self._draw()

    def finished(self, outcome: RunOutcome) -> None:
        self.running.remove(outcome.shown)
        self.announced.add(outcome.key)
        self._count(outcome)
        if outcome.status == "completed":
            self.durations.append(outcome.seconds)
            self.say(self._result_line(outcome))
        else:
            self.say(f"{outcome.shown}: {outcome.status}: {outcome.reason}")
        self._draw()

    def say(self, text: str) -> None:
        """A line above the bar."""
        if self.stream is None:
            return
        if self.tty and self.drawn:
            self.stream.write("\r\x1b[K")
        _say(self.stream, text)
        self.drawn = False

    def close(self) -> None:
        """Leave the bar where it is and move below it."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False

    def _result_line(self, outcome: RunOutcome) -> str:
        if outcome.val_accuracy is None:
            return f"{outcome.shown}: done (no validation accuracy)"
        text = f"{outcome.shown}: val {100 * outcome.val_accuracy:.2f}%"
        trial = outcome.key.rpartition("-seed")[0]
        if trial == BASELINE:
            self.baseline[outcome.key] = outcome.val_accuracy
        elif self.baseline:
            mean = sum(self.baseline.values()) / len(self.baseline)
            text += f" (Δ {100 * (outcome.val_accuracy - mean):+.2f})"
        return text

    def _count(self, outcome: RunOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        self.skipped += outcome.status == "skipped"
        if outcome.key.rpartition("-seed")[0] == BASELINE and outcome.val_accuracy is not None:
            self.baseline[outcome.key] = outcome.val_accuracy

    def eta_s(self) -> float | None:
        if not self.durations:
            return None
        left = self.total - self.done
        return sum(self.durations) / len(self.durations) * math.ceil(left / self.workers)

    def line(self) -> str:
        """The bar as text."""
        width = 20
        filled = width * self.done // self.total if self.total else 0
        eta = self.eta_s()
        return (f"[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} done, "
                f"running {len(self.running)}, failed {self.failed}, skipped {self.skipped}, "
                f"elapsed {_clock(time.perf_counter() - self.began)}, ETA "
                f"{'?' if eta is None else _clock(eta)}")

    def _draw(self) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write(f"\r\x1b[Ktfmagic-checklist: {self.line()}")
            self.stream.flush()
            self.drawn = True
        else:
            running = f" ({', '.join(self.running)})" if self.running else ""
            _say(self.stream, self.line() + running)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _say(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        print(f"tfmagic-checklist: {text}", file=stream, flush=True)

