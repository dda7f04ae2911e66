"""How long deleting a tf.data iterator takes after it was read for a while.

tf.data's autotuning runs a thread per iterator that wakes to re-tune the pipeline, its wakes
further and further apart (to 60 s); deleting the iterator waits for the next wake. `fit` and
`evaluate` delete their iterators at every end, so a run pays the wait at the end of its
training and of every evaluation. Each row iterates a pipeline for a few seconds, then times
`del iterator`: a plain `range -> map(AUTOTUNE) -> prefetch(AUTOTUNE)` pipeline with
autotuning on and off, and tfmagic's Fashion-MNIST training stream (`train_from_epoch(0)`,
as `train()` reads it), as it is and with autotuning turned back on. Run it on one core, as
a checklist worker runs:

    taskset -c 1 python benchmarks/iterator_stall.py
"""

import argparse
import time

import tensorflow as tf

from tfmagic import data


def plain(autotune: bool) -> tf.data.Dataset:
    dataset = tf.data.Dataset.range(10**12).map(
        lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return dataset.with_options(options)


def autotuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = True
    return dataset.with_options(options)


def deletion_s(dataset: tf.data.Dataset, busy_s: float) -> float:
    iterator = iter(dataset)
    began = time.perf_counter()
    while time.perf_counter() - began < busy_s:
        next(iterator)
    began = time.perf_counter()
    del iterator
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--busy", type=float, nargs="+", default=[3.0, 12.0, 25.0],
                        help="seconds to read each iterator before deleting it")
    args = parser.parse_args()
    splits = data.load("fashion_mnist", batch_size=64, train_subset=20000)
    pipelines = {
        "range -> map -> prefetch, autotuning on": lambda: plain(True),
        "range -> map -> prefetch, autotuning off": lambda: plain(False),
        "tfmagic's training stream (Fashion-MNIST, batch 64)":
            lambda: splits.train_from_epoch(0),
        "the same with autotuning turned back on": lambda: autotuned(splits.train_from_epoch(0)),
    }
    print("| pipeline | " + " | ".join(f"read {s:g} s" for s in args.busy) + " |")
    print("|---|" + "---|" * len(args.busy))
    for name, make in pipelines.items():
        times = [deletion_s(make(), busy) for busy in args.busy]
        print(f"| {name} | " + " | ".join(f"{t:.2f} s" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
