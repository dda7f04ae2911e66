"""Atomic file writes: every file tfmagic writes goes through here.

A file is written under a temporary name in its own directory, flushed to disk, given the mode
an ordinary new file gets (``0o666`` less the umask) and renamed over the target, so a reader
(or a run restarted after ``kill -9``) sees the old file or the new one, never half of one.
Paths of other file systems (``gs://...``) are written the same way through ``tf.io.gfile``,
which is imported only for them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
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

    A path with a scheme (``gs://bucket/...``, ``ram://...``) is written through
    ``tf.io.gfile``: the temporary file is renamed over the target by its file system, without
    fsync or a change of mode. The writer must then be one that accepts such paths
    (``tf.io.gfile.GFile``, ``tf.io.TFRecordWriter``).
    """
    path = os.fspath(path)
    if _is_remote(path):
        with _remote_atomic_path(path) as partial:
            yield partial
        return
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


def _is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file system by its scheme (``gs://...``), not a local path."""
    return "://" in os.fspath(path)


@contextlib.contextmanager
def _remote_atomic_path(path: str) -> Iterator[str]:
    import tensorflow as tf  # only here: the local branch needs no TensorFlow

    directory, _, name = path.rpartition("/")
    partial = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
    tf.io.gfile.makedirs(directory)
    try:
        yield partial
        tf.io.gfile.rename(partial, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(tf.errors.OpError):
            tf.io.gfile.remove(partial)
        raise


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write text or bytes to ``path`` atomically; ``path`` may be anything `atomic_path`
    takes."""
    with atomic_path(path) as partial, _open(partial, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def _open(path: str, mode: str):
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode)


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
