"""Parameters, FLOPs and training step time of the built-in backbones and their variants.

For each backbone (32x32x3 inputs, 10 classes, width 1): the model without squeeze-excite
(`se=False`) with each downscale activation (leaky_relu, relu, swish), and the model with its
own squeeze-excite blocks (`se=True`, the default) and LeakyReLU downscaling. FLOPs are
TensorFlow's profiler count of floating-point operations of one forward pass of one image (a
multiply-add counts 2). Step time is `train_on_batch` with SGD on a random batch; the variants
take turns, one timed block of steps each, `--rounds` times, and the median and best block are
reported, so that the machine's noise falls on all alike.

    python benchmarks/architecture_cost.py
    python benchmarks/architecture_cost.py --models resnet20 --rounds 8
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfmagic.models import DOWNSCALE_ACTIVATIONS, MODEL_NAMES, build_model

SHAPE, CLASSES = (32, 32, 3), 10


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass of one image (profiler count)."""
    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((1, *SHAPE), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def variants(name: str) -> dict[str, keras.Model]:
    out = {}
    for activation in DOWNSCALE_ACTIVATIONS:
        out[activation] = build_model(name, SHAPE, CLASSES, downscale_activation=activation,
                                      se=False)
    out["leaky_relu + SE"] = build_model(name, SHAPE, CLASSES, downscale_activation="leaky_relu",
                                         se=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, *SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, size=args.batch)
    rows = []
    for name in args.models:
        models = variants(name)
        seconds = {key: [] for key in models}
        for model in models.values():
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            for _ in range(3):
                model.train_on_batch(x, y)
        keys = list(models)
        for round_ in range(args.rounds):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                start = time.perf_counter()
                for _ in range(args.steps):
                    models[key].train_on_batch(x, y)
                seconds[key].append((time.perf_counter() - start) / args.steps)
        for key, model in models.items():
            rows.append((name, key, model.count_params(), forward_flops(model),
                         statistics.median(seconds[key]), min(seconds[key])))
        print(f"{name} done", flush=True)

    print(f"\n{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} inputs, {CLASSES} classes, batch {args.batch}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'model':<16} {'variant':<16} {'params':>10} {'MFLOPs/img':>11} "
          f"{'ms/step (median)':>17} {'ms/step (best)':>15}")
    for name, key, params, flops, median, best in rows:
        print(f"{name:<16} {key:<16} {params:>10,} {flops / 1e6:>11.1f} "
              f"{median * 1e3:>17.1f} {best * 1e3:>15.1f}")


if __name__ == "__main__":
    main()
