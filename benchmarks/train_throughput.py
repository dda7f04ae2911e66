"""Training images/s of `tfmagic.training.train` against a plain `model.fit`.

Both sides train the same backbone (same architecture, batch and optimizer) on the same
Fashion-MNIST images; the plain side uses a hand-written tf.data pipeline and no callbacks
but an epoch timer. A speed sample is one epoch's training images divided by its wall time;
the first epoch of each run (tracing) is left out. The sides alternate `--rounds` times in
one process and the medians of all their samples are compared, so machine noise hits both
alike. The best epochs are compared too: on a machine whose noise only ever slows a run
down, the fastest epoch is the least disturbed estimate of a side's speed.

    python benchmarks/train_throughput.py            # prints a table and the ratio
    python benchmarks/train_throughput.py --images=20000 --epochs=4 --rounds=3

Target: ratio train()/plain >= 0.95.
"""

import argparse
import csv
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfmagic import data, models
from tfmagic.recipe import Recipe
from tfmagic.training import train

MODEL, WIDTH, BATCH, LR = "resnet20", 0.5, 128, 0.05


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch (epoch hooks only: the train loop is not slowed)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def plain_fit(images: int, epochs: int, seed: int) -> list[float]:
    """Images/s per epoch of model.fit on a hand-written pipeline, epochs after the first."""
    (x, y), _ = data.fashion_mnist()
    pick = np.random.default_rng(seed).permutation(len(y))[:images]
    x, y = x[pick], y[pick]
    mean, std = float(x.mean()), float(x.std())
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .cache()
        .shuffle(len(y), seed=seed)
        .batch(BATCH)
        .map(lambda a, b: ((tf.cast(a, tf.float32) - mean) / std, b),
             num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    keras.utils.set_random_seed(seed)
    model = models.build_model(MODEL, (28, 28, 1), 10, width=WIDTH)
    model.compile(
        optimizer=keras.optimizers.SGD(LR, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timer])
    return [images / seconds for seconds in timer.seconds[1:]]


def tfmagic_train(images: int, epochs: int, seed: int) -> list[float]:
    """Images/s per epoch that train() logs in history.csv, epochs after the first."""
    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(
            train_subset=images, validation_fraction=0.0, model=MODEL, width=WIDTH,
            batch_size=BATCH, epochs=epochs, lr=LR, seed=seed, output_dir=out,
        )
        train(recipe, verbose=0)
        with open(f"{out}/history.csv", newline="") as f:
            return [float(row["train_images_per_s"]) for row in csv.DictReader(f)][1:]


def _fmt(speeds: list[float]) -> str:
    return " ".join(f"{s:.0f}" for s in speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    plain, ours = [], []
    for round_ in range(args.rounds):
        plain += plain_fit(args.images, args.epochs, round_)
        ours += tfmagic_train(args.images, args.epochs, round_)
        recent = args.epochs - 1
        print(f"round {round_}: plain {_fmt(plain[-recent:])}, train() {_fmt(ours[-recent:])} "
              "images/s", flush=True)
    p, o = statistics.median(plain), statistics.median(ours)
    best_p, best_o = max(plain), max(ours)
    print(f"{MODEL} width {WIDTH}, batch {BATCH}, {args.images} images, {args.epochs} epochs, "
          f"{args.rounds} rounds, {len(plain)} samples a side")
    print(f"median plain model.fit: {p:.0f} images/s; median train(): {o:.0f} images/s; "
          f"ratio train()/plain = {o / p:.3f} (target >= 0.95)")
    print(f"best epoch plain model.fit: {best_p:.0f} images/s; best epoch train(): "
          f"{best_o:.0f} images/s; ratio {best_o / best_p:.3f}")


if __name__ == "__main__":
    main()
