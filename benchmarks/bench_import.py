"""Import time: `import jaxprune` against `import jax, flax.linen` (what any Flax program pays anyway).

Run: ``python benchmarks/bench_import.py`` (writes its section of docs/benchmarks.md).
Each round starts two fresh interpreters, one per statement, in alternating order, and times the import statement
inside the process (interpreter start-up excluded): wall seconds and CPU seconds (user + sys of the process).
Target: median of 7 rounds, jaxprune / jax + flax.linen <= 1.1x.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, machine_line, write_section

ROUNDS = 7
STATEMENTS = {"jaxprune": "import jaxprune", "jax + flax.linen": "import jax, flax.linen"}

_PROBE = """
import json, os, time
w, c = time.perf_counter(), os.times()
{stmt}
c2 = os.times()
print(json.dumps([time.perf_counter() - w, (c2.user - c.user) + (c2.system - c.system)]))
"""


def _time_import(stmt: str) -> tuple[float, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(stmt=stmt)], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu


def main() -> None:
    load0 = os.getloadavg()[0]
    for stmt in STATEMENTS.values():  # warm the OS file cache once, untimed
        _time_import(stmt)
    wall: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    cpu: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    for r in range(ROUNDS):
        order = list(STATEMENTS) if r % 2 == 0 else list(STATEMENTS)[::-1]
        for name in order:
            w, c = _time_import(STATEMENTS[name])
            wall[name].append(w)
            cpu[name].append(c)
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    ratio_w = med_w["jaxprune"] / med_w["jax + flax.linen"]
    ratio_c = med_c["jaxprune"] / med_c["jax + flax.linen"]
    lines = [
        "## Import time (`benchmarks/bench_import.py`)",
        "",
        f"Machine: {machine_line()}; load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. "
        f"Median of {ROUNDS} rounds; each round runs both statements in fresh interpreters, in alternating order, "
        "timing the import statement inside the process (interpreter start-up excluded).",
        "",
        "| statement | wall (median) | CPU user+sys (median) |",
        "|---|---:|---:|",
    ]
    for name, stmt in STATEMENTS.items():
        lines.append(f"| `{stmt}` | {1e3 * med_w[name]:.0f} ms | {1e3 * med_c[name]:.0f} ms |")
    met = "yes" if ratio_w <= 1.1 else "**no**"
    lines += [
        "",
        "| ratio jaxprune / jax + flax.linen | wall | CPU | target | met |",
        "|---|---:|---:|---|---|",
        f"| median of {ROUNDS} | {ratio_w:.2f}x | {ratio_c:.2f}x | wall <= 1.1x | {met} |",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("bench_import", text)


if __name__ == "__main__":
    main()
