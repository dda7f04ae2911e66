"""best.cfg: the baseline with the winning trials merged in.

From each group, the trial judged "better" on validation with the largest gain goes in, the
largest gains first. When two of those change the same field to different values, the larger
gain wins and the other trial is left out (as is one that would make an invalid recipe); the
notes say so. Its output_dir is ``OUT/best``.
"""

import dataclasses
import os

from tfmagic import rundir
from tfmagic.checklist import stats
from tfmagic.checklist.summaries import BASELINE, CONFIRM_GROUP, TrialSummary, summarize
from tfmagic.recipe import Recipe, RecipeError


@dataclasses.dataclass(frozen=True)
class Best:
    """The merged recipe, the merged trials in order of gain, and why others were left out."""

    recipe: Recipe
    merged: list[str]
    notes: list[str]


def best_recipe(out_dir: str | os.PathLike) -> tuple[Recipe, list[str]]:
    """The baseline with the best "better" trial of each group merged in (see the module
    docstring), output_dir `OUT/best`, and the names of the merged trials in order of gain."""
    out_dir = os.fspath(out_dir)
    plan = rundir.read_plan(out_dir)
    best = merge_best(summarize(out_dir, plan), plan.baseline, out_dir)
    return best.recipe, best.merged


def merge_best(summaries: list[TrialSummary], baseline: Recipe, out_dir: str) -> Best:
    """The baseline with the best "better" trial of each group merged in, largest gain first
    (see the module docstring), output_dir ``out_dir/best``."""
    winners: dict[str, TrialSummary] = {}
    for s in summaries:
        if (s.group in (BASELINE, CONFIRM_GROUP) or s.verdict is None
                or s.verdict.label != stats.BETTER):
            continue
        if s.group not in winners or s.verdict.delta_mean > winners[s.group].verdict.delta_mean:
            winners[s.group] = s
    recipe = dataclasses.replace(baseline, output_dir=os.path.join(out_dir, rundir.BEST_DIR))
    owners: dict[str, TrialSummary] = {}
    merged, notes = [], []
    for s in sorted(winners.values(), key=lambda s: -s.verdict.delta_mean):
        clashes = {field: owners[field] for field, value in s.change.items()
                   if field in owners and getattr(recipe, field) != value}
        if clashes:
            rivals = ", ".join(f"{field} (set by `{o.name}`, "
                               f"{_points(o.verdict.delta_mean)} points)"
                               for field, o in clashes.items())
            notes.append(f"`{s.name}` ({_points(s.verdict.delta_mean)} points) left out: it "
                         f"changes the same field as a larger gain: {rivals}.")
            continue
        try:
            recipe = dataclasses.replace(recipe, **s.change)
        except RecipeError as error:
            notes.append(f"`{s.name}` left out: together with {', '.join(merged)} it makes an "
                         f"invalid recipe ({error}).")
            continue
        merged.append(s.name)
        for field in s.change:
            owners.setdefault(field, s)
    return Best(recipe, merged, notes)


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f}"
