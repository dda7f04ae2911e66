"""The checklist's verdicts on simulated checklists: family-wise error and power.

Each checklist is 16 arms (the baseline and 15 trials) x S seeds of validation accuracy
around 90%, a seed-to-seed standard deviation of 0.5 points of which half the variance is
shared by every arm's seed k (same-seed correlation 0.5), drawn from a fixed seed. Printed,
per scenario: the share of checklists in which any null trial is called better or worse (the
family-wise error), the share in which a trial 1 point up is called better (power), and the
share of verdicts decided by each analysis. `--no_guard` turns the guard off, to show what it
buys. The last line is the lower bound on the family-wise error, with one trial 4x as noisy,
of any rule that calls a +1-point trial 60% of the time, from that trial's two sufficient
statistics (its mean difference and its residual variance) with the pooled noise known.

    python benchmarks/checklist_statistics.py --checklists=4000
"""

import argparse
import math
import time

import numpy as np
from scipy import stats as scipy_stats

from tfmagic.checklist import stats

ARMS, SPREAD, CORRELATION = 16, 0.005, 0.5
SCENARIOS = (
    ("null, 3 seeds", {"seeds": 3}),
    ("null, 2 seeds, steps of 1/300", {"seeds": 2, "step": 300}),
    ("one trial 4x as noisy, 3 seeds", {"seeds": 3, "wide": True}),
    ("one trial 4x as noisy, 5 seeds", {"seeds": 5, "wide": True}),
    ("one trial diverged (a seed 20 points low), 3 seeds", {"seeds": 3, "diverged": True}),
    ("+1 point, 2 seeds", {"seeds": 2, "effect": 0.01}),
    ("+1 point, 3 seeds", {"seeds": 3, "effect": 0.01}),
    ("+1 point, 5 seeds", {"seeds": 5, "effect": 0.01}),
)


def checklist(rng: np.random.Generator, seeds: int, effect: float = 0.0, wide: bool = False,
              diverged: bool = False, step: int | None = None) -> np.ndarray:
    """Arms x seeds: trial 1 gets `effect`; trial 5's own noise 4x with `wide`; trial 7's
    first seed 20 points low with `diverged`; rounded to 1/step."""
    noise = rng.standard_normal((ARMS, seeds)) * math.sqrt(1 - CORRELATION) * SPREAD
    if wide:
        noise[5] *= 4.0
    values = 0.9 + rng.standard_normal(seeds) * math.sqrt(CORRELATION) * SPREAD + noise
    values[1] += effect
    if diverged:
        values[7, 0] -= 0.2
    return values if step is None else np.round(values * step) / step


def scenario(checklists: int, options: dict) -> tuple[float, float | None, dict[str, float]]:
    rng = np.random.default_rng(20261207)
    effect = options.get("effect", 0.0)
    false_calls = found = 0
    analyses = dict.fromkeys(stats.ANALYSES, 0)
    for _ in range(checklists):
        values = checklist(rng, **options)
        verdicts = stats.judge(list(values[0]), {f"t{i}": list(values[i])
                                                 for i in range(1, ARMS)})
        false_calls += any(v.label != stats.NO_CLEAR_DIFFERENCE for name, v in verdicts.items()
                           if not (effect and name == "t1"))
        found += verdicts["t1"].label == stats.BETTER
        for v in verdicts.values():
            analyses[v.analysis] += 1
    shares = {name: count / (checklists * (ARMS - 1)) for name, count in analyses.items()}
    return false_calls / checklists, (found / checklists if effect else None), shares


def bound(power: float = 0.60, wider: float = 4.0, seeds: int = 3) -> float:
    """The smallest family-wise error of a rule `|mean difference| > a and residual variance
    < b` (both in units of the pooled noise) that keeps `power` at +1 point; 14 null trials
    in line and one `wider` times as noisy."""
    own = math.sqrt(1 - CORRELATION) * SPREAD
    sd_in_line = math.sqrt(2 / seeds)
    sd_wide = math.sqrt((1 + wider**2) / seeds)
    effect = 0.01 / own
    df = seeds - 1
    best = 1.0
    for a in np.linspace(1.0, 4.0, 301):
        for b in np.linspace(0.2, 30.0, 300):
            kept = scipy_stats.chi2.cdf(b * df, df)
            if scipy_stats.norm.sf((a - effect) / sd_in_line) * kept < power:
                continue
            null_in_line = 2 * scipy_stats.norm.sf(a / sd_in_line) * kept
            null_wide = (2 * scipy_stats.norm.sf(a / sd_wide)
                         * scipy_stats.chi2.cdf(b * df / wider**2, df))
            best = min(best, 1 - (1 - null_in_line) ** 14 * (1 - null_wide))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checklists", type=int, default=2000)
    parser.add_argument("--no_guard", action="store_true")
    args = parser.parse_args()
    if args.no_guard:
        stats.GUARD_LEVEL = stats.BASELINE_GUARD_LEVEL = stats.OUTLIER_LEVEL = 0.0
    error = math.sqrt(0.05 * 0.95 / args.checklists)
    print(f"{args.checklists} checklists a scenario; a 5% rate has a Monte Carlo standard "
          f"error of {100 * error:.2f} points; guard {'off' if args.no_guard else 'on'}")
    print("| scenario | false calls (any null trial) | +1 point called better | pooled / "
          "alone / untested | seconds |")
    print("|---|---|---|---|---|")
    for name, options in SCENARIOS:
        started = time.perf_counter()
        false_rate, power, shares = scenario(args.checklists, options)
        print(f"| {name} | {100 * false_rate:.1f}% | "
              + ("—" if power is None else f"{100 * power:.1f}%") + " | "
              + " / ".join(f"{100 * shares[a]:.1f}%" for a in stats.ANALYSES)
              + f" | {time.perf_counter() - started:.1f} |")
    print(f"Lower bound, one trial 4x as noisy, 3 seeds, power 60%: {100 * bound():.1f}%")


if __name__ == "__main__":
    main()
