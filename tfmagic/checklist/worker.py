"""A warm worker: one process that loads TensorFlow once and trains the runs it is sent, one
after another, each as ``tfmagic-train --flagfile=FLAGFILE`` would in a process of its own.

The runner (or a Ray actor, on its node) starts it as ``python -m tfmagic.checklist.worker``
and writes one JSON line per run to its standard input, ``{"flagfile": ..., "log": ...}``.
The worker appends the run's output to ``log`` (Python's and TensorFlow's own, file
descriptors 1 and 2) after a first line that names the worker's pid, the run's number in it
and its peak resident memory so far; then it answers with one line on its standard output,
``{"exit": STATUS, "peak_rss": BYTES}``: the exit status the binary would have had, and the
worker's peak resident memory, by which the runner decides to retire it. The worker ends at
the end of its input.

Between runs nothing is carried over that a run depends on: `tfmagic.training.train` sets
the seeds and builds the strategy at the start of every run, and the worker clears the Keras
session (the models, their graphs and the layer names) and the flags after each. A run on
a strategy over several devices is the worker's last: TensorFlow's collectives do not
survive a second such strategy in one process. A native crash (an abort, a kill by the
system's out-of-memory killer) ends the worker with its run; the runner records that run as
failed and starts a new worker for the next.
"""

import contextlib
import gc
import json
import os
import resource
import sys
import traceback

from absl import app, flags

from tfmagic.cli import parse_flags
from tfmagic.cli import train as train_cli
from tfmagic.exit_codes import EXIT_ERROR

_SEVERAL_DEVICES = ("mirrored", "multi_worker", "tpu")


def _exit_status(done: SystemExit) -> int:
    """The exit status of a process that ends with ``done``, as Python sets it."""
    if done.code is None:
        return 0
    if isinstance(done.code, int):
        return done.code
    print(done.code, file=sys.stderr)
    return EXIT_ERROR


def _train(flagfile: str) -> int:
    """What ``tfmagic-train --flagfile=FLAGFILE`` does, in this process: its exit status."""
    flags.FLAGS.unparse_flags()
    try:
        argv = parse_flags(["tfmagic-train", f"--flagfile={flagfile}"])
        return train_cli.main(argv)
    except app.UsageError as error:         # the binary prints its usage, then this line
        print(f"\n{error}", file=sys.stderr)
        return error.exitcode
    except SystemExit as done:
        return _exit_status(done)
    except Exception:                       # noqa: BLE001 (the binary's uncaught error)
        traceback.print_exc()
        return EXIT_ERROR


@contextlib.contextmanager
def _output_to(log: str):
    """File descriptors 1 and 2 (and Python's streams) appended to ``log`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)


def _spans_devices() -> bool:
    """Whether the run just trained used a strategy over several devices."""
    import tensorflow as tf

    if not flags.FLAGS.is_parsed():
        return False
    name = flags.FLAGS.strategy
    return name in _SEVERAL_DEVICES or (
        name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1)


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes (Linux counts it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(requests, answers) -> None:
    """Train each run that ``requests`` names (one JSON line each) and answer each on
    ``answers``; return at the end of ``requests`` or after a run on several devices."""
    import keras

    for number, line in enumerate(requests, start=1):
        request = json.loads(line)
        with _output_to(request["log"]):
            print(f"tfmagic worker {os.getpid()}: run {number} of this process, peak resident "
                  f"memory so far {_peak_rss() >> 20} MiB", flush=True)
            status = _train(request["flagfile"])
        last = _spans_devices()
        flags.FLAGS.unparse_flags()
        keras.backend.clear_session()
        gc.collect()
        answers.write(json.dumps({"exit": status, "peak_rss": _peak_rss()}) + "\n")
        answers.flush()
        if last:
            return


def main() -> None:
    # The answers go to the standard output as it is now; the runs' output goes to their
    # logs, and what is written outside a run to the standard error.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
