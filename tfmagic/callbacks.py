"""Keras callbacks for any `model.fit`: kill-safe backup, schedule and throughput logs, and
a guard against divergence.

- `BackupAndRestore`: `keras.callbacks.BackupAndRestore` whose checkpoint survives a
  `kill -9` at any moment and holds the optimizer's state, so that a restarted run continues
  as the uninterrupted one would; `initial_epoch()` says, before `fit`, where it continues.
- `index_batches`: batches of example indices, each epoch in a seeded shuffled order that a
  run resumed at epoch k draws again exactly.
- `ScheduleLogger`: the optimizer's `learning_rate` and `weight_decay` in each epoch's logs.
- `ThroughputLogger`: `epoch_time_s` and `train_images_per_s` in each epoch's logs.
- `DivergenceGuard`: stops training when the loss becomes NaN or infinite, and says why.

The loggers add their values to the epoch's logs, so `keras.callbacks.CSVLogger` and
`keras.callbacks.TensorBoard` record them when they come later in the list. The backup comes
last: an epoch is then checkpointed only once its row is logged. `tfmagic.training.train`
uses these same callbacks.

Example::

    import math

    import keras
    import numpy as np
    import tensorflow as tf
    from tfmagic import callbacks

    x = np.random.default_rng(0).normal(size=(1000, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    batch_size, epochs = 50, 10

    backup = callbacks.BackupAndRestore("/tmp/run/backup")
    first = backup.initial_epoch()          # 0, or the epoch a killed run had finished
    train = callbacks.index_batches(len(x), batch_size, seed=1, first_epoch=first).map(
        lambda i: (tf.gather(x, i), tf.gather(y, i)))

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 200),
                                       momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    guard = callbacks.DivergenceGuard()
    model.fit(train, epochs=epochs, steps_per_epoch=math.ceil(len(x) / batch_size),
              callbacks=[guard, callbacks.ScheduleLogger(),
                         callbacks.ThroughputLogger(len(x)),
                         keras.callbacks.CSVLogger("/tmp/run/history.csv", append=True),
                         backup])
    if guard.diverged:
        print(guard.reason)

Killed and started again, this script continues from the last finished epoch, with the same
batches, weights and optimizer state as if it had never stopped.
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfmagic import data, distribute
from tfmagic._atomic import atomic_path, ensure_space, write_atomic
from tfmagic._checks import check, is_int

__all__ = [
    "BackupAndRestore",
    "DivergenceGuard",
    "ScheduleLogger",
    "ThroughputLogger",
    "index_batches",
]


# What an HDF5 weights file takes beyond its arrays' bytes: per array (its dataset header and
# the group around it) and per file.
_HDF5_PER_ARRAY = 2048
_HDF5_FILE = 65536


class _Config:
    """`get_config` / `from_config` in the shape Keras' serialization expects."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfmagic")
