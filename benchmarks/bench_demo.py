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
    lg = logging.getLogger("jax")  # jax's compile records propagate up to its top logger
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


def batch_costs(sizes=(16, 32, 64), steps: int = 8) -> dict:
    """CPU seconds per image of the demo's ResNet-20 training step at each batch size (compile excluded)."""
    import jax
    import numpy as np

    import jaxprune as jp
    from jaxprune import train

    m = jp.models.resnet20()
    state = train.TrainState.create(m, jp.random_variables(m, seed=0), train.sgd(0.05, nesterov=True), seed=0)
    rng = np.random.default_rng(0)
    out = {}
    for b in sizes:
        x = rng.standard_normal((b, 32, 32, 3), dtype=np.float32)
        y = (np.arange(b) % 10).astype(np.int32)
        st, met = train.train_step(state, x, y, label_smoothing=0.1)  # compile
        jax.block_until_ready(met)
        c = time.process_time()
        for _ in range(steps):
            st, met = train.train_step(st, x, y, label_smoothing=0.1)
        jax.block_until_ready(met)
        out[str(b)] = (time.process_time() - c) / (steps * b)
    return out


def _wall_since_start() -> float:
    """Seconds since this process started (Linux: from /proc), so "start" includes the interpreter and imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _env() -> dict:
    """A child's environment: no persistent compilation cache (a cold start), this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_once(quick: bool) -> dict:
    env = _env()
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


def _before_after(before: dict, after: dict) -> str:
    """Per phase, CPU seconds and compiles of a saved earlier run (``--before``) beside this one."""
    from jaxprune._table import markdown_table

    def by_phase(run):
        return {r["phase"]: (r["cpu"], sum(c for c, _ in r["compiles"].values())) for r in run["rows"]}

    b, a = by_phase(before), by_phase(after)
    rows = [("phase", "CPU s before", "CPU s after", "compiles before", "compiles after")]
    for phase in dict.fromkeys([*b, *a]):
        (cb, nb), (ca, na) = b.get(phase, (0.0, 0)), a.get(phase, (0.0, 0))
        rows.append((phase, f"{cb:.1f}", f"{ca:.1f}", str(nb), str(na)))
    rows.append(
        (
            "total",
            f"{before['os_cpu']:.1f}",
            f"{after['os_cpu']:.1f}",
            str(sum(n for _, n in b.values())),
            str(sum(n for _, n in a.values())),
        )
    )
    return (
        f"Before and after (`--before`): the earlier run {before['os_cpu']:.0f} s CPU / {before['os_wall']:.0f} s wall "
        f"at load {before['load'][0]:.1f}, test accuracy {before['accuracy'][0]:.4f} -> {before['accuracy'][1]:.4f}; "
        f"this one {after['os_cpu']:.0f} s CPU / {after['os_wall']:.0f} s wall at load {after['load'][0]:.1f}.\n\n"
        + markdown_table(rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    ap.add_argument("--runs", type=int, default=1, help="cold runs (each a fresh process)")
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    ap.add_argument("--readme", action="store_true", help="write the run's output into README.md")
    ap.add_argument("--save", metavar="JSON", help="also save the run with the least CPU to this file")
    ap.add_argument(
        "--before",
        metavar="JSON",
        help="a run saved with --save (e.g. of the code before a change): its phases are shown beside this one's",
    )
    ap.add_argument(
        "--batch-costs", action="store_true", help="also time the training step per image at batch 16, 32 and 64"
    )
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--child-batch-costs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_batch_costs:
        print(json.dumps(batch_costs()))
        return
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
    if args.batch_costs:
        load = os.getloadavg()[0]
        r = subprocess.run(
            [sys.executable, __file__, "--child-batch-costs"], capture_output=True, text=True, env=_env(), check=True
        )
        costs = json.loads(r.stdout.strip().splitlines()[-1])
        body += (
            "\n\nWhy the digits recipes train at batch 16: CPU seconds per image of the ResNet-20 training step "
            f"(8 steps after the compile, load {load:.1f}): "
            + ", ".join(f"batch {b}: {1e3 * c:.1f} ms" for b, c in costs.items())
            + ". The per-image cost grows with the batch (activations fall out of cache)."
        )
    if args.save:
        Path(args.save).write_text(json.dumps(best, indent=1))
    if args.before:
        body += "\n\n" + _before_after(json.loads(Path(args.before).read_text()), best)
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
