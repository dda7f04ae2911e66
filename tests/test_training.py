"""train(recipe): a real short run on Fashion-MNIST, its files, re-runs, resume, divergence."""

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from disks import mount_tmpfs
from PIL import Image

from tfmagic import data, rundir
from tfmagic.recipe import Recipe
from tfmagic.training import DiskFullError, RunExistsError, build_schedules, train

# Evaluation at 1,000 images a batch: the same accuracy as at 64, in less time.
QUICK = dict(train_subset=3000, validation_fraction=0.1, batch_size=64, eval_batch_size=1000,
             width=0.5, lr=0.05, seed=3, augment="none", crop_scheme="none")
# The shared finished run's regime: decoupled weight decay stepped up at each of 3 LR cycles.
SCHEDULED_DECAY = dict(warmup_epochs=0.5, weight_decay_schedule="cycles", lr_cycles=3,
                       weight_decay_mode="decoupled", weight_decay=5e-3)
# Its model: a ResNet-8 (half the time of the default ResNet-20; `pytest -m slow` trains that
# one, test_each_lr_regime_and_optimizer_learns).
FINISHED_MODEL = dict(model="resnet8", lr=0.1)


class _Crash(Exception):
    pass


class _CrashAfterEpoch(keras.callbacks.Callback):
    """Stands for a killed process: raises once the given epoch has been saved."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Crash(f"stopped after epoch {epoch}")


class _StopEarly(keras.callbacks.Callback):
    """Ends training after the first epoch, as EarlyStopping would."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


# The tests that read the one finished run share a worker, so it is trained once.
FINISHED = pytest.mark.xdist_group("finished_run")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "quick"
    recipe = Recipe(epochs=2, output_dir=str(out), **{**QUICK, **SCHEDULED_DECAY, **FINISHED_MODEL})
    traced = []

    def note_traced_variables(next_creator, **kwargs):
        if tf.inside_function():
            traced.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(note_traced_variables):
        result = train(recipe, verbose=0)
    return recipe, result, out, traced


@FINISHED
def test_short_run_learns_far_above_chance(finished_run):
    _, result, _, _ = finished_run
    assert result.status == "completed"
    # A ResNet-8 at width 0.5 after 2 epochs of 2700 images: 0.6 (chance 0.1).
    assert result.test_accuracy > 0.45
    assert result.best_val_accuracy > 0.45
    assert result.epochs_run == 2
    assert result.train_images_per_s > 0


@FINISHED
def test_no_variable_is_created_inside_a_traced_step(finished_run):
    # A traced function that creates variables is traced a second time: the optimizer, loss
    # and metric variables are built before training, so each step function is traced once.
    assert finished_run[3] == []


@FINISHED
def test_output_files_hold_the_documented_content(finished_run):
    recipe, result, out, _ = finished_run
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.keras", "recipe.cfg", "result.json", "schedules.png",
        "tensorboard",
    ]
    saved = json.loads((out / "result.json").read_text())
    assert saved["status"] == "completed"
    assert saved["recipe"]["train_subset"] == 3000
    assert saved["epochs_run"] == 2
    assert saved["params"] == result.params
    assert saved["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert saved["wall_time_s"] > 0
    assert saved["resumed_from_epoch"] == 0

    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s",
                   "train_images_per_s"):
        assert all(float(r[column]) > 0 for r in rows), column
    assert saved["best_val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows))
    assert saved["val_accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]))
    steps_per_epoch = math.ceil(2700 / recipe.batch_size)
    lr, wd = build_schedules(recipe, steps_per_epoch)
    for epoch, row in enumerate(rows):
        end = (epoch + 1) * steps_per_epoch
        assert float(row["learning_rate"]) == pytest.approx(float(lr(end)), rel=1e-5, abs=1e-9)
        assert float(row["weight_decay"]) == pytest.approx(float(wd(end)), rel=1e-5)
    # Decoupled weight decay stepped up at each of the three LR cycles.
    assert float(rows[0]["weight_decay"]) < float(rows[1]["weight_decay"])

    assert Recipe.from_flagfile(out / "recipe.cfg") == recipe

    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.count_params() == result.params
    splits = data.load(recipe.dataset, batch_size=256, seed=recipe.seed,
                       train_subset=recipe.train_subset, validation_fraction=0.1)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    _, accuracy = model.evaluate(splits.test, verbose=0)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-6)
    assert list(out.glob(".*")) == []


@FINISHED
def test_finished_run_is_refused_then_replaced_with_overwrite(finished_run, tmp_path):
    recipe, _, out, _ = finished_run
    copy = shutil.copytree(out, tmp_path / "copy")          # the other tests read `out` whole
    recipe = dataclasses.replace(recipe, output_dir=str(copy))
    before = (copy / "result.json").stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="finished run"):
        train(recipe, verbose=0)
    assert (copy / "result.json").stat().st_mtime_ns == before
    # The replacing run is a shorter one, which another callback stops after its first epoch
    # (as EarlyStopping would): a completed run, not a divergence. What the directory holds
    # afterwards is its own.
    again = train(dataclasses.replace(recipe, epochs=3, train_subset=500, model="resnet8"),
                  overwrite=True, verbose=0, callbacks=[_StopEarly()])
    assert again.status == "completed"
    assert again.epochs_run == 1
    assert again.test_accuracy is not None
    saved = json.loads((copy / "result.json").read_text())
    assert saved["recipe"]["train_subset"] == 500
    assert saved["test_accuracy"] == pytest.approx(again.test_accuracy)
    assert [int(r["epoch"]) for r in _history(copy)] == [0]


