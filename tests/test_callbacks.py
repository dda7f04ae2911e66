"""tfmagic.callbacks in a plain model.fit of a user's own model: kill -9 and resume, the
schedule log (also under mixed precision), the divergence guard, the throughput log, configs."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmagic.callbacks import (
    BackupAndRestore,
    DivergenceGuard,
    ScheduleLogger,
    ThroughputLogger,
    index_batches,
)
from tfmagic.optimizers import SGD
from tfmagic.schedules import CosinePowerAnnealing, RegularizationSchedule

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
       "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}

# A user's script: their own Sequential model (with dropout), shuffled data, plain model.fit.
# Arguments: the run's folder, the epochs, and an epoch in which to pause at its third step
# (-1: none) until killed.
USER_SCRIPT = """
import json, math, os, sys, time
import keras
import numpy as np
import tensorflow as tf
from tfmagic import callbacks

out, epochs, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int32")
batch_size = 32
steps = math.ceil(len(x) / batch_size)

backup = callbacks.BackupAndRestore(os.path.join(out, "backup"))
first = backup.initial_epoch()
train = callbacks.index_batches(len(x), batch_size, seed=7, first_epoch=first).map(
    lambda i: (tf.gather(x, i), tf.gather(y, i)))
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dropout(0.3), keras.layers.Dense(2)])
model.compile(optimizer=keras.optimizers.Adam(
                  keras.optimizers.schedules.CosineDecay(0.02, epochs * steps)),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

class PauseMidEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == pause and batch == 2:
            open(os.path.join(out, "paused"), "w").close()
            time.sleep(600)

model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[
    PauseMidEpoch(), callbacks.DivergenceGuard(), callbacks.ScheduleLogger(),
    callbacks.ThroughputLogger(len(x)),
    keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True), backup])
np.savez(os.path.join(out, "final.npz"), *model.get_weights(),
         *[v.numpy() for v in model.optimizer.variables])
