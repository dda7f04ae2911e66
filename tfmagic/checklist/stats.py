"""Is a trial better than the baseline, or is the difference seed noise?

Seed k of every arm of a checklist (the baseline and each trial) shares the training subset,
the validation split, the data order and, where the architecture allows, the initialisation
with seed k of every other arm: the runs are paired in blocks. `judge` compares every trial
with the baseline on one metric per run (validation accuracy, in the checklist):

1. **The seed-blocked model.** value = arm effect + seed effect + noise, fitted by least
   squares over every run on a seed the baseline has (a missing run leaves an incomplete
   block, which the fit handles). The noise variance is pooled over all arms, so that even
   2 seeds give it (arms - 1) x (seeds - 1) degrees of freedom.
2. **The guard.** Pooling is right only when every arm is about as noisy as the rest. An
   arm's residual variance is compared with the other arms' by an F-test: beyond its
   99.99% point the arm is left out of the fit altogether (a run that diverged must not
   inflate the noise of every other arm, nor shift the seed effects), and beyond its 95%
   point (once the arm has 3 seeds: on 2 its spread is a single number) it is judged
   **alone**: on its own paired differences with the baseline (a paired t-test), never on
   the pooled variance. An out-of-line baseline (at 1%: a false alarm there costs every
   trial its pooled test) sends every trial to that test. With 3 seeds an arm's spread is
   estimated from 2 degrees of freedom, so a guard cannot catch every noisy arm: with one
   arm 4x as noisy as the others, about 8% of null checklists make a false call (about 20%
   without the guard; BUILD_NOTES.md, "The checklist's statistics").
3. **Many-to-one.** The trials tested on the pooled variance form one Dunnett family: the
   differences from the baseline divided by their standard errors follow a multivariate t
   distribution (the correlations come from the fit), and the simultaneous critical value is
   its quantile, drawn by Monte Carlo from a fixed seed (the one-way case matches
   `scipy.stats.dunnett`). The family-wise error alpha is shared out by Bonferroni: the
   Dunnett family gets alpha x (its trials / all tested trials), each trial judged alone
   alpha / (all tested trials). So the chance that any trial is called better or worse by
   seed noise alone stays at alpha (5%) however many trials there are.
4. **Labels follow the intervals.** Every interval is simultaneous at that level, and a trial
   is "better" exactly when its interval lies above zero, "worse" when below, "no clear
   difference" otherwise: a label never contradicts its interval. The adjusted p-value is
   below alpha exactly then.

No test is possible for a trial with fewer than 2 seeds shared with the baseline (its spread
cannot be checked), nor without any spread at all (identical runs: accuracies move in steps
of 1/N, so ties happen): such a trial is "no clear difference", untested, and never merged
into best.cfg.

A verdict is **decided** when it is better or worse, or when its interval lies within
+-min_effect (0.3 points by default: no difference worth having); otherwise it is
**undecided**, and `seeds_needed` projects, from the current difference and spread, the seeds
that would likely decide it (None beyond `MAX_PROJECTED_SEEDS`).

>>> verdicts = judge([0.80, 0.81, 0.805], {"a": [0.85, 0.861, 0.855], "b": [0.801, 0.812, 0.80],
...                                          "c": [0.802, 0.808, 0.806]})
>>> verdicts["a"].label, verdicts["a"].analysis, verdicts["b"].label
('better', 'pooled', 'no clear difference')
"""

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special

from tfmagic._checks import check, is_number

BETTER = "better"
WORSE = "worse"
NO_CLEAR_DIFFERENCE = "no clear difference"
LABELS = (BETTER, WORSE, NO_CLEAR_DIFFERENCE)
POOLED = "pooled"
ALONE = "alone"
UNTESTED = "untested"
ANALYSES = (POOLED, ALONE, UNTESTED)
ALPHA = 0.05
MIN_EFFECT = 0.003
GUARD_LEVEL = 0.05
BASELINE_GUARD_LEVEL = 0.01
MIN_GUARD_DF = 1.5
OUTLIER_LEVEL = 0.0001
MAX_PROJECTED_SEEDS = 50
DRAWS = 100_000
_DRAW_SEED = 20261207
# Below this squared deviation per run (a standard deviation of 1e-9) values count as tied.
_TIED = 1e-18

