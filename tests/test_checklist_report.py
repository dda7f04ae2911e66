"""Checklist statistics and report: verdicts against an independent Welch computation, and
every report file built from real run directories (result.json, history.csv, failure.json)."""

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tfmagic.checklist import runner
from tfmagic.checklist.report import best_recipe, collect, read_run, write_report
from tfmagic.checklist.stats import (
    Verdict,
    distance_to_decision,
    holm,
    judge,
    undecided,
    verdict,
    welch_t_test,
)
from tfmagic.checklist.trials import Trial
from tfmagic.recipe import Recipe
from tfmagic.training import TrainResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = [0.80, 0.81, 0.805]


def reference_welch(baseline, trial):
    """Welch's test written out: (delta, standard error, two-sided p)."""
    b, t = np.asarray(baseline), np.asarray(trial)
    vb, vt = b.var(ddof=1) / len(b), t.var(ddof=1) / len(t)
    se = math.sqrt(vb + vt)
    statistic = (t.mean() - b.mean()) / se
    df = (vb + vt) ** 2 / (vb**2 / (len(b) - 1) + vt**2 / (len(t) - 1))
    return t.mean() - b.mean(), se, 2 * scipy_stats.t.sf(abs(statistic), df)


def reference_interval(baseline, trial):
    """The 95% Welch interval of mean(trial) - mean(baseline), written out."""
    b, t = np.asarray(baseline), np.asarray(trial)
    vb, vt = b.var(ddof=1) / len(b), t.var(ddof=1) / len(t)
    df = (vb + vt) ** 2 / (vb**2 / (len(b) - 1) + vt**2 / (len(t) - 1))
    half = scipy_stats.t.isf(0.025, df) * math.sqrt(vb + vt)
    return t.mean() - b.mean() - half, t.mean() - b.mean() + half


