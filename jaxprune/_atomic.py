"""Atomic file writes: a temporary file beside the target, fsync, then `os.replace` (never half a file).

The one place plans, checkpoints and figures are written through. The file ends with the mode `open(path, "w")`
would leave: an existing file keeps its mode; a new one gets 0o666 under the process umask (the temporary file is
created with that mode and `O_EXCL`), unlike `tempfile.mkstemp`, which always creates 0o600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_write"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_temp(folder: str, suffix: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}{suffix}")
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

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is left as it was.

    Args:
      path: The file to write; its folder must exist.
      suffix: Suffix of the temporary file's name (e.g. ``.ckpt``), for tools that look at names.

    Raises:
      FileNotFoundError: the folder does not exist.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
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
