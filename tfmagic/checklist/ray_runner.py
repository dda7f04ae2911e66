"""The Ray runner: every checklist run is a Ray task on an existing cluster.

Each task starts ``python -m tfmagic.cli.train --flagfile=...`` on the node Ray picks, with
one CPU, and ``gpus_per_trial`` GPUs where the cluster has GPUs. The checklist directory must
be on a file system that every node sees (the flagfiles, logs and run directories live
there). Ray is an optional dependency: ``pip install "tfmagic[ray]"``.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tfmagic.checklist import runner


def _train(flagfile: str, log_file: str) -> tuple[int, str, float]:
    """Runs one training process; returns its exit status, the log's tail and its seconds."""
    began = time.perf_counter()
    with open(log_file, "a") as log:
        done = subprocess.run(
            [sys.executable, "-m", "tfmagic.cli.train", f"--flagfile={flagfile}"],
            stdout=log, stderr=subprocess.STDOUT, check=False, env=runner.run_environment(),
        )
    return done.returncode, runner.log_tail(log_file), time.perf_counter() - began


def execute(jobs: list[runner.Job], progress, address: str | None,
            gpus_per_trial: int = 1) -> list[runner.RunOutcome]:
    """Runs the jobs that are not done as Ray tasks and waits for all of them."""
    try:
        import ray
    except ImportError:
        raise runner.ChecklistError(
            "runner='ray' needs Ray: pip install 'tfmagic[ray]' (or pip install ray)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_trial if has_gpus else 0,
                          max_retries=0)(_train)
        outcomes = {}
        waiting = {}
        for job in jobs:
            state = runner.job_state(job)
            if state is None:
                waiting[job.key] = job
            else:
                outcomes[job.key] = state
        progress.start(len(jobs), list(outcomes.values()))
        refs = {}
        for job in waiting.values():
            runner.prepare(job)
            refs[task.remote(job.flagfile, job.log_file)] = job
            progress.started(job.key)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(ready[0])
            try:
                returncode, tail, seconds = ray.get(ready[0])
            except ray.exceptions.RayError as error:
                returncode, tail, seconds = 1, f"Ray task failed: {error}", 0.0
            outcome = runner.finish(job, returncode, tail, seconds)
            outcomes[job.key] = outcome
            progress.finished(outcome)
        return [outcomes[job.key] for job in jobs]
    finally:
        if started_here:
            ray.shutdown()
