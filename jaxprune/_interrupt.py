"""Ctrl-C in the command line is never lost.

Python raises `KeyboardInterrupt` wherever the main thread happens to be when SIGINT arrives. If that is a finaliser
(an object's ``__del__``, a weakref or garbage-collector callback), Python prints "Exception ignored in ..." and goes
on: a ``jaxprune train --epochs 1000`` then trained on after Ctrl-C (seen once in the interrupt loop of
tests/test_demo.py). The program (`jaxprune.cli.main` run as ``jaxprune``) installs `handler`, which remembers the
interrupt as well as raising it, and the training loop calls `check` before every step, which raises it again if it
was swallowed. A library user's own process (a notebook) keeps Python's handler: `check` is then a no-op.
"""

from __future__ import annotations

import signal

__all__ = ["check", "install"]

_pending = False


def handler(signum, frame) -> None:
    """SIGINT: remembered, then raised as Python's default handler does."""
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Makes `handler` the SIGINT handler (the program only; it runs in the main thread)."""
    signal.signal(signal.SIGINT, handler)


def check() -> None:
    """Raises `KeyboardInterrupt` if one was signalled through `handler` (and perhaps swallowed) earlier."""
    if _pending:
        raise KeyboardInterrupt
