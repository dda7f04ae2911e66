"""The checklist report: every report file built from real run directories (result.json,
history.csv, failure.json), its verdicts those of `stats.judge` on the same numbers."""

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np
import pytest

from tfmagic.checklist import runner
from tfmagic.checklist.report import best_recipe, collect, read_run, write_report
from tfmagic.checklist.stats import judge
from tfmagic.checklist.trials import Trial
from tfmagic.recipe import Recipe
from tfmagic.training import TrainResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = [0.80, 0.81, 0.805]


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


def by_seed(outcomes):
    """The validation accuracies of the finished seeds of a trial in TRIALS, by seed."""
    return {k: (v if isinstance(v, float) else v[0]) for k, v in enumerate(outcomes)
            if isinstance(v, float) or isinstance(v, tuple) and isinstance(v[0], float)}


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
    assert row[9] == accuracy_text(np.subtract(BASE, 0.01)) == "79.50 ± 0.50"
    judged = {name: by_seed(by_name[name]) for name in
              ("lr_gamma", "lr_cosine", "wd_cycles", "cutout", "mixup", "crop_rrc", "adam")}
    expected = judge(BASE, judged)
    for name, values in judged.items():
        v = expected[name]
        row = table_row(markdown, name)
        assert row[2].split(" (")[0] == accuracy_text(list(values.values()))
        assert row[3] == f"{100 * v.delta_mean:+.2f}"
        assert row[4] == f"[{100 * v.ci_low:+.2f}, {100 * v.ci_high:+.2f}]"
        assert row[5] == f"{len(values)} vs 3"
        assert row[6] == ("<0.001" if v.p_adjusted < 0.001 else f"{v.p_adjusted:.3f}")
        assert row[7].split(" (")[0] == v.label
        assert row[7].endswith(f" (undecided: about {v.seeds_needed} seeds)") == v.undecided
        assert row[8] == "pooled"
        assert row[9] == accuracy_text(np.subtract(list(values.values()), 0.01))
    # Complete blocks: Δ is the difference of the means.
    assert table_row(markdown, "lr_gamma")[3] == "+5.00"
    assert table_row(markdown, "lr_gamma")[1] == "lr_schedule: cosine_power_cycles -> gamma"
    assert table_row(markdown, "lr_gamma")[7] == "better"
    assert table_row(markdown, "cutout")[7] == "worse"
    assert expected["mixup"].undecided and expected["mixup"].seeds_needed > 3
    assert table_row(markdown, "mixup")[7] == (
        f"no clear difference (undecided: about {expected['mixup'].seeds_needed} seeds)")
    assert table_row(markdown, "lr_gamma")[10] == "1m 50s"
    assert table_row(markdown, "crop_rrc")[2] == "81.25 ± 0.35 (2 of 3 seeds)"
    assert table_row(markdown, "no_smoothing")[7] == "pending"
    assert table_row(markdown, "augment_color")[7] == "failed"
    assert table_row(markdown, "pretrained")[1:3] == ["—", "—"]
    assert table_row(markdown, "pretrained")[7] == "skipped"
    # Ranked: the baseline, then the judged trials by Δ, largest gain first, then the rest.
    order = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines()
             if line.startswith("| ") and " | " in line]
    ranking = sorted(judged, key=lambda n: -expected[n].delta_mean)
    assert order[1:2 + len(ranking)] == ["baseline", *ranking]
    assert ("Pooled (7 trials): seed-blocked, noise pooled over 8 arms (12 df), Dunnett over "
            "them.") in markdown
    assert ("- `augment_color` (failed): seeds 0, 1, 2 failed: ResourceExhaustedError: out of "
            "memory") in markdown
    assert "- `crop_none` (skipped): seeds 0, 1, 2 skipped: not on this machine" in markdown
    assert "- `pretrained` (skipped): needs a keras.applications model" in markdown
    assert "- `no_smoothing`: 3 of 3 seeds pending or running (0 done)" in markdown
    assert "- `crop_rrc`: 1 of 3 seeds pending or running (2 done)" in markdown
    assert "untested" not in markdown.split("## How to read")[0]
    total = sum(100.0 + 10 * k for name, _, _, o in TRIALS for k, v in enumerate(o)
                if isinstance(v, float)) + 30.0
    assert total == 3440.0
    assert "Training time: 57m 20s in all" in markdown and "Elapsed: 1h 01m." in markdown
    assert "Dunnett's many-to-one comparison" in markdown and "**alone**" in markdown
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
            v = expected[name]
            assert float(row["val_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
            assert float(row["test_accuracy_std"]) == pytest.approx(np.std(values, ddof=1))
            assert float(row["delta_mean"]) == pytest.approx(v.delta_mean)
            assert float(row["delta_std"]) == pytest.approx(v.delta_std)
            assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(
                (v.ci_low, v.ci_high))
            assert float(row["p_value"]) == pytest.approx(v.p_value)
            assert float(row["p_adjusted"]) == pytest.approx(v.p_adjusted)
            assert row["verdict"] == v.label
            assert (row["reliable"], row["analysis"]) == ("true", "pooled")
            assert row["analysis_reason"] == v.reason
    assert rows["mixup"]["undecided"] == "true" and rows["lr_gamma"]["undecided"] == "false"
    assert (rows["mixup"]["seeds_needed"], rows["lr_gamma"]["seeds_needed"]) == (
        str(expected["mixup"].seeds_needed), "")
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
    make_checklist(out, 3, [
        ("baseline", "baseline", {}, [0.80, 0.81, 0.805]),
        ("mixup", "regularization", {"mixup_alpha": 0.2}, [0.83, 0.838, 0.80]),
        ("cutout", "regularization", {"cutout": 0.25}, [0.79, 0.802, 0.797]),
        ("ls_0", "loss", {"label_smoothing": 0.0}, [0.802, 0.808, 0.81]),
    ])
    complete = write_report(out)
    assert complete.incomplete is None
    assert complete.best_trials == [] and complete.best_cfg == str(out / "best.cfg")
    assert "Incomplete" not in (out / "report.md").read_text()
    best_cfg = out / "best.cfg"
    written = (best_cfg.read_bytes(), best_cfg.stat().st_mtime_ns)

    # mixup's third seed (3 points below its first two) loses its result: on the first two
    # mixup would be merged.
    (out / "trials" / "mixup" / "seed2" / "result.json").unlink()
    partial = write_report(out)
    note = ("incomplete: 1 of 12 planned runs have no result (mixup 1 of 3); the verdicts "
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
    expected = judge(best, {"confirm_without_lr_gamma": without_gamma,
                            "confirm_without_wd_cycles": without_wd})
    gap = expected["confirm_without_lr_gamma"].delta_mean
    assert gap == pytest.approx(np.mean(without_gamma) - np.mean(best))
    row = table_row(confirm, "confirm_without_lr_gamma")
    assert row[1] == "lr_gamma" and row[2] == accuracy_text(without_gamma)
    assert row[3] == accuracy_text(np.subtract(without_gamma, 0.01))
    adjusted = expected["confirm_without_lr_gamma"].p_adjusted
    assert row[6:] == [f"{100 * gap:+.2f}",
                       "<0.001" if adjusted < 0.001 else f"{adjusted:.3f}", "worse"]
    assert expected["confirm_without_lr_gamma"].label == "worse"
    assert table_row(confirm, "confirm_without_wd_cycles")[8] == "no clear difference"
    assert table_row(confirm, "confirm_best")[5] == "better"
    baseline_p = judge(BASE, {"best": best, "without_gamma": without_gamma,
                              "without_wd": without_wd})["best"].p_adjusted
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


def test_a_trial_on_one_seed_is_untested_and_never_merged(tmp_path):
    out = tmp_path / "out"
    make_checklist(out, 1, [
        ("baseline", "baseline", {}, [0.80]),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [0.85]),
        ("cutout", "regularization", {"cutout": 0.25}, [0.802]),
    ])
    report = write_report(out)
    markdown = (out / "report.md").read_text()
    assert "**Verdicts marked untested rest on a single seed or on tied values**" in markdown
    assert table_row(markdown, "baseline")[2] == "80.00"
    assert table_row(markdown, "lr_gamma")[2:9] == [
        "85.00", "+5.00", "—", "1 vs 1", "n/a", "no clear difference (untested)", "untested"]
    assert ("- `lr_gamma` (untested): 1 seed shared with the baseline: no test (its spread "
            "cannot be checked).") in markdown
    with open(out / "summary.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["lr_gamma"]["reliable"] == "false" and rows["lr_gamma"]["p_value"] == ""
    assert rows["lr_gamma"]["delta_std"] == "" and rows["lr_gamma"]["test_accuracy_std"] == ""
    assert report.best_trials == []

    # Among trials with 3 seeds, one whose other two seeds failed is not merged on the third.
    out = tmp_path / "three"
    make_checklist(out, 3, [
        ("baseline", "baseline", {}, BASE),
        ("lr_gamma", "lr", {"lr_schedule": "gamma"}, [OOM, OOM, 0.86]),
        ("cutout", "regularization", {"cutout": 0.25}, [0.79, 0.802, 0.797]),
        ("ls_0", "loss", {"label_smoothing": 0.0}, [0.802, 0.808, 0.81]),
    ])
    report = write_report(out)
    gamma = {s.name: s for s in report.summaries}["lr_gamma"]
    assert (gamma.verdict.label, gamma.verdict.analysis) == ("no clear difference",
                                                            "untested")
    assert report.best_trials == []


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
    assert table_row(markdown, "lr_gamma")[9] == "75.50 ± 0.50"      # test, for information


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


# --- seeds=auto ------------------------------------------------------------------------


def test_auto_seeds_go_to_trials_that_more_seeds_would_likely_decide(tmp_path):
    out = tmp_path / "out"
    base = [0.8000, 0.8010]

    def arm(delta, noise):
        return [base[0] + delta + noise, base[1] + delta - noise]

    trials = {
        "clear_gain": arm(0.05, 0.00055),        # decided: better
        "no_effect": arm(0.0, -0.00055),         # decided: within +-0.3 points
        "close": arm(0.0026, 0.00044),           # undecided, about 3 seeds would decide it
        "far": arm(0.0014, -0.00044),            # undecided, about 4 seeds
        "middle": arm(0.0018, 0.00066),          # undecided, about 4 seeds
        "other": arm(0.01, -0.00066),
    }
    make_checklist(out, 2, [("baseline", "baseline", {}, base),
                            *[(name, name, {"lr": 0.01 * (i + 1)}, values)
                              for i, (name, values) in enumerate(trials.items())],
                            ("half_failed", "x", {"lr": 0.5}, [0.70, ("failed", "boom")])])
    summaries = collect(out)
    verdicts = {s.name: s.verdict for s in summaries if s.verdict is not None}
    assert [(verdicts[n].undecided, verdicts[n].seeds_needed)
            for n in ("clear_gain", "no_effect", "close", "far", "middle")] == [
        (False, None), (False, None), (True, 3), (True, 4), (True, 4)]
    counts = {s.name: 2 for s in summaries}
    assert runner.next_seeds(summaries, counts, max_seeds=2) == {}
    assert list(runner.next_seeds(summaries, counts, max_seeds=3).items()) == [
        ("baseline", 3), ("close", 3)]
    assert list(runner.next_seeds(summaries, counts, max_seeds=4).items()) == [
        ("baseline", 3), ("close", 3), ("far", 3), ("middle", 3)]
    # A trial whose planned seeds have not all finished waits; a baseline already at the
    # new seed gets none.
    assert runner.next_seeds(summaries, {**counts, "close": 3, "baseline": 3},
                             max_seeds=4) == {"far": 3, "middle": 3}


QUICK = dict(model="resnet8", train_subset=200, validation_fraction=0.0, batch_size=64,
             width=0.25, epochs=1, warmup_epochs=0.2, augment="none", crop_scheme="none",
             se=False)


def test_auto_seeds_train_only_the_undecided_and_never_redo_a_finished_seed(tmp_path):
    """Seeds 0 and 1 of every trial and seed 2 of the baseline are finished results, as a
    killed checklist leaves them: the runner trains seed 2 of the undecided trial only,
    keeps the baseline's, and stops at max_seeds. The baseline had no validation split: the
    checklist adds one and says so."""
    out = tmp_path / "out"
    for name, values in (("baseline", [0.8000, 0.8002, 0.8001]), ("ls_0", [0.806, 0.814]),
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
