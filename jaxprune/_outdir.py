"""Output folders of the command line: never overwritten silently, never left half replaced, never left empty.

A command that writes into a folder ``T`` records what it is in ``T/.jaxprune-run.json`` (its command and the
arguments that decide its results). Then:

* ``T`` absent or empty: a fresh run writes into ``T``; if it fails before writing a result, ``T`` is removed again
  (if this run created it).
* ``T`` holds the record of the same run (the same command and arguments): the run continues there (a resumed
  ``train``, the demo reusing its trained baseline, the same ``prune`` again).
* ``T`` holds anything else: refused with `FileExistsError` naming ``T`` and ``--overwrite``. With ``overwrite=True``
  the run writes into ``T.new-<pid>``; only once it has finished, ``T`` is renamed ``T.old-<pid>``, ``T.new-<pid>``
  is renamed ``T``, and ``T.old-<pid>`` is removed. An interrupted or failed run leaves ``T`` as it was (what it
  wrote stays in ``T.new-<pid>`` until the next run into ``T``).

Every run into ``T`` first clears what an interrupted or killed run left beside it: ``T.new-<pid>`` folders of
processes that no longer run (or of this one) are removed, and a ``T.old-<pid>`` left by a swap killed between its two renames is renamed back to ``T``
(so the previous results are never lost) or, when ``T`` is there, removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["RUN_FILE", "check_out_path", "output_run"]

#: The record of the run that wrote a folder.
RUN_FILE = ".jaxprune-run.json"


def check_out_path(path, *, what: str = "--out") -> str:
    """`path` as a normalised str (no trailing separator), refusing an empty or non-path value.

    Raises:
      TypeError: not a str or path.
      ValueError: empty (or only blanks): an empty path would mean the current directory.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{what} must be a folder path, got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError(f"{what} must be a str path, got bytes")
    if not text.strip():
        raise ValueError(f"{what} is empty; give the folder to write into (an empty path would be the current folder)")
    return os.path.normpath(text)


def _other_process_alive(pid: int) -> bool:
    """True when `pid` is another running process (this process runs one command at a time: its own are stale)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _leftovers(folder: str) -> list[tuple[str, str, int]]:
    """``(path, kind, pid)`` of every ``folder.new-<pid>`` / ``folder.old-<pid>`` beside `folder`."""
    parent, base = os.path.split(os.path.abspath(folder))
    pattern = re.compile(re.escape(base) + r"\.(new|old)-([0-9]+)")
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(names):
        m = pattern.fullmatch(name)
        if m:
            found.append((os.path.join(parent, name), m.group(1), int(m.group(2))))
    return found


def _clear_leftovers(folder: str) -> None:
    stale = [(p, kind) for p, kind, pid in _leftovers(folder) if not _other_process_alive(pid)]
    olds = [p for p, kind in stale if kind == "old"]
    if olds and not os.path.lexists(folder):
        # A swap was killed between "T -> T.old" and "T.new -> T": the previous results come back.
        os.rename(olds[0], folder)
    for p, _ in stale:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)


def _holds_results(folder: str) -> bool:
    """True when `folder` holds any file but the run record (empty subfolders do not count)."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not (root == folder and name == RUN_FILE):
                return True
    return False


def _read_run(folder: str) -> Mapping[str, Any] | None:
    try:
        with open(os.path.join(folder, RUN_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_run(folder: str, run: Mapping[str, Any]) -> None:
    from jaxprune.plan import atomic_write_text

    atomic_write_text(os.path.join(folder, RUN_FILE), json.dumps(run, sort_keys=True, indent=1) + "\n")


def _refusal(out: str, folder: str, found: Mapping[str, Any] | None) -> FileExistsError:
    if found is None:
        who = "no record of the run that wrote it"
    else:
        who = f"written by '{found.get('command_line', found.get('command', '?'))}'"
    holds_checkpoint = any("checkpoint.ckpt" in files for _, _, files in os.walk(folder))
    what = "a checkpoint this run cannot continue" if holds_checkpoint else "the results of another run"
    return FileExistsError(
        f"--out {out!r} already holds {what} ({who}); choose another folder, or pass --overwrite to replace it"
    )


def _remove_if_empty(folder: str) -> None:
    if os.path.isdir(folder) and not _holds_results(folder):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def output_run(
    out,
    run: Mapping[str, Any],
    *,
    overwrite: bool = False,
    on_keep: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Yields the folder a run writes into, applying the policy of the module docstring.

    Args:
      out: The folder the user named (``--out``).
      run: JSON-ready identity of the run: ``{"command": ..., "args": {...}, "command_line": ...}``. Two runs are the
        same when their ``command`` and ``args`` are equal.
      overwrite: Replace a folder holding another run's results (through ``out.new-<pid>``, see above).
      on_keep: Called with one line when an interrupted or failed ``--overwrite`` run leaves what it wrote in
        ``out.new-<pid>`` (the CLI prints it).

    Raises:
      TypeError, ValueError: `out` is not a path, or empty.
      FileExistsError: `out` is a file, or holds another run's results and `overwrite` is False.
      OSError: the folder cannot be created, written or renamed (permissions, read-only or full disk).
    """
    folder = check_out_path(out)
    run = json.loads(json.dumps(dict(run), sort_keys=True))
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"--out {out!r} exists and is a file, not a folder; choose another path")
    _clear_leftovers(folder)
    exists = os.path.isdir(folder)
    found = _read_run(folder) if exists else None
    same = found is not None and (found.get("command"), found.get("args")) == (run["command"], run["args"])
    if not exists or same or not _holds_results(folder):
        created = not exists
        os.makedirs(folder, exist_ok=True)
        if not same:
            _write_run(folder, run)
        try:
            yield os.fspath(out)
        except BaseException:
            if created:
                _remove_if_empty(folder)
            elif not same and not _holds_results(folder):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, RUN_FILE))
            raise
        return
    if not overwrite:
        raise _refusal(out, folder, found)
    new = f"{folder}.new-{os.getpid()}"
    if os.path.lexists(new):
        shutil.rmtree(new)
    os.mkdir(new)
    try:
        _write_run(new, run)
        yield new
    except BaseException:
        if _holds_results(new):
            if on_keep is not None:
                on_keep(f"--out {out!r} is left as it was; what this run wrote is in {new!r}")
        else:
            shutil.rmtree(new, ignore_errors=True)
        raise
    old = f"{folder}.old-{os.getpid()}"
    os.rename(folder, old)
    os.rename(new, folder)
    shutil.rmtree(old)
