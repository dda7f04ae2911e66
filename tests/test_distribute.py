"""tf.distribute: MirroredStrategy over 2 logical CPUs, 2-process MultiWorkerMirroredStrategy,
mixed precision and XLA with every tfmagic part, the chief rule and LR scaling."""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfmagic import distribute
from tfmagic.recipe import Recipe, RecipeError
from tfmagic.training import build_schedules, train

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
SMALL = dict(train_subset=2000, validation_fraction=0.1, batch_size=64, width=0.5, lr=0.05,
             augment="none", crop_scheme="none", se=False, seed=1)


# What the distributed runs train: a folder of 4 colour classes that two epochs of a few steps
# learn (chance 0.25), so that a run's time is the strategy's, not the data's.
COLOUR_RUN = dict(model="resnet8", validation_fraction=0.1, batch_size=8, width=0.25,
                  optimizer="adam", lr=0.01, epochs=2, augment="none", crop_scheme="none",
                  se=False, seed=1)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = _colour_folder(tmp_path_factory.mktemp("colours"), per_class=24, test_per_class=20)
    return f"folder:{root}"


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from tfmagic import data, distribute
from tfmagic.losses import LabelSmoothingCrossEntropy
from tfmagic.models import build_model
from tfmagic.optimizers import build_optimizer
from tfmagic.recipe import Recipe
from tfmagic.training import train

(x, y), _ = data.fashion_mnist()
x = (x[:64].astype("float32") - 72.9) / 90.0
y = y[:64].astype("int32")
keras.utils.set_random_seed(0)
initial = build_model("resnet8", (28, 28, 1), 10, width=0.25).get_weights()

def one_step(strategy):
    with strategy.scope():
        model = build_model("resnet8", (28, 28, 1), 10, width=0.25)
        model.set_weights(initial)
        model.compile(optimizer=build_optimizer("sgd_nesterov", 0.1, momentum=0.9,
                                                weight_decay=5e-4),
                      loss=LabelSmoothingCrossEntropy(0.1, from_logits=True))
        # Its variables made before the step: a step that makes them is traced twice.
        model.optimizer.build(model.trainable_variables)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(64), epochs=1, verbose=0,
              shuffle=False)
    return model.get_weights(), strategy.num_replicas_in_sync

if sys.argv[1] == "step":
    single, one = one_step(distribute.make_strategy("default"))
    mirrored, two = one_step(distribute.make_strategy("mirrored"))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, initial))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
    print(json.dumps({"replicas": [one, two], "moved": moved, "difference": difference}))
else:
    result = train(Recipe(strategy="mirrored", output_dir=sys.argv[1],
                          **json.loads(sys.argv[2])), verbose=0)
    print(json.dumps({"accuracy": result.test_accuracy, "status": result.status}))
"""


# The runs on two logical CPUs or two worker processes wait for each other at every step: two
# of them side by side on a 2-core machine take twice as long each. They run one after another.
CLUSTER = pytest.mark.xdist_group("two_devices")


def _mirrored(*args):
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, *args], capture_output=True,
                          text=True, env=ENV, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@CLUSTER
def test_mirrored_first_update_equals_the_single_device_update():
    found = _mirrored("step")
    print(f"largest weight change {found['moved']:.4g}, largest difference between the "
          f"2-replica and 1-device updates {found['difference']:.3g}")
    assert found["replicas"] == [1, 2]
    assert found["moved"] > 1e-3
    # float32 sums in another order (per replica, then across): about 1e-4 of the update.
    assert found["difference"] < 1e-3 * found["moved"]


@CLUSTER
def test_mirrored_over_two_cpus_trains_a_recipe(tmp_path, colour_folder):
    found = _mirrored(str(tmp_path / "run"), json.dumps({**COLOUR_RUN, "dataset": colour_folder}))
    assert found["status"] == "completed"
    assert found["accuracy"] > 0.5
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["recipe"]["strategy"] == "mirrored"


WORKER_SCRIPT = """
import json, os, sys
import keras
import numpy as np
from tfmagic.recipe import Recipe
from tfmagic.training import train

options = json.loads(sys.argv[2])
stop_after = options.pop("stop_after", None)

class SaveWeightsOrStop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == stop_after:
            os._exit(9)

    def on_train_end(self, logs=None):
        np.savez(sys.argv[3], *self.model.get_weights())

result = train(Recipe(strategy="multi_worker", output_dir=sys.argv[1], **options), verbose=0,
               callbacks=[SaveWeightsOrStop()])
