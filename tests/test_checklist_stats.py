"""The checklist's statistics: the seed-blocked fit against a two-way analysis written out,
Dunnett against scipy, and the family-wise error and power on simulated checklists."""

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats

from tfmagic.checklist import stats
from tfmagic.checklist.stats import judge

ARMS, SEEDS, SPREAD, CORRELATION = 16, 3, 0.005, 0.5


def simulated(rng, seeds=SEEDS, *, effect=0.0, wide=None, wider=4.0, diverged=False,
              step=None, spread=SPREAD):
    """One checklist's validation accuracies, arms x seeds: the baseline (row 0) and 15
    trials around 90%, a seed-to-seed standard deviation of 0.5 points of which half the
    variance is shared by every arm's seed k (same-seed correlation 0.5). `effect` is added
    to trial 1; trial `wide`'s own noise has `wider` times the standard deviation; with
    `diverged`, trial 7's first seed is 20 points low; `step` rounds to steps of 1/step."""
    shared = rng.standard_normal(seeds) * math.sqrt(CORRELATION) * spread
    own = rng.standard_normal((ARMS, seeds)) * math.sqrt(1 - CORRELATION) * spread
    if wide is not None:
        own[wide] *= wider
    values = 0.9 + shared + own
    values[1] += effect
    if diverged:
        values[7, 0] -= 0.2
    return values if step is None else np.round(values * step) / step


def verdicts_of(values):
    return judge(list(values[0]), {f"t{i}": list(values[i]) for i in range(1, len(values))})


def check_labels_follow_intervals(verdicts):
    for v in verdicts.values():
        assert (v.label == "better") == (v.ci_low > 0)
        assert (v.label == "worse") == (v.ci_high < 0)
        called = v.label != "no clear difference"
        assert called == (v.p_adjusted is not None and v.p_adjusted < 0.05)


def false_call_rate(rng, checklists, **kwargs):
    calls = 0
    for _ in range(checklists):
        verdicts = verdicts_of(simulated(rng, **kwargs))
        check_labels_follow_intervals(verdicts)
        calls += any(v.label != "no clear difference" for name, v in verdicts.items()
                     if kwargs.get("effect", 0.0) == 0.0 or name != "t1")
    return calls / checklists


