"""Atomic file writes: every file tfmagic writes goes through here.

A file is written under a temporary name in its own directory, flushed to disk, given the mode
an ordinary new file gets (``0o666`` less the umask) and renamed over the target, so a reader
(or a run restarted after ``kill -9``) sees the old file or the new one, never half of one.
Paths of other file systems (``gs://...``) are written the same way through ``tf.io.gfile``,
which is imported only for them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        if no_space_path(error) == "":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from error
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


def ensure_space(path: str | os.PathLike, needed: int) -> None:
    """Raise the OSError of a full disk (``ENOSPC``, naming ``path``) when the file system
    that ``path`` goes on has fewer than ``needed`` bytes free: asked before a writer that
    does not fail cleanly on a full disk (HDF5, under Keras' weights files, can take the
    process down). The directory of ``path`` must exist; other file systems are not asked."""
    path = os.fspath(path)
    if not _is_remote(path) and shutil.disk_usage(os.path.dirname(
            os.path.abspath(path))).free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# How TensorFlow ("<path>; No space left on device") and HDF5 ("filename = '<path>'")
# report a full disk, with the path they could not write.
_FULL_DISK_PATHS = (re.compile(r"filename = '([^']+)'"),
                    re.compile(r"([^\s;]+); No space left on device"))


def no_space_path(error: BaseException) -> str | None:
    """The path that a full disk kept from being written, when ``error`` or an error it arose
    from reports one (an OSError ``ENOSPC`` or ``EDQUOT``, or TensorFlow's or HDF5's words
    for it); "" when it names no path; None when the error is of another kind."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.fspath(error.filename) if error.filename else ""
        text = str(error)
        if os.strerror(errno.ENOSPC) in text or f"errno = {errno.ENOSPC}," in text:
            for pattern in _FULL_DISK_PATHS:
                found = pattern.search(text)
                if found:
                    return found.group(1)
            return ""
        error = error.__cause__ or error.__context__
    return None


def no_space_message(error: BaseException, where: str) -> str | None:
    """The one-line report of a full disk when ``error`` is one (`no_space_path`), naming
    the file it could not write, or ``where`` when it names none; None otherwise."""
    full = no_space_path(error)
    if full is None:
        return None
    return f"no space left on device: {full or where} could not be written"