print(json.dumps({"status": result.status, "accuracy": result.test_accuracy,
                  "resumed_from": result.resumed_from_epoch, "epochs": result.epochs_run}))
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster(script, args_of):
    """Run `script` as the 2 workers of a cluster on 127.0.0.1, worker i with the arguments
    `args_of(i)`: (return codes, each worker's last output line as JSON, or the end of its
    stderr when it failed)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(config), "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", script, *args_of(index)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=900) for p in processes]
    codes = [p.returncode for p in processes]
    reports = [json.loads(out.strip().splitlines()[-1]) if code == 0 else err[-3000:]
               for code, (out, err) in zip(codes, outputs, strict=True)]
    return codes, reports


def _two_workers(tmp_path, out, options):
    """Train `options` with WORKER_SCRIPT on a 2-worker cluster: (return codes, reports as
    `_cluster`'s, each worker's final weights or None)."""
    files = [tmp_path / f"weights{index}.npz" for index in range(2)]
    for path in files:
        path.unlink(missing_ok=True)
    codes, reports = _cluster(
        WORKER_SCRIPT, lambda index: [str(out), json.dumps(options), str(files[index])])
    return codes, reports, [np.load(path) if code == 0 else None
                            for code, path in zip(codes, files, strict=True)]


def _assert_same_weights(first, second):
    assert len(first.files) == len(second.files) > 0
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])


@CLUSTER
def test_multi_worker_two_processes_identical_weights_and_only_chief_writes(
        tmp_path, colour_folder):
    out = tmp_path / "run"
    codes, reports, weights = _two_workers(tmp_path, out, {**COLOUR_RUN, "dataset": colour_folder})
    assert codes == [0, 0], reports
    print(f"workers' test accuracy {reports[0]['accuracy']:.4f} {reports[1]['accuracy']:.4f}")
    assert [r["status"] for r in reports] == ["completed", "completed"]
    # Each worker evaluates its half of the test set; the reported metric is the cluster's.
    assert reports[0]["accuracy"] == pytest.approx(reports[1]["accuracy"], abs=1e-6)
    assert reports[0]["accuracy"] > 0.5
    _assert_same_weights(*weights)
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.keras", "recipe.cfg", "result.json", "schedules.png",
        "tensorboard"]
    saved = json.loads((out / "result.json").read_text())
    assert saved["recipe"]["strategy"] == "multi_worker"
    assert [row["epoch"] for row in csv.DictReader((out / "history.csv").open())] == ["0", "1"]


@CLUSTER
@pytest.mark.slow
def test_multi_worker_resume_after_a_kill_between_the_workers_checkpoints(tmp_path):
    out = tmp_path / "run"
    options = {**SMALL, "train_subset": 600, "epochs": 3}
    codes, _, _ = _two_workers(tmp_path, out, {**options, "stop_after": 2})
    assert codes == [9, 9]
    chief_backup = out / "backup"
    other_backup = out / "backup" / "worker-1" / "backup"
    chief_metadata = json.loads((chief_backup / "training_metadata.json").read_text())
    assert chief_metadata["epoch"] == 2 and chief_metadata["previous"]["epoch"] == 1
    assert sorted(p.name for p in chief_backup.glob("*.weights.h5")) == [
        "epoch-1.weights.h5", "epoch-2.weights.h5"]
    # The kill came after the chief saved epoch 2 and before the other worker did.
    (other_backup / "training_metadata.json").write_text(json.dumps(
        {"epoch": 1, "weights": "epoch-1.weights.h5", "previous": None}))
    (other_backup / "epoch-2.weights.h5").unlink()

    codes, reports, weights = _two_workers(tmp_path, out, options)
    assert codes == [0, 0], reports
    assert [(r["status"], r["resumed_from"]) for r in reports] == [("completed", 1)] * 2
    _assert_same_weights(*weights)
    assert [row["epoch"] for row in csv.DictReader((out / "history.csv").open())] == [
        "0", "1", "2"]
    assert not (out / "backup").exists()


PLAIN_FIT_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from tfmagic import distribute
import keras

strategy = distribute.make_strategy("multi_worker")
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.2), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 1).astype("int32")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
with distribute.multi_worker_fit(model):
    history = model.fit(distribute.shard_by_example(data, strategy), epochs=5, verbose=0)
    loss, accuracy = model.evaluate(distribute.shard_by_example(data, strategy), verbose=0)
print(json.dumps({"loss": history.history["loss"], "accuracy": accuracy,
                  "weights": [w.tolist() for w in model.get_weights()]}))
"""


@CLUSTER
def test_multi_worker_fit_makes_plain_keras_fit_work():
    codes, reports = _cluster(PLAIN_FIT_SCRIPT, lambda index: [])
    assert codes == [0, 0], reports
    first, second = reports
    assert first == second
    assert first["loss"][-1] < first["loss"][0]
    assert first["accuracy"] > 0.8


EVERY_PART = dict(aux_loss_weight=0.3, drop_path_rate=0.1, se=True, pooling="attention",
                  weight_decay_schedule="linear", mixup_alpha=0.2, label_smoothing=0.1)


