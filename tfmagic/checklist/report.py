"""Turn a checklist output directory into a report: which tricks help, seed noise included.

The runner leaves in an output directory OUT:

- `plan.json`: `{"baseline": {recipe fields}, "seeds": K, "trials": [{"name", "group",
  "description", "change", "seeds"}, ...], "skipped": [{"name", "reason"}, ...],
  "seed_policy": {"seeds", "min_effect", "max_seeds"}, "notes": [...]}`. A trial's
  `change` is relative to the baseline, also for the `confirm` group (`confirm_best` and
  `confirm_without_<trial>`, trained from best.cfg and its leave-one-out variants). A trial's
  `seeds` is how many seeds it is planned with (K when absent; `--seeds=auto` plans more for
  some trials than for others); `seed_policy` (optional) says how they were chosen and `notes`
  (optional) what the runner changed in the baseline (a validation split it lacked);
- `baseline.cfg`: the baseline flagfile;
- `trials/<name>/seed<k>/` for k below the trial's seeds: a `train()` run directory.
  `result.json` marks a finished run (a `"diverged"` one counts as failed); `failure.json`
  (`{"status": "failed" | "skipped", "reason": ...}`) one that crashed or was skipped;
  neither, one still pending.

`read_run` (`tfmagic.rundir`) gives each run directory one state: "done", "failed",
"skipped", "pending", or "unreadable" when its result.json or failure.json is not what train()
or the runner writes (invalid JSON, not an object, a status other than theirs, a completed
result without numeric test_accuracy and wall_time_s, ...). An unreadable run is reported with
the file and what is wrong, counts as a failed seed, and never blocks the rest of the report.
`tfmagic.checklist.summaries` sums the runs up per trial with its verdict and
`tfmagic.checklist.best` merges the winners; this module renders them.

Selection reads the validation split only. Verdicts, the ranking and best.cfg compare each
run's validation accuracy after its last epoch (result.json's `val_accuracy`; the last row of
history.csv for runs that predate it): the last epoch's model is the one that is saved and
tested, while the best of many noisy epochs is biased upwards and picks a model nobody keeps.
Test accuracy is reported beside it, for information, and chooses nothing; a run without a
validation split gets no verdict.

A report can be built at any point, from whatever exists. `write_report` writes, each
atomically (temporary file, then rename), into OUT:

- `report.md`: the baseline, a table of every trial ranked by Δ (what changed, validation
  accuracy mean +- sample std over seeds in %, Δ from the baseline in points with its
  simultaneous 95% interval, seeds, adjusted p-value, verdict, the analysis that decided it,
  test accuracy, wall time per seed), why a trial was judged alone or untested, failed /
  skipped / unreadable / pending trials with their reasons (an unreadable run's with its
  path), what went into best.cfg, "Do the winners combine?" when confirm trials exist, total
  time and how to read it all. Verdicts follow `tfmagic.checklist.stats.judge` (the
  seed-blocked model with the noise pooled over the arms, Dunnett's many-to-one comparison,
  a guard that judges an arm whose spread is out of line on its own);
- `summary.csv`: one row per trial, columns `SUMMARY_COLUMNS`: name, group, description,
  change (a JSON object), status (one of `STATUSES`; "unreadable" when every seed is),
  seeds_planned, seeds_done, seeds_failed (failed, diverged, skipped or unreadable seeds),
  seeds_pending, val_accuracy_mean, val_accuracy_std, test_accuracy_mean,
  test_accuracy_std (sample std, ddof=1), best_val_accuracy_mean, test_loss_mean,
  wall_time_mean_s and wall_time_total_s (over runs with a result.json), params,
  delta_mean and delta_std (the trial's mean validation accuracy minus the baseline's, and
  its standard error), ci_low and ci_high (its simultaneous 95% interval), p_value (of the
  one comparison), p_adjusted (family-wise), verdict, reliable (a test was possible),
  undecided (neither called nor within +-min_effect), seeds_needed (the seeds that would
  likely decide an undecided verdict; empty when decided or beyond 50), analysis
  ("pooled", "alone" or "untested"), analysis_reason (why), reasons (joined by " | ").
  Accuracies and deltas are fractions (0.8512, not 85.12); an empty cell is "not
  available";
- `report.png`: Δ validation accuracy from the baseline per trial with its simultaneous 95%
  interval (the one its verdict follows), coloured by verdict, hatched when judged alone,
  the +-min_effect band marked;
- `curves.png`: validation accuracy per epoch (train accuracy when runs hold no validation
  split), mean over finished seeds, one panel per group with the baseline in each;
- `best.cfg`: the baseline plus, from each group, the trial judged "better" with the largest
  gain. When two of those change the same field to different values, the larger gain wins
  and the other trial is left out (as is one that would make an invalid recipe); report.md
  says so. Its output_dir is `OUT/best`.
"""

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tfmagic import rundir
from tfmagic._atomic import write_atomic
from tfmagic._checks import check, is_number
from tfmagic.checklist import stats
from tfmagic.checklist.best import Best, merge_best
from tfmagic.checklist.best import best_recipe as best_recipe
from tfmagic.checklist.summaries import (
    BASELINE,
    CONFIRM_BEST,
    CONFIRM_GROUP,
    CONFIRM_WITHOUT,
    STATUSES,
    TrialSummary,
    summarize,
)
from tfmagic.checklist.summaries import collect as collect
from tfmagic.plots import save_figure
from tfmagic.recipe import Recipe
from tfmagic.rundir import BASELINE_CFG, BEST_CFG, CURVES_PNG, REPORT_MD, REPORT_PNG, SUMMARY_CSV
from tfmagic.rundir import BEST_DIR as BEST_DIR
from tfmagic.rundir import FAILURE_FILE as FAILURE_FILE
from tfmagic.rundir import FAILURE_STATUSES as FAILURE_STATUSES
from tfmagic.rundir import PLAN_FILE as PLAN_FILE
from tfmagic.rundir import RESULT_STATUSES as RESULT_STATUSES
from tfmagic.rundir import TRIALS_DIR as TRIALS_DIR
from tfmagic.rundir import UNREADABLE as UNREADABLE
from tfmagic.rundir import read_run as read_run
from tfmagic.rundir import val_accuracy as val_accuracy

