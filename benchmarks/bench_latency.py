"""Inference latency of the paper's pruned networks against the originals (issue 9), interleaved in one run.

Run: ``python benchmarks/bench_latency.py`` (writes its section of docs/benchmarks.md; ``--no-write`` prints only,
``--quick`` for a smoke run with few repeats). Pairs: VGG-16 / VGG-16-A, ResNet-56 / ResNet-56-B (with and without
``round_to=8``), ResNet-110 / ResNet-110-B (with and without ``round_to=8``), at batch 1 and 64; every model of a batch
size is timed in turn within each round (`jaxprune.benchmark_many`), so machine load hits all of them alike. Then
VGG-16 on the default conv path against plain ``lax.conv`` (``conv_impl="lax"``), and XLA's flops on both paths.

Targets: VGG-16-A / VGG-16 latency at batch 64 <= MAC ratio + 0.05 (<= 0.71), with the unpruned VGG-16 >= 4x faster
than on plain lax.conv; ResNet-56-B with ``round_to=8`` never slower than ResNet-56 (ratio <= 1.0 at batch 1 and 64;
aim <= 0.85).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section

import jaxprune as jp
from jaxprune import models
from jaxprune.models.layers import resolve_conv_impl

IMAGE = (32, 32, 3)
BATCHES = (1, 64)


def build():
    """Name -> (model, variables), originals first, pruned from the same seeded weights."""
    entries, pairs = {}, []
    for base, name in (("vgg16", "vgg16-A"), ("resnet56", "resnet56-B"), ("resnet110", "resnet110-B")):
        m = models.get(base)
        v = jp.random_variables(m, seed=0)
        label = {"vgg16": "VGG-16", "resnet56": "ResNet-56", "resnet110": "ResNet-110"}[base]
        entries[label] = (m, v)
        for round_to in (1, 8) if base != "vgg16" else (1,):
            plan = jp.preset(name, m, v, round_to=round_to)
            pruned = f"{label}-{name.split('-')[1]}" + (f" round_to={round_to}" if round_to > 1 else "")
            entries[pruned] = jp.prune(m, v, plan)
            pairs.append((label, pruned))
    return entries, pairs


def auto_paths(model) -> str:
    """Which path `conv_impl='auto'` takes for each conv of `model` on this backend, as 'path: layers'."""
    rows = [r for r in jp.count_macs(model, (1, *IMAGE)).rows if r.kind == "conv"]
    by: dict[str, list[str]] = {}
    for r in rows:
        impl = resolve_conv_impl("auto", r.kernel_size, r.out_hw, in_width=r.in_width, out_width=r.out_width)
        by.setdefault(impl, []).append(r.name)
    parts = []
    for impl in ("im2col", "padded", "lax"):
        names = by.get(impl, [])
        if names:
            shown = ", ".join(names) if len(names) <= 6 else f"{len(names)} convs"
            parts.append(f"{impl}: {shown}")
    return "; ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (default 20)")
    ap.add_argument("--repeats-lax", type=int, default=5, help="timed rounds of VGG-16 on plain lax.conv (default 5)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 2 on lax.conv: a smoke run")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    repeats, repeats_lax = (3, 2) if args.quick else (args.repeats, args.repeats_lax)
    if repeats < 1 or repeats_lax < 1:
        ap.error(f"--repeats and --repeats-lax must be >= 1, got {repeats} and {repeats_lax}")

    load = [os.getloadavg()[0]]
    entries, pairs = build()
    print(f"timing {len(entries)} models interleaved at batch sizes {BATCHES}, {repeats} rounds ...", flush=True)
    res = jp.benchmark_many(entries, IMAGE, batch_sizes=BATCHES, repeats=repeats, warmup=3)

    vgg, vgg_v = entries["VGG-16"]
    print(f"VGG-16 on the default path vs plain lax.conv, {repeats_lax} rounds ...", flush=True)
    lax_res = jp.benchmark_many(
        {"auto": (vgg, vgg_v), "lax": (vgg.clone(conv_impl="lax"), vgg_v)},
        IMAGE,
        batch_sizes=BATCHES,
        repeats=repeats_lax,
        warmup=1,
    )

    load.append(os.getloadavg()[0])
    macs = {n: jp.count_macs(m, (1, *IMAGE)).macs for n, (m, _) in entries.items()}
    lines = [
        "## Inference latency (`benchmarks/bench_latency.py`)",
        "",
        f"Machine: {machine_line()}; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end of the timing "
        "(the machine is shared: ratios from one interleaved run hold, absolute times are upper bounds). Latency = median wall-clock ms of one call of the jitted inference forward "
        f"(compile excluded, 3 warm-up calls, input already on the device); {repeats} rounds per batch size, every "
        "model timed once per round in alternating order (`jaxprune.benchmark_many`), so load from other processes "
        "hits all of them alike. Ratios are pruned / original medians of the same run; MACs = conv + dense "
        "multiply-accumulates per image (the paper's FLOP). Default conv path (`conv_impl='auto'`, see "
        "`jaxprune/models/layers.py`). Same seeded random weights for every model (latency does not depend on them).",
        "",
        "| pair | MAC ratio | batch | original ms | pruned ms | latency ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for orig, pruned in pairs:
        mac_ratio = macs[pruned] / macs[orig]
        for b in BATCHES:
            o, p = res[orig].median_ms(b), res[pruned].median_ms(b)
            ratio = p / o
            target, met = "", None
            if pruned == "VGG-16-A" and b == 64:
                target, met = f"<= MAC ratio + 0.05 = {mac_ratio + 0.05:.3f}", ratio <= mac_ratio + 0.05
            elif pruned == "ResNet-56-B round_to=8":
                target, met = "<= 1.0 (aim <= 0.85)", ratio <= 1.0
            verdicts.append(met)
            lines.append(
                f"| {orig} -> {pruned} | {mac_ratio:.3f} | {b} | {o:.2f} | {p:.2f} | {ratio:.3f} | {target} | "
                f"{'' if met is None else ('yes' if met else '**no**')} |"
            )

    lines += [
        "",
        f"VGG-16 on the default path against plain `lax.conv` everywhere (`conv_impl='lax'`), {repeats_lax} rounds "
        "interleaved:",
        "",
        "| batch | default ms | lax.conv ms | speed-up | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for b in BATCHES:
        a, lx = lax_res["auto"].median_ms(b), lax_res["lax"].median_ms(b)
        met = lx / a >= 4.0 if b == 64 else None
        verdicts.append(met)
        lines.append(
            f"| {b} | {a:.2f} | {lx:.2f} | {lx / a:.2f}x | {'>= 4x' if b == 64 else ''} | "
            f"{'' if met is None else ('yes' if met else '**no**')} |"
        )

    lines += [
        "",
        "XLA's flops (`jaxprune.xla_flops`, batch 1) on the two paths: the im2col matmuls multiply the zero-padded "
        "taps too (a 3x3 conv at a 2x2 output: 9 taps per pixel against 4 in bounds), the padded path its zero "
        "filters, so the default path reads higher than plain `lax.conv`, whose convention skips padding "
        "(docs/perf-notes.md, surprise 4). `count_macs` does not depend on the path.",
        "",
        "| model | MACs | XLA flops, lax.conv | / (2 x MACs) | XLA flops, default path | / (2 x MACs) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("VGG-16", "VGG-16-A", "ResNet-56", "ResNet-56-B", "ResNet-56-B round_to=8"):
        m, v = entries[name]
        fl = jp.xla_flops(m.clone(conv_impl="lax"), v, (1, *IMAGE))
        fa = jp.xla_flops(m, v, (1, *IMAGE))
        two = 2 * macs[name]
        lines.append(f"| {name} | {macs[name]:,} | {fl:,.0f} | {fl / two:.4f} | {fa:,.0f} | {fa / two:.4f} |")

    lines += ["", f"Paths `conv_impl='auto'` takes on this backend ({jax.default_backend()}):", ""]
    for name in ("VGG-16", "VGG-16-A", "ResNet-56-B", "ResNet-56-B round_to=8", "ResNet-110-B round_to=8"):
        lines.append(f"* {name}: {auto_paths(entries[name][0])}")

    lines += [
        "",
        "Compile times (s, batch 64): "
        + ", ".join(f"{n} {r.compile_s[64]:.1f}" for n, r in res.items())
        + f"; VGG-16 on lax.conv {lax_res['lax'].compile_s[64]:.1f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("bench_latency", text)
    missed = sum(1 for v in verdicts if v is False)
    print(f"targets missed: {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