@pytest.mark.parametrize("change", [
    pytest.param(dict(precision="mixed_bfloat16", jit_compile=True, steps_per_execution=4),
                 marks=pytest.mark.slow),
    pytest.param(dict(precision="mixed_float16"), marks=pytest.mark.slow),
])
def test_mixed_precision_and_xla_with_every_part(change, tmp_path):
    recipe = Recipe(epochs=2, output_dir=str(tmp_path / "run"),
                    **{**SMALL, **EVERY_PART, **change})
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    assert result.test_accuracy > 0.4


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _colour_folder(root, per_class, test_per_class):
    """One class per colour of COLOURS: noisy 28x28 PNGs in train/ and test/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in [("train", per_class), ("test", test_per_class)]:
        for label, colour in enumerate(COLOURS):
            folder = root / split / f"colour{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = np.array(colour) * 0.7 + 38 + rng.normal(0, 10, (28, 28, 3))
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                    folder / f"{i:02d}.png")
    return root


def test_mixed_float16_with_every_part_learns(tmp_path):
    """mixed_float16 (loss scaling, float16 activations) with every part, on data that a few
    steps learn: float16 convolution gradients are about 100 times slower than float32 on a
    CPU, so Fashion-MNIST is the slow test above. 4 colour classes (chance 0.25), 43 training
    images, 3 epochs of Adam (SGD needs more steps; 2 epochs reach 0.75 to 1.0 by seed), a
    ResNet-8 (test accuracy 0.975 and 1.0 at seeds 1 and 2; the ResNet-20 took twice as long
    to trace)."""
    folder = _colour_folder(tmp_path / "colours", per_class=12, test_per_class=20)
    recipe = Recipe(dataset=f"folder:{folder}", model="resnet8", epochs=3, batch_size=8,
                    width=0.25, optimizer="adam", lr=0.01, augment="none", crop_scheme="none",
                    seed=1, validation_fraction=0.1, precision="mixed_float16",
                    output_dir=str(tmp_path / "run"), **EVERY_PART)
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    assert result.test_accuracy > 0.7


def test_chief_rule(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and distribute.task() == (None, 0)
    cases = [
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]},
          "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]},
          "task": {"type": "chief", "index": 0}}, True),
    ]
    for config, chief in cases:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        assert distribute.is_chief() is chief, config


def test_linear_lr_scaling_multiplies_peak_and_floor():
    recipe = Recipe(batch_size=512, lr=0.1, min_lr=0.001, lr_scaling="linear",
                    lr_schedule="cosine", warmup_epochs=0.0)
    lr, _ = build_schedules(recipe, 10)
    assert float(lr(0)) == pytest.approx(0.4)
    assert float(lr(recipe.epochs * 10)) == pytest.approx(0.004, rel=1e-4)
    plain, _ = build_schedules(Recipe(batch_size=512, lr_schedule="cosine",
                                      warmup_epochs=0.0), 10)
    assert float(plain(0)) == pytest.approx(0.1)


def test_multi_worker_without_tf_config_and_bad_values(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(RecipeError, match="^precision='float16'"):
        Recipe(precision="float16")
    with pytest.raises(RecipeError, match="^steps_per_execution=0"):
        Recipe(steps_per_execution=0)


def test_multi_worker_streamed_folder_each_worker_reads_its_share(tmp_path):
    """A streamed photo folder split between 2 workers: each worker decodes only its half of
    every global batch (checked on the pipeline)."""
    from photos import photo_folder

    from tfmagic import data

    folder = photo_folder(tmp_path / "photos", per_class=24)
    splits = data.load(f"folder:{folder}", cache="none", batch_size=10, image_size=16,
                       validation_fraction=0.0, preprocess=lambda x: x)
    whole = [x.numpy() for x, _ in splits.train_from_epoch(1).take(6)]
    shares = [[x.numpy() for x, _ in splits.train_from_epoch(1, worker=w, workers=2).take(6)]
              for w in range(2)]
    for batch, first, second in zip(whole, *shares, strict=True):
        assert len(first) + len(second) == len(batch) and len(first) - len(second) in (0, 1)
        np.testing.assert_array_equal(batch[0::2], first)
        np.testing.assert_array_equal(batch[1::2], second)


@CLUSTER
@pytest.mark.slow
def test_multi_worker_streamed_folder_trains_with_identical_weights(tmp_path):
    """A streamed photo folder trained on a 2-worker cluster keeps the workers' weights
    identical."""
    from photos import photo_folder

    folder = photo_folder(tmp_path / "photos", per_class=24)
    out = tmp_path / "run"
    codes, reports, weights = _two_workers(tmp_path, out, {
        "dataset": f"folder:{folder}", "cache": "none", "image_size": 32, "batch_size": 16,
        "width": 0.25, "se": False, "augment": "none", "epochs": 2,
        "validation_fraction": 0.1})
    assert codes == [0, 0], reports
    assert [r["status"] for r in reports] == ["completed", "completed"]
    _assert_same_weights(*weights)
    assert json.loads((out / "result.json").read_text())["streamed"] is True
