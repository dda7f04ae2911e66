"""Executors: how the runs of a checklist are carried out, on this machine or on a Ray cluster.

Both have one method, ``execute(jobs, progress) -> list[RunOutcome]``, which returns the
outcomes in the order of the jobs. A job whose run directory already says how it ended
(`tfmagic.rundir.run_outcome`) is not started again. Every other job is prepared (`prepare`
clears an earlier failure mark), trained by `train_command` with its output appended to its
log, and turned into an outcome by `finish`, which records a failure in failure.json.

- `LocalExecutor` starts one process per slot at a time on this machine; each process dies
  with the runner (``PR_SET_PDEATHSIG`` on Linux), so a killed runner leaves no orphan writing
  into a run directory.
- `RayExecutor` submits every run as a Ray task (one CPU, ``gpus_per_trial`` GPUs where the
  cluster has GPUs) to the cluster at ``address``; the checklist directory must be on a file
  system that every node sees. Ray is an optional dependency (``pip install
  "tfmagic[ray]"``), imported only here.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from tfmagic import rundir
from tfmagic._atomic import write_atomic
from tfmagic.checklist.trials import Trial
from tfmagic.exit_codes import EXIT_ERROR, EXIT_NO_WEIGHTS
from tfmagic.recipe import Recipe
from tfmagic.rundir import RunOutcome

_LOG_TAIL = 4000


class ChecklistError(RuntimeError):
    """The checklist cannot run as asked: its output directory cannot be used or is in use,
    or its runner is not installed."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a trial at one seed. Its files are named by `tfmagic.rundir`."""

    trial: Trial
    seed_index: int
    recipe: Recipe
    out_dir: str

    @property
    def key(self) -> str:
        return rundir.seed_key(self.trial.name, self.seed_index)

    @property
    def run_dir(self) -> str:
        return rundir.seed_dir(self.out_dir, self.trial.name, self.seed_index)

    @property
    def flagfile(self) -> str:
        return rundir.flagfile_path(self.out_dir, self.key)

    @property
    def log_file(self) -> str:
        return rundir.log_path(self.out_dir, self.key)

    def command(self, program: Sequence[str] = ("tfmagic-train",)) -> list[str]:
        """The command that trains this run (`train_command` of its flagfile)."""
        return train_command(self.flagfile, program)


def train_command(flagfile: str, program: Sequence[str] | None = None) -> list[str]:
    """``program --flagfile=FLAGFILE``; ``program`` is by default this Python interpreter
    running ``-m tfmagic.cli.train`` (tfmagic-train, without relying on the PATH)."""
    if program is None:
        program = (sys.executable, "-m", "tfmagic.cli.train")
    return [*program, f"--flagfile={flagfile}"]


class Progress(Protocol):
    """What an executor reports to while it runs (the runner's progress bar)."""

    def start(self, total: int, already: list[RunOutcome]) -> None: ...

    def started(self, key: str) -> None: ...

    def finished(self, outcome: RunOutcome) -> None: ...


class Executor(Protocol):
    """Runs the jobs that are not finished yet and returns every job's outcome, in order."""

    def execute(self, jobs: Sequence[Job], progress: Progress) -> list[RunOutcome]: ...


def job_state(job: Job) -> RunOutcome | None:
    """The outcome of a job that needs no (more) running, or None (`rundir.run_outcome`)."""
    return rundir.run_outcome(job.key, job.run_dir)


def prepare(job: Job) -> None:
    """Clear the failure mark of a job that is about to be started again."""
    failure = os.path.join(job.run_dir, rundir.FAILURE_FILE)
    if os.path.exists(failure):
        os.remove(failure)


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
    write_atomic(os.path.join(job.run_dir, rundir.FAILURE_FILE),
                 json.dumps({"status": status, "reason": reason}) + "\n")
    return RunOutcome(job.key, status, reason, seconds)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def log_tail(path: str) -> str:
    """The last few thousand characters of a log file."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - _LOG_TAIL))
        return f.read().decode("utf-8", errors="replace")


def run_environment() -> dict[str, str]:
    """The environment of a run process: this one's, TensorFlow's info logs silenced."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def _split(jobs: Sequence[Job], progress: Progress) -> tuple[dict[str, RunOutcome], list[Job]]:
    """The outcomes of the jobs that need no running, and the jobs to run; the progress
    starts with the former."""
    outcomes, pending = {}, []
    for job in jobs:
        state = job_state(job)
        if state is None:
            pending.append(job)
        else:
            outcomes[job.key] = state
    progress.start(len(jobs), list(outcomes.values()))
    return outcomes, pending


# ------------------------------------------------------------------------------------ local


@dataclasses.dataclass(frozen=True)
class Slot:
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


def _die_with_parent(cores: tuple[int, ...]) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


@dataclasses.dataclass(frozen=True)
class LocalExecutor:
    """Runs the jobs as processes on this machine, one per slot at a time."""

    slots: Sequence[Slot]

    def execute(self, jobs: Sequence[Job], progress: Progress) -> list[RunOutcome]:
        outcomes, pending = _split(jobs, progress)
        free = list(self.slots)
        running: dict[str, tuple[Job, subprocess.Popen, Slot, float]] = {}
        try:
            while pending or running:
                while pending and free:
                    job, slot = pending.pop(0), free.pop(0)
                    prepare(job)
                    with open(job.log_file, "a") as log:
                        process = subprocess.Popen(
                            train_command(job.flagfile), stdout=log, stderr=subprocess.STDOUT,
                            env=slot.environment(), preexec_fn=_die_with_parent(slot.cores),
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


# -------------------------------------------------------------------------------------- Ray


def _train_logged(flagfile: str, log_file: str) -> tuple[int, str, float]:
    """Trains one run on a Ray node; returns its exit status, the log's tail and its
    seconds."""
    began = time.perf_counter()
    with open(log_file, "a") as log:
        done = subprocess.run(train_command(flagfile), stdout=log, stderr=subprocess.STDOUT,
                              check=False, env=run_environment())
    return done.returncode, log_tail(log_file), time.perf_counter() - began


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    """Runs the jobs as Ray tasks on the cluster at ``address`` (None: start or join a local
    one) and waits for all of them."""

    address: str | None = None
    gpus_per_trial: int = 1

    def execute(self, jobs: Sequence[Job], progress: Progress) -> list[RunOutcome]:
        try:
            import ray
        except ImportError:
            raise ChecklistError(
                "runner='ray' needs Ray: pip install 'tfmagic[ray]' (or pip install ray)"
            ) from None
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        try:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            task = ray.remote(num_cpus=1, num_gpus=self.gpus_per_trial if has_gpus else 0,
                              max_retries=0)(_train_logged)
            outcomes, pending = _split(jobs, progress)
            refs = {}
            for job in pending:
                prepare(job)
                refs[task.remote(job.flagfile, job.log_file)] = job
                progress.started(job.key)
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(ready[0])
                try:
                    returncode, tail, seconds = ray.get(ready[0])
                except ray.exceptions.RayError as error:
                    returncode, tail, seconds = EXIT_ERROR, f"Ray task failed: {error}", 0.0
                outcome = finish(job, returncode, tail, seconds)
                outcomes[job.key] = outcome
                progress.finished(outcome)
            return [outcomes[job.key] for job in jobs]
        finally:
            if started_here:
                ray.shutdown()
