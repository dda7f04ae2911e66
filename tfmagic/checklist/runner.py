"""`run(baseline, out_dir)`: train the baseline and the trials, each in its own process.

Layout of ``out_dir``::

    plan.json                      the baseline, the seeds, the trials and the skipped ones
    baseline.cfg                   the baseline as a flagfile
    commands/<trial>-seed<k>.cfg   one flagfile per run: `tfmagic-train --flagfile=...`
    logs/<trial>-seed<k>.log       the run's output
    trials/<trial>/seed<k>/        the run's directory, written by `tfmagic.training.train`
    report.md, summary.csv, report.png, curves.png, best.cfg     (tfmagic.checklist.report)

Seed ``k`` of a trial trains with ``seed = baseline.seed + k``.

Nothing is lost and nothing is redone: a run with a ``result.json`` is finished and never
started again (a diverged run included: it is reported failed). A run without one is started
again by the next invocation of the same command and continues from its last finished epoch
(``train`` restores it). A run that crashed, ran out of memory or was killed is marked with a
``failure.json`` (``status`` ``failed`` and the reason, or ``skipped`` for pretrained weights
that cannot be had) and the other runs go on; the next invocation tries failed runs again.
A run whose ``result.json`` or ``failure.json`` cannot be read (edited by hand, say) is
reported failed, with the file and what is wrong, and left alone until it is fixed or removed.
Every run process dies with the runner (``PR_SET_PDEATHSIG`` on Linux), so a killed runner
leaves no orphan writing into a run directory, and a lock file keeps a second runner out of
the same ``out_dir``.

Runners: ``"local"`` starts ``workers`` processes at a time. With GPUs each worker gets its own
``gpus_per_trial`` GPUs (``CUDA_VISIBLE_DEVICES``); without, the CPU cores are shared out
between the workers (CPU affinity and TensorFlow's thread counts). ``"ray"`` submits every
run as a Ray task (``gpus_per_trial`` GPUs each where the cluster has GPUs) to a cluster,
``ray_address``; ``out_dir`` must then be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from tfmagic._atomic import writable_problem, write_atomic
from tfmagic.checklist import report as report_lib
from tfmagic.checklist.report import (
    BASELINE_CFG,
    CONFIRM_GROUP,
    FAILURE_FILE,
    PLAN_FILE,
    TRIALS_DIR,
)
from tfmagic.checklist.trials import (
    SkippedTrial,
    Trial,
    baseline_trial,
    check_trial,
    checklist_trials,
)
from tfmagic.recipe import Recipe

RUNNERS = ("local", "ray")
LOCK_FILE = ".lock"
EXIT_DIVERGED = 3
EXIT_NO_WEIGHTS = 4
_LOG_TAIL = 4000


class ChecklistError(RuntimeError):
    """The checklist cannot run in this output directory as asked."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a trial at one seed."""

    trial: Trial
    seed_index: int
    recipe: Recipe
    out_dir: str

    @property
    def key(self) -> str:
        return f"{self.trial.name}-seed{self.seed_index}"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, TRIALS_DIR, self.trial.name, f"seed{self.seed_index}")

    @property
    def flagfile(self) -> str:
        return os.path.join(self.out_dir, "commands", f"{self.key}.cfg")

    @property
    def log_file(self) -> str:
        return os.path.join(self.out_dir, "logs", f"{self.key}.log")

    def command(self, program: Sequence[str] = ("tfmagic-train",)) -> list[str]:
        return [*program, f"--flagfile={self.flagfile}"]


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one job ended: ``completed``, ``failed`` (diverged included) or ``skipped``."""

    key: str
    status: str
    reason: str = ""
    seconds: float = 0.0


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
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} is not allowed: an integer >= 1")
    chosen, custom = None, []
    if trials is not None:
        items = list(trials)
        chosen = [item for item in items if isinstance(item, str)]
        custom = [item for item in items if isinstance(item, Trial)]
        others = [item for item in items if not isinstance(item, str | Trial)]
        if others:
            raise ValueError(f"trials={others!r} is not allowed: trial names or Trial objects")
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
    if duplicates:
        raise ValueError(f"trials={duplicates} is not allowed: trial names must be unique")
    return _jobs(everything, baseline, seeds, os.path.abspath(out_dir)), skipped


def _jobs(trials: list[Trial], baseline: Recipe, seeds: int, out: str) -> list[Job]:
    """One job per trial and seed; seed k trains with ``baseline.seed + k``."""
    jobs = []
    for trial in trials:
        recipe = trial.recipe(baseline)
        for k in range(seeds):
            job = Job(trial, k, recipe, out)
            jobs.append(dataclasses.replace(job, recipe=dataclasses.replace(
                recipe, seed=baseline.seed + k, output_dir=job.run_dir)))
    return jobs


def run(
    baseline: Recipe,
    out_dir: str,
    *,
    workers: int | None = None,
    seeds: int = 1,
    trials: Iterable[str | Trial] | None = None,
    extended: bool = False,
    confirm: bool = False,
    runner: str = "local",
    ray_address: str | None = None,
    gpus_per_trial: int = 1,
    progress: TextIO | None = sys.stdout,
) -> ChecklistResult:
    """Train the baseline and the trials, then write the report into ``out_dir``.

    Args:
        baseline: the recipe every trial changes (its ``output_dir`` is not used).
        out_dir: the checklist's directory; running the same call again continues it.
        workers: runs at a time with the local runner; None for one per
            ``gpus_per_trial`` GPUs, else 1.
        seeds: runs per trial, with seeds ``baseline.seed + k``.
        trials: trial names and/or custom Trial objects; None for the checklist.
        extended: add the extended trials (with ``trials=None``).
        confirm: afterwards train best.cfg and its leave-one-out variants (one per merged
            winner) to check that the winning tricks combine.
        runner: ``"local"`` or ``"ray"``.
        ray_address: the Ray cluster to use (``ray.init(address=...)``); None starts or
            joins a local one.
        gpus_per_trial: GPUs each run gets (its recipe's ``strategy=auto`` then mirrors over
            them); the local runner hands out disjoint sets, Ray asks for that many.
        progress: where to write the live progress lines; None for silence.

    Returns:
        A ChecklistResult; the report is in ``out_dir``.

    Raises:
        ValueError: a bad argument, named.
        ChecklistError: ``out_dir`` holds a checklist of another baseline, or another runner
            is using it.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner={runner!r} is not allowed: one of {RUNNERS}")
    if isinstance(gpus_per_trial, bool) or not isinstance(gpus_per_trial, int) or (
            gpus_per_trial < 1):
        raise ValueError(f"gpus_per_trial={gpus_per_trial!r} is not allowed: an integer >= 1")
    if workers is None:
        workers = default_workers(gpus_per_trial)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is not allowed: an integer >= 1")
    started = time.perf_counter()
    jobs, skipped = plan(baseline, out_dir, seeds=seeds, trials=trials, extended=extended)
    execute = _executor(runner, workers, ray_address, gpus_per_trial)
    out = _make_out_dir(out_dir)
    if runner == "local":
        _say(progress, f"{len(jobs)} runs, {workers} at a time, "
                       f"{_slots_text(_slots(workers, gpus_per_trial))}")
    with _exclusive(out):
        _write_plan(out, baseline, seeds, jobs, skipped)
        outcomes = execute(jobs, _Progress(progress, workers))
        report = report_lib.write_report(out, total_time_s=time.perf_counter() - started)
        if confirm:
            confirm_jobs = _confirm_jobs(baseline, out, seeds, progress)
            if confirm_jobs:
                _write_plan(out, baseline, seeds, jobs + confirm_jobs, skipped)
                outcomes += execute(confirm_jobs, _Progress(progress, workers))
                report = report_lib.write_report(
                    out, total_time_s=time.perf_counter() - started)
    _say(progress, f"report -> {os.path.join(out, 'report.md')}")
    return ChecklistResult(out, tuple(outcomes), tuple(skipped), report,
                           time.perf_counter() - started)


