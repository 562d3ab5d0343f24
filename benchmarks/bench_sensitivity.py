"""Sensitivity scan speed (issue 7): the one-compile masked scan vs the naive loop, in the same run.

Run: ``python benchmarks/bench_sensitivity.py [--naive-points N | --full]`` (writes its section of
docs/benchmarks.md).

Setup: a fixed batch of the first 32 test images of `jaxprune.data.load_digits()` (32x32x3), metric accuracy, the L1
criterion, ratios 0.1 ... 0.9. ResNet-56: 27 groups x 9 ratios = 243 points; VGG-16: 13 x 9 = 117. The weights are
seeded random variables (`jaxprune.random_variables`): the timing does not depend on them.

* **Fast scan**: `jaxprune.sensitivity(model, variables, data=(x, y))`, timed from a cold start in this process
  (its compile included), then again with the compile cached.
* **Naive loop**, per point: `make_plan` for that one group, `prune`, re-instantiate the smaller model, `jax.jit` its
  apply, evaluate accuracy on the same batch. Its time per point is measured on `--naive-points` points spread over
  the groups and ratios (every point with `--full`) and extrapolated to all points; the output says which. The
  naive accuracies are checked against the scan's at those points.

Target: the scan >= 10x faster than the naive loop for ResNet-56 (VGG-16 reported, no target).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section

import jaxprune as jp
from jaxprune import models
from jaxprune.data import load_digits

NAME = "bench_sensitivity"
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sample_points(n_groups: int, n_ratios: int, count: int) -> list[tuple[int, int]]:
    """`count` distinct (group, ratio) index pairs drawn with a fixed seed (all of them if `count` covers the table)."""
    pairs = [(i, j) for i in range(n_groups) for j in range(n_ratios)]
    if count >= len(pairs):
        return pairs
    pick = np.random.default_rng(0).permutation(len(pairs))[:count]
    return [pairs[k] for k in sorted(pick)]


def naive_point(model, variables, x, y, group: str, ratio: float) -> float:
    plan = jp.make_plan(model, variables, prune_ratio={group: ratio})
    new_model, new_vars = jp.prune(model, variables, plan)
    apply = jax.jit(lambda v, xb: new_model.apply(v, xb, train=False))
    logits = apply(new_vars, x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def bench(name: str, x, y, naive_points: int) -> dict:
    model = models.get(name)
    variables = jp.random_variables(model, seed=0)
    t = time.perf_counter()
    sens = jp.sensitivity(model, variables, data=(x, y), ratios=RATIOS)
    fast_cold = time.perf_counter() - t
    t = time.perf_counter()
    jp.sensitivity(model, variables, data=(x, y), ratios=RATIOS)
    fast_warm = time.perf_counter() - t
    n_points = sens.values.size

    pts = sample_points(len(sens.groups), len(RATIOS), naive_points)
    times, mismatches = [], 0
    for i, j in pts:
        t = time.perf_counter()
        acc = naive_point(model, variables, x, y, sens.groups[i], RATIOS[j])
        times.append(time.perf_counter() - t)
        if abs(acc - sens.values[i, j]) > 1e-6:
            mismatches += 1
        print(f"  {name} naive {sens.groups[i]} @ {RATIOS[j]}: {times[-1]:.2f} s", flush=True)
    per_point = float(np.mean(times))
    naive_total = per_point * n_points
    return {
        "name": name,
        "groups": len(sens.groups),
        "ratios": len(RATIOS),
        "points": n_points,
        "fast_cold": fast_cold,
        "fast_warm": fast_warm,
        "naive_measured": len(pts),
        "naive_per_point": per_point,
        "naive_total": naive_total,
        "naive_sum_measured": float(np.sum(times)),
        "speedup": naive_total / fast_cold,
        "mismatches": mismatches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-points", type=int, default=12, help="naive-loop points to time (then extrapolate)")
    parser.add_argument("--full", action="store_true", help="time the naive loop on every point (slow: minutes)")
    args = parser.parse_args()
    ds = load_digits()
    x, y = ds.x_test[:32], ds.y_test[:32]
    results = []
    for name in ("resnet56", "vgg16"):
        r = bench(name, x, y, 10**9 if args.full else args.naive_points)
        print(r, flush=True)
        results.append(r)

    lines = [
        "## Sensitivity scan: one compile vs the naive loop (`benchmarks/bench_sensitivity.py`)",
        "",
        f"Machine: {machine_line()}. One run, both paths in the same process.",
        "Batch: the first 32 test images of `load_digits()` (32x32x3), metric accuracy, criterion L1, ratios "
        "0.1 ... 0.9, seeded random weights.",
        "Fast scan = `jaxprune.sensitivity(model, variables, data=(x, y))` from a cold start (one compile included); "
        "naive = per point `make_plan` + `prune` + re-instantiate + `jax.jit` + evaluate.",
        "",
        "| model | points | fast scan (cold, compile incl.) | fast scan (warm) | naive per point | naive, all points "
        "| speed-up (cold) | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        measured = (
            "measured"
            if r["naive_measured"] == r["points"]
            else f"{r['naive_measured']} of {r['points']} timed, extrapolated"
        )
        target = ">= 10x" if r["name"] == "resnet56" else "(reported)"
        met = ("**yes**" if r["speedup"] >= 10 else "**no**") if r["name"] == "resnet56" else ""
        lines.append(
            f"| {r['name']} ({r['groups']} x {r['ratios']}) | {r['points']} | {r['fast_cold']:.1f} s | "
            f"{r['fast_warm']:.1f} s | {r['naive_per_point']:.2f} s | {r['naive_total']:.0f} s ({measured}) | "
            f"{r['speedup']:.1f}x | {target} | {met} |"
        )
    lines.append("")
    lines.append(
        "Naive accuracies equal the scan's at every timed point: "
        + ", ".join(f"{r['name']} {r['naive_measured'] - r['mismatches']}/{r['naive_measured']}" for r in results)
        + "."
    )
    write_section(NAME, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
