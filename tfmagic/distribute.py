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
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

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
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not allowed: one of {STRATEGIES}")
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
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr_scaling={scaling!r} is not allowed: one of {LR_SCALINGS}")
    return batch_size / REFERENCE_BATCH_SIZE if scaling == "linear" else 1.0
