"""A new trick is one class, one registry entry and one trial, and then it is everywhere:
a flag value, a trained run, the checklist (whose runs are trained by worker processes).

The trick lives in a module of its own, as a user's would, named in ``TFMAGIC_PLUGINS``; the
scenario runs in a fresh process so that the registration does not leak into other tests.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from worker_logs import trained_by

PLUGIN = '''
import tensorflow as tf
from keras import ops

from tfmagic.checklist.trials import EXTENDED_TRIALS, choose
from tfmagic.choices import LR_SCHEDULES
from tfmagic.schedules import WarmupSchedule


class Aborting(WarmupSchedule):
    """Aborts the process natively (TensorFlow's Abort op) when it is first computed."""

    def _decay(self, steps, dtype):
        with tf.control_dependencies([tf.raw_ops.Abort(error_msg="the plugin's abort")]):
            return ops.cast(self.peak_lr, dtype)


LR_SCHEDULES.register("aborting", help="aborts the process",
                      build=lambda r, total, warmup, peak, floor: Aborting(peak, total, warmup))
EXTENDED_TRIALS.register("lr_aborting", choose("lr_schedule", "aborting", "lr"), help="aborts")


class LinearDecay(WarmupSchedule):
    def _decay(self, steps, dtype):
        return ops.cast(self.peak_lr * (1.0 - steps / self.decay_steps), dtype)


LR_SCHEDULES.register("linear", help="linear decay to 0",
                      build=lambda r, total, warmup, peak, floor: LinearDecay(peak, total, warmup))
EXTENDED_TRIALS.register("lr_linear", choose("lr_schedule", "linear", "lr"), help="linear decay")

'''

SCENARIO = '''
import json, os, sys

from absl import flags

from tfmagic import cli  # imports the modules of TFMAGIC_PLUGINS
from tfmagic import recipe as recipe_lib
from tfmagic.checklist import runner

values = flags.FlagValues()
recipe_lib.define_flags(values)
values(["tfmagic-train", "--lr_schedule=linear"])
parsed = recipe_lib.from_flags(values)

out, folder = sys.argv[1:3]
small = dict(dataset="folder:" + folder, validation_fraction=0.25, epochs=2, batch_size=4,
             model="resnet8", se=False, width=0.25, warmup_epochs=0.5, augment="none",
             weight_decay_schedule="lr")
checklist = runner.run(recipe_lib.Recipe(**small), os.path.join(out, "checklist"),
                       trials=["lr_aborting", "lr_linear"], seeds=1, workers=1, progress=None)
print(json.dumps({
    "help": values["lr_schedule"].help,
    "parsed": parsed.lr_schedule,
    "outcomes": {o.key: [o.status, o.reason] for o in checklist.outcomes},
}))
'''


def _write_folder(root, classes=4, per_class=8, test_per_class=2):
    """Noisy 28x28 PNGs, one colour channel per class, in train/ and test/ (a small test set:
    the runs' evaluation would otherwise be Fashion-MNIST's 10,000 images)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in [("train", per_class), ("test", test_per_class)]:
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 80, size=(28, 28, 3))
                image[..., k % 3] += 50 * (1 + k // 3)
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def test_a_new_schedule_is_a_flag_value_a_trained_run_and_a_checklist_trial(tmp_path):
    """One test, one process for the scenario (a module fixture would run once per xdist
    worker)."""
    folder = _write_folder(tmp_path / "images")
    (tmp_path / "my_trick.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "scenario.py").write_text(textwrap.dedent(SCENARIO))
    env = {**os.environ, "TFMAGIC_PLUGINS": "my_trick", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(tmp_path / "scenario.py"), str(tmp_path),
                           str(folder)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])

    # a flag value, with its help from the registry entry
    assert said["parsed"] == "linear"
    assert "linear: linear decay to 0" in said["help"]

    # the checklist: its runs are trained by a worker process, which loads the plugin too;
    # the run that aborts the process natively (the second, in the order of registration)
    # fails alone, and a new worker trains the next
    failure = json.loads((tmp_path / "checklist" / "trials" / "lr_aborting" / "seed0"
                          / "failure.json").read_text())
    assert said["outcomes"] == {"baseline-seed0": ["completed", ""],
                                "lr_aborting-seed0": ["failed", failure["reason"]],
                                "lr_linear-seed0": ["completed", ""]}
    # the reason quotes the abort's message, not the stack trace that follows it in the log
    assert failure["reason"].startswith("killed by SIGABRT: F0000 ")
    assert failure["reason"].endswith("Abort_op intentional failure; the plugin's abort")
    logs = {key: (tmp_path / "checklist" / "logs" / f"{key}.log").read_text()
            for key in said["outcomes"]}
    assert failure["last_lines"][-1] in logs["lr_aborting-seed0"]
    workers = {key: trained_by(tmp_path / "checklist" / "logs" / f"{key}.log")
               for key in logs}
    assert workers["baseline-seed0"] == (workers["baseline-seed0"][0], "1")
    assert workers["lr_aborting-seed0"] == (workers["baseline-seed0"][0], "2")
    assert workers["lr_linear-seed0"][1] == "1"
    assert workers["lr_linear-seed0"][0] != workers["baseline-seed0"][0]
    trial_dir = tmp_path / "checklist" / "trials" / "lr_linear" / "seed0"
    with open(trial_dir / "recipe.cfg") as f:
        assert "--lr_schedule=linear\n" in f.read()
    with open(trial_dir / "result.json") as f:
        assert json.load(f)["status"] == "completed"

    # a trained run: the trial's logged learning rate is the linear decay's at the end of
    # each epoch, computed here from the recipe (32 training images, 24 of them for
    # training, batches of 4: 6 steps an epoch; a warm-up of half an epoch, 3 steps)
    with open(trial_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    steps_per_epoch, total, warmup, peak = 6, 12, 3, 0.1
    for row in rows:
        step = (int(row["epoch"]) + 1) * steps_per_epoch
        expected = peak * (1 - (step - warmup) / (total - warmup))
        assert float(row["learning_rate"]) == pytest.approx(expected, abs=1e-6)
    # the weight decay follows the learning rate (policy "lr"): the one cycle that the new
    # schedule states by default is enough for every weight-decay policy
    assert float(rows[0]["weight_decay"]) == pytest.approx(
        5e-4 * float(rows[0]["learning_rate"]) / peak, rel=1e-5)

    with open(tmp_path / "checklist" / "report.md") as f:
        assert "lr_schedule: cosine_power_cycles -> linear" in f.read()
    with open(tmp_path / "checklist" / "plan.json") as f:
        planned = {t["name"]: t for t in json.load(f)["trials"]}
    assert planned["lr_linear"]["description"] == "linear decay to 0"
