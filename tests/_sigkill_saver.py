"""The child of the SIGKILL test (tests/test_checkpoint.py): saves checkpoints in a loop until it is killed.

It runs in processes forked from a multiprocessing forkserver that imported this module (and so jax and jaxprune)
once: each child starts in milliseconds instead of re-importing jax, which made the 20-kill loop cost minutes of CPU.
"""

from __future__ import annotations

import os

import numpy as np

from jaxprune import models
from jaxprune.checkpoint import save_checkpoint


def save_forever(path: str, step: int, shapes: dict, log: str) -> None:
    """Saves a ResNet-20 checkpoint whose every leaf holds `step`, then step + 1, ...; after each complete save one
    line ``step`` is appended to `log` in one write."""
    import jax

    m = models.resnet20()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        v = jax.tree_util.tree_map(lambda a, s=step: np.full(a.shape, s, a.dtype), shapes)
        save_checkpoint(path, m, v, step=step, metadata={"step": step})
        os.write(fd, f"{step}\n".encode())
        step += 1
