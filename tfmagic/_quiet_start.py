"""Load TensorFlow quietly when the program is one of tfmagic's binaries.

Imported first by the package, so that it runs before anything imports TensorFlow. When the
program is `tfmagic-train`, `tfmagic-checklist` or `tfmagic-data` (or `python -m
tfmagic.cli.NAME`) and the user has not set `TF_CPP_MIN_LOG_LEVEL` (then it is theirs), the
level becomes 3 and what TensorFlow writes to stderr while it loads (CUDA probing on a
machine without a GPU, CPU feature notes, written before its log level applies) is held
back, and shown only if loading fails; level 3 keeps the rest of its native log (a failed
`cuInit` on a machine without a GPU) quiet too. A program that merely imports tfmagic is
left alone.
"""

import contextlib
import os
import sys
import tempfile

BINARIES = ("tfmagic-train", "tfmagic-checklist", "tfmagic-data")


def _is_binary() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if any(os.path.basename(arg) in BINARIES for arg in argv[:2]):
        return True
    pairs = zip(argv[:-1], argv[1:], strict=True)
    return any(flag == "-m" and module.startswith("tfmagic.cli.") for flag, module in pairs)


@contextlib.contextmanager
def _native_stderr_held_back():
    """Send file descriptor 2 to a temporary file for the block; replay it on an error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules and _is_binary():
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _native_stderr_held_back():
        import tensorflow  # noqa: F401  (devices are not touched: multi-worker needs them untouched)
