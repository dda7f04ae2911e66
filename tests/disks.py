"""Shared by the tests of a full disk: a small tmpfs, where one can be mounted."""

import shutil
import subprocess


def mount_tmpfs(where, size):
    """Mount a tmpfs of `size` (``64k``, ``16m``) at `where`: None, or why it cannot be."""
    if shutil.which("mount") is None:
        return "no mount command"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    return None if mounted.returncode == 0 else mounted.stderr.strip() or "mount failed"
