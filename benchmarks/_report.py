"""Shared by the benchmark scripts: timing and writing one's own section of docs/benchmarks.md or docs/results.md."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timeit(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 3, collect: bool = False) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls (gc.collect() before each if `collect`)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if collect:
            gc.collect()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def machine_line() -> str:
    import jax

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}), {time.strftime('%Y-%m-%d')}"
    )


def write_section(name: str, body: str, *, file: str = "docs/benchmarks.md", title: str | None = None) -> Path:
    """Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in `file` (appends if absent)."""
    path = ROOT / file
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# {title or ('Benchmarks' if 'bench' in file else 'Results')}\n\n"
    text = path.read_text() if path.exists() else head
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
