"""A fork server for the interrupt loop of tests/test_demo.py: ``jaxprune`` runs that skip the interpreter's imports.

Run as ``python tests/_cli_forker.py``. It imports jax and the command line once, then reads requests from stdin,
one JSON line each: ``{"argv": [...], "stdout": PATH, "stderr": PATH}``. For each it forks a child that writes its
stdout and stderr to those files (line by line, as ``PYTHONUNBUFFERED`` does) and runs `jaxprune.cli.main` as the
program does (``argv`` None: the program's SIGINT handler and its ``os._exit(130)`` on an interrupt), then ends with
the status it returned. The server answers ``pid N`` when the child runs and ``status S`` (the raw wait status,
`os.waitstatus_to_exitcode` reads it) when it has ended; a signal death stays visible as such. The server compiles
nothing and starts no thread before it forks (jax creates its backend in the child, on first use).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import jax  # noqa: F401  (imported once here: what the children skip)

from jaxprune import cli, train  # noqa: F401
from jaxprune.demo import digits  # noqa: F401


def _child(argv: list[str], stdout: str, stderr: str) -> None:
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.close(0)
    sys.stdout.reconfigure(line_buffering=True, write_through=True)
    sys.stderr.reconfigure(line_buffering=True, write_through=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter starts
    sys.argv = ["jaxprune", *argv]
    try:
        code = cli.main()  # an interrupt ends the process inside, with os._exit(130)
    except BaseException:  # shown as the interpreter would, then exit status 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(req["argv"], req["stdout"], req["stderr"])
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"status {status}", flush=True)


if __name__ == "__main__":
    main()