class BackupAndRestore(_Config, keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore`, saved once per epoch, that a kill at any moment
    cannot corrupt.

    Keras writes the weights and the epoch number in place, one after the other, so a kill
    while writing leaves a corrupt or mismatched checkpoint. Here the state after epoch N goes
    to its own file ``epoch-N.weights.h5`` (written atomically); only then is
    ``training_metadata.json`` replaced (atomically) to name it and the previous epoch's
    file, and older files are removed. A restart finds either the previous checkpoint or the
    new one, both whole. A checkpoint is not begun without room for it (`room_needed`): HDF5
    can take the process down when the disk fills up under it, so a full disk is the
    ``OSError`` (``ENOSPC``) of a file system instead.

    The weights file holds the model's weights and the optimizer's variables (its step count,
    momenta, a `LossScaleOptimizer`'s scale), so schedules and momenta continue where they
    were; the metadata holds the state of the model's random-number generators (`Dropout`'s,
    for instance), which Keras does not save with the weights. For the run to continue
    exactly, the data must continue too: epoch k of the restarted `fit` must get the batches
    that epoch k of the uninterrupted one got. `initial_epoch()` gives k before `fit`
    starts; `index_batches` (or `tfmagic.data.DataSplits.train_from_epoch`) gives the
    batches from epoch k on.

    Under `MultiWorkerMirroredStrategy` each worker needs a `backup_dir` of its own (for
    instance one per task of `tfmagic.distribute.task()`). A kill can come between two
    workers' saves, so on restart they may be one epoch apart: all of them resume from the
    earliest, which every worker still holds (its previous epoch is kept for this).

    Args:
        backup_dir: the directory of the checkpoint, used by this run alone.
        delete_checkpoint: remove `backup_dir` when `fit` ends (as Keras does); False keeps
            it.

    Example::

        backup = BackupAndRestore("/tmp/run/backup")
        first = backup.initial_epoch()
        model.fit(batches_from(first), epochs=10, steps_per_epoch=steps,
                  callbacks=[backup])
    """

    # Its batch hook does nothing (it saves at the end of epochs only), so the train loop
    # need not wait for it.
    async_safe = True

    def __init__(self, backup_dir: str | os.PathLike, *, delete_checkpoint: bool = True):
        check(isinstance(backup_dir, (str, os.PathLike)) and bool(os.fspath(backup_dir)),
              "backup_dir", backup_dir, "a non-empty directory path")
        super().__init__(os.fspath(backup_dir), save_freq="epoch",
                         delete_checkpoint=delete_checkpoint)
        self._agreed_epoch: int | None = None

    def get_config(self) -> dict:
        return {"backup_dir": self.backup_dir, "delete_checkpoint": self.delete_checkpoint}

    def _saved(self) -> dict[int, dict]:
        """Epoch number -> its checkpoint (``weights``, the weight file's name, and ``seeds``)
        of the checkpoints this worker holds."""
        if not os.path.exists(self._training_metadata_path):
            return {}
        with open(self._training_metadata_path) as f:
            metadata = json.load(f)
        saved = {metadata["epoch"]: {k: v for k, v in metadata.items() if k != "previous"}}
        if metadata.get("previous"):
            saved[metadata["previous"]["epoch"]] = metadata["previous"]
        return saved

    def initial_epoch(self, strategy: tf.distribute.Strategy | None = None) -> int:
        """The epoch the next `fit` continues from: 0 without a checkpoint, else the number of
        epochs the checkpoint has finished (under a multi-worker strategy, the smallest of the
        workers'). Its checkpoint is restored when `fit` begins.

        Args:
            strategy: the strategy the model was built under; by default the current one
                (`tf.distribute.get_strategy()`). Under a multi-worker strategy every worker
                must call this (it is a collective operation) or none.
        """
        if self._agreed_epoch is None:
            if strategy is None:
                strategy = tf.distribute.get_strategy()
            self._agreed_epoch = distribute.agree_on_epoch(strategy, max(self._saved(), default=0))
        return self._agreed_epoch

    def on_train_begin(self, logs=None):
        saved = self._saved()
        mine = max(saved, default=0)
        epoch = self.initial_epoch(self.model.distribute_strategy)
        self._agreed_epoch = None     # a later fit reads the checkpoint again
        if epoch == 0:
            return
        if epoch not in saved:
            raise RuntimeError(
                f"this worker's checkpoint in {self.backup_dir} is at epoch {mine} and "
                f"another worker's at epoch {epoch}, too far apart to resume together; "
                "remove every worker's backup directory to start the run again")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, saved[epoch]["weights"]))
        seeds = saved[epoch].get("seeds")
        if seeds is not None:
            generators = _seed_states(self.model)
            if len(seeds) != len(generators):
                raise RuntimeError(
                    f"the checkpoint in {self.backup_dir} holds {len(seeds)} random-number "
                    f"generator states and the model has {len(generators)}: it is not this "
                    "model's checkpoint")
            for variable, state in zip(generators, seeds, strict=True):
                variable.assign(np.asarray(state, dtype=variable.dtype))
        self.model._initial_epoch = epoch

    def room_needed(self) -> int:
        """Bytes to have free before writing a checkpoint (or a saved model) of this model:
        the largest checkpoint so far, or the variables' bytes and HDF5's overhead for each,
        with a quarter to spare."""
        done = [os.path.getsize(os.path.join(self.backup_dir, name))
                for name in (os.listdir(self.backup_dir) if os.path.isdir(self.backup_dir) else ())
                if name.startswith("epoch-") and name.endswith(".weights.h5")]
        if done:
            return max(done) * 5 // 4
        variables = [*self.model.weights,
                     *(self.model.optimizer.variables if self.model.optimizer else ())]
        payload = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize + _HDF5_PER_ARRAY
                      for v in variables)
        return (payload + _HDF5_FILE) * 5 // 4

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"epoch-{self._current_epoch}.weights.h5"
        ensure_space(os.path.join(self.backup_dir, weights), self.room_needed())
        with atomic_path(os.path.join(self.backup_dir, weights)) as partial:
            self.model.save_weights(partial, overwrite=True)
        seeds = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)]
        saved = self._saved()
        earlier = [epoch for epoch in saved if epoch < self._current_epoch]
        previous = saved[max(earlier)] if earlier else None
        write_atomic(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "weights": weights, "seeds": seeds,
             "previous": previous}))
        kept = {weights, previous and previous["weights"]}
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name not in kept:
                os.remove(os.path.join(self.backup_dir, name))


def _seed_states(model: keras.Model) -> list:
    """The state variables of the model's random-number generators (`Dropout`'s, for
    instance): the model's variables that are not among the weights Keras saves."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def index_batches(size: int, batch_size: int, *, seed: int,
                  first_epoch: int = 0) -> tf.data.Dataset:
    """Batches of example indices, epoch after epoch from `first_epoch` on, each epoch a
    seeded shuffle of ``range(size)`` (its last batch smaller when `batch_size` does not
    divide `size`).

    Epoch k has the same order in a stream started at epoch 0 and in one started at epoch k,
    in any process (with the same global seed, `keras.utils.set_random_seed`, or none): a
    run resumed at epoch k (`BackupAndRestore.initial_epoch`) sees the batches that the
    uninterrupted run saw. The stream is endless: pass
    ``steps_per_epoch=math.ceil(size / batch_size)`` to `fit`. It is the order
    `tfmagic.data` gives its training split.

    Args:
        size: the number of examples.
        batch_size: the examples in a batch.
        seed: the seed of the shuffles.
        first_epoch: the epoch the stream starts with.

    Returns:
        A `tf.data.Dataset` of int64 vectors; map them to your examples, e.g.
        ``.map(lambda i: (tf.gather(x, i), tf.gather(y, i)))``.

    >>> stream = index_batches(6, 4, seed=0)
    >>> two_epochs = [batch.numpy().tolist() for batch in stream.take(4)]
    >>> resumed = index_batches(6, 4, seed=0, first_epoch=1)
    >>> [batch.numpy().tolist() for batch in resumed.take(2)] == two_epochs[2:]
    True
    >>> [len(batch) for batch in two_epochs], sorted(sum(two_epochs[:2], []))
    ([4, 2, 4, 2], [0, 1, 2, 3, 4, 5])
    """
    for name, value in (("size", size), ("batch_size", batch_size)):
        check(is_int(value) and value > 0, name, value, "a positive integer")
    check(is_int(seed), "seed", seed, "an integer")
    check(is_int(first_epoch) and first_epoch >= 0, "first_epoch", first_epoch,
          "an integer >= 0")
    batches = data.index_batch_stream(size, batch_size, seed, train=True)
    return batches(first_epoch).map(
        tf.autograph.experimental.do_not_convert(lambda number, positions, indices: indices))


@keras.saving.register_keras_serializable(package="tfmagic")
class ScheduleLogger(_Config, keras.callbacks.Callback):
    """Adds `learning_rate` and `weight_decay` to each epoch's logs: the optimizer's values
    at the end of the epoch (its schedules evaluated at its step count).

    They are read from the optimizer itself (under mixed precision, from the optimizer that
    `LossScaleOptimizer` wraps), so they are the values the train step uses. The weight decay
    is a tfmagic optimizer's `current_weight_decay()`, scheduled or constant; for any other
    optimizer its constant `weight_decay` (0 without one).

    Example::

        model.fit(train, epochs=10, callbacks=[
            ScheduleLogger(), keras.callbacks.CSVLogger("history.csv")])
    """

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if hasattr(optimizer, "current_weight_decay"):
            weight_decay = optimizer.current_weight_decay()
        else:
            weight_decay = optimizer.weight_decay or 0.0
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        logs["weight_decay"] = float(keras.ops.convert_to_numpy(weight_decay))


@keras.saving.register_keras_serializable(package="tfmagic")
class ThroughputLogger(_Config, keras.callbacks.Callback):
    """Adds `epoch_time_s` and `train_images_per_s` to each epoch's logs.

    `epoch_time_s` is the epoch's wall time, validation included; `train_images_per_s` the
    training images of an epoch over its training time, which ends where validation begins.
    Only epoch and test hooks are used, so the compiled train loop runs undisturbed.

    Args:
        images_per_epoch: the training images of an epoch (e.g. ``len(x)``).
        batch_size: instead of `images_per_epoch`, the batch size: an epoch is then
            ``batch_size`` times the steps that `fit` announces (``steps_per_epoch``, or the
            batches of a dataset of known length), a partial last batch counted whole.

    Exactly one of the two is given.

    Example::

        model.fit(x, y, batch_size=64, epochs=5,
                  callbacks=[ThroughputLogger(len(x))])   # or ThroughputLogger(batch_size=64)
    """

    def __init__(self, images_per_epoch: int | None = None, *, batch_size: int | None = None):
        super().__init__()
        for name, value in (("images_per_epoch", images_per_epoch), ("batch_size", batch_size)):
            check(value is None or (is_int(value) and value > 0), name, value,
                  "a positive integer, or None")
        check((images_per_epoch is None) != (batch_size is None), "batch_size", batch_size,
              f"exactly one of images_per_epoch (here {images_per_epoch!r}) and batch_size "
              "is given")
        self.images_per_epoch = images_per_epoch
        self.batch_size = batch_size
        self._images = images_per_epoch
        self._start = None
        self._train_end = None

    def get_config(self) -> dict:
        return {"images_per_epoch": self.images_per_epoch, "batch_size": self.batch_size}

    def on_train_begin(self, logs=None):
        if self.batch_size is not None:
            steps = self.params.get("steps")
            check(steps is not None, "images_per_epoch", None,
                  "the number of training images per epoch, when fit does not know its steps "
                  "per epoch (pass steps_per_epoch to fit, or images_per_epoch here)")
            self._images = self.batch_size * steps

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_time = (self._train_end or now) - self._start
        logs["epoch_time_s"] = now - self._start
        logs["train_images_per_s"] = self._images / train_time


@keras.saving.register_keras_serializable(package="tfmagic")
class DivergenceGuard(_Config, keras.callbacks.TerminateOnNaN):
    """`keras.callbacks.TerminateOnNaN` that records why training stopped.

    When the training loss becomes NaN or infinite, training stops (`model.stop_training`)
    and the guard records the first such loss: `diverged` is True, `epoch` and `batch` say
    where (0-based, as in Keras' logs), `loss` is the value and `reason` a sentence. When
    training ends otherwise they stay False and None: a stop asked for by another callback
    (`EarlyStopping`, say) is not a divergence. Each `fit` starts afresh.

    Its batch check runs on Keras' callback thread (`async_safe`), so the train loop does not
    wait for each step's loss; training stops at most a few steps after the first non-finite
    loss.

    Example::

        guard = DivergenceGuard()
        model.fit(train, epochs=10, callbacks=[guard])
        if guard.diverged:
            print(guard.reason)   # the training loss became nan at batch 17 of epoch 3
    """

    async_safe = True

    def __init__(self):
        super().__init__()
        self._reset()

    def _reset(self):
        self.epoch: int | None = None
        self.batch: int | None = None
        self.loss: float | None = None
        self._current_epoch = 0

    @property
    def diverged(self) -> bool:
        """Whether training stopped because the loss was no longer finite."""
        return self.loss is not None

    @property
    def reason(self) -> str | None:
        """Why training stopped early, in a sentence; None when it did not diverge."""
        if not self.diverged:
            return None
        return (f"the training loss became {self.loss} at batch {self.batch} of epoch "
                f"{self.epoch} (counted from 0)")

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and not self.diverged:
            self.epoch, self.batch, self.loss = self._current_epoch, batch, float(loss)
        super().on_batch_end(batch, logs)
