"""Atomic file writes: a temporary file beside the target, fsync, then `os.replace` (never half a file).

The one place plans, checkpoints and figures are written through. The file ends with the mode `open(path, "w")`
would leave: an existing file keeps its mode; a new one gets 0o666 under the process umask (the temporary file is
created with that mode and `O_EXCL`), unlike `tempfile.mkstemp`, which always creates 0o600.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_write", "remove_stale_temps"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


# Temporary names carry the writer's pid and a tag of its host, so the next write into the folder can tell the
# leftovers of a killed writer (its pid no longer runs on this host) from a write in progress.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"\.tmp-([0-9]+)-([0-9a-f]{8})-[0-9a-f]{16}(\.[A-Za-z0-9]+)?")
# Temporary files of jaxprune versions before the pid tag: removed once this old (no live writer takes an hour).
_LEGACY_TEMP = re.compile(r"\.tmp-[0-9a-f]{16}(\.[A-Za-z0-9]+)?")
_LEGACY_AGE_S = 3600.0


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Removes the temporary files that killed writes left in `folder`; returns their paths.

    A temporary file is stale when it was made on this host by a process that no longer runs (or, for the untagged
    names of older jaxprune versions, when it is over an hour old). Temporary files of live writers, and of other
    hosts sharing the folder, are kept.
    """
    folder = os.fspath(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        m = _TEMP.fullmatch(name)
        if m:
            stale = m.group(2) == _HOST and int(m.group(1)) != os.getpid() and not _running(int(m.group(1)))
        elif _LEGACY_TEMP.fullmatch(name):
            try:
                stale = time.time() - os.stat(path).st_mtime > _LEGACY_AGE_S
            except FileNotFoundError:
                continue
        else:
            continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def _create_temp(folder: str, suffix: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{_HOST}-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder} (100 names taken)")


def _keep_mode(fd: int, path: str) -> None:
    """Gives the temporary file the mode of the file it replaces, if there is one (as overwriting in place would)."""
    if not hasattr(os, "fchmod"):
        return  # Windows: no POSIX modes to keep
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str = "") -> Iterator[BinaryIO]:
    """Yields a binary file; when the block ends without error its bytes replace `path` in one step.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is left as it was. A process
    killed mid-write (SIGKILL, power loss) cannot remove it: the next `atomic_write` into the same folder does
    (`remove_stale_temps`).

    Args:
      path: The file to write; its folder must exist.
      suffix: Suffix of the temporary file's name (e.g. ``.ckpt``), for tools that look at names.

    Raises:
      FileNotFoundError: the folder does not exist.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(folder)
    fd, tmp = _create_temp(folder, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            _keep_mode(f.fileno(), path)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
