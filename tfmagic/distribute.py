"""`tf.distribute` strategy selection, the chief rule, precision policies and LR scaling.

``make_strategy(name)`` for the Recipe's ``strategy`` field:

- ``"auto"``: ``MirroredStrategy`` over the visible GPUs when there is more than one,
  otherwise the default strategy;
- ``"default"``: TensorFlow's default strategy (one device);
- ``"mirrored"``: ``MirroredStrategy`` over every visible GPU; without GPUs, over every
  logical CPU device (one, unless ``tf.config.set_logical_device_configuration`` made more);
- ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG``
  environment variable (one process per machine, see the README's "several machines");
- ``"tpu"``: ``TPUStrategy`` on the TPU that ``TPUClusterResolver`` finds.

``batch_size`` is always the global batch: Keras splits each batch between the replicas, and
the built-in backbones built under a strategy of several replicas use synchronized batch
normalization, so the statistics are those of the global batch and one step on N replicas
is the step on one device.
With ``lr_scaling="linear"`` the learning rate (and ``min_lr``) is multiplied by
``batch_size / REFERENCE_BATCH_SIZE`` (128, the Recipe's default batch size, for which the
default LR of 0.1 is given), Goyal et al.'s linear scaling rule.

Only the *chief* writes results: the task ``chief``, or worker 0 when the cluster has no
chief, or the only process when there is no cluster (``is_chief``).

Keras 3's ``model.fit`` and ``model.evaluate`` fail under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585); ``multi_worker_fit(model)`` is the context that makes them work,
and ``train()`` enters it for every multi-worker run.
"""

from __future__ import annotations

import contextlib
import json
import os
import types
from collections.abc import Iterator

import keras
import tensorflow as tf

from tfmagic._checks import check

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCALINGS = ("none", "linear")
REFERENCE_BATCH_SIZE = 128


class StrategyError(RuntimeError):
    """The strategy asked for cannot be made on this machine."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` called ``name`` (one of ``STRATEGIES``).

    Raises:
        ValueError: an unknown name.
        StrategyError: ``multi_worker`` without ``TF_CONFIG``, or ``tpu`` without a TPU.
    """
    check(name in STRATEGIES, "strategy", name, f"one of {STRATEGIES}")
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise StrategyError(
                "strategy=multi_worker needs the TF_CONFIG environment variable: "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}} on each machine')
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise StrategyError(f"strategy=tpu needs a TPU, and none was found: {error}") from None
    return tf.distribute.TPUStrategy(resolver)


def describe_devices(strategy: tf.distribute.Strategy) -> str:
    """One line on what a run computes on: the GPUs (by name) or the CPU cores, and the
    replicas of the strategy."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = sorted({tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
                        for gpu in gpus})
        devices = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
    else:
        devices = f"CPU only ({len(os.sched_getaffinity(0))} cores)"
    replicas = strategy.num_replicas_in_sync
    return (f"{devices}, {replicas} replica{'s' if replicas > 1 else ''} "
            f"({type(strategy).__name__})")


def task() -> tuple[str | None, int]:
    """This process's ``(task type, index)`` from ``TF_CONFIG``; ``(None, 0)`` without one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    info = config.get("task") or {}
    return info.get("type"), int(info.get("index", 0))


def is_chief() -> bool:
    """Whether this process writes the run's results (see the module docstring)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    kind, index = task()
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config.get("cluster", {})


def lr_factor(batch_size: int, scaling: str) -> float:
    """The factor applied to the recipe's LR: 1, or ``batch_size / REFERENCE_BATCH_SIZE``."""
    check(scaling in LR_SCALINGS, "lr_scaling", scaling, f"one of {LR_SCALINGS}")
    return batch_size / REFERENCE_BATCH_SIZE if scaling == "linear" else 1.0


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` synchronizes replicas across processes (``multi_worker``)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@contextlib.contextmanager
def multi_worker_fit(model: keras.Model) -> Iterator[keras.Model]:
    """Make ``model.fit`` / ``model.evaluate`` work under ``MultiWorkerMirroredStrategy``.

    Keras 3 (3.15 and earlier; keras-team/keras#20585) fails there twice:

    - before the first step it builds the model from the first batch *reduced across the
      workers*, eagerly, which TensorFlow refuses ("Attempt to convert a value
      (PerReplica...)"); inside this context the model is built from this worker's own part
      of the batch, which has the same structure;
    - after each step it reduces the scalar logs with ``axis=0`` ("Invalid reduction
      dimension 0"); inside this context they are averaged over the workers alone, as the
      one-process path does over its replicas.

    Outside a multi-worker strategy nothing changes (as here, in one process):

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> with multi_worker_fit(model):
    ...     history = model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=2, verbose=0)
    >>> len(history.history["loss"])
    2
    """
    strategy = model.distribute_strategy
    if not is_multi_worker(strategy):
        yield model
        return
    # Imported here: a Keras that moves this private module should break multi-worker runs
    # only, with the error pointing at this line.
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    keras_reduce = keras_tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if is_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0], next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    model._maybe_symbolic_build = types.MethodType(build_from_local_batch, model)
    try:
        yield model
    finally:
        keras_tf_trainer.reduce_per_replica = keras_reduce
        del model._maybe_symbolic_build


def shard_by_example(dataset: tf.data.Dataset | None,
                     strategy: tf.distribute.Strategy) -> tf.data.Dataset | None:
    """``dataset`` split between the workers of a multi-worker strategy example by example
    (each worker takes its part of every global batch); unchanged otherwise.

    TensorFlow's automatic policy first tries to give each worker its own input files, which
    tfmagic's in-memory and decoded-image pipelines do not have.
    """
    if dataset is None or not is_multi_worker(strategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def agree_on_epoch(strategy: tf.distribute.Strategy, epoch: int) -> int:
    """The smallest of the workers' ``epoch`` (every worker must call it); ``epoch`` itself
    outside a multi-worker strategy."""
    if not is_multi_worker(strategy):
        return epoch
    mine = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([epoch], tf.int64))
    return int(tf.reduce_min(strategy.gather(mine, axis=0)))
