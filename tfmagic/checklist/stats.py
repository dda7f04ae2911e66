"""Is a trial better than the baseline, or is the difference seed noise?

Each trial is trained with seeds seed, seed+1, ... as is the baseline, giving one metric value
(validation accuracy, in the checklist) per seed and side. `verdict` compares one trial with
the baseline:

- With at least 2 values on both sides, Welch's two-sided t-test (unequal variances) on the
  per-seed values: `p < alpha` (0.05) gives "better" or "worse" by the sign of the
  difference of the means, otherwise "no clear difference". The verdict is `reliable`, and
  `ci_low`, `ci_high` bound the difference with 95% confidence (Welch-Satterthwaite degrees of
  freedom).
- With fewer than 2 values on either side no test is possible (seed noise cannot be
  estimated): `|delta| >= min_delta` (0.005, i.e. half a point of accuracy) gives "better"
  or "worse" by its sign, otherwise "no clear difference", `reliable` is False and the
  interval is unbounded.

`delta_mean` is mean(trial) - mean(baseline); `delta_std` is the standard error of that
difference, sqrt(s_t^2 / n_t + s_b^2 / n_b) with sample variances, NaN with one value on a
side.

`judge` compares a family of trials with the same baseline and controls the family-wise
error with Holm's step-down method: a trial is called better or worse only when its
Holm-adjusted p-value is below alpha, so that the chance that any trial of the family is
called better or worse by seed noise alone stays below alpha (5%), however many trials there
are. Holm rather than Benjamini-Hochberg: the checklist merges every winner into best.cfg and
the recipe defaults, where one false winner costs accuracy, so the chance of any false call is
what has to be bounded rather than the share of false calls among the winners; Holm holds
under any dependence between the tests (the trials share the baseline's runs, so theirs are
correlated), and it is never less powerful than Bonferroni.

`undecided` says whether more seeds could still change the conclusion: the 95% interval of the
difference holds both a gain and a loss of `min_effect` (0.3 points by default), or it leaves
out zero and reaches past `min_effect` while Holm's correction still withholds the call.

>>> verdict([0.80, 0.81, 0.805], [0.85, 0.86, 0.855]).label
'better'
>>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
[0.03, 0.06, 0.06]
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from tfmagic._checks import check, is_number

BETTER = "better"
WORSE = "worse"
NO_CLEAR_DIFFERENCE = "no clear difference"
LABELS = (BETTER, WORSE, NO_CLEAR_DIFFERENCE)
ALPHA = 0.05
MIN_DELTA = 0.005
MIN_EFFECT = 0.003
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a trial compares with the baseline (see the module docstring for the rule).

    Attributes:
        label: "better", "worse" or "no clear difference".
        delta_mean: mean(trial) - mean(baseline).
        delta_std: standard error of delta_mean; NaN when a side has a single value.
        p_value: two-sided Welch t-test p-value; None when a side has a single value.
        reliable: False when no test was possible (fewer than 2 values on a side).
        ci_low, ci_high: the 95% confidence interval of delta_mean (-inf, inf without a test).
        p_adjusted: the Holm-adjusted p-value within the family `judge` compared (None from
            `verdict` alone, and without a test).
        seeds: the values on the trial's side.
        baseline_seeds: the values on the baseline's side.
    """

    label: str
    delta_mean: float
    delta_std: float
    p_value: float | None
    reliable: bool
    ci_low: float = -math.inf
    ci_high: float = math.inf
    p_adjusted: float | None = None
    seeds: int = 0
    baseline_seeds: int = 0


def _values(name: str, values: Sequence[float], minimum: int) -> np.ndarray:
    values = list(values)
    check(len(values) >= minimum, name, values,
          f"must hold at least {minimum} value{'s' if minimum > 1 else ''}")
    check(all(is_number(v) for v in values), name, values, "must hold finite numbers only")
    return np.asarray(values, dtype=np.float64)


