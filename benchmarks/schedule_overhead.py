"""Step time of model.fit with tfmagic's schedules against a constant LR and fixed decay.

Three copies of the same backbone train on the same Fashion-MNIST images:

- keras: `keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)`, a
  constant learning rate and Keras' own fixed (decoupled) weight decay;
- fixed: tfmagic's SGD with a constant learning rate and a constant L2 decay of 5e-4;
- scheduled: `tfmagic.optimizers.build_optimizer("sgd_nesterov", ...)` with
  `CosinePowerAnnealing` (3 cycles, warm-up) and a `RegularizationSchedule` that follows the
  LR (L2 mode): both evaluated from the step inside the compiled train step.

They take turns epoch by epoch in one process (`--rounds` times, the order rotating), so
that the machine's noise falls on all alike; the ratios of the median (and of the best)
epoch times of "scheduled" to the other two are the overhead.

    python benchmarks/schedule_overhead.py                 # target: ratio <= 1.02
"""

import argparse
import statistics
import time

import keras
import numpy as np

from tfmagic import data, models
from tfmagic.optimizers import build_optimizer
from tfmagic.schedules import CosinePowerAnnealing, RegularizationSchedule

MODEL, WIDTH, BATCH = "resnet20", 0.5, 128


def compiled_model(optimizer) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = models.build_model(MODEL, (28, 28, 1), 10, width=WIDTH)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    splits = data.load("fashion_mnist", batch_size=BATCH, train_subset=args.images,
                       validation_fraction=0.0)
    steps_per_epoch = int(np.ceil(splits.train_size / BATCH))
    total = steps_per_epoch * (args.rounds + 1)
    lr = CosinePowerAnnealing(0.1, total, power=2.0, cycles=3, cycle_decay=0.5,
                              warmup_steps=steps_per_epoch)
    wd = RegularizationSchedule(5e-4, "lr", lr_schedule=lr)
    models_by_name = {
        "keras": compiled_model(
            keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        ),
        "fixed": compiled_model(
            build_optimizer("sgd_nesterov", 0.1, momentum=0.9, weight_decay=5e-4)
        ),
        "scheduled": compiled_model(
            build_optimizer("sgd_nesterov", lr, momentum=0.9, weight_decay_schedule=wd)
        ),
    }
    for model in models_by_name.values():
        model.fit(splits.train, epochs=1, verbose=0)
    seconds = {name: [] for name in models_by_name}
    names = list(models_by_name)
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            models_by_name[name].fit(splits.train, epochs=1, verbose=0)
            seconds[name].append((time.perf_counter() - start) / steps_per_epoch)
    print(f"{MODEL} width {WIDTH}, batch {BATCH}, {splits.train_size} images, "
          f"{steps_per_epoch} steps an epoch, {args.rounds} epochs each, taking turns")
    for name, values in seconds.items():
        print(f"{name:>9}: median {statistics.median(values) * 1e3:.1f} ms/step, "
              f"min {min(values) * 1e3:.1f} ms/step")
    ours = seconds["scheduled"]
    for name in ("keras", "fixed"):
        print(f"ratio scheduled/{name}: median "
              f"{statistics.median(ours) / statistics.median(seconds[name]):.3f}, "
              f"min {min(ours) / min(seconds[name]):.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