Values = Sequence[float] | Mapping[int, float]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a trial compares with the baseline (the module docstring has the rule).

    Attributes:
        label: "better", "worse" or "no clear difference"; better exactly when ci_low > 0,
            worse exactly when ci_high < 0.
        delta_mean: the trial's effect minus the baseline's: from the seed-blocked fit
            (pooled), or the mean paired difference (alone, untested).
        delta_std: its standard error; NaN when untested.
        p_value: the two-sided p-value of that one comparison; None when untested.
        p_adjusted: the family-wise adjusted p-value (Dunnett, or Bonferroni when alone),
            below alpha exactly when the label is better or worse; None when untested.
        ci_low, ci_high: the simultaneous interval of delta_mean (-inf, inf when untested).
        analysis: "pooled", "alone" or "untested".
        reason: why that analysis, in words (the guard's numbers included).
        undecided: neither called nor shown to lie within +-min_effect.
        seeds_needed: for an undecided verdict, the seeds (per arm) that would likely decide
            it; None when decided, untested, or beyond `MAX_PROJECTED_SEEDS`.
        seeds: the trial's seeds in the comparison.
        baseline_seeds: the baseline's seeds.
    """

    label: str
    delta_mean: float
    delta_std: float
    p_value: float | None
    p_adjusted: float | None
    ci_low: float
    ci_high: float
    analysis: str
    reason: str
    undecided: bool
    seeds_needed: int | None
    seeds: int
    baseline_seeds: int

    @property
    def reliable(self) -> bool:
        """Whether a test was possible."""
        return self.analysis != UNTESTED


def _by_seed(name: str, values: Values) -> dict[int, float]:
    if isinstance(values, Mapping):
        out = dict(values)
        check(all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in out),
              name, values, "must map seed indices (integers >= 0) to values")
    else:
        out = dict(enumerate(values))
    check(all(is_number(v) for v in out.values()), name, values,
          "must hold finite numbers only")
    return {k: float(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class _Fit:
    """Least squares of value = arm effect + seed effect over the runs of `arms`."""

    arms: list[str]
    effects: np.ndarray        # one per arm (arms[0] the baseline)
    unscaled: np.ndarray       # (X'X)^-1 restricted to the arm effects
    residual_ss: dict[str, float]
    residual_df: dict[str, float]
    df: int

    @property
    def variance(self) -> float:
        return sum(self.residual_ss.values()) / self.df

    def guard(self, arm: str) -> tuple[float, float]:
        """(ratio of the arm's residual variance to the other arms', F-test p-value); p is 1
        when the test has too few degrees of freedom."""
        own_df = self.residual_df[arm]
        rest_df = self.df - own_df
        if own_df < 0.5 or rest_df < 1:
            return 1.0, 1.0
        own = self.residual_ss[arm] / own_df
        rest = (sum(self.residual_ss.values()) - self.residual_ss[arm]) / rest_df
        if own <= _TIED:
            return 0.0, 1.0
        if rest <= _TIED:
            return math.inf, 0.0
        ratio = own / rest
        return ratio, float(special.fdtrc(own_df, rest_df, ratio))


def _fit(runs: dict[str, dict[int, float]], arms: list[str]) -> _Fit | None:
    """The seed-blocked fit over the baseline's seeds (arms[0] is the baseline); None when
    it leaves no residual degrees of freedom."""
    seeds = sorted(runs[arms[0]])
    rows = [(i, seeds.index(k), v) for i, arm in enumerate(arms)
            for k, v in sorted(runs[arm].items()) if k in runs[arms[0]]]
    columns = len(arms) + len(seeds) - 1
    if len(rows) <= columns:
        return None
    design = np.zeros((len(rows), columns))
    for r, (i, s, _) in enumerate(rows):
        design[r, i] = 1.0
        if s:
            design[r, len(arms) + s - 1] = 1.0
    y = np.array([v for _, _, v in rows])
    inverse = np.linalg.inv(design.T @ design)
    beta = inverse @ design.T @ y
    residuals = y - design @ beta
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    owner = np.array([i for i, _, _ in rows])
    return _Fit(
        arms=arms, effects=beta[:len(arms)], unscaled=inverse[:len(arms), :len(arms)],
        residual_ss={arm: float(np.sum(residuals[owner == i] ** 2))
                     for i, arm in enumerate(arms)},
        residual_df={arm: float(np.sum(1.0 - leverage[owner == i]))
                     for i, arm in enumerate(arms)},
        df=len(rows) - columns)


@functools.lru_cache(maxsize=32)
def _max_abs_t(correlation: bytes, size: int, df: int) -> np.ndarray:
    """Sorted draws of max_i |T_i| for T multivariate t (df) with that correlation matrix."""
    rng = np.random.default_rng(_DRAW_SEED)
    root = np.linalg.cholesky(np.frombuffer(correlation).reshape(size, size))
    normal = rng.standard_normal((DRAWS, size)) @ root.T
    scale = np.sqrt(rng.chisquare(df, DRAWS) / df)
    return np.sort(np.abs(normal).max(axis=1) / scale)


def _draws(correlation: np.ndarray, df: int) -> np.ndarray:
    rounded = np.round(correlation, 6)
    np.fill_diagonal(rounded, 1.0)
    return _max_abs_t(rounded.tobytes(), len(rounded), df)


def simultaneous_critical_value(draws: np.ndarray, level: float) -> float:
    """The critical value of max |T| at `level` (two-sided, family-wise) from sorted draws:
    |t| > it exactly when `simultaneous_p_value(draws, t)` < level."""
    n = len(draws)
    allowed = math.ceil(level * (n + 1) - 1) - 1     # draws >= |t| that still give p < level
    if allowed < 0:
        return math.inf
    return float(draws[max(n - allowed - 1, 0)]) if allowed < n else -math.inf


def simultaneous_p_value(draws: np.ndarray, t: float) -> float:
    """The share of draws of max |T| at least |t| (Monte Carlo, counting the observed one)."""
    at_least = len(draws) - int(np.searchsorted(draws, abs(t), side="left"))
    return (at_least + 1) / (len(draws) + 1)


def dunnett(estimates: Sequence[float], covariance: np.ndarray, df: int, *,
            level: float = ALPHA) -> tuple[np.ndarray, np.ndarray, float]:
    """Many-to-one comparisons: (adjusted p-values, unadjusted p-values, critical value).

    `estimates` are differences from the control, `covariance` their estimated covariance
    matrix (the noise variance estimated with df degrees of freedom). An estimate is
    significant at `level`, family-wise, exactly when |estimate| / its standard error exceeds
    the critical value, and its simultaneous interval is estimate +- critical value x
    standard error.
    """
    estimates = np.asarray(estimates, dtype=np.float64)
    errors = np.sqrt(np.diag(covariance))
    t = estimates / errors
    draws = _draws(covariance / np.outer(errors, errors), df)
    adjusted = np.array([simultaneous_p_value(draws, value) for value in t])
    return adjusted, 2 * special.stdtr(df, -np.abs(t)), simultaneous_critical_value(draws, level)


def judge(baseline_values: Values, trials: Mapping[str, Values], *, alpha: float = ALPHA,
          min_effect: float = MIN_EFFECT) -> dict[str, Verdict]:
    """Verdicts of a family of trials against one baseline (the module docstring).

    Args:
        baseline_values: the baseline's metric per seed: a mapping seed index -> value, or a
            sequence for seeds 0, 1, ...
        trials: trial name -> its values, the same way; seed k of a trial is paired with
            seed k of the baseline.
        alpha: the family-wise error rate, in (0, 1).
        min_effect: the smallest difference worth deciding (a fraction of accuracy, >= 0).
    """
    check(is_number(alpha) and 0.0 < alpha < 1.0, "alpha", alpha, "must be in (0, 1)")
    check(is_number(min_effect) and min_effect >= 0.0, "min_effect", min_effect,
          "must be a finite number >= 0")
    base = _by_seed("baseline_values", baseline_values)
    check(bool(base), "baseline_values", baseline_values, "must hold at least 1 value")
    runs = {name: _by_seed(f"trials[{name!r}]", values) for name, values in trials.items()}
    check(not any(not values for values in runs.values()), "trials", dict(trials),
          "must give every trial at least 1 value")
    baseline = "\0baseline"
    runs[baseline] = base
    shared = {name: sorted(set(values) & set(base)) for name, values in runs.items()}

    fit, out_of_line = _robust_fit(runs, baseline, [baseline, *trials])
    kinds, reasons = {}, {}
    baseline_alone = baseline in out_of_line
    for name in trials:
        if len(shared[name]) < 2:
            kinds[name] = UNTESTED
            reasons[name] = (f"{len(shared[name])} seed{'s' if len(shared[name]) != 1 else ''}"
                             " shared with the baseline: no test (its spread cannot be "
                             "checked)")
        elif baseline_alone:
            kinds[name] = ALONE
            reasons[name] = ("the baseline's spread is out of line with the trials' ("
                             + out_of_line[baseline] + "): judged on its own paired "
                             "differences with the baseline")
        elif name in out_of_line:
            kinds[name] = ALONE
            reasons[name] = (f"its spread is out of line with the other arms' "
                             f"({out_of_line[name]}): judged on its own paired differences "
                             "with the baseline")
        elif fit is None or fit.variance <= _TIED:
            kinds[name] = UNTESTED
            reasons[name] = ("no spread between the seeds of any arm (tied values): the noise "
                             "cannot be estimated")
        else:
            kinds[name] = POOLED
            ratio, p = fit.guard(name)
            spread = (f"its spread in line (guard: {ratio:.2f}x the rest's, p = {p:.2f})"
                      if fit.residual_df[name] >= MIN_GUARD_DF else
                      f"its spread too little measured to check on {len(shared[name])} seeds")
            reasons[name] = (f"seed-blocked, noise pooled over {len(fit.arms)} arms "
                             f"({fit.df} df); {spread}")
    for name in trials:
        if kinds[name] == ALONE and np.var(_differences(runs, baseline, name)) <= _TIED:
            kinds[name] = UNTESTED
            reasons[name] += "; but its paired differences are all equal (tied values): no test"
    pooled = [name for name in trials if kinds[name] == POOLED]
    tested = len(pooled) + sum(kinds[name] == ALONE for name in trials)
    verdicts = {}
    if pooled:
        verdicts.update(_pooled(fit, pooled, alpha * len(pooled) / tested, tested / len(pooled)))
    for name in trials:
        if kinds[name] == ALONE:
            verdicts[name] = _alone(runs, baseline, name, alpha / tested, tested)
        elif kinds[name] == UNTESTED:
            paired = _differences(runs, baseline, name)
            delta = paired.mean() if len(paired) else (
                np.mean(list(runs[name].values())) - np.mean(list(base.values())))
            verdicts[name] = (float(delta), math.nan, None, None, -math.inf, math.inf,
                              NO_CLEAR_DIFFERENCE, None)
    return {name: _verdict(verdicts[name], kinds[name], reasons[name], min_effect,
                           len(runs[name]), len(base)) for name in trials}


def _robust_fit(runs: dict[str, dict[int, float]], baseline: str, arms: list[str]
                ) -> tuple[_Fit | None, dict[str, str]]:
    """The fit without the arms far out of line (one at a time, the worst first), and every
    arm out of line -> the guard's numbers in words."""
    arms = [arm for arm in arms if len(set(runs[arm]) & set(runs[baseline])) >= 1]
    out_of_line = {}
    while True:
        fit = _fit(runs, arms)
        if fit is None:
            return None, out_of_line
        guards = {arm: fit.guard(arm) for arm in arms}
        worst = min(arms, key=lambda arm: guards[arm][1])
        ratio, p = guards[worst]
        if p >= OUTLIER_LEVEL:
            break
        out_of_line[worst] = (f"residual variance {ratio:.1f}x the rest's, guard "
                              f"p = {p:.2g} < {OUTLIER_LEVEL:g}: left out of the pooled fit")
        if worst == baseline:
            return None, out_of_line
        arms = [arm for arm in arms if arm != worst]
    for arm in arms:
        ratio, p = guards[arm]
        if fit.residual_df[arm] >= MIN_GUARD_DF and p < (
                BASELINE_GUARD_LEVEL if arm == baseline else GUARD_LEVEL):
            out_of_line[arm] = f"residual variance {ratio:.1f}x the rest's, guard p = {p:.3f}"
    return fit, out_of_line


def _differences(runs: dict[str, dict[int, float]], baseline: str, name: str) -> np.ndarray:
    """The trial's values minus the baseline's, seed by seed, on the seeds both have."""
    shared = sorted(set(runs[name]) & set(runs[baseline]))
    return np.array([runs[name][k] - runs[baseline][k] for k in shared])


def _pooled(fit: _Fit, names: list[str], level: float, share: float) -> dict[str, tuple]:
    """Dunnett over the pooled trials at `level`; adjusted p-values scaled by `share` (the
    Bonferroni split with the trials judged alone)."""
    rows = np.zeros((len(names), len(fit.arms)))
    for r, name in enumerate(names):
        rows[r, fit.arms.index(name)] = 1.0
        rows[r, 0] = -1.0
    estimates = rows @ fit.effects
    covariance = fit.variance * rows @ fit.unscaled @ rows.T
    adjusted, raw, critical = dunnett(estimates, covariance, fit.df, level=level)
    errors = np.sqrt(np.diag(covariance))
    out = {}
    for r, name in enumerate(names):
        delta, error = float(estimates[r]), float(errors[r])
        called = abs(delta) / error > critical
        out[name] = (delta, error, float(raw[r]), min(1.0, float(adjusted[r]) * share),
                     delta - critical * error, delta + critical * error,
                     (BETTER if delta > 0 else WORSE) if called else NO_CLEAR_DIFFERENCE,
                     _Projection(error, critical, fit.df, level / len(names)))
    return out


def _alone(runs: dict[str, dict[int, float]], baseline: str, name: str, level: float,
           tested: int) -> tuple:
    """The paired t-test of one trial against the baseline at `level` (Bonferroni over
    `tested` trials)."""
    differences = _differences(runs, baseline, name)
    n = len(differences)
    delta = float(differences.mean())
    error = float(differences.std(ddof=1) / math.sqrt(n))
    t = delta / error
    raw = float(2 * special.stdtr(n - 1, -abs(t)))
    critical = float(-special.stdtrit(n - 1, level / 2))
    called = abs(t) > critical
    return (delta, error, raw, min(1.0, raw * tested), delta - critical * error,
            delta + critical * error,
            (BETTER if delta > 0 else WORSE) if called else NO_CLEAR_DIFFERENCE,
            _Projection(error * math.sqrt(n), critical, None, level))


def _verdict(numbers: tuple, analysis: str, reason: str, min_effect: float, seeds: int,
             baseline_seeds: int) -> Verdict:
    delta, error, raw, adjusted, low, high, label, projection = numbers
    decided = label != NO_CLEAR_DIFFERENCE or (low >= -min_effect and high <= min_effect)
    needed = None
    if not decided and projection is not None:
        needed = _seeds_needed(delta, projection, min(seeds, baseline_seeds), min_effect)
    return Verdict(label=label, delta_mean=delta, delta_std=error, p_value=raw,
                   p_adjusted=adjusted, ci_low=low, ci_high=high, analysis=analysis,
                   reason=reason, undecided=not decided, seeds_needed=needed, seeds=seeds,
                   baseline_seeds=baseline_seeds)


@dataclasses.dataclass(frozen=True)
class _Projection:
    """What projects an interval to more seeds: its standard error (pooled) or the paired
    differences' standard deviation (alone), its critical value, the pooled fit's degrees of
    freedom (None when alone) and the two-sided level of one comparison."""

    spread: float
    critical: float
    df: int | None
    level: float


def _seeds_needed(delta: float, projection: _Projection, seeds: int, min_effect: float
                  ) -> int | None:
    """The fewest seeds per arm at which, with the same difference and spread, the interval
    would leave out zero or lie within +-min_effect. Pooled, the standard error shrinks as
    1/sqrt(seeds) and the critical value follows a t quantile as the fit's degrees of freedom
    grow with the seeds; alone, the paired t-test's."""
    n = np.arange(seeds + 1, MAX_PROJECTED_SEEDS + 1)
    p = projection
    if p.df is None:
        half = -special.stdtrit(n - 1, p.level / 2) * p.spread / np.sqrt(n)
    else:
        df = p.df * (n - 1) / max(seeds - 1, 1)
        ratio = special.stdtrit(df, p.level / 2) / special.stdtrit(p.df, p.level / 2)
        half = p.critical * ratio * p.spread * np.sqrt(seeds / n)
    decides = (half < abs(delta)) | (abs(delta) + half <= min_effect)
    return int(n[np.argmax(decides)]) if decides.any() else None