def _variance(values: np.ndarray) -> float:
    """Sample variance; exactly 0 for identical values (a mean of copies can be off by an ulp)."""
    return 0.0 if np.all(values == values[0]) else float(values.var(ddof=1))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's two-sided t-test of mean(a) == mean(b); returns (t, p_value).

    t is positive when mean(a) > mean(b). When both sides are constant (zero variance) the
    test degenerates: equal means give (0, 1), different means (+-inf, 0).

    >>> t, p = welch_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    >>> float(t), float(p)
    (0.0, 1.0)
    """
    a = _values("a", a, minimum=2)
    b = _values("b", b, minimum=2)
    if _variance(a) == 0.0 and _variance(b) == 0.0:
        if a[0] == b[0]:
            return 0.0, 1.0
        return math.copysign(math.inf, a[0] - b[0]), 0.0
    # scipy's Welch test (ttest_ind(equal_var=False)) from the summary statistics, so that the
    # exact zero variance of a constant side is used instead of an ulp-sized one.
    result = scipy_stats.ttest_ind_from_stats(
        a.mean(), math.sqrt(_variance(a)), len(a), b.mean(), math.sqrt(_variance(b)), len(b),
        equal_var=False)
    return float(result.statistic), float(result.pvalue)


def welch_interval(a: Sequence[float], b: Sequence[float], *,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Confidence interval of mean(a) - mean(b) with Welch-Satterthwaite degrees of freedom.

    Both sides constant: the interval is the difference itself.

    >>> low, high = welch_interval([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    >>> round(low, 3), round(high, 3)
    (-0.267, 4.267)
    """
    a = _values("a", a, minimum=2)
    b = _values("b", b, minimum=2)
    check(is_number(confidence) and 0.0 < confidence < 1.0, "confidence", confidence,
          "must be in (0, 1)")
    delta = float(a.mean() - b.mean())
    va, vb = _variance(a) / len(a), _variance(b) / len(b)
    if va + vb == 0.0:
        return delta, delta
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    return delta - half, delta + half


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), kept at least as
    large as the adjusted values before it, and capped at 1; a p-value is significant at
    level alpha in the family exactly when its adjusted value is below alpha.
    """
    p = list(p_values)
    check(all(is_number(v) and 0.0 <= v <= 1.0 for v in p), "p_values", p,
          "must hold numbers in [0, 1]")
    adjusted = [0.0] * len(p)
    running = 0.0
    for rank, index in enumerate(sorted(range(len(p)), key=p.__getitem__)):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def verdict(baseline_values: Sequence[float], trial_values: Sequence[float], *,
            alpha: float = ALPHA, min_delta: float = MIN_DELTA) -> Verdict:
    """Judge trial_values (one per seed) against baseline_values by the module's rule.

    Args:
        baseline_values: the baseline's metric, one value per seed (at least one).
        trial_values: the trial's metric, one value per seed (at least one).
        alpha: significance level of the t-test, in (0, 1).
        min_delta: smallest |difference of means| called better/worse when a side has a
            single value (no test possible); >= 0.
    """
    baseline = _values("baseline_values", baseline_values, minimum=1)
    trial = _values("trial_values", trial_values, minimum=1)
    check(is_number(alpha) and 0.0 < alpha < 1.0, "alpha", alpha, "must be in (0, 1)")
    check(is_number(min_delta) and min_delta >= 0.0, "min_delta", min_delta,
          "must be a finite number >= 0")
    delta = float(trial.mean() - baseline.mean())
    by_sign = BETTER if delta > 0 else WORSE
    sizes = {"seeds": len(trial), "baseline_seeds": len(baseline)}
    if len(baseline) < 2 or len(trial) < 2:
        label = by_sign if delta != 0 and abs(delta) >= min_delta else NO_CLEAR_DIFFERENCE
        return Verdict(label, delta, math.nan, None, reliable=False, **sizes)
    _, p_value = welch_t_test(trial, baseline)
    std_error = math.sqrt(_variance(trial) / len(trial) + _variance(baseline) / len(baseline))
    low, high = welch_interval(trial, baseline)
    label = by_sign if p_value < alpha else NO_CLEAR_DIFFERENCE
    return Verdict(label, delta, std_error, p_value, reliable=True, ci_low=low, ci_high=high,
                   **sizes)


def judge(baseline_values: Sequence[float], trials: Mapping[str, Sequence[float]], *,
          alpha: float = ALPHA, min_delta: float = MIN_DELTA) -> dict[str, Verdict]:
    """Verdicts of a family of trials against one baseline, Holm-adjusted (module docstring).

    Trials with a test (at least 2 values on both sides) form the family: each is called
    better or worse only when its Holm-adjusted p-value is below alpha. A trial without a test
    keeps `verdict`'s unreliable min_delta rule and is not counted in the family.

    >>> verdicts = judge([0.80, 0.81, 0.805], {"a": [0.85, 0.86, 0.855], "b": [0.81, 0.82]})
    >>> verdicts["a"].label, verdicts["b"].label
    ('better', 'no clear difference')
    """
    single = {name: verdict(baseline_values, values, alpha=alpha, min_delta=min_delta)
              for name, values in trials.items()}
    tested = [name for name, v in single.items() if v.reliable]
    adjusted = dict(zip(tested, holm([single[name].p_value for name in tested]), strict=True))
    out = {}
    for name, v in single.items():
        if name not in adjusted:
            out[name] = v
            continue
        label = (BETTER if v.delta_mean > 0 else WORSE) if adjusted[name] < alpha else (
            NO_CLEAR_DIFFERENCE)
        out[name] = dataclasses.replace(v, label=label, p_adjusted=adjusted[name])
    return out


def undecided(v: Verdict, min_effect: float = MIN_EFFECT) -> bool:
    """Whether more seeds could still change the conclusion about a trial.

    True when the 95% interval of the difference holds both a gain and a loss of min_effect,
    and also when it leaves out zero and reaches past min_effect on that side while the
    verdict (Holm-adjusted, stricter than the interval) still says no clear difference.
    Always True without a test (a single seed on a side).

    >>> undecided(verdict([0.80, 0.81], [0.80, 0.82]))
    True
    """
    check(is_number(min_effect) and min_effect >= 0.0, "min_effect", min_effect,
          "must be a finite number >= 0")
    if v.ci_low < -min_effect and v.ci_high > min_effect:
        return True
    beyond = (v.ci_low > 0 and v.ci_high > min_effect) or (
        v.ci_high < 0 and v.ci_low < -min_effect)
    return v.label == NO_CLEAR_DIFFERENCE and beyond


def distance_to_decision(v: Verdict, min_effect: float = MIN_EFFECT) -> float:
    """How far an interval is from deciding: its half-width over the half-width at which it
    would stop holding both a gain and a loss of min_effect (min_effect + |delta|). Below 1 is
    decided; the smaller, the fewer extra seeds a decision needs. Infinite without a test.
    """
    if not v.reliable:
        return math.inf
    return (v.ci_high - v.ci_low) / 2 / (min_effect + abs(v.delta_mean))