def allowed(checklists, alpha=0.05):
    """alpha plus three Monte Carlo standard errors of a rate estimated from `checklists`."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / checklists)


# --- the model and the many-to-one test, against independent computations ----------------


def test_complete_blocks_match_a_two_way_analysis_written_out():
    rng = np.random.default_rng(9)                     # every arm's spread in line
    values = simulated(rng, effect=0.012)
    verdicts = verdicts_of(values)
    arms, seeds = values.shape
    residuals = (values - values.mean(1, keepdims=True) - values.mean(0, keepdims=True)
                 + values.mean())
    df = (arms - 1) * (seeds - 1)
    variance = np.sum(residuals**2) / df
    error = math.sqrt(2 * variance / seeds)
    # The simultaneous critical value: the quantile of max |T| of 15 t statistics with
    # correlation 1/2 (they share the baseline), from scipy's multivariate t.
    correlation = np.full((arms - 1, arms - 1), 0.5) + 0.5 * np.eye(arms - 1)
    joint = scipy_stats.multivariate_t(shape=correlation, df=df)
    critical = optimize.brentq(
        lambda c: joint.cdf(np.full(arms - 1, c), lower_limit=np.full(arms - 1, -c),
                            random_state=1, maxpts=200_000) - 0.95, 2.0, 5.0, xtol=1e-4)
    for i in range(1, arms):
        v = verdicts[f"t{i}"]
        delta = values[i].mean() - values[0].mean()
        assert v.analysis == "pooled"
        assert v.delta_mean == pytest.approx(delta, abs=1e-12)
        assert v.delta_std == pytest.approx(error)
        assert v.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(delta) / error, df))
        assert (v.ci_low, v.ci_high) == pytest.approx(
            (delta - critical * error, delta + critical * error), abs=2e-4)
        assert (v.seeds, v.baseline_seeds) == (3, 3)
    assert verdicts["t1"].label == "better"
    assert "noise pooled over 16 arms (30 df)" in verdicts["t1"].reason


def test_a_missing_run_leaves_an_incomplete_block_fitted_by_least_squares():
    rng = np.random.default_rng(8)
    values = simulated(rng, seeds=4)
    trials = {f"t{i}": dict(enumerate(values[i])) for i in range(1, 6)}
    del trials["t2"][1]                                  # t2's seed 1 failed
    trials["t3"][7] = 0.95                               # a seed the baseline lacks: unused
    verdicts = judge(list(values[0]), trials)
    # The same model by numpy's least squares: one column per arm, one per seed after the
    # first, over the runs on the baseline's seeds.
    runs = [(0, k, values[0, k]) for k in range(4)] + [
        (i, k, v) for i in range(1, 6) for k, v in trials[f"t{i}"].items() if k < 4]
    design = np.zeros((len(runs), 6 + 3))
    for r, (i, k, _) in enumerate(runs):
        design[r, i] = 1.0
        if k:
            design[r, 5 + k] = 1.0
    y = np.array([v for _, _, v in runs])
    beta, residual_ss, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(runs) - design.shape[1]
    covariance = residual_ss[0] / df * np.linalg.inv(design.T @ design)
    for i in range(1, 6):
        v = verdicts[f"t{i}"]
        assert v.analysis == "pooled"
        assert v.delta_mean == pytest.approx(beta[i] - beta[0])
        assert v.delta_std == pytest.approx(math.sqrt(
            covariance[i, i] + covariance[0, 0] - 2 * covariance[0, i]))
    assert (verdicts["t2"].seeds, verdicts["t3"].seeds) == (3, 5)
    assert verdicts["t2"].delta_mean != pytest.approx(np.mean(values[2, [0, 2, 3]])
                                                      - values[0].mean())


def test_dunnett_matches_scipy_in_the_one_way_case():
    rng = np.random.default_rng(3)
    control = rng.normal(0.90, 0.01, 6)
    groups = [rng.normal(0.90 + shift, 0.01, n)
              for shift, n in ((0.0, 5), (0.02, 4), (-0.015, 6), (0.005, 3))]
    expected = scipy_stats.dunnett(*groups, control=control, random_state=1)
    interval = expected.confidence_interval()
    df = len(control) + sum(map(len, groups)) - len(groups) - 1
    variance = (np.sum((control - control.mean()) ** 2)
                + sum(np.sum((g - g.mean()) ** 2) for g in groups)) / df
    estimates = [g.mean() - control.mean() for g in groups]
    covariance = variance * (np.diag([1 / len(g) for g in groups]) + 1 / len(control))
    adjusted, raw, critical = stats.dunnett(estimates, covariance, df)
    assert adjusted == pytest.approx(expected.pvalue, abs=0.004)
    errors = np.sqrt(np.diag(covariance))
    assert np.array(estimates) - critical * errors == pytest.approx(interval.low, abs=2e-4)
    assert np.array(estimates) + critical * errors == pytest.approx(interval.high, abs=2e-4)
    assert raw == pytest.approx(2 * scipy_stats.t.sf(np.abs(estimates) / errors, df))


def test_the_critical_value_and_the_p_value_agree_at_every_level():
    draws = np.sort(np.random.default_rng(0).standard_normal(5000) ** 2)
    for level in (0.001, 0.01, 0.05, 0.5):
        critical = stats.simultaneous_critical_value(draws, level)
        for t in np.linspace(0, 5, 2001):
            assert (abs(t) > critical) == (stats.simultaneous_p_value(draws, t) < level)


# --- the four defects --------------------------------------------------------------------


def test_ties_produce_no_call():
    # Accuracies move in steps of 1/N: a trial and the baseline can each repeat a value.
    assert judge([0.80, 0.80], {"a": [0.81, 0.81]})["a"].label == "no clear difference"
    everything_tied = judge([0.80, 0.80, 0.80], {"a": [0.81, 0.81, 0.81],
                                                 "b": [0.80, 0.80, 0.80]})
    assert {v.analysis for v in everything_tied.values()} == {"untested"}
    assert "tied values" in everything_tied["a"].reason
    assert everything_tied["a"].undecided and everything_tied["a"].seeds_needed is None
    # Among noisy arms a tied pair is judged on the pooled noise, not on its own zero spread.
    rng = np.random.default_rng(11)
    values = simulated(rng)
    values[4] = values[0][0] + 0.001
    verdict = verdicts_of(values)["t4"]
    assert verdict.analysis == "pooled" and verdict.label == "no clear difference"
    assert verdict.p_value > 0.05


def test_a_trial_on_one_seed_is_never_called():
    verdicts = judge([0.80, 0.81, 0.805], {"lucky": {0: 0.90}, "b": [0.80, 0.812, 0.806],
                                          "c": [0.801, 0.81, 0.803]})
    lucky = verdicts["lucky"]
    assert (lucky.label, lucky.analysis, lucky.reliable) == ("no clear difference",
                                                            "untested", False)
    assert lucky.delta_mean == pytest.approx(0.10)
    assert (lucky.ci_low, lucky.ci_high) == (-math.inf, math.inf) and lucky.undecided
    assert "1 seed shared with the baseline" in lucky.reason
    assert judge([0.80], {"a": [0.90]})["a"].label == "no clear difference"


def test_an_interval_that_reaches_past_min_effect_is_undecided():
    """Seed noise of 0.11 points: a trial 0.15 points up has an interval from just below zero
    to past +0.3 points. It is neither called nor shown to be within +-0.3 points: undecided
    (a rule that asks only whether the interval holds both -0.3 and +0.3 would call it
    decided). A trial with no difference, its interval within +-0.3 points, is decided."""
    rng = np.random.default_rng(5)
    values = simulated(rng, spread=0.0011)
    values[2] = values[0] + 0.0015 + 0.0002 * rng.standard_normal(3)
    verdicts = verdicts_of(values)
    near = verdicts["t2"]
    assert near.label == "no clear difference"
    assert -0.003 < near.ci_low < 0 and near.ci_high > 0.003
    assert near.undecided and near.seeds_needed == 4
    for name in ("t3", "t4", "t5"):
        v = verdicts[name]
        assert v.label == "no clear difference" and -0.003 <= v.ci_low < v.ci_high <= 0.003
        assert not v.undecided and v.seeds_needed is None


def test_seeds_needed_projects_the_interval_with_the_same_difference_and_spread():
    rng = np.random.default_rng(9)
    values = simulated(rng, effect=0.006)
    v = verdicts_of(values)["t1"]
    assert v.analysis == "pooled" and v.undecided
    # The half-width at n seeds: the standard error shrinks as 1/sqrt(n), the critical value
    # follows the t quantile of one comparison (5% over 15) as the 30 df grow to 15 (n - 1).
    half = v.ci_high - v.delta_mean
    quantile = scipy_stats.t.isf(0.05 / 15 / 2, 30)
    n = next(n for n in range(4, 51) if half * scipy_stats.t.isf(0.05 / 15 / 2, 15 * (n - 1))
             / quantile * math.sqrt(3 / n) < abs(v.delta_mean))
    assert v.seeds_needed == n
    decided = verdicts_of(simulated(rng, effect=0.03))["t1"]
    assert decided.label == "better" and not decided.undecided
    assert decided.seeds_needed is None


# --- the guard -----------------------------------------------------------------------------


def test_a_diverged_run_is_judged_alone_and_leaves_the_others_decided(monkeypatch):
    rng = np.random.default_rng(12)
    values = simulated(rng, effect=0.015, diverged=True)
    verdicts = verdicts_of(values)
    assert verdicts["t7"].analysis == "alone"
    assert "left out of the pooled fit" in verdicts["t7"].reason
    paired = values[7] - values[0]
    assert verdicts["t7"].delta_mean == pytest.approx(paired.mean())
    assert verdicts["t7"].delta_std == pytest.approx(paired.std(ddof=1) / math.sqrt(3))
    assert verdicts["t1"].analysis == "pooled" and verdicts["t1"].label == "better"
    assert "noise pooled over 15 arms" in verdicts["t1"].reason
    # Left in the fit, the diverged run would have hidden the effect.
    monkeypatch.setattr(stats, "GUARD_LEVEL", 0.0)
    monkeypatch.setattr(stats, "OUTLIER_LEVEL", 0.0)
    assert verdicts_of(values)["t1"].label == "no clear difference"


def test_an_out_of_line_baseline_sends_every_trial_to_its_own_test():
    rng = np.random.default_rng(13)
    values = simulated(rng)
    values[0] += np.array([0.03, -0.03, 0.0])
    verdicts = verdicts_of(values)
    assert {v.analysis for v in verdicts.values()} == {"alone"}
    assert verdicts["t3"].reason.startswith("the baseline's spread is out of line")


def test_the_family_wise_error_stays_at_five_percent_and_a_real_effect_is_found():
    """16 arms, 3 seeds, seed standard deviation 0.5 points, same-seed correlation 0.5, from
    a fixed seed; each bound is 5% plus three Monte Carlo standard errors."""
    rng = np.random.default_rng(20261207)
    assert false_call_rate(rng, 1000) <= allowed(1000)
    # Values in steps of 1/300 (a 300-image validation split), 2 seeds: ties are common.
    assert false_call_rate(rng, 1000, seeds=2, step=300) <= allowed(1000)
    found = 0
    for _ in range(2000):
        verdicts = verdicts_of(simulated(rng, effect=0.01))
        check_labels_follow_intervals(verdicts)
        found += verdicts["t1"].label == "better"
    assert found / 2000 >= 0.60, found


def test_an_arm_four_times_as_noisy_is_mostly_caught_by_the_guard(monkeypatch):
    """One trial whose own noise has 4x the standard deviation of the others'. Without the
    guard it is called in about a fifth of null checklists. With it the family-wise rate is
    about 8% at 3 seeds: a run's spread is estimated from 2 degrees of freedom, and no rule
    that keeps 60% power at +1 point gets below about 7% there (BUILD_NOTES.md, "The
    checklist's statistics"). At 5 seeds the guard holds it to 5%."""
    rng = np.random.default_rng(4)
    guarded = false_call_rate(rng, 1000, wide=5)
    assert guarded <= 0.10, guarded
    assert false_call_rate(rng, 1000, seeds=5, wide=5) <= allowed(1000)
    monkeypatch.setattr(stats, "GUARD_LEVEL", 0.0)
    monkeypatch.setattr(stats, "OUTLIER_LEVEL", 0.0)
    assert false_call_rate(rng, 1000, wide=5) >= 0.15


@pytest.mark.parametrize("call,words", [
    (lambda: judge([], {"a": [0.8]}), "baseline_values=[] is not allowed: must hold at least 1"),
    (lambda: judge([0.8], {"a": []}), "trials={'a': []} is not allowed: must give every"),
    (lambda: judge([0.8], {"a": [math.nan]}), "trials['a']=[nan] is not allowed: must hold "
                                               "finite"),
    (lambda: judge([0.8], {"a": {-1: 0.8}}), "must map seed indices (integers >= 0)"),
    (lambda: judge([0.8], {"a": [0.9]}, alpha=1.0), "alpha=1.0 is not allowed: must be in"),
    (lambda: judge([0.8], {"a": [0.9]}, min_effect=-0.1), "min_effect=-0.1 is not allowed"),
])
def test_bad_arguments_name_the_argument(call, words):
    with pytest.raises(ValueError) as caught:
        call()
    assert words in str(caught.value)