SUMMARY_COLUMNS = (
    "name", "group", "description", "change", "status", "seeds_planned", "seeds_done",
    "seeds_failed", "seeds_pending", "val_accuracy_mean", "val_accuracy_std",
    "test_accuracy_mean", "test_accuracy_std", "best_val_accuracy_mean", "test_loss_mean",
    "wall_time_mean_s", "wall_time_total_s", "params", "delta_mean", "delta_std", "ci_low",
    "ci_high", "p_value", "p_adjusted", "verdict", "reliable", "undecided", "seeds_needed",
    "analysis", "analysis_reason", "reasons",
)
VERDICT_COLORS = {
    stats.BETTER: "tab:green",
    stats.WORSE: "tab:red",
    stats.NO_CLEAR_DIFFERENCE: "tab:gray",
}
_HATCHES = {stats.POOLED: None, stats.ALONE: "..", stats.UNTESTED: "//"}
_KEY_FIELDS = ("dataset", "train_subset", "model", "width", "epochs", "batch_size", "optimizer",
               "lr", "lr_schedule", "weight_decay", "augment")


@dataclasses.dataclass(frozen=True)
class Report:
    """What `write_report` wrote, the trial summaries and the trials merged into best.cfg."""

    report_md: str
    summary_csv: str
    report_png: str
    curves_png: str
    best_cfg: str | None
    summaries: list[TrialSummary]
    best_trials: list[str]

    @property
    def paths(self) -> tuple[str, ...]:
        """Every file written."""
        return tuple(path for path in (self.report_md, self.summary_csv, self.report_png,
                                       self.curves_png, self.best_cfg) if path is not None)

    @property
    def incomplete(self) -> str | None:
        """What is missing when some planned runs that best.cfg rests on have no result yet
        (pending, running, or their result.json gone), in one sentence; None otherwise."""
        return _incomplete(self.summaries)


