"""What a checklist's runs say so far: one summary per trial, with its verdict.

`collect` reads the run directories of every trial that plan.json lists (`tfmagic.rundir`)
and judges each trial's last-epoch validation accuracies against the baseline's, seed k
paired with seed k (`tfmagic.checklist.stats.judge`: the seed-blocked model, Dunnett over the
trials; the confirm trials form a family of their own). `tfmagic.checklist.report` renders
the summaries and `tfmagic.checklist.best` merges the winners into best.cfg.
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfmagic import rundir
from tfmagic.checklist import stats
from tfmagic.checklist.trials import BASELINE

CONFIRM_GROUP = "confirm"
CONFIRM_BEST = "confirm_best"
CONFIRM_WITHOUT = "confirm_without_"
STATUSES = ("completed", "partial", "pending", "failed", "skipped", rundir.UNREADABLE)


@dataclasses.dataclass(frozen=True)
class TrialSummary:
    """What is known about one trial: its seeds' state, their numbers and the verdict.

    Means are over the finished seeds (None when there are none); the `_std` values are
    sample standard deviations (None with fewer than 2 finished seeds). `val_accuracies` are
    the finished seeds' last-epoch validation accuracies (seeds without a validation split
    left out), `val_by_seed` the same by seed index. `verdict` compares them with the
    baseline's over the family of trials (None for the baseline itself and for trials
    without validation results).
    `run_dirs` are the finished seeds' run directories.
    """

    name: str
    group: str
    description: str
    change: dict[str, Any]
    seeds_planned: int
    seeds_done: int
    seeds_failed: int
    seeds_pending: int
    status: str
    reasons: list[str]
    val_accuracies: list[float]
    val_by_seed: dict[int, float]
    val_accuracy_mean: float | None
    val_accuracy_std: float | None
    test_accuracies: list[float]
    test_accuracy_mean: float | None
    test_accuracy_std: float | None
    best_val_accuracy_mean: float | None
    test_loss_mean: float | None
    wall_time_mean_s: float | None
    wall_time_total_s: float
    params: int | None
    run_dirs: list[str]
    verdict: stats.Verdict | None


def collect(out_dir: str | os.PathLike) -> list[TrialSummary]:
    """Summarize every trial of the checklist in out_dir, in plan order.

    Trials that plan.json lists as skipped (never run) come last, with status "skipped".
    """
    return summarize(os.fspath(out_dir), rundir.read_plan(os.fspath(out_dir)))


def summarize(out_dir: str, plan: rundir.Plan) -> list[TrialSummary]:
    """`collect` with the plan already read."""
    summaries = [_summarize_trial(out_dir, trial, plan.seeds_of(trial)) for trial in plan.trials]
    baseline = next((s for s in summaries if s.name == BASELINE), None)
    if baseline is not None and baseline.val_accuracies:
        verdicts = {}
        for in_family in (lambda s: s.group != CONFIRM_GROUP, lambda s: s.group == CONFIRM_GROUP):
            verdicts.update(stats.judge(baseline.val_by_seed, {
                s.name: s.val_by_seed for s in summaries
                if s.name != BASELINE and s.val_by_seed and in_family(s)},
                min_effect=plan.min_effect))
        summaries = [dataclasses.replace(s, verdict=verdicts.get(s.name)) for s in summaries]
    for entry in plan.skipped:
        summaries.append(TrialSummary(
            name=entry["name"], group=entry.get("group", ""),
            description=entry.get("description", ""), change=dict(entry.get("change", {})),
            seeds_planned=0, seeds_done=0, seeds_failed=0, seeds_pending=0, status="skipped",
            reasons=[str(entry["reason"])], val_accuracies=[], val_by_seed={},
            val_accuracy_mean=None,
            val_accuracy_std=None, test_accuracies=[], test_accuracy_mean=None,
            test_accuracy_std=None, best_val_accuracy_mean=None, test_loss_mean=None,
            wall_time_mean_s=None, wall_time_total_s=0.0, params=None, run_dirs=[],
            verdict=None,
        ))
    return summaries


def _summarize_trial(out_dir: str, trial: dict[str, Any], seeds: int) -> TrialSummary:
    states, results, finished, run_dirs, reasons_by_text = [], [], [], [], {}
    val_by_seed = {}
    for k in range(seeds):
        run_dir = rundir.seed_dir(out_dir, trial["name"], k)
        state, result, reason = rundir.read_run(run_dir, relative_to=out_dir)
        states.append(state)
        if result is not None:
            results.append(result)
        if state == "done":
            finished.append(result)
            run_dirs.append(run_dir)
            value = rundir.val_accuracy(result, run_dir)
            if value is not None:
                val_by_seed[k] = value
        if reason is not None:
            reasons_by_text.setdefault((state, reason), []).append(k)
    accuracies = [float(r["test_accuracy"]) for r in finished]
    val_accuracies = list(val_by_seed.values())
    val = [float(r["best_val_accuracy"]) for r in finished
           if r.get("best_val_accuracy") is not None]
    losses = [float(r["test_loss"]) for r in finished if r.get("test_loss") is not None]
    times = [float(r["wall_time_s"]) for r in results if r.get("wall_time_s") is not None]
    params = next((int(r["params"]) for r in results if r.get("params") is not None), None)
    reasons = [
        f"seed{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))} {state}: {text}"
        for (state, text), ks in reasons_by_text.items()
    ]
    if len(val_accuracies) < len(finished):
        reasons.append(f"{len(finished) - len(val_accuracies)} finished seed(s) without a "
                       "validation split: verdicts read validation accuracy only")
    done, pending = states.count("done"), states.count("pending")
    return TrialSummary(
        name=trial["name"],
        group=trial["group"],
        description=trial["description"],
        change=dict(trial["change"]),
        seeds_planned=seeds,
        seeds_done=done,
        seeds_failed=seeds - done - pending,
        seeds_pending=pending,
        status=_trial_status(seeds, done, pending, states.count("skipped"),
                             states.count(rundir.UNREADABLE)),
        reasons=reasons,
        val_accuracies=val_accuracies,
        val_by_seed=val_by_seed,
        val_accuracy_mean=_mean(val_accuracies),
        val_accuracy_std=_std(val_accuracies),
        test_accuracies=accuracies,
        test_accuracy_mean=_mean(accuracies),
        test_accuracy_std=_std(accuracies),
        best_val_accuracy_mean=_mean(val),
        test_loss_mean=_mean(losses),
        wall_time_mean_s=_mean(times),
        wall_time_total_s=float(sum(times)),
        params=params,
        run_dirs=run_dirs,
        verdict=None,
    )


def _trial_status(seeds: int, done: int, pending: int, skipped: int, unreadable: int) -> str:
    if done == seeds:
        return "completed"
    if pending == seeds:
        return "pending"
    if skipped == seeds:
        return "skipped"
    if unreadable == seeds:
        return rundir.UNREADABLE
    if done == 0 and pending == 0:
        return "failed"
    return "partial"


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