print(json.dumps({"first": first}))
"""


def _start(out, epochs, pause=-1):
    os.makedirs(out, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", USER_SCRIPT, str(out), str(epochs),
                             str(pause)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _finish(process):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_killed_user_fit_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    epochs = 4
    uninterrupted = _start(tmp_path / "whole", epochs)
    killed = _start(tmp_path / "killed", epochs, pause=2)
    paused = tmp_path / "killed" / "paused"
    try:
        deadline = time.monotonic() + 240
        while not paused.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused.exists(), killed.stderr.read()[-3000:] if killed.poll() else "no pause"
    finally:
        killed.send_signal(signal.SIGKILL)    # kill -9 in epoch 2, the first two checkpointed
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    backup = tmp_path / "killed" / "backup"
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert (metadata["epoch"], metadata["previous"]["epoch"]) == (2, 1)
    assert sorted(os.listdir(backup)) == ["epoch-1.weights.h5", "epoch-2.weights.h5",
                                          "training_metadata.json"]
    assert len(metadata["seeds"]) == 1            # the dropout's random-number generator

    assert _finish(_start(tmp_path / "killed", epochs)) == {"first": 2}
    assert _finish(uninterrupted) == {"first": 0}
    whole = np.load(tmp_path / "whole" / "final.npz")
    resumed = np.load(tmp_path / "killed" / "final.npz")
    assert len(whole.files) == len(resumed.files) > 4    # weights, then optimizer variables
    for name in whole.files:
        np.testing.assert_allclose(resumed[name], whole[name], rtol=1e-7, atol=0)
    assert not backup.exists()                    # delete_checkpoint=True, as Keras'
    rows = _history(tmp_path / "killed" / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    for row, whole_row in zip(rows, _history(tmp_path / "whole" / "history.csv"), strict=True):
        assert float(row["loss"]) == pytest.approx(float(whole_row["loss"]), rel=1e-6)
        assert float(row["learning_rate"]) == float(whole_row["learning_rate"])


@pytest.fixture
def policy(request):
    """Keras' global precision policy set to the test's parameter, for the test."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_the_weights_file_holds_the_optimizer_state_and_restores_it(tmp_path, policy):
    x = np.random.default_rng(1).normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def compiled(seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    trained = compiled(0)
    assert isinstance(trained.optimizer, keras.optimizers.LossScaleOptimizer)
    trained.fit(x, y, batch_size=16, epochs=2, verbose=0,
                callbacks=[BackupAndRestore(tmp_path, delete_checkpoint=False)])
    names = [v.path for v in trained.optimizer.variables]
    assert any("dynamic_scale" in n for n in names) and any("iteration" in n for n in names)
    assert int(trained.optimizer.iterations) == 8
    other = compiled(1)
    backup = BackupAndRestore(tmp_path, delete_checkpoint=False)
    assert backup.initial_epoch() == 2
    other.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[backup])   # restores only
    for mine, theirs in zip(other.optimizer.variables, trained.optimizer.variables,
                            strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    for mine, theirs in zip(other.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def _fit_logged(tmp_path, optimizer, epochs=3, size=100, batch_size=20):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(size, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[
        ScheduleLogger(), keras.callbacks.CSVLogger(str(tmp_path / "history.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb"), write_graph=False, profile_batch=0)])
    return model, history.history


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
def test_schedule_logger_logs_the_schedules_at_each_epochs_last_step(tmp_path, policy):
    steps_per_epoch = 5                                              # 100 examples, batch 20
    lr = CosinePowerAnnealing(0.1, total_steps=15, power=2.0, warmup_steps=3)
    wd = RegularizationSchedule(1e-4, "linear", end=7e-4, total_steps=15)
    model, logs = _fit_logged(tmp_path, SGD(lr, momentum=0.9, weight_decay_schedule=wd))
    wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (policy == "mixed_float16")
    steps = [(epoch + 1) * steps_per_epoch for epoch in range(3)]
    np.testing.assert_allclose(logs["learning_rate"], [float(lr(s)) for s in steps], rtol=1e-6)
    np.testing.assert_allclose(logs["weight_decay"], [float(wd(s)) for s in steps], rtol=1e-6)
    assert len(set(logs["learning_rate"])) == 3 and len(set(logs["weight_decay"])) == 3
    rows = _history(tmp_path / "history.csv")
    np.testing.assert_allclose([float(r["weight_decay"]) for r in rows], logs["weight_decay"],
                               rtol=1e-6)
    logged = {}
    for path in (tmp_path / "tb" / "train").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag in ("epoch_learning_rate", "epoch_weight_decay"):
                    logged[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    np.testing.assert_allclose([logged["epoch_weight_decay", e] for e in range(3)],
                               logs["weight_decay"], rtol=1e-6)
    np.testing.assert_allclose([logged["epoch_learning_rate", e] for e in range(3)],
                               logs["learning_rate"], rtol=1e-6)


def test_schedule_logger_with_keras_optimizers_logs_their_constant_decay(tmp_path):
    _, logs = _fit_logged(tmp_path, keras.optimizers.AdamW(2e-3, weight_decay=0.004), epochs=1)
    assert (logs["learning_rate"], logs["weight_decay"]) == ([pytest.approx(2e-3)],
                                                             [pytest.approx(0.004)])
    _, logs = _fit_logged(tmp_path, keras.optimizers.SGD(0.05), epochs=1)
    assert (logs["learning_rate"], logs["weight_decay"]) == ([pytest.approx(0.05)], [0.0])


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _regression(learning_rate, callbacks_, epochs=3):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True) * 10
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks_).history


def test_divergence_guard_stops_and_says_where_the_loss_stopped_being_finite():
    guard = DivergenceGuard()
    history = _regression(1e30, [guard])
    # Batch 0's loss is that of the initial weights; the first update throws them to ~1e30.
    assert guard.diverged
    assert (guard.epoch, guard.batch) == (0, 1)
    assert not math.isfinite(guard.loss)
    assert guard.reason == f"the training loss became {guard.loss} at batch 1 of epoch 0 " \
                           "(counted from 0)"
    assert len(history["loss"]) == 1

    history = _regression(1e-3, [guard, _StopAfterFirstEpoch()])     # the same guard, afresh
    assert len(history["loss"]) == 1
    assert not guard.diverged
    assert (guard.reason, guard.epoch, guard.batch, guard.loss) == (None, None, None, None)


def test_throughput_logger_adds_the_epoch_time_and_training_speed():
    x = np.random.default_rng(0).normal(size=(110, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def fit(logger, **kwargs):
        return model.fit(x, y, batch_size=25, epochs=2, verbose=0, callbacks=[logger],
                         **kwargs).history

    logs = fit(ThroughputLogger(110), validation_data=(x[:50], y[:50]))
    for epoch in range(2):
        train_seconds = 110 / logs["train_images_per_s"][epoch]
        assert 0 < train_seconds < logs["epoch_time_s"][epoch] < 30
    # Without validation the training time is the epoch's; from batch_size, the 5 steps of
    # 25 count 125 images (the partial last batch counted whole).
    for logger, images in ((ThroughputLogger(110), 110), (ThroughputLogger(batch_size=25), 125)):
        logs = fit(logger)
        np.testing.assert_allclose(
            np.multiply(logs["train_images_per_s"], logs["epoch_time_s"]), [images] * 2,
            rtol=1e-9)

    unknown_length = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True)
    with pytest.raises(ValueError, match="images_per_epoch=None is not allowed"):
        model.fit(unknown_length.batch(25), epochs=1, verbose=0, shuffle=False,
                  callbacks=[ThroughputLogger(batch_size=25)])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_size=None is not allowed: exactly one of"):
        ThroughputLogger()
    with pytest.raises(ValueError, match="batch_size=32 is not allowed: exactly one of"):
        ThroughputLogger(100, batch_size=32)
    with pytest.raises(ValueError, match="images_per_epoch=0 is not allowed"):
        ThroughputLogger(0)
    with pytest.raises(ValueError, match="backup_dir='' is not allowed"):
        BackupAndRestore("")
    with pytest.raises(ValueError, match="batch_size=0 is not allowed"):
        index_batches(10, 0, seed=0)
    with pytest.raises(ValueError, match="first_epoch=-1 is not allowed"):
        index_batches(10, 2, seed=0, first_epoch=-1)


@pytest.mark.parametrize("callback", [
    BackupAndRestore("/tmp/some/backup", delete_checkpoint=False),
    DivergenceGuard(),
    ScheduleLogger(),
    ThroughputLogger(5000),
    ThroughputLogger(batch_size=64),
], ids=lambda callback: type(callback).__name__)
def test_get_config_round_trips(callback):
    config = callback.get_config()
    assert json.loads(json.dumps(config)) == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(again) is type(callback)
    assert again.get_config() == config


def test_index_batches_resume_the_epochs_of_an_uninterrupted_stream():
    keras.utils.set_random_seed(3)
    epochs = [[b.tolist() for b in index_batches(10, 4, seed=5).take(9).as_numpy_iterator()]]
    orders = [sum(epochs[0][i * 3:(i + 1) * 3], []) for i in range(3)]
    assert [sorted(order) for order in orders] == [list(range(10))] * 3
    assert orders[0] != orders[1] != orders[2]
    for first in (1, 2):
        resumed = [b.tolist() for b in
                   index_batches(10, 4, seed=5, first_epoch=first).take(3).as_numpy_iterator()]
        assert resumed == epochs[0][first * 3:(first + 1) * 3]
