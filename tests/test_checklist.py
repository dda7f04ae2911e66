"""The checklist: the trial set, a real parallel run, kill -9 and resume, failures, Ray."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_checklist_report import make_checklist
from worker_logs import trained_by

from tfmagic.checklist import executors, report, runner
from tfmagic.checklist.executors import Job, LocalExecutor, Slot
from tfmagic.checklist.trials import (
    EXTENDED_TRIAL_NAMES,
    TRIAL_NAMES,
    SkippedTrial,
    Trial,
    checklist_trials,
)
from tfmagic.recipe import Recipe, RecipeError
from tfmagic.training import train

# Module fixtures (real runs) are shared by several tests: they run in one test process.
pytestmark = pytest.mark.xdist_group("checklist")

ISSUE_TRIALS = [
    "lr_gamma", "lr_cosine", "opt_sgd_momentum", "opt_adam", "pretrained", "aug_color",
    "wd_higher", "wd_lower", "ls_0", "ls_0.2", "wd_linear", "mixup", "se_off", "act_relu",
    "act_swish",
]
CHANGED_FIELDS = {
    "lr_gamma": {"lr_schedule"}, "lr_cosine": {"lr_schedule"},
    "opt_sgd_momentum": {"optimizer"}, "opt_adam": {"optimizer", "lr"},
    "pretrained": {"pretrained"}, "aug_color": {"augment"},
    "wd_higher": {"weight_decay"}, "wd_lower": {"weight_decay"},
    "ls_0": {"label_smoothing"}, "ls_0.2": {"label_smoothing"},
    "wd_linear": {"weight_decay_schedule"}, "mixup": {"mixup_alpha"}, "se_off": {"se"},
    "act_relu": {"downscale_activation"}, "act_swish": {"downscale_activation"},
    "bs_half": {"batch_size", "lr"}, "bs_double": {"batch_size", "lr"},
    "aux_loss": {"aux_loss_weight"}, "crop_rrc": {"crop_scheme"}, "cutout": {"cutout"},
    "attention_pool": {"pooling"}, "wd_cycles": {"weight_decay_schedule"},
    "wd_lr": {"weight_decay_schedule"}, "drop_path": {"drop_path_rate"},
}
QUICK = dict(model="resnet8", train_subset=1000, validation_fraction=0.1, batch_size=64,
             eval_batch_size=1000, width=0.25, epochs=3, warmup_epochs=0.2, augment="none",
             crop_scheme="none")


def _differences(a: Recipe, b: Recipe) -> set[str]:
    return {f.name for f in dataclasses.fields(Recipe) if getattr(a, f.name) != getattr(b, f.name)}


def test_the_fifteen_trials_each_change_only_their_own_fields():
    baseline = Recipe(model="keras:MobileNetV2")
    trials, skipped = checklist_trials(baseline)
    assert [t.name for t in trials] == ISSUE_TRIALS == list(TRIAL_NAMES)
    assert skipped == []
    for trial in trials:
        assert _differences(trial.recipe(baseline), baseline) == CHANGED_FIELDS[trial.name]
    by_name = {t.name: t.recipe(baseline) for t in trials}
    assert by_name["wd_higher"].weight_decay == pytest.approx(4 * baseline.weight_decay)
    assert by_name["wd_lower"].weight_decay == pytest.approx(baseline.weight_decay / 4)
    assert by_name["opt_adam"].lr == pytest.approx(baseline.lr / 100)
    assert by_name["pretrained"].pretrained == "imagenet"
    assert by_name["ls_0.2"].label_smoothing == 0.2
    assert by_name["mixup"].mixup_alpha > 0


def test_extended_trials_and_skips_with_reasons():
    baseline = Recipe()
    trials, skipped = checklist_trials(baseline, extended=True)
    names = [t.name for t in trials]
    assert names == [n for n in (*TRIAL_NAMES, *EXTENDED_TRIAL_NAMES) if n != "pretrained"]
    assert [s.name for s in skipped] == ["pretrained"]
    assert "no pretrained weights" in skipped[0].reason
    for trial in trials:
        assert _differences(trial.recipe(baseline), baseline) == CHANGED_FIELDS[trial.name]
    doubled = next(t for t in trials if t.name == "bs_double").recipe(baseline)
    assert (doubled.batch_size, doubled.lr) == (256, pytest.approx(0.2))

    relu = dataclasses.replace(baseline, downscale_activation="relu", se=False)
    trials, skipped = checklist_trials(relu, names=["act_relu", "act_swish", "se_off"])
    assert [t.name for t in trials] == ["act_swish"]
    assert {s.name: s.reason for s in skipped} == {
        "act_relu": "the baseline already has downscale_activation=relu",
        "se_off": "the baseline has no squeeze-and-excitation (se=False)",
    }
    with pytest.raises(ValueError, match="^trials=lr_onecycle is not allowed"):
        checklist_trials(baseline, names=["lr_onecycle"])


GAMMA_IN_WARMUP = (
    "the change lr_schedule=gamma does not fit this baseline: warmup_epochs=0.6 is not "
    "allowed: must be < epochs / 2 (0.5) with lr_schedule=gamma (its first step decay is at "
    "half of training)")


def test_a_trial_the_baseline_cannot_run_is_skipped_before_anything_starts(tmp_path):
    baseline = Recipe(epochs=1, warmup_epochs=0.6)
    trials, skipped = checklist_trials(baseline, names=["lr_gamma", "lr_cosine"])
    assert [t.name for t in trials] == ["lr_cosine"]
    assert skipped == [SkippedTrial("lr_gamma", GAMMA_IN_WARMUP)]

    too_long = Trial("warmup_2", "warmup", "two epochs of warm-up", {"warmup_epochs": 2.0})
    out = tmp_path / "out"
    jobs, skipped = runner.plan(baseline, str(out), trials=[*TRIAL_NAMES, too_long])
    assert "lr_gamma" not in {job.trial.name for job in jobs}
    assert "warmup_2" not in {job.trial.name for job in jobs}
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["lr_gamma"] == GAMMA_IN_WARMUP
    assert reasons["warmup_2"] == ("the change warmup_epochs=2.0 does not fit this baseline: "
                                   "warmup_epochs=2.0 is not allowed: must be < epochs (1)")
    assert not out.exists()


# Trained end to end in the default run (pretrained is skipped: the baseline is no
# keras.applications model); `test_every_trial_trains` trains them all.
FEW_TRIALS = ["lr_cosine", "pretrained"]
BOOM = Trial("boom", "boom", "a learning rate that diverges", {"lr": 1e12})
# Trained after three other runs in its worker, one of them diverged, and then alone.
LAST = Trial("lr_half", "lr", "half the learning rate", {"lr": 0.05})
CHECKLIST_TRIALS = [*FEW_TRIALS, BOOM, LAST]


@pytest.fixture(scope="module")
def checklist_run(tmp_path_factory):
    """A few trials of the checklist on a Fashion-MNIST subset, plus a trial that diverges,
    all four runs in one warm worker."""
    out = tmp_path_factory.mktemp("checklist") / "out"
    result = runner.run(Recipe(**QUICK), str(out), workers=1, seeds=1,
                        trials=CHECKLIST_TRIALS, progress=None)
    return result, out


@pytest.mark.slow
def test_every_trial_trains(tmp_path):
    result = runner.run(Recipe(**QUICK), str(tmp_path / "out"), workers=2, seeds=1,
                        trials=TRIAL_NAMES, progress=None)
    assert not result.failed
    assert {o.key for o in result.completed} == {
        f"{n}-seed0" for n in ("baseline", *TRIAL_NAMES) if n != "pretrained"}


def test_real_checklist_writes_every_result_and_report_row(checklist_run):
    result, out = checklist_run
    expected = ["baseline", *[n for n in FEW_TRIALS if n != "pretrained"], "boom", "lr_half"]
    for name in expected:
        run_dir = out / "trials" / name / "seed0"
        assert (run_dir / "result.json").exists(), name
        assert (run_dir / "history.csv").exists(), name
    completed = {o.key for o in result.completed}
    assert completed == {f"{n}-seed0" for n in expected if n != "boom"}
    assert [o.key for o in result.failed] == ["boom-seed0"]
    assert "diverged" in result.failed[0].reason
    # The diverged run's directory, as train() leaves one: its status, no test accuracy, no
    # model.
    boom = out / "trials" / "boom" / "seed0"
    recorded = json.loads((boom / "result.json").read_text())
    assert recorded["status"] == "diverged" and recorded["test_accuracy"] is None
    assert not (boom / "model.keras").exists()
    for name in ("report.md", "summary.csv", "report.png", "curves.png", "best.cfg"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    for name in [*expected, "pretrained"]:
        assert name in text, name
    assert "untested" in text
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {*expected, "pretrained"}
    for name in ("baseline", "lr_cosine", "lr_half"):
        saved = json.loads((out / "trials" / name / "seed0" / "result.json").read_text())
        assert float(by_name[name]["test_accuracy_mean"]) == pytest.approx(
            saved["test_accuracy"], abs=1e-6)
        assert by_name[name]["status"] == "completed"
    assert by_name["boom"]["status"] == "failed"
    assert by_name["pretrained"]["status"] == "skipped"
    baseline_result = json.loads((out / "trials/baseline/seed0/result.json").read_text())
    assert baseline_result["test_accuracy"] > 0.25
    plan = json.loads((out / "plan.json").read_text())
    assert [t["name"] for t in plan["trials"]] == expected


def test_a_run_trained_fourth_in_a_warm_worker_equals_the_run_trained_alone(checklist_run,
                                                                          tmp_path):
    """The worker trained the four runs one after another, and its fourth equals the same
    flagfile trained by tfmagic-train in a process of its own, with the same threads."""
    _, out = checklist_run
    keys = ["baseline-seed0", "lr_cosine-seed0", "boom-seed0", "lr_half-seed0"]
    heads = [trained_by(out / "logs" / f"{key}.log") for key in keys]
    assert heads == [(heads[0][0], str(number)) for number in (1, 2, 3, 4)]

    alone = tmp_path / "alone"
    slot = Slot(tuple(sorted(os.sched_getaffinity(0))), None)
    done = subprocess.run(
        [sys.executable, "-m", "tfmagic.cli.train",
         f"--flagfile={out / 'commands' / 'lr_half-seed0.cfg'}", f"--output_dir={alone}"],
        capture_output=True, text=True, env=slot.environment(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fourth = out / "trials" / "lr_half" / "seed0"
    with open(fourth / "history.csv") as f, open(alone / "history.csv") as g:
        in_worker, by_itself = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert len(in_worker) == len(by_itself) == QUICK["epochs"]
    for row, other in zip(in_worker, by_itself, strict=True):
        for column in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert float(row[column]) == pytest.approx(float(other[column]), rel=1e-6), column
    worker_result = json.loads((fourth / "result.json").read_text())
    alone_result = json.loads((alone / "result.json").read_text())
    for field in ("test_accuracy", "test_loss", "best_val_accuracy"):
        assert worker_result[field] == pytest.approx(alone_result[field], rel=1e-6), field


def test_a_worker_is_replaced_after_its_runs_or_above_its_memory_and_says_what_the_binary_says(
        tmp_path):
    """Six runs whose flagfile has a bad value. Three runs a worker: the first worker answers
    three with the binary's exit status and last line, a second takes the fourth; that one is
    kept for the next call of `execute`, where a memory limit below any process's makes each
    answer its worker's last: the second worker's next run ends it, a third takes the last."""
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    jobs = [Job(Trial("bad", "bad", "epochs=0", {}), k, Recipe(), str(out)) for k in range(6)]
    for job in jobs:
        os.makedirs(os.path.dirname(job.flagfile), exist_ok=True)
        with open(job.flagfile, "w") as f:
            f.write("--epochs=0\n")
    with pytest.raises(RecipeError) as refused:
        Recipe(epochs=0)
    slot = Slot(tuple(sorted(os.sched_getaffinity(0))), None)
    executor = LocalExecutor([slot], runs_per_worker=3)
    try:
        outcomes = executor.execute(jobs[:4], runner._Progress(None, 1))
        executor.worker_memory = 1
        outcomes += executor.execute(jobs[4:], runner._Progress(None, 1))
    finally:
        executor.close()
    said = f"--{refused.value.field}={refused.value.value}: {refused.value.allowed}"
    assert [(o.status, o.reason) for o in outcomes] == [
        ("failed", f"crashed (exit 1): {said}")] * 6
    heads = [trained_by(job.log_file) for job in jobs]
    assert [number for _, number in heads] == ["1", "2", "3", "1", "2", "1"]
    workers = [worker for worker, _ in heads]
    assert workers[0] == workers[1] == workers[2] != workers[3] == workers[4] != workers[5]
    assert workers[5] != workers[0]


FAULTHANDLER_LOG = """tfmagic worker 41: run 2 of this process, peak resident memory so far 700 MiB
Epoch 1/2
Fatal Python error: Aborted

