"""Is a trial better than the baseline, or is the difference seed noise?

Each trial is trained with the same K seeds as the baseline, giving K test accuracies per
side. `verdict` compares them with this rule:

- With at least 2 values on both sides, Welch's two-sided t-test (unequal variances) on the
  per-seed values: `p < alpha` (0.05) gives "better" or "worse" by the sign of the
  difference of the means, otherwise "no clear difference". The verdict is `reliable`.
- With fewer than 2 values on either side no test is possible (seed noise cannot be
  estimated): `|delta| >= min_delta` (0.005, i.e. half a point of accuracy) gives "better"
  or "worse" by its sign, otherwise "no clear difference", and `reliable` is False.

`delta_mean` is mean(trial) - mean(baseline); `delta_std` is the standard error of that
difference, sqrt(s_t^2 / n_t + s_b^2 / n_b) with sample variances, NaN with one value on a
side.

>>> verdict([0.80, 0.81, 0.805], [0.85, 0.86, 0.855]).label
'better'
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

from tfmagic._checks import check, is_number

BETTER = "better"
WORSE = "worse"
NO_CLEAR_DIFFERENCE = "no clear difference"
LABELS = (BETTER, WORSE, NO_CLEAR_DIFFERENCE)
ALPHA = 0.05
MIN_DELTA = 0.005


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a trial compares with the baseline (see the module docstring for the rule).

    Attributes:
        label: "better", "worse" or "no clear difference".
        delta_mean: mean(trial) - mean(baseline).
        delta_std: standard error of delta_mean; NaN when a side has a single value.
        p_value: two-sided Welch t-test p-value; None when a side has a single value.
        reliable: False when no test was possible (fewer than 2 values on a side).
    """

    label: str
    delta_mean: float
    delta_std: float
    p_value: float | None
    reliable: bool


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
    if len(baseline) < 2 or len(trial) < 2:
        label = by_sign if delta != 0 and abs(delta) >= min_delta else NO_CLEAR_DIFFERENCE
        return Verdict(label, delta, math.nan, None, reliable=False)
    _, p_value = welch_t_test(trial, baseline)
    std_error = math.sqrt(_variance(trial) / len(trial) + _variance(baseline) / len(baseline))
    label = by_sign if p_value < alpha else NO_CLEAR_DIFFERENCE
    return Verdict(label, delta, std_error, p_value, reliable=True)
