"""Images per second of streamed image-folder input pipelines, to 224x224 training batches.

The data is a folder of JPEG photo crops at ImageNet-like sizes (shorter side 300 to 500
pixels, about 50 KB each, one sub-folder per class), which the script writes, seeded, from
the two photos scikit-learn ships. Every pipeline runs in a fresh subprocess of its own (so
TensorFlow's threads and the forked workers of torch's DataLoader never share a process),
iterates a warm-up pass untimed (tracing, XLA compilation, worker start-up), then times
whole passes over the folder; the table gives the median of the timed passes, and each of
them. The rows:

* decode only, the floor: tf.data ``read_file`` + ``decode_jpeg`` (parallel map, AUTOTUNE,
  no resize), and Pillow ``Image.open(...).convert("RGB")`` in a pool of ``--workers``
  processes (the decode that torchvision's ``ImageFolder`` does);
* tfmagic: ``data.load("folder:DIR", cache="none", crop_scale=(0.08, 1), image_size=224)``
  (a random-resized crop cut from the file, and a flip), iterating ``splits.train``, without
  and with AutoAugment's ImageNet policy from ``build_train_augment``, as ``training.py``
  builds them (its training split is 5/6 of the folder: the rest is the test hold-out);
* torchvision: ``ImageFolder`` + ``DataLoader(num_workers=--workers, shuffle=True,
  persistent_workers=True)`` with ``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``,
  ``ToTensor()``, without and with ``AutoAugment(AutoAugmentPolicy.IMAGENET)`` before
  ``ToTensor()``;
* ``keras.utils.image_dataset_from_directory(DIR, image_size=(224, 224))``: a plain resize.

Ratios are between rows of the same run: to torchvision with the same transforms (the
Pillow pool for decoding) and to the tf.data decode-only floor. torch and torchvision are
only needed for their rows (``pip install -e ".[bench]"``). Run it on an otherwise idle
machine: the rows run one after the other and compete with anything else on it.

    python benchmarks/input_throughput.py
    python benchmarks/input_throughput.py --images 5000 --passes 5 --dir /tmp/photo-folder
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

import numpy as np

SIZE = 224
CROP_SCALE = (0.08, 1.0)
TARGET_BYTES = 50_000
SHORT_SIDE = (300, 500)
MIN_SPEEDUP_OVER_TORCHVISION = 1.5
MIN_FRACTION_OF_FLOOR = 0.8
FLOOR = "tf_decode"
RESULT_PREFIX = "RESULT "


# ----------------------------------------------------------------------------- the image folder


def photo_crop(photo, rng: np.random.Generator):
    """A random box of ``photo`` (20-100 % of its area, aspect 2/3 to 3/2, mirrored half of
    the time), resized (bicubic) so that its shorter side is uniform in ``SHORT_SIDE``."""
    from PIL import Image, ImageOps

    width, height = photo.size
    area = rng.uniform(0.2, 1.0) * width * height
    aspect = math.exp(rng.uniform(math.log(2 / 3), math.log(3 / 2)))
    box_w = min(width, round(math.sqrt(area * aspect)))
    box_h = min(height, round(math.sqrt(area / aspect)))
    left = int(rng.integers(0, width - box_w + 1))
    top = int(rng.integers(0, height - box_h + 1))
    crop = photo.crop((left, top, left + box_w, top + box_h))
    if rng.uniform() < 0.5:
        crop = ImageOps.mirror(crop)
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    scale = short / min(box_w, box_h)
    size = (short, round(box_h * scale)) if box_w <= box_h else (round(box_w * scale), short)
    return crop.resize(size, Image.BICUBIC)


def jpeg_near(image, target: int) -> bytes:
    """``image`` as a JPEG whose quality (30 to 95, bisected) brings it closest to ``target``
    bytes."""
    low, high, best = 30, 95, b""
    while low <= high:
        quality = (low + high) // 2
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        encoded = buffer.getvalue()
        if not best or abs(len(encoded) - target) < abs(len(best) - target):
            best = encoded
        if len(encoded) < target:
            low = quality + 1
        else:
            high = quality - 1
    return best


def image_files(directory: str) -> list[str]:
    """The JPEG files of the class sub-folders of ``directory``, sorted."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.endswith(".jpg")
    )


