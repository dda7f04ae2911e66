"""What computing strided 1x1 convolutions as `SubsampledConv2D` costs (or saves).

tfmagic replaces every strided 1x1 `Conv2D` by `SubsampledConv2D` (subsample, then a stride-1
1x1 convolution) because TensorFlow's oneDNN kernel for the strided one aborts the process on
odd batches on some CPUs (BUILD_NOTES.md, "Odd batches"). This measures the training step
time of both forms of the same network with the same weights: ResNet-20 (32x32x3, batch 128;
its two projection shortcuts) and keras.applications' ResNet50 (64x64x3, batch 32; six
strided 1x1 convolutions). The two forms take turns, one timed block of `train_on_batch`
steps each, `--rounds` times; the median and best block are reported.

    python benchmarks/odd_batches.py
    python benchmarks/odd_batches.py --rounds 10 --steps 5
"""

import argparse
import statistics
import time

import keras
import numpy as np

from tfmagic.layers import SubsampledConv2D
from tfmagic.models import build_model, subsample_strided_pointwise


def strided_form(model: keras.Model) -> keras.Model:
    """The same network with every SubsampledConv2D back as a plain strided Conv2D."""

    def clone(layer):
        if isinstance(layer, SubsampledConv2D):
            return keras.layers.Conv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    plain.set_weights(model.get_weights())
    return plain


def pairs() -> dict[str, tuple[keras.Model, keras.Model, tuple[int, ...], int]]:
    resnet20 = build_model("resnet20", (32, 32, 3), 10)
    original = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                           input_shape=(64, 64, 3))
    subsampled, _ = subsample_strided_pointwise(original)
    return {
        "resnet20": (strided_form(resnet20), resnet20, (32, 32, 3), 128),
        "keras ResNet50": (original, subsampled, (64, 64, 3), 32),
    }


def step_times(models: list[keras.Model], shape, batch: int, rounds: int,
               steps: int) -> list[list[float]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    targets = [rng.normal(size=(batch, *model.output_shape[1:])).astype("float32")
               for model in models]
    for model, y in zip(models, targets, strict=True):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.train_on_batch(x, y)
    times = [[] for _ in models]
    for _ in range(rounds):
        for i, (model, y) in enumerate(zip(models, targets, strict=True)):
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[i].append((time.perf_counter() - start) / steps * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"{'network':16} {'form':18} {'ms/step (median)':>17} {'ms/step (best)':>15}")
    for name, (strided, subsampled, shape, batch) in pairs().items():
        times = step_times([strided, subsampled], shape, batch, args.rounds, args.steps)
        for form, samples in zip(("strided Conv2D", "SubsampledConv2D"), times, strict=True):
            print(f"{name:16} {form:18} {statistics.median(samples):17.1f} {min(samples):15.1f}")
        ratio_median = statistics.median(times[1]) / statistics.median(times[0])
        ratio_best = min(times[1]) / min(times[0])
        print(f"{name:16} {'ratio subsampled/strided':35} median {ratio_median:.3f}, "
              f"best {ratio_best:.3f}")


if __name__ == "__main__":
    main()