def reference_holm(p_values):
    """Holm's adjusted p-values: sorted, scaled by m, m-1, ..., 1, made monotone, capped."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)))
    out = np.empty_like(p)
    out[order] = scaled
    return out


def expected_verdicts(baseline, trials):
    """name -> (label, Holm-adjusted p) for trials with at least 2 values, independently."""
    tested = {name: values for name, values in trials.items() if len(values) > 1}
    raw = {name: reference_welch(baseline, values) for name, values in tested.items()}
    adjusted = dict(zip(tested, reference_holm([raw[n][2] for n in tested]), strict=True))
    return {name: ("no clear difference" if adjusted[name] >= 0.05 else
                   "better" if raw[name][0] > 0 else "worse", adjusted[name])
            for name in tested}


# --- stats ------------------------------------------------------------------------------


def test_clearly_better_matches_independent_welch():
    trial = [0.85, 0.86, 0.855]
    delta, se, p = reference_welch(BASE, trial)
    result = verdict(BASE, trial)
    assert result.label == "better" and result.reliable
    assert result.delta_mean == pytest.approx(0.05)
    assert result.delta_mean == pytest.approx(delta)
    assert result.delta_std == pytest.approx(se) == pytest.approx(math.sqrt(2 * 2.5e-5 / 3))
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.p_value < 0.001                      # t = 12.25 with 4 degrees of freedom
    t, p_direct = welch_t_test(trial, BASE)
    assert t == pytest.approx(0.05 / se) and p_direct == pytest.approx(p)


def test_clearly_worse():
    trial = [0.75, 0.77, 0.76]
    delta, se, p = reference_welch(BASE, trial)
    result = verdict(BASE, trial)
    low, high = reference_interval(BASE, trial)
    assert result == Verdict("worse", pytest.approx(delta), pytest.approx(se),
                             pytest.approx(p), True, pytest.approx(low), pytest.approx(high),
                             None, 3, 3)
    assert result.delta_mean == pytest.approx(-0.045) and result.p_value < 0.01


def test_seed_noise_is_no_clear_difference():
    baseline, trial = [0.80, 0.82, 0.81], [0.805, 0.815, 0.812]
    _, se, p = reference_welch(baseline, trial)
    result = verdict(baseline, trial)
    assert result.label == "no clear difference" and result.reliable
    assert result.p_value == pytest.approx(p) and result.p_value > 0.5
    assert result.delta_std == pytest.approx(se)


def test_alpha_decides():
    baseline, trial = [0.80, 0.81, 0.805], [0.81, 0.82, 0.80]
    p = reference_welch(baseline, trial)[2]
    assert 0.05 < p < 0.7
    assert verdict(baseline, trial).label == "no clear difference"
    assert verdict(baseline, trial, alpha=0.8).label == "better"


def test_one_seed_uses_min_delta_and_is_unreliable():
    result = verdict([0.80], [0.81])
    assert result.label == "better" and not result.reliable
    assert result.p_value is None and math.isnan(result.delta_std)
    assert result.delta_mean == pytest.approx(0.01)
    assert verdict([0.80], [0.803]).label == "no clear difference"
    assert verdict([0.80, 0.81], [0.79]).label == "worse"          # one seed on one side
    assert verdict([0.80], [0.81], min_delta=0.02).label == "no clear difference"
    assert verdict([0.80], [0.80], min_delta=0.0).label == "no clear difference"


def test_zero_variance():
    assert welch_t_test([0.8, 0.8, 0.8], [0.8, 0.8]) == (0.0, 1.0)
    assert welch_t_test([0.8, 0.8, 0.8], [0.81, 0.81]) == (-math.inf, 0.0)
    same = verdict([0.1, 0.1, 0.1], [0.1, 0.1, 0.1])     # 0.1 * 3 / 3 != 0.1 in floats
    assert same.label == "no clear difference" and same.p_value == 1.0
    apart = verdict([0.8, 0.8, 0.8], [0.81, 0.81, 0.81])
    assert apart.label == "better" and apart.p_value == 0.0 and apart.delta_std == 0.0
    one_side = verdict([0.8, 0.8, 0.8], [0.83, 0.835, 0.84])
    delta, se, p = reference_welch([0.8, 0.8, 0.8], [0.83, 0.835, 0.84])
    assert one_side.p_value == pytest.approx(p) and one_side.delta_std == pytest.approx(se)
    assert one_side.label == "better" and one_side.p_value < 0.01


@pytest.mark.parametrize("call,words", [
    (lambda: verdict([], [0.8]), "baseline_values=[] is not allowed: must hold at least 1"),
    (lambda: verdict([0.8], []), "trial_values=[]"),
    (lambda: verdict([0.8], [math.nan]), "trial_values=[nan] is not allowed: must hold finite"),
    (lambda: verdict([0.8], [0.9], alpha=1.0), "alpha=1.0 is not allowed: must be in (0, 1)"),
    (lambda: verdict([0.8], [0.9], alpha=0), "alpha=0"),
    (lambda: verdict([0.8], [0.9], min_delta=-0.1), "min_delta=-0.1 is not allowed: must be"),
    (lambda: welch_t_test([0.8], [0.8, 0.9]), "a=[0.8] is not allowed: must hold at least 2"),
    (lambda: welch_t_test([0.8, 0.9], [math.inf, 1.0]), "b=[inf, 1.0]"),
])
def test_bad_arguments_name_the_argument(call, words):
    with pytest.raises(ValueError) as caught:
        call()
    assert words in str(caught.value)


# --- a checklist directory built from real run files ------------------------------------


def write_run(run_dir, val_accuracy, test_accuracy=None, *, wall_time_s=100.0, validation=True,
              status="completed", in_result=True):
    """A finished train() directory: result.json and a 5-epoch history.csv whose last
    validation accuracy is val_accuracy (the test accuracy is 1 point lower unless given).
    in_result=False leaves val_accuracy out of result.json, as runs of older versions did."""
    test_accuracy = round(val_accuracy - 0.01, 6) if test_accuracy is None else test_accuracy
    run_dir.mkdir(parents=True)
    columns = ["epoch", "accuracy", "loss", "learning_rate", "weight_decay", "epoch_time_s",
               "train_images_per_s"] + (["val_accuracy", "val_loss"] if validation else [])
    rows = []
    for epoch in range(5):
        accuracy = val_accuracy * (0.6 + 0.1 * epoch)
        values = [epoch, accuracy, 1.5 - accuracy, 0.1 / (epoch + 1), 5e-4, 20.0, 900.0]
        rows.append(values + ([accuracy, 1.4 - accuracy] if validation else []))
    (run_dir / "history.csv").write_text(
        ",".join(columns) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    diverged = status == "diverged"
    result = {
        "status": status, "output_dir": str(run_dir),
        "test_accuracy": None if diverged else test_accuracy,
        "test_loss": None if diverged else 1.0 - test_accuracy / 2,
        "best_val_accuracy": val_accuracy if validation and not diverged else None,
        **({"val_accuracy": val_accuracy if validation and not diverged else None}
           if in_result else {}),
        "epochs_run": 5, "wall_time_s": wall_time_s, "train_images_per_s": 900.0,
        "params": 69426, "resumed_from_epoch": 0, "recipe": {}, "versions": {},
    }
    (run_dir / "result.json").write_text(json.dumps(result))


def write_failure(run_dir, status, reason):
    run_dir.mkdir(parents=True)
    (run_dir / "failure.json").write_text(json.dumps({"status": status, "reason": reason}))


def make_checklist(out, seeds, trials, skipped=()):
    """plan.json + baseline.cfg; trials: (name, group, change, [per-seed outcome]) where an
    outcome is a validation accuracy, (validation accuracy, test accuracy), None (pending),
    ("failed"|"skipped", reason) or "diverged"."""
    baseline = Recipe(train_subset=2000, epochs=5, output_dir=str(out / "trials/baseline"))
    out.mkdir(parents=True, exist_ok=True)
    baseline.to_flagfile(out / "baseline.cfg")
    plan_trials = []
    for name, group, change, outcomes in trials:
        plan_trials.append({"name": name, "group": group, "description": f"try {name}",
                            "change": change})
        for k, outcome in enumerate(outcomes):
            run_dir = out / "trials" / name / f"seed{k}"
            if isinstance(outcome, float):
                write_run(run_dir, outcome, wall_time_s=100.0 + 10 * k)
            elif isinstance(outcome, tuple) and isinstance(outcome[0], float):
                write_run(run_dir, *outcome, wall_time_s=100.0 + 10 * k)
            elif outcome == "diverged":
                write_run(run_dir, 0.1, wall_time_s=30.0, status="diverged")
            elif outcome is not None:
                write_failure(run_dir, *outcome)
    (out / "plan.json").write_text(json.dumps({
        "baseline": dataclasses.asdict(baseline), "seeds": seeds, "trials": plan_trials,
        "skipped": [{"name": n, "reason": r} for n, r in skipped],
    }))
    return baseline


OOM = ("failed", "ResourceExhaustedError: out of memory")
TRIALS = [
    ("baseline", "baseline", {}, BASE),
    ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [0.85, 0.86, 0.855]),
    ("lr_cosine", "lr", {"lr_schedule": "cosine"}, [0.82, 0.83, 0.825]),
    ("wd_cycles", "wd", {"weight_decay_schedule": "cycles"}, [0.83, 0.835, 0.84]),
    ("cutout", "regularization", {"cutout": 0.25}, [0.77, 0.78, 0.775]),
    ("mixup", "regularization", {"mixup_alpha": 0.2}, [0.80, 0.815, 0.81]),
    ("augment_color", "augment", {"augment": "color"}, [OOM, OOM, OOM]),
    ("crop_rrc", "crop", {"crop_scheme": "random_resized_crop"}, [0.81, 0.815, None]),
    ("no_smoothing", "loss", {"label_smoothing": 0.0}, [None, None, None]),
    ("adam", "optimizer", {"optimizer": "adam"}, ["diverged", 0.70, 0.71]),
    ("crop_none", "crop", {"crop_scheme": "none"},
     [("skipped", "not on this machine")] * 3),
    ("confirm_best", "confirm",
     {"lr_schedule": "gamma", "weight_decay_schedule": "cycles"}, [0.87, 0.875, 0.88]),
    ("confirm_without_lr_gamma", "confirm", {"weight_decay_schedule": "cycles"},
     [0.835, 0.84, 0.845]),
    ("confirm_without_wd_cycles", "confirm", {"lr_schedule": "gamma"}, [0.865, 0.875, 0.88]),
]
SKIPPED = [("pretrained", "needs a keras.applications model (model=keras:NAME)")]


@pytest.fixture
def checklist(tmp_path):
    out = tmp_path / "out"
    baseline = make_checklist(out, 3, TRIALS, SKIPPED)
    return out, baseline


def table_row(markdown, name):
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, (name, rows)
    return [cell.strip() for cell in rows[0].strip("|").split(" | ")]


def accuracy_text(values):
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def test_collect_counts_seeds_and_states(checklist):
    out, _ = checklist
    summaries = {s.name: s for s in collect(out)}
    assert list(summaries) == [t[0] for t in TRIALS] + ["pretrained"]
    states = {name: (s.status, s.seeds_done, s.seeds_failed, s.seeds_pending)
              for name, s in summaries.items()}
    assert states["baseline"] == ("completed", 3, 0, 0)
    assert states["augment_color"] == ("failed", 0, 3, 0)
    assert states["crop_rrc"] == ("partial", 2, 0, 1)
    assert states["no_smoothing"] == ("pending", 0, 0, 3)
    assert states["adam"] == ("partial", 2, 1, 0)
    assert states["crop_none"] == ("skipped", 0, 3, 0)
    assert states["pretrained"][0] == "skipped"
    assert summaries["augment_color"].reasons == [
        "seeds 0, 1, 2 failed: ResourceExhaustedError: out of memory"]
    assert summaries["adam"].reasons == ["seed 0 failed: diverged (the loss became NaN or "
                                         "infinite)"]
    gamma = summaries["lr_gamma"]
    assert gamma.val_accuracy_mean == pytest.approx(0.855)
    assert gamma.val_accuracy_std == pytest.approx(0.005)
    assert gamma.test_accuracy_mean == pytest.approx(0.845)
    assert gamma.test_accuracy_std == pytest.approx(0.005)
    assert gamma.best_val_accuracy_mean == pytest.approx(0.855)
    assert gamma.test_loss_mean == pytest.approx(1 - 0.845 / 2)
    assert (gamma.seeds_planned, gamma.verdict.seeds, gamma.verdict.baseline_seeds) == (3, 3, 3)
    assert gamma.wall_time_mean_s == pytest.approx(110.0)
    assert gamma.params == 69426
    assert gamma.verdict.label == "better"
    assert summaries["baseline"].verdict is None and summaries["no_smoothing"].verdict is None
    assert summaries["adam"].verdict.label == "worse"
    assert summaries["adam"].wall_time_total_s == pytest.approx(30.0 + 110.0 + 120.0)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_report_files(checklist):
    out, baseline = checklist
    # crop_rrc and no_smoothing have pending seeds: best.cfg is written on request only.
    report = write_report(out, total_time_s=3660.0, best_from_incomplete=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["plan.json", "baseline.cfg", "trials", "report.md", "summary.csv", "report.png",
         "curves.png", "best.cfg"])                      # no temporary files left behind
    ordinary = 0o666 & ~_umask()
    for path in report.paths:                            # the mode an ordinary new file gets
        assert os.stat(path).st_mode & 0o777 == ordinary, path
    markdown = (out / "report.md").read_text()
    by_name = {name: outcomes for name, _, _, outcomes in TRIALS}

    row = table_row(markdown, "baseline")
    assert row[2] == accuracy_text(BASE) == "80.50 ± 0.50"
    assert row[8] == accuracy_text(np.subtract(BASE, 0.01)) == "79.50 ± 0.50"
    judged = {name: [v for v in by_name[name] if isinstance(v, float)] for name in
              ("lr_gamma", "lr_cosine", "wd_cycles", "cutout", "mixup", "crop_rrc", "adam")}
    expected = expected_verdicts(BASE, judged)
    assert len(expected) == 7                          # the family Holm adjusts over
    for name, values in judged.items():
        delta, _, _ = reference_welch(BASE, values)
        low, high = reference_interval(BASE, values)
        label, adjusted = expected[name]
        row = table_row(markdown, name)
        assert row[2].split(" (")[0] == accuracy_text(values)
        assert row[3] == f"{100 * delta:+.2f}"
        assert row[4] == f"[{100 * low:+.2f}, {100 * high:+.2f}]"
        assert row[5] == f"{len(values)} vs 3"
        assert row[6] == ("<0.001" if adjusted < 0.001 else f"{adjusted:.3f}")
        assert row[7].split(" (")[0] == label
        undecided = (low < -0.003 and high > 0.003) or label == "no clear difference" and (
            (low > 0 and high > 0.003) or (high < 0 and low < -0.003))
        assert row[7].endswith(" (undecided)") == undecided, name
        assert row[8] == accuracy_text(np.subtract(values, 0.01))
    assert table_row(markdown, "lr_gamma")[1] == "lr_schedule: cosine_power_cycles -> gamma"
    assert table_row(markdown, "lr_gamma")[3] == "+5.00"
    assert table_row(markdown, "lr_gamma")[7] == "better"
    assert table_row(markdown, "cutout")[7] == "worse"
    assert table_row(markdown, "mixup")[7] == "no clear difference (undecided)"
    assert table_row(markdown, "lr_gamma")[9] == "1m 50s"
    assert table_row(markdown, "crop_rrc")[2] == "81.25 ± 0.35 (2 of 3 seeds)"
    assert table_row(markdown, "no_smoothing")[7] == "pending"
    assert table_row(markdown, "augment_color")[7] == "failed"
    assert table_row(markdown, "pretrained")[1:3] == ["—", "—"]
    assert table_row(markdown, "pretrained")[7] == "skipped"
    # Ranked: the baseline, then the judged trials by Δ, largest gain first, then the rest.
    order = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines()
             if line.startswith("| ") and " | " in line]
    ranking = sorted(judged, key=lambda n: -np.mean(judged[n]))
    assert order[1:2 + len(ranking)] == ["baseline", *ranking]
    assert ("- `augment_color` (failed): seeds 0, 1, 2 failed: ResourceExhaustedError: out of "
            "memory") in markdown
    assert "- `crop_none` (skipped): seeds 0, 1, 2 skipped: not on this machine" in markdown
    assert "- `pretrained` (skipped): needs a keras.applications model" in markdown
    assert "- `no_smoothing`: 3 of 3 seeds pending or running (0 done)" in markdown
    assert "- `crop_rrc`: 1 of 3 seeds pending or running (2 done)" in markdown
    assert "verdicts are unreliable" not in markdown
    total = sum(100.0 + 10 * k for name, _, _, o in TRIALS for k, v in enumerate(o)
                if isinstance(v, float)) + 30.0
    assert total == 3440.0
    assert "Training time: 57m 20s in all" in markdown and "Elapsed: 1h 01m." in markdown
    assert "Welch's two-sided t-test" in markdown and "Holm's method" in markdown
    assert "chosen on the **validation** split" in markdown

    with open(out / "summary.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == [t[0] for t in TRIALS] + ["pretrained"]
    for name, _, change, outcomes in TRIALS:
        values = [v for v in outcomes if isinstance(v, float)]
        row = rows[name]
        assert json.loads(row["change"]) == change
        assert row["seeds_planned"] == "3"
        if values:
            assert float(row["val_accuracy_mean"]) == pytest.approx(np.mean(values))
            assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(values) - 0.01)
        else:
            assert row["test_accuracy_mean"] == "" and row["verdict"] == ""
        if name in expected:
            delta, se, p = reference_welch(BASE, values)
            assert float(row["val_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
            assert float(row["test_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
            assert float(row["delta_mean"]) == pytest.approx(delta)
            assert float(row["delta_std"]) == pytest.approx(se)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(
                reference_interval(BASE, values))
            assert float(row["p_value"]) == pytest.approx(p)
            assert float(row["p_adjusted"]) == pytest.approx(expected[name][1])
            assert row["verdict"] == expected[name][0]
            assert row["reliable"] == "true"
    assert rows["mixup"]["undecided"] == "true" and rows["lr_gamma"]["undecided"] == "false"
    assert rows["lr_gamma"]["verdict"] == "better" and rows["lr_gamma"]["status"] == "completed"
    assert rows["augment_color"]["reasons"] == (
        "seeds 0, 1, 2 failed: ResourceExhaustedError: out of memory")
    assert rows["no_smoothing"]["status"] == "pending"
    assert rows["no_smoothing"]["seeds_pending"] == "3"
    assert rows["adam"]["seeds_failed"] == "1" and rows["adam"]["seeds_done"] == "2"
    assert float(rows["adam"]["wall_time_total_s"]) == pytest.approx(260.0)

    for path in (out / "report.png", out / "curves.png"):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert report.paths == tuple(str(out / n) for n in
                                 ("report.md", "summary.csv", "report.png", "curves.png",
                                  "best.cfg"))

    # best.cfg: the best "better" trial per group (lr_gamma beats lr_cosine), confirm ignored.
    assert report.best_trials == ["lr_gamma", "wd_cycles"]
    best = Recipe.from_flagfile(out / "best.cfg")
    assert best == dataclasses.replace(baseline, lr_schedule="gamma",
                                       weight_decay_schedule="cycles",
                                       output_dir=str(out / "best"))
    assert best_recipe(out) == (best, ["lr_gamma", "wd_cycles"])
    assert "- `lr_gamma` (+5.00 points): lr_schedule=gamma" in markdown


def test_a_report_with_missing_runs_says_so_and_leaves_best_cfg_alone(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 2, [
        ("baseline", "baseline", {}, [0.80, 0.81]),
        ("mixup", "regularization", {"mixup_alpha": 0.2}, [0.80, 0.815]),
        ("cutout", "regularization", {"cutout": 0.25}, [0.79, 0.80]),
    ])
    complete = write_report(out)
    assert complete.incomplete is None
    assert complete.best_trials == [] and complete.best_cfg == str(out / "best.cfg")
    assert "Incomplete" not in (out / "report.md").read_text()
    best_cfg = out / "best.cfg"
    written = (best_cfg.read_bytes(), best_cfg.stat().st_mtime_ns)

    # One of the baseline's two seeds loses its result: its mean then rests on 0.80 alone,
    # and mixup (+1.05 points on one baseline seed) would be merged.
    (out / "trials" / "baseline" / "seed1" / "result.json").unlink()
    partial = write_report(out)
    note = ("incomplete: 1 of 6 planned runs have no result (baseline 1 of 2); the verdicts "
            "rest on the seeds that finished")
    assert partial.incomplete == note
    assert partial.best_cfg is None and "best.cfg" not in " ".join(partial.paths)
    assert (best_cfg.read_bytes(), best_cfg.stat().st_mtime_ns) == written
    markdown = (out / "report.md").read_text()
    assert (f"**I{note[1:]}.** `best.cfg` was not written from them: run the checklist again "
            "to train the missing runs") in markdown.split("## Results")[0]
    assert "Not written, as some planned runs have no result (see the top). On the seeds " \
           "that finished it would merge: `mixup`." in markdown
    assert runner._verdicts_line(partial).endswith(f"{note}: best.cfg not written")

    forced = write_report(out, best_from_incomplete=True)
    assert forced.best_cfg == str(best_cfg) and forced.best_trials == ["mixup"]
    assert Recipe.from_flagfile(best_cfg).mixup_alpha == 0.2
    assert "`best.cfg` was written from them all the same" in (out / "report.md").read_text()


def test_confirm_section(checklist):
    out, _ = checklist
    write_report(out)
    markdown = (out / "report.md").read_text()
    assert "## Do the winners combine?" in markdown
    confirm = markdown[markdown.index("## Do the winners combine?"):]
    best = [0.87, 0.875, 0.88]
    without_gamma = [0.835, 0.84, 0.845]
    without_wd = [0.865, 0.875, 0.88]
    gap = reference_welch(best, without_gamma)[0]
    expected = expected_verdicts(best, {"confirm_without_lr_gamma": without_gamma,
                                        "confirm_without_wd_cycles": without_wd})
    row = table_row(confirm, "confirm_without_lr_gamma")
    assert row[1] == "lr_gamma" and row[2] == accuracy_text(without_gamma)
    assert row[3] == accuracy_text(np.subtract(without_gamma, 0.01))
    adjusted = expected["confirm_without_lr_gamma"][1]
    assert row[6:] == [f"{100 * gap:+.2f}",
                       "<0.001" if adjusted < 0.001 else f"{adjusted:.3f}", "worse"]
    assert expected["confirm_without_lr_gamma"][0] == "worse"
    assert table_row(confirm, "confirm_without_wd_cycles")[8] == "no clear difference"
    assert table_row(confirm, "confirm_best")[5] == "better"
    baseline_p = expected_verdicts(BASE, {"best": best, "without_gamma": without_gamma,
                                          "without_wd": without_wd})["best"][1]
    clause = "p < 0.001" if baseline_p < 0.001 else f"p = {baseline_p:.3f}"
    assert (f"best.cfg against the baseline on validation: better (+7.00 points, {clause})."
            ) in confirm
    assert ("best.cfg's test accuracy, the number to report: 86.50 ± 0.50% over 3 seeds "
            "(the baseline's: 79.50 ± 0.50%).") in confirm
    assert "`lr_gamma` helps on top of the others: leaving it out changes validation " \
           f"accuracy by {100 * gap:+.2f} points." in confirm
    assert "`wd_cycles` adds nothing clear on top of the others" in confirm
    assert "Elapsed" not in markdown


def test_field_conflict_larger_gain_wins(tmp_path):
    out = tmp_path / "out"
    baseline = make_checklist(out, 3, [
        ("baseline", "baseline", {}, BASE),
        ("augment_color", "augment", {"augment": "color"}, [0.84, 0.85, 0.845]),
        ("cutout_plain", "regularization", {"cutout": 0.25, "augment": "none"},
         [0.82, 0.83, 0.825]),
        ("mixup_color", "mixing", {"mixup_alpha": 0.2, "augment": "color"},
         [0.815, 0.825, 0.82]),
        ("long_warmup", "warmup", {"warmup_epochs": 4.0}, [0.83, 0.835, 0.84]),
        ("short", "epochs", {"epochs": 3}, [0.815, 0.817, 0.819]),     # warm-up 4 >= 3 epochs
    ])
    report = write_report(out)
    assert report.best_trials == ["augment_color", "long_warmup", "mixup_color"]
    assert Recipe.from_flagfile(out / "best.cfg") == dataclasses.replace(
        baseline, augment="color", mixup_alpha=0.2, warmup_epochs=4.0,
        output_dir=str(out / "best"))
    markdown = (out / "report.md").read_text()
    assert ("- `cutout_plain` (+2.00 points) left out: it changes the same field as a larger "
            "gain: augment (set by `augment_color`, +4.00 points).") in markdown
    assert ("- `short` left out: together with augment_color, long_warmup, mixup_color it "
            "makes an invalid recipe (warmup_epochs=4.0 is not allowed: must be < epochs (3))."
            ) in markdown


def test_single_seed_warning_and_unreliable_verdicts(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 1, [
        ("baseline", "baseline", {}, [0.80]),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [0.81]),
        ("cutout", "regularization", {"cutout": 0.25}, [0.802]),
    ])
    report = write_report(out)
    markdown = (out / "report.md").read_text()
    assert "**Verdicts marked unreliable rest on a single seed**" in markdown
    assert table_row(markdown, "baseline")[2] == "80.00"
    assert table_row(markdown, "lr_gamma")[2:8] == ["81.00", "+1.00", "—", "1 vs 1", "n/a",
                                                    "better (unreliable)"]
    assert table_row(markdown, "cutout")[7] == "no clear difference (unreliable)"
    with open(out / "summary.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["lr_gamma"]["reliable"] == "false" and rows["lr_gamma"]["p_value"] == ""
    assert rows["lr_gamma"]["delta_std"] == "" and rows["lr_gamma"]["test_accuracy_std"] == ""
    assert report.best_trials == ["lr_gamma"]


def test_report_before_anything_finished(tmp_path):
    out = tmp_path / "out"
    baseline = make_checklist(out, 2, [
        ("baseline", "baseline", {}, [None, None]),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [None, None]),
    ])
    report = write_report(out)
    assert report.best_trials == [] and report.best_cfg is None
    assert not (out / "best.cfg").exists()
    markdown = (out / "report.md").read_text()
    assert "**Incomplete: 4 of 4 planned runs have no result (baseline 2 of 2, lr_gamma 2 of " \
           "2)" in markdown
    assert "On the seeds that finished it would merge: nothing." in markdown
    report = write_report(out, best_from_incomplete=True)
    assert Recipe.from_flagfile(out / "best.cfg") == dataclasses.replace(
        baseline, output_dir=str(out / "best"))
    markdown = (out / "report.md").read_text()
    assert "No trial was judged better" in markdown
    assert table_row(markdown, "lr_gamma")[2] == "—"
    for path in report.paths[2:4]:
        assert (out / path).read_bytes()[:8] == PNG_MAGIC


def test_curves_without_validation(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 1, [("baseline", "baseline", {}, [None])])
    write_run(out / "trials/baseline/seed0", 0.8, validation=False)
    write_report(out)
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert collect(out)[0].best_val_accuracy_mean is None


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checklist directory: it has no "
                                                "plan.json"):
        collect(tmp_path)
    out = tmp_path / "out"
    make_checklist(out, 1, [("baseline", "baseline", {}, [0.8])])
    with pytest.raises(ValueError, match="total_time_s=-1.0 is not allowed"):
        write_report(out, total_time_s=-1.0)


FIX = "fix it, or remove it to train this seed again"
# trial -> (file, text written by hand, what the report must say is wrong with it)
BAD_FILES = {
    "lr_cosine": ("result.json", "[]", "it holds a JSON array, not an object"),
    "wd_cycles": ("result.json", '{"status": "completed"}',
                  "test_accuracy is missing, wall_time_s is missing"),
    "cutout": ("result.json", '{"status": "completed", "test_accuracy": 0.8',
               "it is not valid JSON (Expecting ',' delimiter"),
    "mixup": ("failure.json", '{"status": "crashed", "reason": "?"}',
              'status="crashed" is not "failed" or "skipped"'),
}


def test_unreadable_runs_are_reported_and_the_rest_of_the_report_is_written(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 3, [
        ("baseline", "baseline", {}, BASE),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [0.85, 0.86, 0.855]),
        ("lr_cosine", "lr", {"lr_schedule": "cosine"}, [None, 0.82, 0.83]),
        ("wd_cycles", "wd", {"weight_decay_schedule": "cycles"}, [None, None, None]),
        ("cutout", "regularization", {"cutout": 0.25}, [None, 0.77, 0.78]),
        ("mixup", "regularization", {"mixup_alpha": 0.2}, [None, None, None]),
    ])
    for name, (file, text, _) in BAD_FILES.items():
        seeds = range(3) if name in ("wd_cycles", "mixup") else [0]
        for k in seeds:
            run_dir = out / "trials" / name / f"seed{k}"
            run_dir.mkdir(parents=True)
            (run_dir / file).write_text(text)

    report = write_report(out)
    markdown = (out / "report.md").read_text()
    problems = markdown[markdown.index("## Failed and skipped"):markdown.index("## best.cfg")]
    assert (f"- `lr_cosine` (partial): seed 0 unreadable: trials/lr_cosine/seed0/result.json "
            f"is not a result: it holds a JSON array, not an object; {FIX}") in problems
    assert ("- `wd_cycles` (unreadable): seed 0 unreadable: trials/wd_cycles/seed0/result.json "
            "is not a result: test_accuracy is missing, wall_time_s is missing; "
            f"{FIX}; seed 1 unreadable: trials/wd_cycles/seed1/result.json") in problems
    for name, (file, _, wrong) in BAD_FILES.items():
        assert f"trials/{name}/seed0/{file} is not a " in problems
        assert wrong in problems
    assert ("trials/mixup/seed0/failure.json is not a failure record: status=\"crashed\" is "
            "not \"failed\" or \"skipped\"; fix it, or remove it to try this seed again"
            ) in problems

    assert table_row(markdown, "lr_gamma")[2:4] == [accuracy_text([0.85, 0.86, 0.855]), "+5.00"]
    assert table_row(markdown, "lr_gamma")[7] == "better"
    assert table_row(markdown, "lr_cosine")[2] == "82.50 ± 0.71 (2 of 3 seeds)"
    assert table_row(markdown, "wd_cycles")[7] == "unreadable"
    assert table_row(markdown, "mixup")[7] == "unreadable"
    assert "6 trials: 2 completed, 2 partial, 2 unreadable." in markdown
    assert report.best_trials == ["lr_gamma"]
    with open(out / "summary.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert [rows[n]["status"] for n in rows] == ["completed", "completed", "partial",
                                                 "unreadable", "partial", "unreadable"]
    assert (rows["wd_cycles"]["seeds_failed"], rows["wd_cycles"]["seeds_done"]) == ("3", "0")
    assert rows["cutout"]["seeds_done"] == "2" and rows["cutout"]["seeds_failed"] == "1"
    assert float(rows["lr_cosine"]["val_accuracy_mean"]) == pytest.approx(0.825)
    assert rows["lr_gamma"]["verdict"] == "better"
    assert "trials/cutout/seed0/result.json is not a result" in rows["cutout"]["reasons"]


@pytest.mark.parametrize("text,wrong", [
    ('{"status": "running", "wall_time_s": 1.0}',
     'status="running" is not "completed" or "diverged"'),
    ('{"wall_time_s": 1.0}', "status is missing"),
    ('{"status": "completed", "test_accuracy": "0.9", "wall_time_s": 1.0}',
     'test_accuracy="0.9" is not a finite number'),
    ('{"status": "completed", "test_accuracy": NaN, "wall_time_s": 1.0}',
     "test_accuracy=NaN is not a finite number"),
    ('{"status": "completed", "test_accuracy": 0.9, "wall_time_s": 1.0, "params": 1.5}',
     "params=1.5 is not an integer"),
    ('{"status": "diverged", "test_accuracy": null}', "wall_time_s is missing"),
    ("42", "it holds a JSON number, not an object"),
    ("\x89PNG", "it is not valid JSON"),
])
def test_read_run_names_what_is_wrong_with_a_result(tmp_path, text, wrong):
    run_dir = tmp_path / "trials" / "x" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(text)
    state, result, reason = read_run(str(run_dir))
    assert (state, result) == ("unreadable", None)
    assert reason.startswith(f"{run_dir / 'result.json'} is not a result: {wrong}")
    assert reason.endswith(f"; {FIX}")
    assert read_run(str(run_dir), relative_to=str(tmp_path))[2].startswith(
        "trials/x/seed0/result.json is not a result: ")


@pytest.mark.parametrize("status,accuracy,loss,state", [
    ("completed", 0.8, 0.6, "done"),
    ("completed", 0.8, math.nan, "done"),                  # written as null
    ("diverged", None, None, "failed"),
])
def test_read_run_accepts_what_train_writes(tmp_path, status, accuracy, loss, state):
    result = TrainResult(status=status, output_dir=str(tmp_path), test_accuracy=accuracy,
                         test_loss=loss, best_val_accuracy=None, epochs_run=2,
                         wall_time_s=12.5, train_images_per_s=None, params=69426,
                         resumed_from_epoch=0, recipe=Recipe())
    (tmp_path / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    assert read_run(str(tmp_path))[0] == state


def test_the_runner_reports_an_unreadable_run_and_leaves_it_alone(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 1, [("baseline", "baseline", {}, [None])])
    baseline = Recipe(train_subset=2000, epochs=5)
    for text in ('{"status": "completed"}', "[]", '{"status": "completed", '):
        job = runner.Job(Trial("baseline", "baseline", "the recipe as given"), 0, baseline,
                         str(out))
        result = out / "trials" / "baseline" / "seed0" / "result.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(text)
        outcome = runner.job_state(job)
        assert outcome.status == "failed"
        assert outcome.reason.startswith(f"{result} is not a result: ")
        assert outcome.reason.endswith(f"; {FIX}")
        assert result.read_text() == text
    (out / "trials/baseline/seed0/failure.json").write_text("{}")
    result.unlink()
    assert runner.job_state(job).reason == (
        f"{result.parent / 'failure.json'} is not a failure record: status is missing; fix it, "
        "or remove it to try this seed again")
    stream = io.StringIO()
    runner._Progress(stream, 1).start(1, [runner.job_state(job)])
    assert (f"tfmagic-checklist: baseline seed0: failed, not run again: "
            f"{result.parent / 'failure.json'} is not a failure record") in stream.getvalue()


# --- selection on validation, multiple comparisons ------------------------------------


def test_verdicts_ranking_and_best_cfg_follow_validation_not_test(tmp_path):
    out = tmp_path / "out"
    base = [(0.800, 0.800), (0.805, 0.805), (0.810, 0.810)]
    # lr_gamma wins on validation and loses on test; lr_cosine the other way round.
    baseline = make_checklist(out, 3, [
        ("baseline", "baseline", {}, base),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [(0.85, 0.75), (0.86, 0.76), (0.855, 0.755)]),
        ("lr_cosine", "lr", {"lr_schedule": "cosine"},
         [(0.75, 0.85), (0.76, 0.86), (0.755, 0.855)]),
        ("ls_0", "loss", {"label_smoothing": 0.0}, [(0.80, 0.90), (0.805, 0.91), (0.81, 0.905)]),
    ])
    report = write_report(out)
    verdicts = {s.name: s.verdict.label for s in report.summaries if s.verdict}
    assert verdicts == {"lr_gamma": "better", "lr_cosine": "worse",
                        "ls_0": "no clear difference"}
    assert report.best_trials == ["lr_gamma"]
    assert Recipe.from_flagfile(out / "best.cfg") == dataclasses.replace(
        baseline, lr_schedule="gamma", output_dir=str(out / "best"))
    markdown = (out / "report.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines()
            if line.startswith(("| baseline", "| lr_", "| ls_"))]
    assert rows == ["baseline", "lr_gamma", "ls_0", "lr_cosine"]
    assert table_row(markdown, "lr_gamma")[8] == "75.50 ± 0.50"      # test, for information


def test_runs_that_predate_val_accuracy_in_result_json_read_their_history(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 2, [("baseline", "baseline", {}, [None, None]),
                            ("ls_0", "loss", {"label_smoothing": 0.0}, [None, None])])
    for name, values in (("baseline", (0.80, 0.81)), ("ls_0", (0.84, 0.85))):
        for k, value in enumerate(values):
            write_run(out / "trials" / name / f"seed{k}", value, in_result=False)
    summaries = {s.name: s for s in collect(out)}
    assert summaries["ls_0"].val_accuracies == pytest.approx([0.84, 0.85])
    assert summaries["ls_0"].verdict.delta_mean == pytest.approx(0.04)


def test_runs_without_a_validation_split_get_no_verdict(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 2, [("baseline", "baseline", {}, [0.80, 0.81]),
                            ("ls_0", "loss", {"label_smoothing": 0.0}, [None, None])])
    for k in range(2):
        write_run(out / "trials" / "ls_0" / f"seed{k}", 0.9, validation=False)
    ls_0 = {s.name: s for s in collect(out)}["ls_0"]
    assert ls_0.verdict is None and ls_0.test_accuracy_mean == pytest.approx(0.89)
    assert ls_0.reasons == ["2 finished seed(s) without a validation split: verdicts read "
                            "validation accuracy only"]


def test_holm_matches_an_independent_computation():
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    assert holm(p) == pytest.approx(list(reference_holm(p)))
    assert holm([]) == []
    assert holm([0.3]) == [0.3]


def test_fifteen_noise_trials_are_rarely_called_and_a_real_effect_is_found():
    """15 trials of pure seed noise (0.3 points of standard deviation), 5 seeds a side,
    checklists drawn from a fixed seed: Holm keeps the share of checklists with any false
    "better" or "worse" at or below alpha = 5%, where testing each trial alone calls one in
    about a third of them (a little less than 1 - 0.95^15 = 54%: the trials share the
    baseline's seeds, so their tests are correlated). A real effect of 1.5 points (5
    standard deviations) is still found in nearly every checklist."""
    rng = np.random.default_rng(20261203)
    checklists, with_false_call, uncorrected, found = 400, 0, 0, 0
    for _ in range(checklists):
        baseline = 0.9 + 0.003 * rng.standard_normal(5)
        noise = {f"t{i}": 0.9 + 0.003 * rng.standard_normal(5) for i in range(15)}
        verdicts = judge(baseline, {**noise, "real": 0.915 + 0.003 * rng.standard_normal(5)})
        with_false_call += any(verdicts[name].label != "no clear difference" for name in noise)
        uncorrected += any(verdicts[name].p_value < 0.05 for name in noise)
        found += verdicts["real"].label == "better"
    # Binomial(400, 0.05) exceeds 32 with probability below 0.1%.
    assert with_false_call <= 32, with_false_call
    assert uncorrected >= 100, uncorrected
    assert found >= 0.9 * checklists, found


def test_undecided_and_distance_to_decision():
    wide = verdict([0.80, 0.81], [0.80, 0.82])
    assert undecided(wide) and distance_to_decision(wide) > 1
    tight = verdict([0.800, 0.801, 0.800], [0.800, 0.800, 0.801])   # within +-0.3 points
    assert not undecided(tight) and distance_to_decision(tight) < 1
    gain = verdict([0.80, 0.801, 0.802], [0.81, 0.811, 0.812])
    assert gain.label == "better" and not undecided(gain)
    withheld = dataclasses.replace(gain, label="no clear difference")   # as Holm may leave it
    assert undecided(withheld)
    assert undecided(verdict([0.80], [0.90])) and distance_to_decision(verdict([0.8], [0.9])) \
        == math.inf
    low, high = wide.ci_low, wide.ci_high
    assert distance_to_decision(wide) == pytest.approx(
        (high - low) / 2 / (0.003 + abs(wide.delta_mean)))


# --- seeds=auto ------------------------------------------------------------------------


def test_auto_seeds_go_to_undecided_trials_closest_first_and_stop_at_max_seeds(tmp_path):
    out = tmp_path / "out"
    base = [0.8000, 0.8002]
    trials = {
        "clear_gain": [0.8500, 0.8502],        # decided: better
        "no_effect": [0.8001, 0.8003],         # decided: within +-0.3 points
        "close": [0.795, 0.81],                # undecided, nearly decided
        "far": [0.70, 0.90],                   # undecided, far from it
    }
    make_checklist(out, 2, [("baseline", "baseline", {}, base),
                            *[(name, name, {"lr": 0.01 * (i + 1)}, values)
                              for i, (name, values) in enumerate(trials.items())],
                            ("half_failed", "x", {"lr": 0.5}, [0.70, ("failed", "boom")]),
                            ("at_max", "y", {"lr": 0.6}, [0.70, 0.90])])
    summaries = collect(out)
    for name, values in trials.items():        # the premises, by the written-out interval
        low, high = reference_interval(base, values)
        assert (low < -0.003 and high > 0.003) == (name in ("close", "far")), name
    counts = {s.name: 2 for s in summaries}
    counts["at_max"] = 3
    more = runner.next_seeds(summaries, counts, max_seeds=3)
    assert list(more.items()) == [("baseline", 3), ("close", 3), ("far", 3)]
    assert runner.next_seeds(summaries, {**counts, "baseline": 3}, max_seeds=3) == {
        "close": 3, "far": 3}
    assert runner.next_seeds(summaries, counts, max_seeds=2) == {}
    assert runner.next_seeds(summaries, counts, max_seeds=3, min_effect=0.2) == {
        "baseline": 3, "far": 3}                 # "close" cannot hold +-20 points


QUICK = dict(model="resnet8", train_subset=200, validation_fraction=0.0, batch_size=64,
             width=0.25, epochs=1, warmup_epochs=0.2, augment="none", crop_scheme="none",
             se=False)


def test_auto_seeds_train_only_the_undecided_and_never_redo_a_finished_seed(tmp_path):
    """Seeds 0 and 1 of every trial and seed 2 of the baseline are finished results, as a
    killed checklist leaves them: the runner trains seed 2 of the undecided trial only,
    keeps the baseline's, and stops at max_seeds. The baseline had no validation split: the
    checklist adds one and says so."""
    out = tmp_path / "out"
    for name, values in (("baseline", [0.8000, 0.8002, 0.8001]), ("ls_0", [0.79, 0.812]),
                         ("aug_color", [0.8500, 0.8502])):
        for k, value in enumerate(values):
            write_run(out / "trials" / name / f"seed{k}", value)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    stream = io.StringIO()
    result = runner.run(Recipe(**QUICK), str(out), workers=2, seeds="auto", max_seeds=3,
                        trials=["ls_0", "aug_color"], progress=stream)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps          # nothing redone
    assert sorted(o.key for o in result.completed) == sorted(
        [f"{name}-seed{k}" for name in ("baseline", "ls_0", "aug_color") for k in range(2)]
        + ["baseline-seed2", "ls_0-seed2"])
    assert (out / "trials/ls_0/seed2/result.json").stat().st_mtime_ns > max(stamps.values())
    assert not (out / "trials/aug_color/seed2").exists()
    assert not (out / "trials/ls_0/seed3").exists()
    plan = json.loads((out / "plan.json").read_text())
    assert {t["name"]: t["seeds"] for t in plan["trials"]} == {
        "baseline": 3, "ls_0": 3, "aug_color": 2}
    assert plan["seed_policy"] == {"seeds": "auto", "min_effect": 0.003, "max_seeds": 3}
    assert plan["baseline"]["validation_fraction"] == 0.1
    trained = json.loads((out / "trials/ls_0/seed2/result.json").read_text())
    assert trained["recipe"]["validation_fraction"] == 0.1
    assert trained["recipe"]["seed"] == 2 and trained["val_accuracy"] is not None
    log = stream.getvalue()
    assert "1 undecided trials get another seed: baseline (3), ls_0 (3)" in log
    assert "no validation split (validation_fraction=0)" in log
    assert f"ls_0 seed2: val {100 * trained['val_accuracy']:.2f}% (Δ " in log
    assert "[####################] 8/8 done" in log
    markdown = (out / "report.md").read_text()
    assert "**The baseline had no validation split" in markdown
    assert table_row(markdown, "ls_0")[5] == "3 vs 3"
    assert table_row(markdown, "aug_color")[5] == "2 vs 3"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_bar_on_a_terminal_and_prints_lines_in_a_log():
    outcomes = [runner.RunOutcome("baseline-seed0", "completed", seconds=10.0,
                                  val_accuracy=0.80),
                runner.RunOutcome("se_off-seed0", "completed", seconds=30.0, val_accuracy=0.812),
                runner.RunOutcome("boom-seed0", "failed", "diverged", seconds=5.0)]
    for stream in (Terminal(), io.StringIO()):
        progress = runner._Progress(stream, 2)
        progress.start(6, [])
        for outcome in outcomes:
            progress.started(outcome.key)
        for outcome in outcomes:
            progress.finished(outcome)
        assert progress.eta_s() == pytest.approx(20.0 * 2)    # 3 left, 2 workers, 20 s each
        progress.close()
        text = stream.getvalue()
        assert "tfmagic-checklist: baseline seed0: val 80.00%\n" in text
        assert "tfmagic-checklist: se_off seed0: val 81.20% (Δ +1.20)\n" in text
        assert "tfmagic-checklist: boom seed0: failed: diverged\n" in text
        assert "[##########----------] 3/6 done, running 0, failed 1, skipped 0" in text
        if isinstance(stream, Terminal):
            # The bar is redrawn in place (carriage return, erase line), never on a new line.
            assert text.count("\r\x1b[K") >= 7 and text.endswith("\n")
            assert all(not line.startswith("tfmagic-checklist: [")
                       for line in text.split("\n")[:-1])
        else:
            assert "\r" not in text and text.count("tfmagic-checklist: [") == 7
