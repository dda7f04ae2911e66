"""A warm checklist worker over many runs: its peak resident memory and each run's seconds.

One `LocalExecutor` slot (all cores) trains ``--runs`` short Fashion-MNIST runs one after
another, alternating a ResNet-8 with AutoAugment and the small MobileNet with mixup, so that
the worker builds new models, graphs and input pipelines at every run. Each run's log starts
with the worker's peak resident memory before the run (`tfmagic.checklist.worker`); the
table lists it with the run's seconds as the runner timed them. Then ``--fresh`` runs of the
same recipes with ``runs_per_worker=1`` (a new process per run, as before warm workers) give
the seconds of a run that pays the import of TensorFlow.

    python benchmarks/worker_memory.py --runs=30 --fresh=4
"""

import argparse
import os
import re
import sys
import tempfile

from tfmagic.checklist import runner
from tfmagic.checklist.executors import Job, LocalExecutor, Slot
from tfmagic.checklist.trials import Trial
from tfmagic.recipe import Recipe

_RECIPES = (
    dict(model="resnet8", width=0.25, augment="autoaugment", crop_scheme="none"),
    dict(model="mobilenet_small", width=0.5, augment="color", crop_scheme="none",
         mixup_alpha=0.2),
)
_COMMON = dict(train_subset=1000, validation_fraction=0.1, batch_size=64, eval_batch_size=1000,
               epochs=1, warmup_epochs=0.2)


def _jobs(out: str, count: int) -> list[Job]:
    jobs = []
    for k in range(count):
        trial = Trial(f"run{k}", "bench", "a short run", {})
        job = Job(trial, 0, Recipe(), out)
        recipe = Recipe(**_COMMON, **_RECIPES[k % 2], seed=k, output_dir=job.run_dir)
        os.makedirs(os.path.dirname(job.flagfile), exist_ok=True)
        recipe.to_flagfile(job.flagfile)
        jobs.append(Job(trial, 0, recipe, out))
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    return jobs


def _execute(jobs: list[Job], runs_per_worker: int):
    slot = Slot(tuple(sorted(os.sched_getaffinity(0))), None)
    executor = LocalExecutor([slot], runs_per_worker=runs_per_worker)
    try:
        return executor.execute(jobs, runner._Progress(None, 1))
    finally:
        executor.close()


def _peak_mib(job: Job) -> int:
    with open(job.log_file) as f:
        return int(re.search(r"peak resident memory so far (\d+) MiB", f.readline()).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--fresh", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warm_jobs = _jobs(os.path.join(tmp, "warm"), args.runs)
        warm = _execute(warm_jobs, runs_per_worker=args.runs)
        fresh_jobs = _jobs(os.path.join(tmp, "fresh"), args.fresh)
        fresh = _execute(fresh_jobs, runs_per_worker=1)
        print("| run | model | status | seconds | worker's peak RSS before it (MiB) |")
        print("|---|---|---|---|---|")
        for k, (job, outcome) in enumerate(zip(warm_jobs, warm, strict=True)):
            print(f"| {k + 1} | {job.recipe.model} | {outcome.status} | {outcome.seconds:.1f} | "
                  f"{_peak_mib(job)} |")
        for k, (job, outcome) in enumerate(zip(fresh_jobs, fresh, strict=True)):
            print(f"| fresh {k + 1} | {job.recipe.model} | {outcome.status} | "
                  f"{outcome.seconds:.1f} | {_peak_mib(job)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