def commands(jobs: Sequence[Job]) -> list[str]:
    """One shell command per job, for a scheduler's job array (SLURM, Kubernetes)."""
    return [" ".join(job.command()) for job in jobs]


def write_commands(baseline: Recipe, out_dir: str, jobs: Sequence[Job],
                   skipped: Sequence[SkippedTrial], seeds: int) -> None:
    """Write plan.json, baseline.cfg and the jobs' flagfiles, without running anything."""
    out = _make_out_dir(out_dir)
    with _exclusive(out):
        _write_plan(out, baseline, seeds, list(jobs), list(skipped))


# ---------------------------------------------------------------------------------- planning


def _make_out_dir(out_dir: str) -> str:
    """The checklist directory, created; a ChecklistError naming it when it cannot be."""
    problem = writable_problem(out_dir)
    if problem:
        raise ChecklistError(f"out_dir={out_dir!r} cannot be used: {problem}")
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    return out


def _write_plan(out: str, baseline: Recipe, seeds: int, jobs: list[Job],
                skipped: list[SkippedTrial]) -> None:
    baseline_fields = _fields_without_output(baseline)
    path = os.path.join(out, PLAN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        previous_fields = {k: v for k, v in previous["baseline"].items() if k != "output_dir"}
        if previous_fields != baseline_fields:
            changed = sorted(k for k in baseline_fields
                             if previous_fields.get(k) != baseline_fields[k])
            raise ChecklistError(
                f"out_dir={out!r} holds a checklist of another baseline (changed: "
                f"{', '.join(changed)}); choose another --out or remove it")
    trials = []
    for job in jobs:
        if job.trial.to_json() not in trials:
            trials.append(job.trial.to_json())
    os.makedirs(os.path.join(out, "commands"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    baseline.to_flagfile(os.path.join(out, BASELINE_CFG))
    for job in jobs:
        job.recipe.to_flagfile(job.flagfile)
    write_atomic(path, json.dumps({
        "baseline": dataclasses.asdict(baseline),
        "seeds": seeds,
        "trials": trials,
        "skipped": [s.to_json() for s in skipped],
    }, indent=2) + "\n")


def _fields_without_output(recipe: Recipe) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(recipe).items() if k != "output_dir"}


def _confirm_jobs(baseline: Recipe, out: str, seeds: int, progress) -> list[Job]:
    best, merged = report_lib.best_recipe(out)
    if not merged:
        _say(progress, "confirm: no trial was judged better; nothing to combine")
        return []
    best_fields = _fields_without_output(best)
    base_fields = _fields_without_output(baseline)
    change = {k: v for k, v in best_fields.items() if v != base_fields[k]}
    trials = [Trial("confirm_best", CONFIRM_GROUP, f"best.cfg: {' + '.join(merged)}", change)]
    if len(merged) > 1:
        changes = {summary.name: summary.change for summary in report_lib.collect(out)}
        for name in merged:
            without = {k: v for k, v in change.items() if k not in changes[name]}
            trials.append(Trial(f"confirm_without_{name}", CONFIRM_GROUP,
                                f"best.cfg without {name}", without))
    return _jobs(trials, baseline, seeds, out)


@contextlib.contextmanager
def _exclusive(out: str):
    """Hold an exclusive lock on ``out`` (released by the OS if this process dies)."""
    with open(os.path.join(out, LOCK_FILE), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ChecklistError(f"out_dir={out!r} is in use by another checklist runner") from None
        yield


# --------------------------------------------------------------------------------- execution


def job_state(job: Job) -> RunOutcome | None:
    """The outcome of a job that needs no (more) running, or None (pending, or failed
    without a result: those are run again).

    A run whose result.json or failure.json cannot be read is failed and not run again (the
    file is not the runner's to overwrite); its reason names the file and says to fix or
    remove it.
    """
    state, result, reason = report_lib.read_run(job.run_dir)
    if state == "done":
        return RunOutcome(job.key, "completed", seconds=result["wall_time_s"])
    if state == "failed" and result is not None:
        return RunOutcome(job.key, "failed", reason, result["wall_time_s"])
    if state == "skipped":
        return RunOutcome(job.key, "skipped", reason)
    if state == report_lib.UNREADABLE:
        return RunOutcome(job.key, "failed", reason)
    return None


def finish(job: Job, returncode: int, log_tail: str, seconds: float) -> RunOutcome:
    """Turn a finished process into an outcome; record failures in failure.json."""
    state = job_state(job)
    if state is not None and state.status != "skipped":
        return dataclasses.replace(state, seconds=state.seconds or seconds)
    if returncode == EXIT_NO_WEIGHTS:
        status, reason = "skipped", _last_line(log_tail)
    elif returncode < 0:
        name = signal.Signals(-returncode).name
        status = "failed"
        reason = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        status = "failed"
        last = _last_line(log_tail)
        memory = "ResourceExhausted" in log_tail or "MemoryError" in log_tail
        reason = ("out of memory: " if memory else f"crashed (exit {returncode}): ") + last
    os.makedirs(job.run_dir, exist_ok=True)
    write_atomic(os.path.join(job.run_dir, FAILURE_FILE),
                 json.dumps({"status": status, "reason": reason}) + "\n")
    return RunOutcome(job.key, status, reason, seconds)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def prepare(job: Job) -> None:
    """Clear the failure mark of a job that is about to be started again."""
    failure = os.path.join(job.run_dir, FAILURE_FILE)
    if os.path.exists(failure):
        os.remove(failure)


def _executor(runner: str, workers: int, ray_address: str | None,
              gpus_per_trial: int) -> Callable:
    if runner == "ray":
        from tfmagic.checklist import ray_runner

        return lambda jobs, progress: ray_runner.execute(jobs, progress, ray_address,
                                                         gpus_per_trial)
    slots = _slots(workers, gpus_per_trial)
    return lambda jobs, progress: _execute_local(jobs, progress, slots)


@dataclasses.dataclass(frozen=True)
class _Slot:
    """What one local worker may use: CPU cores, or GPU ids."""

    cores: tuple[int, ...]
    gpus: tuple[str, ...] | None

    def environment(self) -> dict[str, str]:
        env = run_environment()
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            threads = str(len(self.cores))
            env["TF_NUM_INTRAOP_THREADS"] = threads
            env["TF_NUM_INTEROP_THREADS"] = threads
            env["OMP_NUM_THREADS"] = threads
        return env


def run_environment() -> dict[str, str]:
    """The environment of a run process: this one's, TensorFlow's info logs silenced."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


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


def _slots(workers: int, gpus_per_trial: int = 1) -> list[_Slot]:
    """What each worker may use: ``gpus_per_trial`` GPUs of its own where there are GPUs
    (an error when there are not enough for every worker), else a share of the CPU cores."""
    gpus = _gpu_ids()
    if gpus:
        if workers * gpus_per_trial > len(gpus):
            raise ValueError(
                f"workers={workers} is not allowed with gpus_per_trial={gpus_per_trial}: "
                f"{len(gpus)} GPUs are visible, enough for {len(gpus) // gpus_per_trial} "
                "workers")
        return [_Slot((), tuple(gpus[i * gpus_per_trial:(i + 1) * gpus_per_trial]))
                for i in range(workers)]
    cores = sorted(os.sched_getaffinity(0))
    shares = [tuple(cores[i::workers]) or tuple(cores) for i in range(workers)]
    return [_Slot(share, None) for share in shares]


def _slots_text(slots: list[_Slot]) -> str:
    """What the workers run on, in words."""
    if slots[0].gpus is not None:
        return "GPUs " + "; ".join(",".join(slot.gpus) for slot in slots)
    cores = len(slots[0].cores)
    return f"CPU only, {cores} core{'s' if cores > 1 else ''} each"


def _die_with_parent(cores: tuple[int, ...]) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


def _execute_local(jobs: list[Job], progress: _Progress, slots: list[_Slot]) -> list[RunOutcome]:
    outcomes: dict[str, RunOutcome] = {}
    pending = []
    for job in jobs:
        state = job_state(job)
        if state is None:
            pending.append(job)
        else:
            outcomes[job.key] = state
    progress.start(len(jobs), list(outcomes.values()))
    free = list(slots)
    running: dict[str, tuple[Job, subprocess.Popen, _Slot, float]] = {}
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                prepare(job)
                with open(job.log_file, "a") as log:
                    process = subprocess.Popen(
                        job.command((sys.executable, "-m", "tfmagic.cli.train")),
                        stdout=log, stderr=subprocess.STDOUT, env=slot.environment(),
                        preexec_fn=_die_with_parent(slot.cores),
                    )
                running[job.key] = (job, process, slot, time.perf_counter())
                progress.started(job.key)
            time.sleep(0.2)
            for key in list(running):
                job, process, slot, began = running[key]
                if process.poll() is None:
                    continue
                del running[key]
                free.append(slot)
                outcome = finish(job, process.returncode, log_tail(job.log_file),
                                  time.perf_counter() - began)
                outcomes[key] = outcome
                progress.finished(outcome)
    finally:
        for _, process, _, _ in running.values():
            process.kill()
            process.wait()
    return [outcomes[job.key] for job in jobs]


def log_tail(path: str) -> str:
    """The last few thousand characters of a log file."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - _LOG_TAIL))
        return f.read().decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------- progress


class _Progress:
    """Live progress lines: runs done, running and failed, with an estimate of the time left.

    The estimate is the mean duration of the runs finished by this invocation times the runs
    left, divided by the workers.
    """

    def __init__(self, stream: TextIO | None, workers: int):
        self.stream = stream
        self.workers = workers
        self.total = 0
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.running: list[str] = []
        self.durations: list[float] = []
        self.began = time.perf_counter()

    def start(self, total: int, already: list[RunOutcome]) -> None:
        self.total = total
        for outcome in already:
            self._count(outcome)
            if outcome.status == "failed":
                _say(self.stream, f"{outcome.key}: failed, not run again: {outcome.reason}")
        if already:
            _say(self.stream, f"{len(already)} of {total} runs already done; continuing")
        self._line()

    def started(self, key: str) -> None:
        self.running.append(key)
        self._line()

    def finished(self, outcome: RunOutcome) -> None:
        self.running.remove(outcome.key)
        self._count(outcome)
        if outcome.status == "completed":
            self.durations.append(outcome.seconds)
        else:
            _say(self.stream, f"{outcome.key}: {outcome.status}: {outcome.reason}")
        self._line()

    def _count(self, outcome: RunOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        self.skipped += outcome.status == "skipped"

    def eta_s(self) -> float | None:
        if not self.durations:
            return None
        left = self.total - self.done
        return sum(self.durations) / len(self.durations) * math.ceil(left / self.workers)

    def _line(self) -> None:
        eta = self.eta_s()
        _say(self.stream,
             f"[{self.done}/{self.total} done] running {len(self.running)}"
             f"{' (' + ', '.join(self.running) + ')' if self.running else ''}, "
             f"failed {self.failed}, skipped {self.skipped}, elapsed "
             f"{_clock(time.perf_counter() - self.began)}, ETA "
             f"{'?' if eta is None else _clock(eta)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _say(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        print(f"tfmagic-checklist: {text}", file=stream, flush=True)

