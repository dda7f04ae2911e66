"""Images per second of AutoAugment's ImageNet policy in a tf.data pipeline.

The pipeline is what a training input pipeline does: an in-memory set of uint8 RGB images,
repeated, batched by 128, mapped through ``AutoAugment`` with ``num_parallel_calls=AUTOTUNE``
(using every core), prefetched; the batches are counted after a warm-up that also pays for
the XLA compilation. The images are realistic content rather than noise (smooth gradients,
shapes, texture), so the histogram operations see real histograms.

Besides images per second of wall time, it prints images per second of this process' CPU
time and how many cores were busy on average: on a machine shared with other work the
pipeline gets fewer cores than it asks for, and the per-CPU-second figure stays comparable.
``--pil`` also times a per-image Pillow implementation of the same policy on one core (the
operations torchvision's AutoAugment calls on PIL images; torchvision itself is not a
dependency), as a same-machine anchor.

    python benchmarks/augment_throughput.py                 # 32x32 and 224x224
    python benchmarks/augment_throughput.py --size 224 --batches 40 --pil
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import tensorflow as tf

from tfmagic.augment.autoaugment import IMAGENET_POLICY, AutoAugment

BATCH = 128


def make_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` uint8 RGB images: a random gradient, a few flat shapes and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-120, 120, 3) * x[..., None]
        image = base + rng.uniform(-120, 120, 3) * y[..., None]
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1, 3) * (1, 1, 0.3)
            disc = (y - cy) ** 2 + (x - cx) ** 2 < r**2
            image[disc] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def tf_throughput(images: np.ndarray, batches: int, warmup: int) -> tuple[float, float]:
    """Images per second of wall time, and per second of this process' CPU time."""
    layer = AutoAugment(seed=0)
    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .repeat()
        .batch(BATCH, drop_remainder=True)
        .map(layer, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    count = batches * BATCH
    return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


def pil_autoaugment(image, rng: random.Random):
    """torchvision's AutoAugment ImageNet policy on one PIL image (nearest, fill 0)."""
    from PIL import Image, ImageEnhance, ImageOps

    for name, probability, b in IMAGENET_POLICY[rng.randrange(len(IMAGENET_POLICY))]:
        if rng.random() >= probability:
            continue
        sign = -1.0 if rng.random() < 0.5 else 1.0
        if name == "Rotate":
            image = image.rotate(sign * 30.0 * b / 9, resample=Image.NEAREST, fillcolor=(0,) * 3)
        elif name == "ShearX":
            image = image.transform(image.size, Image.AFFINE, (1, sign * 0.3 * b / 9, 0, 0, 1, 0),
                                    resample=Image.NEAREST, fillcolor=(0,) * 3)
        elif name in ("Color", "Contrast", "Sharpness"):
            image = getattr(ImageEnhance, name)(image).enhance(1.0 + sign * 0.9 * b / 9)
        elif name == "Posterize":
            image = ImageOps.posterize(image, 8 - round(b / 2.25))
        elif name == "Solarize":
            image = ImageOps.solarize(image, 255.0 * (1 - b / 9))
        else:
            image = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize,
                     "Invert": ImageOps.invert}[name](image)
    return image


def pil_throughput(images: np.ndarray, count: int) -> tuple[float, float]:
    """Images per second of wall time, and per second of CPU time, of the Pillow loop."""
    from PIL import Image

    pils = [Image.fromarray(image) for image in images]
    rng = random.Random(0)
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        np.asarray(pil_autoaugment(pils[i % len(pils)], rng))
    return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, action="append", choices=(32, 224),
                        help="image size; repeat for several (default: 32 and 224)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of 128")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--pil", action="store_true", help="also time Pillow on one core")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.2f} before starting")
    for size in args.size or (32, 224):
        images = make_images(1024 if size == 32 else 256, size)
        runs = [tf_throughput(images, args.batches, args.warmup) for _ in range(args.repeats)]
        best, per_cpu = max(runs)
        line = (f"{size}x{size}: tfmagic {best:7.0f} images/s (runs: "
                + ", ".join(f"{wall:.0f}" for wall, _ in runs)
                + f"), {per_cpu:7.0f} per CPU-second, {best / per_cpu:.2f} cores busy")
        if args.pil:
            count = 2000 if size == 32 else 400
            pil, pil_cpu = max(pil_throughput(images, count) for _ in range(args.repeats))
            line += (f"; Pillow, one core: {pil:6.0f} images/s, {pil_cpu:6.0f} per CPU-second"
                     f" (tfmagic / Pillow per CPU-second: {per_cpu / pil_cpu:.2f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