def write_report(out_dir: str | os.PathLike, *, total_time_s: float | None = None,
                 best_from_incomplete: bool = False) -> Report:
    """Write report.md, summary.csv, report.png, curves.png and best.cfg into out_dir.

    A report of a checklist whose planned runs have not all got a result (`Report.incomplete`
    says which) says so at its top, and leaves best.cfg as it was: a best.cfg chosen on fewer
    seeds than planned can keep a trick that the missing seeds would reject.

    Args:
        out_dir: a checklist output directory (holding plan.json).
        total_time_s: elapsed time of the whole checklist, reported next to the sum of the
            runs' wall times; None when unknown.
        best_from_incomplete: write best.cfg from the finished seeds even when some planned
            runs have no result.
    """
    out_dir = os.fspath(out_dir)
    check(total_time_s is None or (is_number(total_time_s) and total_time_s >= 0),
          "total_time_s", total_time_s, "must be None or a finite number of seconds >= 0")
    plan = rundir.read_plan(out_dir)
    summaries = summarize(out_dir, plan)
    best = merge_best(summaries, plan.baseline, out_dir)
    write_best = best_from_incomplete or _incomplete(summaries) is None
    report = Report(
        report_md=os.path.join(out_dir, REPORT_MD),
        summary_csv=os.path.join(out_dir, SUMMARY_CSV),
        report_png=os.path.join(out_dir, REPORT_PNG),
        curves_png=os.path.join(out_dir, CURVES_PNG),
        best_cfg=os.path.join(out_dir, BEST_CFG) if write_best else None,
        summaries=summaries,
        best_trials=best.merged,
    )
    if report.best_cfg is not None:
        best.recipe.to_flagfile(report.best_cfg)
    write_atomic(report.summary_csv, _summary_csv(summaries))
    save_figure(_delta_chart(summaries, plan.min_effect), report.report_png)
    save_figure(_curves_chart(summaries), report.curves_png)
    write_atomic(report.report_md,
                 _markdown(out_dir, plan, summaries, best, total_time_s, write_best))
    return report


def _incomplete(summaries: Sequence[TrialSummary]) -> str | None:
    missing = [s for s in summaries if s.seeds_pending and s.group != CONFIRM_GROUP]
    if not missing:
        return None
    planned = sum(s.seeds_planned for s in summaries if s.group != CONFIRM_GROUP)
    runs = sum(s.seeds_pending for s in missing)
    which = ", ".join(f"{s.name} {s.seeds_pending} of {s.seeds_planned}" for s in missing)
    return (f"incomplete: {runs} of {planned} planned runs have no result ({which}); the "
            "verdicts rest on the seeds that finished")


def _ranked(summaries: Sequence[TrialSummary]) -> list[TrialSummary]:
    """The baseline, the judged trials by Δ validation accuracy (largest gain first), then
    the rest in plan order."""
    judged = sorted((s for s in summaries if s.verdict is not None),
                    key=lambda s: -s.verdict.delta_mean)
    return ([s for s in summaries if s.name == BASELINE] + judged
            + [s for s in summaries if s.verdict is None and s.name != BASELINE])


# --- formatting -------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f}"