def test_interrupted_run_resumes_from_last_finished_epoch(tmp_path):
    # Weight decay rises linearly: its logged value per epoch continues across the resume.
    recipe = Recipe(epochs=3, warmup_epochs=0.5, weight_decay_schedule="linear",
                    weight_decay=1e-4, weight_decay_end=7e-4, output_dir=str(tmp_path / "run"),
                    **{**QUICK, "train_subset": 1000, "model": "resnet8"})
    out = tmp_path / "run"
    # This run replaces an older one: what a kill of an overwrite=True run leaves is the old run
    # set aside in .replaced/, to be deleted when the run that follows finishes.
    out.mkdir()
    (out / "result.json").write_text('{"status": "completed"}\n')
    rundir.set_aside(str(out))
    with pytest.raises(_Crash):
        train(recipe, verbose=0, callbacks=[_CrashAfterEpoch(1)])
    assert (out / ".replaced" / "result.json").exists()
    assert not (out / "result.json").exists()
    assert [int(r["epoch"]) for r in _history(out)] == [0, 1]

    with pytest.raises(RunExistsError, match="changed: lr"):
        train(dataclasses.replace(recipe, lr=0.02), verbose=0)

    # A kill while the next epoch's checkpoint and history row were being written leaves a
    # truncated weights file and half a row; the run must continue from the last whole ones.
    # The previous epoch's weights are kept too (workers of a cluster may need them).
    assert sorted(os.listdir(out / "backup")) == ["epoch-1.weights.h5", "epoch-2.weights.h5",
                                                  "training_metadata.json"]
    (out / "backup" / "epoch-3.weights.h5").write_bytes(b"\x89HDF\r\n")
    with open(out / "history.csv", "a") as f:
        f.write("2,0.51,0.8")
    result = train(recipe, verbose=0)
    assert result.resumed_from_epoch == 2
    assert result.epochs_run == 3
    assert [int(r["epoch"]) for r in _history(out)] == [0, 1, 2]
    assert result.test_accuracy > 0.3         # 3 epochs of 900 images: far above chance (0.1)
    logged = [float(r["weight_decay"]) for r in _history(out)]
    np.testing.assert_allclose(logged, [3e-4, 5e-4, 7e-4], rtol=1e-4)
    assert not (out / ".replaced").exists()
    assert not (out / "backup").exists()


def test_num_classes_smaller_than_the_data_is_refused_before_writing(tmp_path):
    from tfmagic.recipe import RecipeError

    with pytest.raises(RecipeError, match="num_classes=5.*10 classes"):
        train(Recipe(num_classes=5, output_dir=str(tmp_path / "x"), **QUICK), verbose=0)
    assert not (tmp_path / "x").exists()


@FINISHED
def test_per_epoch_throughput_is_consistent_with_epoch_time(finished_run):
    _, _, out, _ = finished_run
    for row in _history(out):
        train_seconds = 2700 / float(row["train_images_per_s"])
        assert 0 < train_seconds <= float(row["epoch_time_s"]) + 1e-6
    assert np.isfinite([float(r["loss"]) for r in _history(out)]).all()


