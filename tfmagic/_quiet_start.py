"""Load TensorFlow quietly when the program is one of tfmagic's binaries.

Imported first by the package, so that it runs before anything imports TensorFlow. When the
program is `tfmagic-train`, `tfmagic-checklist` or `tfmagic-data` (or `python -m
tfmagic.cli.NAME`), what TensorFlow writes to stderr while it loads (CUDA probing on a
machine without a GPU, oneDNN and CPU feature notes) is held back and then filtered by
`TF_CPP_MIN_LOG_LEVEL`: TensorFlow writes some of those lines before its log level applies,
at any level. Only the records at or above the level are shown, and everything is shown if
loading fails. When the user has not set the variable, the level becomes 3 (fatal only),
which keeps the rest of TensorFlow's native log quiet too (a failed `cuInit` on a machine
without a GPU); a level the user set is theirs (0 shows the start-up lines, as TensorFlow
would). A program that merely imports tfmagic is left alone.
"""

import contextlib
import os
import re
import sys
import tempfile

BINARIES = ("tfmagic-train", "tfmagic-checklist", "tfmagic-data")
_SEVERITIES = "IWEF"            # absl's record prefixes: info, warning, error, fatal
_RECORD = re.compile(rf"^([{_SEVERITIES}])\d{{4}} ")
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _is_binary() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if any(os.path.basename(arg) in BINARIES for arg in argv[:2]):
        return True
    pairs = zip(argv[:-1], argv[1:], strict=True)
    return any(flag == "-m" and module.startswith("tfmagic.cli.") for flag, module in pairs)


def shown_at_level(text: str, level: str) -> str:
    """The part of ``text`` (what TensorFlow wrote while it loaded) that log level ``level``
    (a value of `TF_CPP_MIN_LOG_LEVEL`) shows: each record (``I0000 ...``, with the lines
    that continue it) at or above the level; absl's banner about messages logged before its
    initialization is shown at level 0 only. Level 0 shows everything, and so does a level
    that is not a digit 0-3, as TensorFlow does not read it either."""
    if level not in ("1", "2", "3"):
        return text
    minimum = int(level)
    shown, keep = [], True
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == _BANNER:
            continue
        record = _RECORD.match(line)
        if record:
            keep = _SEVERITIES.index(record.group(1)) >= minimum
        if keep:
            shown.append(line)
    return "".join(shown)


@contextlib.contextmanager
def _native_stderr_filtered(level: str):
    """Send file descriptor 2 to a temporary file for the block; then write back what
    `shown_at_level` keeps, or all of it on an error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write(text if failed else shown_at_level(text, level))
            sys.stderr.flush()


if "tensorflow" not in sys.modules and _is_binary():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _native_stderr_filtered(os.environ["TF_CPP_MIN_LOG_LEVEL"]):
        import tensorflow  # noqa: F401  (devices are not touched: multi-worker needs them untouched)