Current thread 0x00007f0d (most recent call first):
  File "/x/keras/trainer.py", line 1 in fit

Extension modules: numpy.core._multiarray_umath, tensorflow (total: 2)
"""


@pytest.mark.parametrize("returncode,log,reason", [
    (-6, FAULTHANDLER_LOG, "killed by SIGABRT: Fatal Python error: Aborted"),
    (-9, "", "killed by SIGKILL (out of memory?)"),
    (1, "Traceback (most recent call last):\nValueError: no", "crashed (exit 1): ValueError: no"),
])
def test_a_failed_run_is_recorded_with_its_message_and_last_lines(tmp_path, returncode, log,
                                                                  reason):
    job = Job(Trial("t", "t", "t", {}), 0, Recipe(), str(tmp_path))
    outcome = executors.finish(job, returncode, log, 3.0)
    assert (outcome.status, outcome.reason, outcome.seconds) == ("failed", reason, 3.0)
    recorded = json.loads((Path(job.run_dir) / "failure.json").read_text())
    assert recorded == {"status": "failed", "reason": reason,
                        "last_lines": [line for line in log.splitlines() if line.strip()]}


def test_best_cfg_parses_and_trains(checklist_run, tmp_path):
    _, out = checklist_run
    best = Recipe.from_flagfile(out / "best.cfg")
    assert _differences(best, Recipe(**QUICK)) <= {"output_dir"} | set().union(
        *CHANGED_FIELDS.values())
    # One short epoch: what is checked is that the written recipe trains, not how well.
    trained = train(dataclasses.replace(best, output_dir=str(tmp_path / "best"), epochs=1,
                                        train_subset=300), verbose=0)
    assert trained.status == "completed"


def test_finished_checklist_is_not_redone_and_report_only(checklist_run):
    result, out = checklist_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("*") if p.is_file()}
    again = runner.run(Recipe(**QUICK), str(out), workers=2, seeds=1,
                       trials=CHECKLIST_TRIALS, progress=None)
    assert {o.key for o in again.completed} == {o.key for o in result.completed}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with pytest.raises(runner.ChecklistError, match="another baseline"):
        runner.run(Recipe(**{**QUICK, "lr": 0.05}), str(out), trials=[], progress=None)


def _cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "tfmagic.cli.checklist", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, **kwargs,
    )


@pytest.mark.slow
def test_kill_9_then_the_same_command_continues(tmp_path):
    out = tmp_path / "killed"
    args = ["--train_subset=1000", "--validation_fraction=0.1", "--batch_size=64", "--width=0.25",
            "--epochs=4", "--augment=none", "--crop_scheme=none", f"--out={out}",
            "--trials=ls_0", "--workers=1", "--seeds=auto", "--max_seeds=2"]
    process = _cli(*args)
    second = out / "trials" / "ls_0" / "seed0"
    deadline = time.time() + 300
    while time.time() < deadline:
        if (second / "backup" / "training_metadata.json").exists():
            break
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    worker = int(trained_by(out / "logs" / "ls_0-seed0.log")[0])
    deadline = time.time() + 30                  # the worker dies with the runner
    while time.time() < deadline and os.path.exists(f"/proc/{worker}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}")
    assert not (second / "result.json").exists()
    first = out / "trials" / "baseline" / "seed0"
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    process = _cli(*args)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "1 of 4 runs already done" in output      # seed 0 of both first, then seed 1
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == stamps
    resumed = json.loads((second / "result.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_epoch"] >= 1
    assert resumed["epochs_run"] == 4
    text = (out / "report.md").read_text()
    assert "ls_0" in text and "baseline" in text

    (out / "report.md").unlink()
    process = _cli(*args, "--report_only")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert (out / "report.md").read_text().split("## Time")[0] == text.split("## Time")[0]


BAD_FLAGS = [
    (["--trials=lr_gamma,lr_onecycle"], "trials=lr_onecycle is not allowed"),
    (["--seeds=three"], "--seeds=three is not allowed: 'auto' or an integer >= 1"),
    (["--seeds=0"], "--seeds=0 is not allowed: 'auto' or an integer >= 1"),
    (["--max_seeds=1"], "max_seeds"),
]

# Runs tfmagic-checklist's main() once per command line in one process, as the binary does
# (absl's app.run: usage errors print to stderr and exit 1), and writes (exit status, stdout,
# stderr) per command line as JSON: one TensorFlow start-up for all of them.
CLI_IN_ONE_PROCESS = """
import contextlib, io, json, sys
from absl import app, flags
from tfmagic.cli import checklist
results = []
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app.run(checklist.main, argv=["tfmagic-checklist", *argv])
        except SystemExit as done:
            code = done.code or 0
    results.append([code, out.getvalue(), err.getvalue()])
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def checklist_cli(tmp_path_factory):
    """tfmagic-checklist with each of BAD_FLAGS and with --print_commands, all in one process,
    and the binary itself with one bad flag, both at once: {name: (exit status, stdout,
    stderr, --out)}."""
    tmp = tmp_path_factory.mktemp("checklist_cli")
    runs = {",".join(flags): ([*flags, f"--out={tmp / f'x{i}'}"], tmp / f"x{i}")
            for i, (flags, _) in enumerate(BAD_FLAGS)}
    runs["print_commands"] = (["--epochs=2", f"--out={tmp / 'printed'}",
                               "--validation_fraction=0", "--print_commands"], tmp / "printed")
    incomplete = tmp / "incomplete"
    make_checklist(incomplete, 3, [("baseline", "baseline", {}, [0.80, 0.81, None]),
                                   ("mixup", "regularization", {"mixup_alpha": 0.2},
                                    [0.83, 0.842, 0.835]),
                                   ("cutout", "regularization", {"cutout": 0.25},
                                    [0.79, 0.802, 0.797])])
    runs["report_only"] = ([f"--out={incomplete}", "--report_only"], incomplete)
    runs["best_from_incomplete"] = ([f"--out={incomplete}", "--report_only",
                                     "--best_from_incomplete"], incomplete)
    binary_out = tmp / "binary"
    binary = _cli("--seeds=three", f"--out={binary_out}")
    driver = subprocess.run(
        [sys.executable, "-c", CLI_IN_ONE_PROCESS,
         json.dumps([argv for argv, _ in runs.values()]), str(tmp / "results.json")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    output, _ = binary.communicate(timeout=300)
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads((tmp / "results.json").read_text())
    done = {name: (*result, out) for (name, (_, out)), result in
            zip(runs.items(), results, strict=True)}
    done["binary"] = (binary.returncode, output, "", binary_out)
    return done


@pytest.mark.parametrize("flags,message", BAD_FLAGS)
def test_bad_checklist_flags_are_usage_errors(checklist_cli, flags, message):
    code, stdout, stderr, out = checklist_cli[",".join(flags)]
    assert code == 1
    assert message in stdout + stderr
    assert not out.exists()


def test_the_binary_exits_1_on_a_bad_flag_and_creates_nothing(checklist_cli):
    code, output, _, out = checklist_cli["binary"]
    assert code == 1
    assert "--seeds=three is not allowed: 'auto' or an integer >= 1" in output
    assert not out.exists()


def test_report_only_with_missing_runs_says_so_and_writes_best_cfg_only_when_asked(
        checklist_cli):
    note = ("tfmagic-checklist: incomplete: 1 of 9 planned runs have no result (baseline 1 of "
            "3); the verdicts rest on the seeds that finished; best.cfg ")
    code, stdout, stderr, out = checklist_cli["report_only"]
    assert (code, stdout, stderr) == (
        0, f"report -> {out / 'report.md'}\n",
        note + "not written (--best_from_incomplete writes it)\n")
    code, stdout, stderr, out = checklist_cli["best_from_incomplete"]
    assert (code, stderr) == (0, note + "written all the same\n")
    assert Recipe.from_flagfile(out / "best.cfg").mixup_alpha == 0.2


def test_print_commands_writes_flagfiles_that_match_the_trials(checklist_cli):
    code, stdout, stderr, out = checklist_cli["print_commands"]
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 * 15
    assert all(line.startswith("tfmagic-train --flagfile=") for line in lines)
    recipes = [Recipe.from_flagfile(line.split("=", 1)[1]) for line in lines]
    assert {r.seed for r in recipes} == {0, 1}               # --seeds=auto starts with 2
    assert {r.validation_fraction for r in recipes} == {0.1}  # verdicts need validation
    plan = json.loads((out / "plan.json").read_text())
    assert "no validation split" in plan["notes"][0]
    assert {t["seeds"] for t in plan["trials"]} == {2}
    lr_gamma = [r for r in recipes if r.output_dir.endswith("lr_gamma/seed1")]
    assert len(lr_gamma) == 1 and lr_gamma[0].lr_schedule == "gamma"
    assert not (out / "trials").exists()


@pytest.fixture
def ray_cluster():
    """A local Ray cluster started like a real one (`ray start --head`), stopped afterwards.

    Its temporary directory is short: Ray's Unix sockets live there, and socket paths are
    limited to about 100 characters.
    """
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = "6391"
    started = subprocess.run(
        [*ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats"], capture_output=True, text=True, timeout=300, check=False)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([*ray, "stop", "--force"], check=False, capture_output=True, timeout=300)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_runner_on_a_local_cluster(ray_cluster, tmp_path):
    out = tmp_path / "ray_out"
    result = runner.run(Recipe(**QUICK), str(out), trials=["ls_0"], seeds=2,
                        runner="ray", ray_address=ray_cluster, progress=None)
    keys = [f"{name}-seed{k}" for name in ("baseline", "ls_0") for k in range(2)]
    assert sorted(o.key for o in result.completed) == keys
    for name in ("baseline", "ls_0"):
        saved = json.loads((out / "trials" / name / "seed0" / "result.json").read_text())
        assert saved["status"] == "completed"
    assert (out / "report.md").exists()
    # two actors (a CPU each), each with a warm worker that trained two runs
    heads = [trained_by(out / "logs" / f"{key}.log") for key in keys]
    assert len({worker for worker, _ in heads}) == 2
    assert sorted(number for _, number in heads) == ["1", "1", "2", "2"]


@pytest.mark.slow
def test_confirm_trains_best_and_leave_one_out_variants(tmp_path):
    out = tmp_path / "confirm"
    # A ResNet-20 at a learning rate too low for SGD: a working learning rate and Adam (at
    # that one) each gain enough to be called better on 2 seeds and 300 validation images.
    slow = Recipe(**{**QUICK, "model": "resnet20", "lr": 0.002, "validation_fraction": 0.3})
    trials = [Trial("lr_up", "lr", "a working learning rate", {"lr": 0.1}),
              Trial("adam", "optimizer", "Adam at the same learning rate",
                    {"optimizer": "adam"})]
    result = runner.run(slow, str(out), workers=2, seeds=2, trials=trials, confirm=True,
                        progress=None)
    assert not result.failed
    best, merged = report.best_recipe(out)
    assert sorted(merged) == ["adam", "lr_up"]
    assert (best.lr, best.optimizer) == (0.1, "adam")
    plan = json.loads((out / "plan.json").read_text())
    confirm = {t["name"]: t["change"] for t in plan["trials"] if t["group"] == "confirm"}
    assert confirm == {
        "confirm_best": {"lr": 0.1, "optimizer": "adam"},
        "confirm_without_lr_up": {"optimizer": "adam"},
        "confirm_without_adam": {"lr": 0.1},
    }
    for name in confirm:
        for k in range(2):
            saved = json.loads((out / "trials" / name / f"seed{k}" / "result.json").read_text())
            assert saved["recipe"]["lr"] == confirm[name].get("lr", 0.002)
            assert saved["recipe"]["optimizer"] == confirm[name].get("optimizer", slow.optimizer)
            assert saved["recipe"]["seed"] == slow.seed + k
    assert "Do the winners combine?" in (out / "report.md").read_text()


def test_gpus_are_handed_out_in_disjoint_sets(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    assert runner.default_workers() == 5
    assert runner.default_workers(gpus_per_trial=2) == 2
    slots = runner._slots(2, gpus_per_trial=2)
    assert [slot.gpus for slot in slots] == [("0", "1"), ("2", "3")]
    assert [slot.environment()["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="^workers=3 is not allowed with gpus_per_trial=2"):
        runner._slots(3, gpus_per_trial=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu_slots = runner._slots(2)
    assert all(slot.gpus is None for slot in cpu_slots)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        assert sorted(c for slot in cpu_slots for c in slot.cores) == cores
        assert cpu_slots[0].environment()["TF_NUM_INTRAOP_THREADS"] == str(len(cpu_slots[0].cores))
