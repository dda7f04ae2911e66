"""Executors: how the runs of a checklist are carried out, on this machine or on a Ray cluster.

Both have ``execute(jobs, progress) -> list[RunOutcome]``, which returns the outcomes in the
order of the jobs, and ``close()``. A job whose run directory already says how it ended
(`tfmagic.rundir.run_outcome`) is not started again. Every other job is prepared (`prepare`
clears an earlier failure mark), trained as `train_command` would train it with its output
appended to its log, and turned into an outcome by `finish`, which records a failure in
failure.json.

- `LocalExecutor` keeps one warm worker process per slot on this machine
  (`tfmagic.checklist.worker`), which loads TensorFlow once and trains its runs one after
  another; a run that crashes its worker fails alone, and a new worker takes the next run.
  Each worker dies with the runner (``PR_SET_PDEATHSIG`` on Linux), so a killed runner
  leaves no orphan writing into a run directory.
- `RayExecutor` trains the runs on the cluster at ``address`` through Ray actors (one CPU,
  ``gpus_per_trial`` GPUs where the cluster has GPUs), each keeping a warm worker process on
  its node; the checklist directory must be on a file system that every node sees. Ray is
  an optional dependency (``pip install "tfmagic[ray]"``), imported only here.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import selectors
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
# The last lines of a failed run's log kept in its failure.json.
_FAILURE_LINES = 20
# The lines of a stack trace that a native crash writes after its message (absl's check
# failure, Python's faulthandler): the reason quotes the message, not a frame.
_STACK_LINE = re.compile(
    r"^(\s*@\s+0x[0-9a-f]+|\*\*\* Check failure stack trace: \*\*\*|\s+File \"|"
    r"(Current thread|Thread) 0x[0-9a-f]+ |Extension modules: )")
# A local worker is replaced after this many runs, a bound on what a leak can grow to (and
# above its peak resident memory limit: `LocalExecutor`).
RUNS_PER_WORKER = 25
# The local workers' output outside their runs, in the folder of the runs' logs.
WORKERS_LOG = "workers.log"


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

    def close(self) -> None:
        """Release what the executor kept between calls of `execute` (its workers)."""


def job_state(job: Job) -> RunOutcome | None:
    """The outcome of a job that needs no (more) running, or None (`rundir.run_outcome`)."""
    return rundir.run_outcome(job.key, job.run_dir)


def prepare(job: Job) -> None:
    """Clear the failure mark of a job that is about to be started again."""
    failure = os.path.join(job.run_dir, rundir.FAILURE_FILE)
    if os.path.exists(failure):
        os.remove(failure)


def finish(job: Job, returncode: int, log_tail: str, seconds: float) -> RunOutcome:
    """Turn a finished run into an outcome; record a failure in failure.json with its reason
    (the exit status or signal and the log's last line) and the log's last lines."""
    state = job_state(job)
    if state is not None and state.status != "skipped":
        return dataclasses.replace(state, seconds=state.seconds or seconds)
    if returncode == EXIT_NO_WEIGHTS:
        status, reason = "skipped", _last_line(log_tail)
    elif returncode < 0:
        name = signal.Signals(-returncode).name
        status = "failed"
        reason = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        said = "\n".join(line for line in log_tail.splitlines() if not _STACK_LINE.match(line))
        if said.strip():
            reason += f": {_last_line(said)}"
    else:
        status = "failed"
        last = _last_line(log_tail)
        memory = "ResourceExhausted" in log_tail or "MemoryError" in log_tail
        reason = ("out of memory: " if memory else f"crashed (exit {returncode}): ") + last
    os.makedirs(job.run_dir, exist_ok=True)
    lines = [line for line in log_tail.splitlines() if line.strip()][-_FAILURE_LINES:]
    write_atomic(os.path.join(job.run_dir, rundir.FAILURE_FILE),
                 json.dumps({"status": status, "reason": reason, "last_lines": lines}) + "\n")
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


@dataclasses.dataclass
class _Worker:
    """A warm worker process (`tfmagic.checklist.worker`) and how many runs it answered."""

    process: subprocess.Popen
    runs: int = 0

    @classmethod
    def start(cls, env: dict[str, str], log_dir: str, cores: tuple[int, ...] = ()) -> _Worker:
        """A new worker, dying with this process; its output outside the runs is appended to
        `WORKERS_LOG` in ``log_dir``."""
        with open(os.path.join(log_dir, WORKERS_LOG), "a") as log:
            return cls(subprocess.Popen(
                [sys.executable, "-m", "tfmagic.checklist.worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                preexec_fn=_die_with_parent(cores)))

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, flagfile: str, log_file: str) -> None:
        """Ask for a run; BrokenPipeError where the worker has ended meanwhile."""
        self.process.stdin.write(json.dumps({"flagfile": flagfile, "log": log_file}) + "\n")
        self.process.stdin.flush()

    def status(self, runs_per_worker: int, worker_memory: int) -> int:
        """Wait for the answer to the run asked last: its exit status, or, where the worker
        ended with the run, the worker's (negative for a signal). A worker past
        ``runs_per_worker`` runs or ``worker_memory`` bytes of peak memory is closed."""
        line = self.process.stdout.readline()
        if not line:
            return self.process.wait()
        answer = json.loads(line)
        self.runs += 1
        if self.runs >= runs_per_worker or answer["peak_rss"] > worker_memory:
            self.close()
        return answer["exit"]

    def close(self) -> None:
        """End the worker: at the end of its input when idle, else killed."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _asked(worker: _Worker | None, flagfile: str, log_file: str,
           start: Callable[[], _Worker]) -> _Worker:
    """``worker``, or a new one from ``start`` where there is none or it has ended, asked to
    train the run of ``flagfile``."""
    for _ in range(2):
        if worker is None or not worker.alive():
            worker = start()
        try:
            worker.send(flagfile, log_file)
            return worker
        except BrokenPipeError:              # it ended while idle: a new one takes the run
            worker.close()
            worker = None
    raise ChecklistError(f"no worker process could be asked to train {flagfile}")


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def _run_tail(log_file: str, size_before: int) -> str:
    """The end of a run's log; where the run wrote nothing (its worker ended before it
    began: TensorFlow failed to load, say), the end of the workers' log instead."""
    if _size(log_file) > size_before:
        return log_tail(log_file)
    workers_log = os.path.join(os.path.dirname(log_file), WORKERS_LOG)
    return log_tail(workers_log) if os.path.exists(workers_log) else ""