def write_folder(directory: str, count: int, classes: int, seed: int) -> None:
    """``count`` JPEG photo crops in ``classes`` sub-folders of ``directory``, seeded."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = os.path.join(directory, f"class_{index % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        photo = photos[int(rng.integers(len(photos)))]
        with open(os.path.join(folder, f"{index:06d}.jpg"), "wb") as f:
            f.write(jpeg_near(photo_crop(photo, rng), TARGET_BYTES))


def describe_folder(files: list[str]) -> str:
    from PIL import Image

    shorter = []
    for file in files:
        with Image.open(file) as image:
            shorter.append(min(image.size))
    kilobytes = statistics.mean(os.path.getsize(file) for file in files) / 1000
    return (f"{len(files)} JPEGs, {kilobytes:.0f} KB on average, shorter side "
            f"{min(shorter)}-{max(shorter)} px")


# ----------------------------------------------------------------------------- the pipelines
# Each builder returns a function that iterates one whole pass and returns its image count.


def pillow_decode(file: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(file) as image:
        return image.convert("RGB").size


def images_in(batches: Iterable) -> int:
    """The images of a pass over batches of ``(images, ...)``."""
    return sum(len(batch[0]) for batch in batches)


def tf_decode(args, stack: contextlib.ExitStack) -> Callable[[], int]:
    import tensorflow as tf

    def decode(file):
        return (tf.shape(tf.io.decode_jpeg(tf.io.read_file(file), channels=3)),)

    dataset = (
        tf.data.Dataset.from_tensor_slices(image_files(args.dir))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return lambda: images_in(dataset)


def pillow_pool(args, stack: contextlib.ExitStack) -> Callable[[], int]:
    files = image_files(args.dir)
    pool = stack.enter_context(multiprocessing.Pool(args.workers))
    return lambda: sum(1 for _ in pool.imap_unordered(pillow_decode, files, chunksize=16))


def tfmagic_pipeline(args, autoaugment: bool) -> Callable[[], int]:
    from tfmagic import data
    from tfmagic.augment.pipeline import build_train_augment
    from tfmagic.recipe import Recipe

    recipe = Recipe(dataset=f"folder:{args.dir}", cache="none", image_size=SIZE,
                    batch_size=args.batch_size, validation_fraction=0.0,
                    crop_scheme="random_resized_crop",
                    augment="autoaugment" if autoaugment else "none", seed=args.seed)
    splits = data.load(recipe.dataset, batch_size=recipe.batch_size, seed=recipe.seed,
                       validation_fraction=recipe.validation_fraction,
                       image_size=recipe.image_size, cache=recipe.cache,
                       augment=build_train_augment(recipe, resized_crop=False),
                       crop_scale=CROP_SCALE)
    return lambda: images_in(splits.train)


def torchvision_pipeline(args, stack: contextlib.ExitStack,
                         autoaugment: bool) -> Callable[[], int]:
    import torch
    from torchvision import datasets, transforms

    torch.manual_seed(args.seed)
    steps = [transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip()]
    if autoaugment:
        steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET))
    steps.append(transforms.ToTensor())
    folder = datasets.ImageFolder(args.dir, transform=transforms.Compose(steps))
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, persistent_workers=True)
    return lambda: images_in(loader)


def keras_pipeline(args, stack: contextlib.ExitStack) -> Callable[[], int]:
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        args.dir, image_size=(SIZE, SIZE), batch_size=args.batch_size, seed=args.seed)
    return lambda: images_in(dataset)


# name: (table label, the row with the same transforms on the torch side, needs torch, builder)
PIPELINES: dict[str, tuple[str, str | None, bool, Callable]] = {
    FLOOR: ("decode only: tf.data read_file + decode_jpeg", "pillow_decode", False, tf_decode),
    "pillow_decode": ("decode only: Pillow, {workers}-process pool", "pillow_decode", False,
                      pillow_pool),
    "tfmagic_crop": ("tfmagic data.load: crop + flip", "torch_crop", False,
                     lambda args, stack: tfmagic_pipeline(args, autoaugment=False)),
    "torch_crop": ("torchvision, {workers} workers: crop + flip", "torch_crop", True,
                   lambda args, stack: torchvision_pipeline(args, stack, autoaugment=False)),
    "tfmagic_autoaugment": ("tfmagic data.load: crop + flip + AutoAugment",
                            "torch_autoaugment", False,
                            lambda args, stack: tfmagic_pipeline(args, autoaugment=True)),
    "torch_autoaugment": ("torchvision, {workers} workers: crop + flip + AutoAugment",
                          "torch_autoaugment", True,
                          lambda args, stack: torchvision_pipeline(args, stack,
                                                                   autoaugment=True)),
    "keras": ("keras image_dataset_from_directory: resize", None, False, keras_pipeline),
}


def run_worker(args) -> None:
    """Time one pipeline in this process; print its images/s per timed pass as JSON."""
    with contextlib.ExitStack() as stack:
        one_pass = PIPELINES[args.worker][3](args, stack)
        for _ in range(args.warmup):
            one_pass()
        rates = []
        for _ in range(args.passes):
            start = time.perf_counter()
            count = one_pass()
            rates.append(count / (time.perf_counter() - start))
    print(RESULT_PREFIX + json.dumps(rates), flush=True)


# ----------------------------------------------------------------------------- the table


def measure(name: str, args, directory: str, cache_dir: str) -> list[float] | None:
    """The images/s of the timed passes of pipeline ``name``, run in a fresh subprocess;
    None (with its error output on stderr) when it fails."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", name,
               "--dir", directory, "--batch-size", str(args.batch_size),
               "--passes", str(args.passes), "--warmup", str(args.warmup),
               "--workers", str(args.workers), "--seed", str(args.seed)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TFMAGIC_CACHE_DIR": cache_dir}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        print(f"{name} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}",
              file=sys.stderr)
        return None
    return json.loads(results[-1][len(RESULT_PREFIX):])


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (f"{model}, {os.cpu_count()} cores ({usable} usable), load average "
            f"{os.getloadavg()[0]:.2f} before starting")


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def print_table(rates: dict[str, list[float] | None], args) -> None:
    median = {name: statistics.median(runs) if runs else None for name, runs in rates.items()}
    floor = median.get(FLOOR)
    print(f"| pipeline | images/s (median of {args.passes}) | passes | vs torchvision, same "
          f"transforms | vs tf.data decode floor |")
    print("|---|---:|---|---:|---:|")
    for name, runs in rates.items():
        label, partner = PIPELINES[name][:2]
        label = label.format(workers=args.workers)
        value = "failed" if runs is None else f"{median[name]:.0f}"
        passes = "" if runs is None else ", ".join(f"{rate:.0f}" for rate in runs)
        print(f"| {label} | {value} | {passes} | {ratio(median[name], median.get(partner))} "
              f"| {ratio(median[name], floor)} |")
    tfmagic, torch = median.get("tfmagic_autoaugment"), median.get("torch_autoaugment")
    targets = (
        (f"tfmagic crop + flip + AutoAugment >= {MIN_SPEEDUP_OVER_TORCHVISION}x torchvision's",
         tfmagic, torch, MIN_SPEEDUP_OVER_TORCHVISION),
        (f"tfmagic crop + flip + AutoAugment >= {MIN_FRACTION_OF_FLOOR}x the tf.data decode "
         "floor", tfmagic, floor, MIN_FRACTION_OF_FLOOR),
    )
    print()
    for what, numerator, denominator, goal in targets:
        if numerator is None or denominator is None:
            verdict = "not measured"
        else:
            met = numerator / denominator >= goal
            verdict = f"{numerator / denominator:.2f}x, {'met' if met else 'NOT met'}"
        print(f"Target: {what}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000,
                        help="images of the folder the script writes (default 2000)")
    parser.add_argument("--classes", type=int, default=10, help="class sub-folders")
    parser.add_argument("--dir", help="folder of the images: written if it holds no JPEGs, "
                        "else used as it is; kept (default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3,
                        help="timed passes over the folder per pipeline; the median is shown")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes of the Pillow pool and torch's DataLoader "
                        "(default: the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    has_torch = all(importlib.util.find_spec(name) for name in ("torch", "torchvision"))
    if not has_torch:
        print('torch and torchvision are not installed, so their rows are left out: '
              'pip install -e ".[bench]"')
    command = "python " + shlex.join(sys.argv)
    header = f"Machine: {machine()}\nCommand: {command}"
    with tempfile.TemporaryDirectory(prefix="input-throughput-") as scratch:
        directory = os.path.abspath(args.dir or os.path.join(scratch, "images"))
        files = image_files(directory) if os.path.isdir(directory) else []
        if not files:
            print(f"writing {args.images} images to {directory}", flush=True)
            write_folder(directory, args.images, args.classes, args.seed)
            files = image_files(directory)
        print(f"{directory}: {describe_folder(files)}", flush=True)
        rates = {}
        for name, (label, _, needs_torch, _) in PIPELINES.items():
            if needs_torch and not has_torch:
                continue
            print(f"timing {label.format(workers=args.workers)}", flush=True)
            rates[name] = measure(name, args, directory, os.path.join(scratch, "cache"))
    print()
    print_table(rates, args)
    print()
    print(header)


if __name__ == "__main__":
    main()
