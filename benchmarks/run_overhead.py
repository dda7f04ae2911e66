"""Where the seconds of a short `tfmagic.training.train` run go, cold and warm.

A run of a flagfile's recipe (the quickstart's by default) is split into:

- import: `import tfmagic.training` (TensorFlow, Keras and tfmagic) in a fresh process;
- setup: from the call of `train()` to the start of `fit` (the data loaded, the model built
  and compiled, the optimizer's and metrics' variables made, the files begun);
- first-epoch surplus: the first epoch's time less a steady epoch's (tracing the train and
  test steps, and the input pipeline's first batches);
- a steady epoch: the median of the other epochs;
- tail: from the end of `fit` to the return of `train()` (the test evaluation, the saved
  model, result.json, the TensorBoard summary).

Each round is a new process: "cold" is the first run of that process, "warm" a second run
of the same recipe (another output directory) in the same process, as a worker that trains
its runs one after another would run it. The fixed cost of a run is its time beyond as many
steady epochs as it trained (setup, first-epoch surplus, tail); cold, the import comes on
top. Every number comes from one process's clock, and the processes run one after another.

    python benchmarks/run_overhead.py                          # the quickstart's recipe
    python benchmarks/run_overhead.py --flagfile=flags/quickstart.cfg --epochs=3 --rounds=2

Target (issue 24): a run in a warm worker costs at most 10 s beyond its steady epochs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

# One process: the import timed, then the recipe trained twice. Prints one JSON line.
_PROCESS = textwrap.dedent("""
    import dataclasses, json, sys, tempfile, time
    began = time.perf_counter()
    import keras
    from tfmagic.recipe import Recipe
    from tfmagic.training import train
    imported = time.perf_counter() - began

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.fit_began, self.epochs = time.perf_counter(), []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(time.perf_counter() - self.epoch_began)

        def on_train_end(self, logs=None):
            self.fit_ended = time.perf_counter()

    recipe = Recipe.from_flagfile(sys.argv[1])
    changes = json.loads(sys.argv[2])
    runs = []
    for _ in range(2):
        clock = Clock()
        run = dataclasses.replace(recipe, **changes, output_dir=tempfile.mkdtemp())
        called = time.perf_counter()
        train(run, verbose=0, callbacks=[clock])
        returned = time.perf_counter()
        runs.append({"setup": clock.fit_began - called, "epochs": clock.epochs,
                     "tail": returned - clock.fit_ended, "total": returned - called})
    print(json.dumps({"import": imported, "cold": runs[0], "warm": runs[1]}))
""")


def _phases(run: dict) -> dict:
    first, *rest = run["epochs"]
    steady = statistics.median(rest) if rest else first
    return {"setup": run["setup"], "first-epoch surplus": first - steady,
            "a steady epoch": steady, "tail": run["tail"],
            "fixed (beyond steady epochs)": run["total"] - steady * len(run["epochs"])}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return "an unnamed CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagfile", default="flags/quickstart.cfg")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run (>= 2)")
    parser.add_argument("--rounds", type=int, default=1, help="processes, one after another")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs={args.epochs}: must be >= 2 (one epoch is not steady)")
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds}: must be >= 1")
    samples = []
    for _ in range(args.rounds):
        done = subprocess.run(
            [sys.executable, "-c", _PROCESS, args.flagfile, json.dumps({"epochs": args.epochs})],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the benchmark process failed:\n{done.stderr[-3000:]}")
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    imports = [s["import"] for s in samples]
    print(f"{_cpu()}, {os.cpu_count()} cores")
    print(f"{args.flagfile}, {args.epochs} epochs, {args.rounds} process(es); medians in s")
    print(f"{'import (fresh process)':32s} {statistics.median(imports):8.1f}")
    cold = [_phases(s["cold"]) for s in samples]
    warm = [_phases(s["warm"]) for s in samples]
    print(f"{'phase':32s} {'cold':>8s} {'warm':>8s}")
    for name in cold[0]:
        print(f"{name:32s} {statistics.median(c[name] for c in cold):8.1f} "
              f"{statistics.median(w[name] for w in warm):8.1f}")
    cold_fixed = statistics.median(c["fixed (beyond steady epochs)"] for c in cold)
    print(f"{'fixed, cold, import included':32s} {cold_fixed + statistics.median(imports):8.1f}")


if __name__ == "__main__":
    main()