def _half_the_memory(workers: int) -> int:
    """Half this machine's memory shared out between ``workers``, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (2 * workers)


class LocalExecutor:
    """Runs the jobs on this machine: one warm worker process per slot, which trains its
    runs one after another (`tfmagic.checklist.worker`) and is replaced after
    ``runs_per_worker`` runs, above ``worker_memory`` bytes of peak resident memory (None:
    half this machine's memory shared out between the slots), or when a run ended it. The
    workers are kept between calls of `execute` until `close`."""

    def __init__(self, slots: Sequence[Slot], runs_per_worker: int = RUNS_PER_WORKER,
                 worker_memory: int | None = None):
        self.slots = list(slots)
        self.runs_per_worker = runs_per_worker
        self.worker_memory = worker_memory or _half_the_memory(len(self.slots))
        self._workers: dict[int, _Worker] = {}

    def _start(self, index: int, job: Job) -> _Worker:
        """Slot ``index``'s worker, asked to train ``job``."""
        prepare(job)
        slot = self.slots[index]
        worker = _asked(self._workers.get(index), job.flagfile, job.log_file, lambda: (
            _Worker.start(slot.environment(), os.path.dirname(job.log_file), slot.cores)))
        self._workers[index] = worker
        return worker

    def execute(self, jobs: Sequence[Job], progress: Progress) -> list[RunOutcome]:
        outcomes, pending = _split(jobs, progress)
        free = list(range(len(self.slots)))
        running: dict[int, tuple[Job, float, int]] = {}
        with selectors.DefaultSelector() as selector:
            try:
                while pending or running:
                    while pending and free:
                        index, job = free.pop(0), pending.pop(0)
                        size = _size(job.log_file)
                        worker = self._start(index, job)
                        selector.register(worker.process.stdout, selectors.EVENT_READ, index)
                        running[index] = (job, time.perf_counter(), size)
                        progress.started(job.key)
                    for key, _ in selector.select(timeout=1.0):
                        selector.unregister(key.fileobj)
                        job, began, size = running.pop(key.data)
                        status = self._workers[key.data].status(self.runs_per_worker,
                                                                self.worker_memory)
                        outcome = finish(job, status, _run_tail(job.log_file, size),
                                         time.perf_counter() - began)
                        outcomes[job.key] = outcome
                        free.append(key.data)
                        progress.finished(outcome)
            except BaseException:
                for index in running:
                    self._workers[index].process.kill()
                raise
        return [outcomes[job.key] for job in jobs]

    def close(self) -> None:
        """End every worker."""
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()


# -------------------------------------------------------------------------------------- Ray


class _NodeWorker:
    """A Ray actor's state: a warm worker process on the actor's node, asked to train one run
    at a time and replaced as `LocalExecutor` replaces its own (the memory limit: half the
    node's memory shared out between its CPUs)."""

    def __init__(self, runs_per_worker: int):
        self.runs_per_worker = runs_per_worker
        self.worker_memory = _half_the_memory(os.cpu_count() or 1)
        self.worker: _Worker | None = None

    def train(self, flagfile: str, log_file: str) -> tuple[int, str, float]:
        """Train one run: its exit status, the end of its log and its seconds."""
        began, size = time.perf_counter(), _size(log_file)
        self.worker = _asked(self.worker, flagfile, log_file, lambda: _Worker.start(
            run_environment(), os.path.dirname(log_file)))
        status = self.worker.status(self.runs_per_worker, self.worker_memory)
        return status, _run_tail(log_file, size), time.perf_counter() - began


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    """Runs the jobs on the Ray cluster at ``address`` (None: start or join a local one):
    one actor per run at a time (one CPU, ``gpus_per_trial`` GPUs where the cluster has
    GPUs), each keeping a warm worker process on its node for ``runs_per_worker`` runs."""

    address: str | None = None
    gpus_per_trial: int = 1
    runs_per_worker: int = RUNS_PER_WORKER

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
        actors = []
        try:
            resources = ray.cluster_resources()
            gpus = resources.get("GPU", 0)
            slots = int(gpus // self.gpus_per_trial) if gpus else int(resources.get("CPU", 1))
            actor = ray.remote(num_cpus=1, num_gpus=self.gpus_per_trial if gpus else 0,
                               max_restarts=0)(_NodeWorker)
            outcomes, pending = _split(jobs, progress)
            actors = [actor.remote(self.runs_per_worker)
                      for _ in range(min(len(pending), max(slots, 1)))]
            idle, refs = list(actors), {}
            while pending or refs:
                while pending and idle:
                    job, node = pending.pop(0), idle.pop(0)
                    prepare(job)
                    refs[node.train.remote(job.flagfile, job.log_file)] = job, node
                    progress.started(job.key)
                ready, _ = ray.wait(list(refs), num_returns=1)
                job, node = refs.pop(ready[0])
                try:
                    returncode, tail, seconds = ray.get(ready[0])
                except ray.exceptions.RayError as error:       # the actor itself was lost
                    returncode, tail, seconds = EXIT_ERROR, f"Ray task failed: {error}", 0.0
                    node = actor.remote(self.runs_per_worker)
                    actors.append(node)
                idle.append(node)
                outcome = finish(job, returncode, tail, seconds)
                outcomes[job.key] = outcome
                progress.finished(outcome)
            return [outcomes[job.key] for job in jobs]
        finally:
            for node in actors:
                ray.kill(node)
            if started_here:
                ray.shutdown()

    def close(self) -> None:
        """Nothing to release: the actors end with each `execute`."""