def _p_value(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_clause(p: float | None) -> str:
    if p is None:
        return "no test"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _what_changed(s: TrialSummary, baseline: Recipe) -> str:
    if not s.change:
        return "nothing (the recipe as given)" if s.name == BASELINE else "—"
    return ", ".join(f"{field}: {getattr(baseline, field)} -> {value}"
                     for field, value in s.change.items())


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return _percent(mean) + ("" if std is None else f" ± {_percent(std)}")


def _accuracy(s: TrialSummary) -> str:
    text = _mean_std(s.val_accuracy_mean, s.val_accuracy_std)
    if s.val_accuracy_mean is not None and s.seeds_done < s.seeds_planned:
        text += f" ({s.seeds_done} of {s.seeds_planned} seeds)"
    return text


def _test_accuracy(s: TrialSummary) -> str:
    return _mean_std(s.test_accuracy_mean, s.test_accuracy_std)


def _interval(v: stats.Verdict | None) -> str:
    if v is None or not v.reliable:
        return "—"
    return f"[{_points(v.ci_low)}, {_points(v.ci_high)}]"


def _seeds_text(s: TrialSummary) -> str:
    if s.verdict is None:
        return str(s.seeds_done) if s.seeds_done else ""
    return f"{s.verdict.seeds} vs {s.verdict.baseline_seeds}"


def _verdict_text(s: TrialSummary) -> str:
    if s.name == BASELINE and s.val_accuracies:
        return "(reference)"
    if s.verdict is None:
        return s.status
    return s.verdict.label + _undecided_text(s.verdict)


def _undecided_text(v: stats.Verdict) -> str:
    if not v.reliable:
        return " (untested)"
    if not v.undecided:
        return ""
    if v.seeds_needed is None:
        return f" (undecided: more than {stats.MAX_PROJECTED_SEEDS} seeds)"
    return f" (undecided: about {v.seeds_needed} seeds)"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _summary_csv(summaries: list[TrialSummary]) -> str:
    def number(value: float | None) -> str:
        return "" if value is None or not math.isfinite(value) else repr(float(value))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for s in summaries:
        v = s.verdict
        writer.writerow([
            s.name, s.group, s.description, json.dumps(s.change, sort_keys=True), s.status,
            s.seeds_planned, s.seeds_done, s.seeds_failed, s.seeds_pending,
            number(s.val_accuracy_mean), number(s.val_accuracy_std),
            number(s.test_accuracy_mean), number(s.test_accuracy_std),
            number(s.best_val_accuracy_mean), number(s.test_loss_mean),
            number(s.wall_time_mean_s), number(s.wall_time_total_s),
            "" if s.params is None else s.params,
            *([number(v.delta_mean), number(v.delta_std), number(v.ci_low),
               number(v.ci_high), number(v.p_value), number(v.p_adjusted), v.label,
               str(v.reliable).lower(), str(v.undecided).lower(),
               "" if v.seeds_needed is None else v.seeds_needed, v.analysis, v.reason]
              if v else [""] * 12),
            " | ".join(s.reasons),
        ])
    return buffer.getvalue()


# --- report.md --------------------------------------------------------------------------


def _seeds_sentence(plan: rundir.Plan, summaries: list[TrialSummary]) -> str:
    planned = [s.seeds_planned for s in summaries if s.seeds_planned]
    low, high = (min(planned), max(planned)) if planned else (plan.seeds, plan.seeds)
    text = (f"{low} seed{'s' if low > 1 else ''} per trial" if low == high
            else f"{low} to {high} seeds per trial")
    if plan.policy.get("seeds") == "auto":
        text += (f" (`--seeds=auto`: every trial starts with {low}; while a trial was still "
                 "undecided and likely to be decided within "
                 f"{plan.policy.get('max_seeds', high)} seeds, it and the baseline got "
                 "another)")
    return text


def _markdown(out_dir: str, plan: rundir.Plan, summaries: list[TrialSummary], best: Best,
              total_time_s: float | None, best_written: bool) -> str:
    baseline = plan.baseline
    min_effect = plan.min_effect
    counts = {status: sum(s.status == status for s in summaries) for status in STATUSES}
    lines = [
        "# Checklist report",
        "",
        "Baseline: " + ", ".join(f"`{field}={getattr(baseline, field)}`"
                                 for field in _KEY_FIELDS) + ".",
        "",
        "<details><summary>The baseline flagfile</summary>",
        "",
        "```",
        *_baseline_lines(out_dir, baseline),
        "```",
        "",
        "</details>",
        "",
        *[f"**{note}**\n" for note in plan.notes],
        *_incomplete_lines(summaries, best_written),
        f"{_seeds_sentence(plan, summaries)}; {len(summaries)} trials: "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".",
        "",
        "Verdicts, the ranking and best.cfg are chosen on the **validation** split (the "
        "accuracy after the last epoch); test accuracy is shown for information only.",
        "",
    ]
    if any(s.verdict is not None and not s.verdict.reliable for s in summaries):
        lines += [
            "**Verdicts marked untested rest on a single seed or on tied values**: their "
            "noise cannot be estimated, so they are never called better or worse nor merged "
            "into best.cfg. Run with `--seeds=auto` (or 2 or more seeds) to test them.",
            "",
        ]
    main = [s for s in summaries if s.group != CONFIRM_GROUP]
    lines += ["## Results", "",
              f"![Δ validation accuracy vs baseline, simultaneous 95% intervals]({REPORT_PNG})", ""]
    lines += _table(
        [[s.name, _what_changed(s, baseline), _accuracy(s),
          _points(s.verdict.delta_mean) if s.verdict else "", _interval(s.verdict),
          _seeds_text(s), _p_value(s.verdict.p_adjusted) if s.verdict else "",
          _verdict_text(s), s.verdict.analysis if s.verdict else "", _test_accuracy(s),
          _duration(s.wall_time_mean_s)]
         for s in _ranked(main)],
        ["trial", "what changed", "val accuracy (%)", "Δ val (points)",
         "simultaneous 95% interval of Δ", "seeds (trial vs baseline)", "p (adjusted)",
         "verdict", "analysis", "test accuracy (%)", "time per seed"],
    )
    lines += ([""] + _analysis_lines(main) + _problems(summaries)
              + _best_section(best, summaries, best_written))
    confirm = [s for s in summaries if s.group == CONFIRM_GROUP]
    if confirm:
        lines += _confirm_section(confirm, summaries, min_effect)
    lines += [
        "## Training curves", "", f"![training curves]({CURVES_PNG})", "",
        "## Time", "",
        f"Training time: {_duration(sum(s.wall_time_total_s for s in summaries))} in all (the "
        "sum of the runs' wall times, diverged runs included; runs that train in parallel "
        "overlap)."
        + (f" Elapsed: {_duration(total_time_s)}." if total_time_s is not None else ""),
        "",
        "## How to read", "",
        "Each trial is the baseline with one change, trained with the same seeds (seed k of "
        "every trial uses the same data split and order). The numbers that choose are "
        "validation accuracies after the last epoch, held out of the training images: the "
        "model of the last epoch is the one that is kept and tested, and the best of many "
        "noisy epochs would flatter every run. Test accuracy is never used to choose: a "
        "recipe chosen on the test split and reported on it overstates itself; "
        "`--confirm` trains best.cfg again and reports its test accuracy.",
        "",
        "Accuracy is the mean ± sample standard deviation over the finished seeds. Seed k "
        "of every trial shares the data split, the data order and the initialisation with "
        "seed k of the baseline, so the runs are compared in blocks: validation accuracy = "
        "trial effect + seed effect + noise, fitted over all trials at once, the noise "
        "pooled over them (**pooled**). Δ is the trial's effect minus the baseline's, in "
        "percentage points. Dunnett's many-to-one comparison gives every Δ a simultaneous "
        "95% interval: the chance that any trial is called better or worse by seed noise "
        f"alone stays below {stats.ALPHA:g}, however many trials there are. A trial is "
        "\"better\" exactly when its interval lies above zero, \"worse\" when below, \"no "
        "clear difference\" otherwise, and the adjusted p is below "
        f"{stats.ALPHA:g} exactly then. A trial whose seed-to-seed spread is out of line "
        "with the others' (an F-test of its residual variance at "
        f"{stats.GUARD_LEVEL:g}) is judged **alone**, on its own paired differences with the "
        "baseline, and left out of the pooled fit when far out of line (at "
        f"{stats.OUTLIER_LEVEL:g}): a run that diverged must not decide the other trials. "
        "**Untested**: a trial with one seed, or with tied values, whose noise cannot be "
        "estimated. \"(undecided)\" marks a verdict that is neither called nor shown to lie "
        f"within ±{100 * min_effect:g} points, with the seeds that would likely decide it "
        "at the same difference and spread. report.png draws the intervals. "
        f"{SUMMARY_CSV} holds the same numbers as fractions, one row per trial; {BEST_CFG} "
        "is the baseline with the winners merged (`tfmagic-train --flagfile=best.cfg`).",
        "",
    ]
    return "\n".join(lines)


def _baseline_lines(out_dir: str, baseline: Recipe) -> list[str]:
    path = os.path.join(out_dir, BASELINE_CFG)
    if os.path.isfile(path):
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    return baseline.to_flags()


def _analysis_lines(summaries: list[TrialSummary]) -> list[str]:
    """Why each trial was judged alone or untested; the pooled analysis said once."""
    judged = [s for s in summaries if s.verdict is not None]
    pooled = [s for s in judged if s.verdict.analysis == stats.POOLED]
    lines = []
    if pooled:
        reason = pooled[0].verdict.reason.split(";")[0]
        lines += [f"Pooled ({len(pooled)} trials): {reason}, Dunnett over them."]
    lines += [f"- `{s.name}` ({s.verdict.analysis}): {s.verdict.reason}." for s in judged
              if s.verdict.analysis != stats.POOLED]
    return lines + [""] if lines else []


def _problems(summaries: list[TrialSummary]) -> list[str]:
    lines = []
    troubled = [s for s in summaries if s.reasons]
    if troubled:
        lines += ["## Failed and skipped", ""]
        lines += [f"- `{s.name}` ({s.status}): " + "; ".join(s.reasons) for s in troubled]
        lines += [""]
    pending = [s for s in summaries if s.seeds_pending]
    if pending:
        lines += ["## Pending", ""]
        lines += [f"- `{s.name}`: {s.seeds_pending} of {s.seeds_planned} seeds pending or "
                  f"running ({s.seeds_done} done)" for s in pending]
        lines += [""]
    return lines


def _incomplete_lines(summaries: list[TrialSummary], best_written: bool) -> list[str]:
    note = _incomplete(summaries)
    if note is None:
        return []
    then = (f"`{BEST_CFG}` was written from them all the same (`--best_from_incomplete`)."
            if best_written else
            f"`{BEST_CFG}` was not written from them: run the checklist again to train the "
            "missing runs (finished runs are kept), or pass `--best_from_incomplete`.")
    return [f"**{note[0].upper()}{note[1:]}.** {then}", ""]


def _best_section(best: Best, summaries: list[TrialSummary], written: bool) -> list[str]:
    lines = ["## best.cfg", ""]
    by_name = {s.name: s for s in summaries}
    if not written:
        lines += [f"Not written, as some planned runs have no result (see the top). On the "
                  f"seeds that finished it would merge: "
                  f"{', '.join(f'`{name}`' for name in best.merged) or 'nothing'}.", ""]
        return lines
    if best.merged:
        lines += [f"`{BEST_CFG}` is the baseline plus the best \"better\" trial of each group "
                  "(output_dir `" + best.recipe.output_dir + "`):", ""]
        lines += [f"- `{name}` ({_points(by_name[name].verdict.delta_mean)} points): "
                  + ", ".join(f"{k}={v}" for k, v in by_name[name].change.items())
                  for name in best.merged]
    else:
        lines += [f"No trial was judged better: `{BEST_CFG}` is the baseline "
                  f"(output_dir `{best.recipe.output_dir}`)."]
    if best.notes:
        lines += [""] + [f"- {note}" for note in best.notes]
    return lines + [""]


def _confirm_section(confirm: list[TrialSummary], summaries: list[TrialSummary],
                     min_effect: float) -> list[str]:
    lines = [
        "## Do the winners combine?", "",
        "`confirm_best` trains best.cfg; each `confirm_without_<trial>` is best.cfg without "
        "that trial's change. Leaving out a trick that helps on top of the others makes the "
        "validation accuracy worse than `confirm_best`'s (the same analysis, over the "
        "left-out tricks).", "",
    ]
    best = next((s for s in confirm if s.name == CONFIRM_BEST), None)
    against_best = {}
    if best is not None and best.val_accuracies:
        against_best = stats.judge(best.val_by_seed, {
            s.name: s.val_by_seed for s in confirm if s is not best and s.val_by_seed},
            min_effect=min_effect)
    rows, findings = [], []
    for s in confirm:
        versus = against_best.get(s.name)
        left_out = (s.name[len(CONFIRM_WITHOUT):] if s.name.startswith(CONFIRM_WITHOUT)
                    else "nothing")
        rows.append([
            s.name, left_out, _accuracy(s), _test_accuracy(s),
            _points(s.verdict.delta_mean) if s.verdict else "",
            _verdict_text(s),
            _points(versus.delta_mean) if versus else "",
            _p_value(versus.p_adjusted if versus.reliable else None) if versus else "",
            versus.label if versus else "",
        ])
        if versus is None:
            continue
        gap = _points(versus.delta_mean)
        if versus.label == stats.WORSE:
            findings.append(f"`{left_out}` helps on top of the others: leaving it out "
                            f"changes validation accuracy by {gap} points.")
        elif versus.label == stats.BETTER:
            findings.append(f"`{left_out}` hurts in combination: leaving it out changes "
                            f"validation accuracy by {gap} points.")
        else:
            findings.append(f"`{left_out}` adds nothing clear on top of the others "
                            f"(leaving it out: {gap} points).")
    lines += _table(rows, ["trial", "left out", "val accuracy (%)", "test accuracy (%)",
                           "Δ val vs baseline (points)", "verdict vs baseline",
                           "Δ val vs confirm_best (points)", "p vs confirm_best (adjusted)",
                           "verdict vs confirm_best"])
    lines += [""]
    if best is not None and best.verdict is not None:
        lines += [f"best.cfg against the baseline on validation: "
                  f"{_verdict_text(best)} "
                  f"({_points(best.verdict.delta_mean)} points, "
                  f"{_p_clause(best.verdict.p_adjusted)}).", ""]
    baseline = next((s for s in summaries if s.name == BASELINE), None)
    if best is not None and best.test_accuracy_mean is not None:
        lines += [f"best.cfg's test accuracy, the number to report: "
                  f"{_test_accuracy(best)}% over {best.seeds_done} seed"
                  f"{'s' if best.seeds_done > 1 else ''}"
                  + (f" (the baseline's: {_test_accuracy(baseline)}%)."
                     if baseline is not None and baseline.test_accuracy_mean is not None
                     else "."), ""]
    if findings:
        lines += [f"- {finding}" for finding in findings] + [""]
    return lines


# --- plots ------------------------------------------------------------------------------


def _message_figure(text: str) -> Figure:
    figure = Figure(figsize=(6, 2), layout="constrained")
    axis = figure.subplots()
    axis.text(0.5, 0.5, text, ha="center", va="center")
    axis.set_axis_off()
    return figure


def _delta_chart(summaries: list[TrialSummary], min_effect: float) -> Figure:
    judged = sorted((s for s in summaries if s.verdict is not None),
                    key=lambda s: s.verdict.delta_mean)
    if not judged:
        return _message_figure("No trial has results to compare with the baseline yet.")
    deltas = np.array([100 * s.verdict.delta_mean for s in judged])
    # Each bar's simultaneous 95% interval; none when untested (no noise estimate).
    low = np.array([100 * s.verdict.ci_low if s.verdict.reliable else np.nan for s in judged])
    high = np.array([100 * s.verdict.ci_high if s.verdict.reliable else np.nan for s in judged])
    figure = Figure(figsize=(8, 1.5 + 0.32 * len(judged)), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(judged))
    axis.axvspan(-100 * min_effect, 100 * min_effect, color="tab:blue", alpha=0.08,
                 label=f"± {100 * min_effect:g} points")
    axis.barh(positions, deltas, xerr=np.vstack([deltas - low, high - deltas]), capsize=3,
              color=[VERDICT_COLORS[s.verdict.label] for s in judged],
              hatch=[_HATCHES[s.verdict.analysis] for s in judged],
              edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 1})
    axis.set_yticks(positions, [f"{s.name} ({s.verdict.seeds})" for s in judged])
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel("Δ validation accuracy vs baseline (percentage points, simultaneous 95% "
                    "interval)")
    axis.set_title("Which changes help (mean over seeds; seeds in brackets)")
    axis.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=color, edgecolor="black", label=label)
               for label, color in VERDICT_COLORS.items()]
    handles.append(Patch(facecolor="tab:blue", alpha=0.15,
                         label=f"± {100 * min_effect:g} points"))
    for analysis, label in ((stats.ALONE, "judged alone (spread out of line)"),
                            (stats.UNTESTED, "untested (1 seed or ties)")):
        if any(s.verdict.analysis == analysis for s in judged):
            handles.append(Patch(facecolor="white", edgecolor="black",
                                 hatch=_HATCHES[analysis], label=label))
    axis.legend(handles=handles, loc="lower right", fontsize="small")
    return figure


