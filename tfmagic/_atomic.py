"""Atomic file writes: every file tfmagic writes goes through here.

A file is written under a temporary name in its own directory, flushed to disk, given the mode
an ordinary new file gets (``0o666`` less the umask) and renamed over the target, so a reader
(or a run restarted after ``kill -9``) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def file_mode() -> int:
    """The mode of a newly created ordinary file: ``0o666`` less the process's umask."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary name ends with the target's name (``model.keras`` becomes
    ``.tmp-<random>-model.keras``), so writers that check the extension accept it. On an
    exception the temporary file is removed and ``path`` is left as it was. The directory is
    created when missing.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=f"-{name}")
    os.close(handle)
    try:
        yield partial
        with open(partial, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(partial, file_mode())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write text or bytes to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as partial, open(partial, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def writable_problem(path: str | os.PathLike) -> str | None:
    """Why a directory cannot be created at, or written into, ``path``; None when it can.

    Nothing is left behind: the check creates and removes a temporary directory in ``path``
    or, when ``path`` does not exist yet, in its nearest existing parent.
    """
    target = os.path.abspath(os.fspath(path))
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is" if existing == target else f"lies under {existing}, which is"
        return f"it {what} a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".tmp-write-check-"))
    except OSError as error:
        where = "it" if existing == target else f"its parent {existing}"
        return f"{where} cannot be written to ({error.strerror or error})"
    return None
