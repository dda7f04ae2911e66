"""Training images/s of `train()` under each distribution and speed setting, on this machine.

Variants (all ResNet-20 x0.5, batch 128, the same Fashion-MNIST images, augmentation off so
that the input pipeline does not decide the speed):

    default      strategy=default, the baseline
    mirrored     strategy=mirrored: MirroredStrategy over the one visible device (its cost
                 without any gain)
    jit          jit_compile=True (XLA)
    spe8         steps_per_execution=8
    bf16         precision=mixed_bfloat16

A speed sample is one epoch's `train_images_per_s` from history.csv; the first epoch of each
run (tracing) is left out. The variants take turns `--rounds` times in one process, and the
median and best samples of each are reported as a ratio to `default`.

    python benchmarks/strategy_overhead.py
    python benchmarks/strategy_overhead.py --images=10000 --epochs=3 --rounds=2
"""

import argparse
import csv
import statistics
import tempfile

from tfmagic.recipe import Recipe
from tfmagic.training import train

VARIANTS = {
    "default": {"strategy": "default"},
    "mirrored": {"strategy": "mirrored"},
    "jit": {"jit_compile": True},
    "spe8": {"steps_per_execution": 8},
    "bf16": {"precision": "mixed_bfloat16"},
}


def speeds(change: dict, images: int, epochs: int, seed: int) -> list[float]:
    """Images/s of the epochs after the first, as train() logs them."""
    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(train_subset=images, validation_fraction=0.0, width=0.5, batch_size=128,
                        epochs=epochs, lr=0.05, augment="none", crop_scheme="none", seed=seed,
                        output_dir=out, **change)
        train(recipe, verbose=0)
        with open(f"{out}/history.csv", newline="") as f:
            return [float(row["train_images_per_s"]) for row in csv.DictReader(f)][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    samples = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, change in VARIANTS.items():
            samples[name] += speeds(change, args.images, args.epochs, round_)
            print(f"round {round_} {name}: "
                  + " ".join(f"{s:.0f}" for s in samples[name][-(args.epochs - 1):]),
                  flush=True)
    base_median = statistics.median(samples["default"])
    base_best = max(samples["default"])
    print(f"{args.images} images, {args.epochs} epochs, {args.rounds} rounds")
    print(f"{'variant':<10}{'median img/s':>14}{'ratio':>8}{'best img/s':>12}{'ratio':>8}")
    for name, values in samples.items():
        median, best = statistics.median(values), max(values)
        print(f"{name:<10}{median:>14.0f}{median / base_median:>8.3f}{best:>12.0f}"
              f"{best / base_best:>8.3f}")


if __name__ == "__main__":
    main()
