"""Atomic file writes: a temporary file beside the target, fsync, then `os.replace` (never half a file).

The one place plans, checkpoints and figures are written through. The temporary file is created with mode 0o666
and `O_EXCL`, so the process umask applies as it does for `open()` (a plan saved by a group is readable by the
group), unlike `tempfile.mkstemp`, which always creates 0o600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
