"""Atomic file writes: a temporary file in the target's folder, then os.replace, so a failed
or interrupted write never leaves a truncated file where a good one was."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def _umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status (since 4.7), read without
    changing it; elsewhere it can only be read by setting it and back, which for that instant
    applies to every thread of the process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)   # the safe mask, should another thread create a file meanwhile
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    """The permissions a plain open(path, "w") would give: the file's own where it exists, else
    0o666 less the umask (mkstemp's temporary file is 0o600, readable by its owner alone)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_save(path: str, write: Callable) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then move it into place."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            os.fchmod(f.fileno(), _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
