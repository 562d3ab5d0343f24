"""Where `jaxprune demo` spends its time from a cold start: CPU and wall seconds and XLA compiles per phase.

Run: ``python benchmarks/bench_demo.py [--full] [--runs N] [--write] [--readme]`` (``--write`` replaces its section
of docs/benchmarks.md; ``--readme`` replaces the demo output shown in README.md with this run's, and says what
produced it).

Each run starts a fresh Python process with no persistent compilation cache (``JAX_COMPILATION_CACHE_DIR`` unset:
the cold start of a new user) and a new output folder, and calls `jaxprune.run_demo` (``quick=True`` unless
``--full``) as ``jaxprune demo --quick`` does. The child records, per phase of the demo (the ``[i/6]`` lines), the
wall seconds, the process CPU seconds (user + system, every thread: XLA runs on all cores) and the XLA compiles
(``jax_log_compiles``: count and the compile wall seconds, by jitted function name). "start" is the interpreter, the
imports and the data set before phase 1. The process total is also read from the operating system
(`resource.getrusage` of the child).

The machine is shared with other jobs, so wall seconds depend on its load: CPU seconds are the figure to compare
(they inflate somewhat under load too, through contention); the load average is printed with every run.
Targets (issue 17): ``--quick`` <= 90 s CPU and <= 60 s wall, the full demo <= 3 min wall, cold, on a quiet 2-core
machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, machine_line, write_section

NAME = "bench_demo"
_PHASE_END = re.compile(r":| \(| in /| or reuse")  # the phase's name ends before its details
_COMPILE = re.compile(r"Finished XLA compilation of (?:jit\()?(.+?)\)? in ([0-9.]+) sec")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(out: str, quick: bool) -> dict:
    """Runs the demo in this (fresh) process and returns the per-phase breakdown."""
    import jax

    phases: list[dict] = [{"phase": "start", "wall0": 0.0, "cpu0": 0.0, "compiles": defaultdict(list)}]
    t_start = time.perf_counter() - _wall_since_start()

    class Compiles(logging.Handler):
        def emit(self, record):
            m = _COMPILE.search(record.getMessage())
            if m:
                phases[-1]["compiles"][m.group(1)].append(float(m.group(2)))

    handler = Compiles()
    for name in ("jax._src.interpreters.pxla", "jax._src.dispatch"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.propagate = False  # count, do not print
    jax.config.update("jax_log_compiles", True)

    def log(msg: str) -> None:
        m = re.match(r"\[(\d)/6\] (.*)", msg)
        if m:
            phases.append(
                {
                    "phase": f"{m.group(1)}. {_PHASE_END.split(m.group(2))[0]}",
                    "wall0": time.perf_counter() - t_start,
                    "cpu0": _cpu(),
                    "compiles": defaultdict(list),
                }
            )

    from jaxprune.demo import run_demo

    result = run_demo(out, quick=quick, progress=False, log=log)
    end_wall, end_cpu = time.perf_counter() - t_start, _cpu()
    rows = []
    for i, p in enumerate(phases):
        w1, c1 = (phases[i + 1]["wall0"], phases[i + 1]["cpu0"]) if i + 1 < len(phases) else (end_wall, end_cpu)
        rows.append(
            {
                "phase": p["phase"],
                "wall": w1 - p["wall0"],
                "cpu": c1 - p["cpu0"],
                "compiles": {k: [len(v), sum(v)] for k, v in p["compiles"].items()},
            }
        )
    n = result.numbers
    return {
        "rows": rows,
        "wall": end_wall,
        "cpu": end_cpu,
        "accuracy": [n["before"]["test_accuracy"], n["after"]["test_accuracy"]],
        "macs": [n["before"]["macs"], n["after"]["macs"]],
        "text": result.text,
    }


def _wall_since_start() -> float:
    """Seconds since this process started (Linux: from /proc), so "start" includes the interpreter and imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def run_once(quick: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        args = [sys.executable, __file__, "--child", tmp] + ([] if quick else ["--full"])
        r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"the demo failed:\n{r.stderr[-4000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["os_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["os_wall"] = wall
    out["load"] = (load, os.getloadavg()[0])
    return out


def _table(run: dict) -> str:
    from jaxprune._table import markdown_table

    rows = [("phase", "wall s", "CPU s", "compiles", "compile wall s", "largest compiles (count, wall s)")]
    for r in run["rows"]:
        comp = sorted(r["compiles"].items(), key=lambda kv: -kv[1][1])
        top = ", ".join(f"{k} ({c}, {s:.1f})" for k, (c, s) in comp[:4])
        rows.append(
            (
                r["phase"],
                f"{r['wall']:.1f}",
                f"{r['cpu']:.1f}",
                str(sum(c for c, _ in r["compiles"].values())),
                f"{sum(s for _, s in r['compiles'].values()):.1f}",
                top,
            )
        )
    total_c = sum(c for r in run["rows"] for c, _ in r["compiles"].values())
    total_s = sum(s for r in run["rows"] for _, s in r["compiles"].values())
    rows.append(("total", f"{run['os_wall']:.1f}", f"{run['os_cpu']:.1f}", str(total_c), f"{total_s:.1f}", ""))
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    ap.add_argument("--runs", type=int, default=1, help="cold runs (each a fresh process)")
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    ap.add_argument("--readme", action="store_true", help="write the run's output into README.md")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, quick=not args.full)))
        return
    quick = not args.full
    runs = []
    for i in range(args.runs):
        run = run_once(quick)
        runs.append(run)
        print(f"run {i + 1}: {run['os_cpu']:.1f} s CPU, {run['os_wall']:.1f} s wall, load {run['load'][0]:.1f}")
        print(_table(run))
    best = min(runs, key=lambda r: r["os_cpu"])
    what = "jaxprune demo --quick" if quick else "jaxprune demo"
    body = "\n".join(
        [
            f"## Demo from a cold start (`benchmarks/bench_demo.py{'' if quick else ' --full'}`)",
            "",
            f"{machine_line()}. `{what}` in a fresh process, no persistent compilation cache; {len(runs)} run(s): "
            + ", ".join(f"{r['os_cpu']:.0f} s CPU / {r['os_wall']:.0f} s wall (load {r['load'][0]:.1f})" for r in runs)
            + ". CPU = user + system of the process (all threads); the machine is shared, so compare CPU seconds. "
            f"Test accuracy {best['accuracy'][0]:.4f} -> {best['accuracy'][1]:.4f}, MACs "
            f"{best['macs'][0]:,} -> {best['macs'][1]:,}. The run with the least CPU, per phase:",
            "",
            _table(best),
        ]
    )
    if args.write:
        print("wrote", write_section(NAME + ("" if quick else "_full"), body))
    else:
        print(body)
    if args.readme:
        readme = (
            f"Output of `{what}` (written by `python benchmarks/bench_demo.py{'' if quick else ' --full'} --readme`): "
            f"{best['os_cpu']:.0f} s of CPU and {best['os_wall']:.0f} s wall from a cold start (no compilation cache) "
            f"on {machine_line()}, load average {best['load'][0]:.1f} (wall time grows with the load of the machine):"
            f"\n\n```\n{best['text']}\n```"
        )
        print("wrote", write_section("demo-output", readme, file="README.md"))


if __name__ == "__main__":
    main()