# `pytest -m slow` trains each on the default ResNet-20, the recommended regime first; the
# default run trains the finished run's scheduled decoupled weight decay on a ResNet-8
# (test_short_run_learns_far_above_chance).
@pytest.mark.parametrize("change", [
    pytest.param({}, marks=pytest.mark.slow),
    pytest.param(dict(lr_schedule="gamma"), marks=pytest.mark.slow),
    pytest.param(dict(lr_schedule="cosine"), marks=pytest.mark.slow),
    pytest.param(dict(optimizer="sgd"), marks=pytest.mark.slow),
    pytest.param(dict(optimizer="adam", lr=2e-3), marks=pytest.mark.slow),
    pytest.param(dict(optimizer="adamw", lr=2e-3, weight_decay=0.05), marks=pytest.mark.slow),
])
def test_each_lr_regime_and_optimizer_learns(change, tmp_path):
    recipe = Recipe(epochs=2, warmup_epochs=0.5, output_dir=str(tmp_path / "run"),
                    **{**QUICK, **change})
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    assert result.test_accuracy > 0.6, change
    rows = _history(tmp_path / "run")
    assert float(rows[-1]["learning_rate"]) < recipe.lr


def test_schedule_that_cannot_fit_the_steps_is_a_recipe_error(tmp_path):
    from tfmagic.recipe import RecipeError

    recipe = Recipe(epochs=1, lr_cycles=1000, output_dir=str(tmp_path / "x"), **QUICK)
    with pytest.raises(RecipeError, match="lr_schedule='cosine_power_cycles'.*cycles=1000"):
        train(recipe, verbose=0)
    assert not (tmp_path / "x").exists()


def test_every_regularizer_and_the_auxiliary_head_train_together(tmp_path):
    """AutoAugment, the random-resized crop, Cutout, mixup, CutMix and the evaluation crop with
    the auxiliary head, in one run: it learns, the head's loss is weighted into the total, and
    the saved model leaves the head out and scores what the run reported. (`pytest -m slow`
    trains each augmentation alone, `test_augment_pipeline.py`.)"""
    out = tmp_path / "every"
    every = dict(aux_loss_weight=0.4, augment="autoaugment", cutout=0.4, mixup_alpha=0.2,
                 cutmix_alpha=1.0, crop_scheme="random_resized_crop", crop_fraction=0.9,
                 se=False, warmup_epochs=0.3, model="resnet8")
    recipe = Recipe(epochs=2, output_dir=str(out), **{**QUICK, **every})
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    # Every regularizer at once slows a 2-epoch run down most: three times chance shows that
    # it learns.
    assert result.test_accuracy > 0.3
    row = _history(out)[0]
    assert float(row["accuracy"]) == float(row["logits_accuracy"])
    assert float(row["val_accuracy"]) == float(row["val_logits_accuracy"])
    total = float(row["logits_loss"]) + 0.4 * float(row["auxiliary_head_loss"])
    assert float(row["loss"]) == pytest.approx(total, rel=0.02)
    saved = keras.saving.load_model(out / "model.keras")
    assert len(saved.outputs) == 1
    assert "auxiliary_head" not in [layer.name for layer in saved.layers]
    assert saved.count_params() == result.params
    assert not saved.compiled
    saved.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    splits = data.load("fashion_mnist", batch_size=1000, train_subset=recipe.train_subset,
                       validation_fraction=recipe.validation_fraction, seed=recipe.seed,
                       crop_fraction=recipe.crop_fraction, one_hot=True)
    _, accuracy = saved.evaluate(splits.test, verbose=0)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-6)


@pytest.mark.slow
def test_keras_application_model_adapts_input_and_preprocessing(tmp_path):
    out = tmp_path / "app"
    recipe = Recipe(epochs=1, model="keras:MobileNetV2", output_dir=str(out),
                    **{**QUICK, "train_subset": 500, "validation_fraction": 0.0})
    result = train(recipe, verbose=0)
    assert result.status == "completed"
    saved = keras.saving.load_model(out / "model.keras")
    assert saved.input_shape == (None, 32, 32, 3)
    assert saved.name == "mobilenetv2"


