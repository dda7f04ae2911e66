"""The start of a fully augmented input pipeline in a fresh process: building it and its
first batches, where the graph of each function handed to tf.data is traced.

A folder of 24 noisy 40x40 PNGs (two classes) is loaded twice with AutoAugment, the random
resized crop, Cutout, mixup and CutMix (the recipe of the augmentation's determinism test);
the first load is iterated for two epochs. Each round is a new process; the table gives the
seconds of the loads and iterations in each.

    python benchmarks/pipeline_start.py --rounds=2
"""

import argparse
import subprocess
import sys
import textwrap

_PROCESS = textwrap.dedent("""
    import pathlib, tempfile, time
    import numpy as np
    from PIL import Image
    from tfmagic import data
    from tfmagic.augment import pipeline
    from tfmagic.recipe import Recipe

    root = pathlib.Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"c{label}").mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)).save(
                root / f"c{label}" / f"{i}.png")
    dataset = f"folder:{root}"
    recipe = Recipe(dataset=dataset, augment="autoaugment", crop_scheme="random_resized_crop",
                    cutout=0.3, mixup_alpha=0.2, cutmix_alpha=1.0, seed=4)

    def load():
        return data.load(dataset, cache="memory", batch_size=6, image_size=32, seed=recipe.seed,
                         validation_fraction=0.0, crop_scale=pipeline.CROP_SCALE,
                         augment=pipeline.build_train_augment(recipe, resized_crop=False),
                         one_hot=recipe.mixes_labels)

    began = time.perf_counter()
    first = load()
    list(first.train_from_epoch(0).take(8))
    load()
    print(f"{time.perf_counter() - began:.2f}")
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes, one after another")
    args = parser.parse_args()
    seconds = []
    for _ in range(args.rounds):
        done = subprocess.run([sys.executable, "-c", _PROCESS], capture_output=True, text=True,
                              check=True)
        seconds.append(done.stdout.strip().splitlines()[-1])
    print("two loads and the first load's first 8 batches, seconds per process: "
          + ", ".join(seconds))


if __name__ == "__main__":
    main()