def _mean_curve(histories: list[dict[str, np.ndarray]], metric: str) -> np.ndarray:
    """Mean over runs per epoch, each epoch over the runs that reached it."""
    length = max(len(h[metric]) for h in histories)
    return np.array([np.mean([h[metric][epoch] for h in histories if len(h[metric]) > epoch])
                     for epoch in range(length)])


def _curves_chart(summaries: list[TrialSummary]) -> Figure:
    histories = {s.name: [h for h in map(rundir.read_history, s.run_dirs) if "accuracy" in h]
                 for s in summaries}
    histories = {name: runs for name, runs in histories.items() if runs}
    if not histories:
        return _message_figure("No finished run has a training history yet.")
    every_run = [h for runs in histories.values() for h in runs]
    metric = ("val_accuracy" if all("val_accuracy" in h for h in every_run) else "accuracy")
    curves = {name: 100 * _mean_curve(runs, metric) for name, runs in histories.items()}
    groups: dict[str, list[str]] = {}
    for s in summaries:
        if s.name in curves and s.name != BASELINE:
            groups.setdefault(s.group or "other", []).append(s.name)
    panels = list(groups.items()) or [(BASELINE, [])]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    for axis, (group, names) in zip(axes, panels, strict=False):
        if BASELINE in curves:
            epochs = np.arange(1, len(curves[BASELINE]) + 1)
            axis.plot(epochs, curves[BASELINE], color="black", linestyle="--", label=BASELINE)
        for name in names:
            axis.plot(np.arange(1, len(curves[name]) + 1), curves[name], label=name)
        axis.set_title(group)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="x-small")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in axes[len(panels):]:
        axis.set_axis_off()
    for axis in axes[::columns]:
        axis.set_ylabel(("validation" if metric == "val_accuracy" else "train")
                        + " accuracy (%)")
    figure.suptitle(f"{metric} per epoch, mean over finished seeds")
    return figure