@FINISHED
def test_tensorboard_holds_hparams_and_final_metrics(finished_run):
    recipe, result, out, _ = finished_run
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = event_accumulator.EventAccumulator(str(out / "tensorboard"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    final = events.Tensors("test_accuracy")
    assert len(final) == 1
    assert final[0].step == 2
    assert float(tf.make_ndarray(final[0].tensor_proto)) == pytest.approx(result.test_accuracy)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(recipe.lr)
    assert start.hparams["model"].string_value == recipe.model
    assert start.hparams["se"].bool_value is True
    assert "output_dir" not in start.hparams


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@FINISHED
def test_every_run_file_has_the_mode_of_an_ordinary_file(finished_run):
    _, _, out, _ = finished_run
    ordinary = 0o666 & ~_umask()
    for name in ("result.json", "recipe.cfg", "history.csv", "model.keras", "schedules.png"):
        assert os.stat(out / name).st_mode & 0o777 == ordinary, name


def _broken_fashion_mnist(directory):
    """A Fashion-MNIST directory whose training labels are cut short."""
    import gzip

    source = "/usr/share/datasets/fashion-mnist"
    os.makedirs(directory)
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), directory / name)
    os.remove(directory / "train-labels-idx1-ubyte.gz")
    with gzip.open(directory / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\xea\x60" + bytes(100))
    return directory.parent


def _stamps(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@FINISHED
def test_overwrite_keeps_the_old_run_until_the_new_one_has_finished(finished_run, tmp_path,
                                                                     monkeypatch):
    recipe, result, out, _ = finished_run
    before = _stamps(out)
    monkeypatch.setenv("TFMAGIC_DATA_DIR", str(_broken_fashion_mnist(tmp_path / "fashion-mnist")))
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
        train(recipe, overwrite=True, verbose=0)
    assert _stamps(out) == before
    monkeypatch.delenv("TFMAGIC_DATA_DIR")

    with pytest.raises(_Crash):          # fails mid-training: the old run is put back whole
        train(dataclasses.replace(recipe, train_subset=300, model="resnet8"), overwrite=True,
              verbose=0, callbacks=[_CrashAfterEpoch(0)])
    assert _stamps(out) == before
    assert not (out / ".replaced").exists()
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == pytest.approx(
        result.test_accuracy)


def test_unwritable_output_dir_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    from tfmagic.training import OutputDirError

    monkeypatch.setenv("TFMAGIC_DATA_DIR", str(_broken_fashion_mnist(tmp_path / "fashion-mnist")))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for out, words in [(a_file / "run", f"lies under {a_file}, which is a file"),
                       (a_file, "is a file, not a directory"),
                       ("/proc/tfmagic-run", "its parent /proc cannot be written to")]:
        with pytest.raises(OutputDirError, match=f"output_dir='{out}' cannot be used: .*{words}"):
            train(Recipe(output_dir=str(out), **QUICK), verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "fashion-mnist"]


def test_hand_edited_recipe_file_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.cfg").write_text("--epochs=3\n--bogus_flag=1\n")
    with pytest.raises(RunExistsError, match=f"{out / 'recipe.cfg'}.*bogus_flag"):
        train(Recipe(output_dir=str(out), **QUICK), verbose=0)
    (out / "recipe.cfg").write_text("--epochs=zero\n")
    with pytest.raises(RunExistsError, match=f"fix or remove {out / 'recipe.cfg'}"):
        train(Recipe(output_dir=str(out), **QUICK), verbose=0)


def test_a_resumed_run_sees_the_epochs_an_uninterrupted_run_sees():
    splits = data.load("fashion_mnist", batch_size=100, train_subset=500, seed=5,
                       validation_fraction=0.0)

    def labels(dataset, batches):
        return [y.numpy().tolist() for _, y in dataset.take(batches)]

    uninterrupted = [labels(splits.train, 5) for _ in range(3)]     # model.fit's three epochs
    assert uninterrupted[0] != uninterrupted[1] != uninterrupted[2]
    stream = labels(splits.train_from_epoch(0), 15)
    assert [stream[i * 5:(i + 1) * 5] for i in range(3)] == uninterrupted
    for epoch in (1, 2):                                   # what a run resumed at `epoch` sees
        resumed = labels(splits.train_from_epoch(epoch), 5 * (3 - epoch))
        assert resumed == [b for e in uninterrupted[epoch:] for b in e]
        fresh = data.load("fashion_mnist", batch_size=100, train_subset=500, seed=5,
                          validation_fraction=0.0)        # a new process: nothing drawn yet
        assert labels(fresh.train_from_epoch(epoch), 5) == uninterrupted[epoch]
        assert labels(fresh.train, 5) != uninterrupted[epoch]


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 16 MiB tmpfs, and a small image folder to train on (elsewhere)."""
    where = tmp_path_factory.mktemp("small_disk")
    why = mount_tmpfs(where, "16m")
    if why:
        pytest.skip(f"the disk-full cases need a small tmpfs, which cannot be mounted here ({why})")
    folder = tmp_path_factory.mktemp("two_classes")
    rng = np.random.default_rng(0)
    for label in range(2):
        (folder / f"c{label}").mkdir()
        for i in range(16):
            pixels = rng.integers(0, 100, (28, 28, 3), dtype=np.uint8)
            pixels[label * 14:label * 14 + 14] += 150
            Image.fromarray(pixels).save(folder / f"c{label}" / f"{i}.png")
    yield where, f"folder:{folder}"
    subprocess.run(["umount", str(where)], check=False)


class _FillDisk(keras.callbacks.Callback):
    """Fills the file system of `where` at the end of epoch `epoch`, or at the end of
    training (`epoch=None`), with the file `where/filler`, leaving `leave` bytes free."""

    def __init__(self, where, epoch=None, leave=0):
        super().__init__()
        self.where, self.epoch, self.leave = where, epoch, leave

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            _fill(self.where, self.leave)

    def on_train_end(self, logs=None):
        if self.epoch is None:
            _fill(self.where, self.leave)


def _fill(where, leave=0):
    chunk = 4096
    with open(where / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while shutil.disk_usage(where).free > leave:
            filler.write(b"\0" * chunk)


def _left(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_a_full_disk_anywhere_in_a_run_is_a_clear_error_and_the_run_resumes(small_disk):
    where, dataset = small_disk
    out = where / "run"
    recipe = Recipe(dataset=dataset, epochs=3, batch_size=8, width=0.25,
                    augment="none", crop_scheme="none", validation_fraction=0.0, se=False,
                    output_dir=str(out))
    # Full from the start: nothing is left, not even the directory.
    _fill(where)
    with pytest.raises(DiskFullError, match=r"^no space left on device: .*/run/recipe\.cfg "
                                            "could not be written; free some space"):
        train(recipe, verbose=0)
    assert _left(where) == ["filler"]
    (where / "filler").unlink()

    # Full after the first epoch was saved: the second epoch's checkpoint cannot be written.
    with pytest.raises(DiskFullError, match=r"backup/epoch-2\.weights\.h5 could not be written"):
        train(recipe, verbose=0, callbacks=[_FillDisk(where, epoch=0)])
    assert not [name for name in _left(out) if ".tmp-" in name]
    assert "backup/epoch-1.weights.h5" in _left(out)
    (where / "filler").unlink()

    # Started again with room, then full once training ends: the tidied history cannot be
    # written; the checkpoints stay. Again, with a little room left: the saved model.
    with pytest.raises(DiskFullError, match=r"run/history\.csv could not be written"):
        train(recipe, verbose=0, callbacks=[_FillDisk(where)])
    (where / "filler").unlink()
    with pytest.raises(DiskFullError, match=r"run/model\.keras could not be written"):
        train(recipe, verbose=0, callbacks=[_FillDisk(where, leave=65536)])
    assert not [name for name in _left(out) if ".tmp-" in name]
    assert "backup/epoch-3.weights.h5" in _left(out) and "model.keras" not in _left(out)
    (where / "filler").unlink()

    result = train(recipe, verbose=0)
    assert (result.status, result.resumed_from_epoch, result.epochs_run) == ("completed", 3, 3)
    assert [int(r["epoch"]) for r in _history(out)] == [0, 1, 2]
    assert _left(out) == ["history.csv", "model.keras", "recipe.cfg", "result.json",
                          "schedules.png", "tensorboard"] + [
        name for name in _left(out) if name.startswith("tensorboard/")]
