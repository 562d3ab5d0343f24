"""Coupling discovery speed (issue 10): `trace_groups` on the shipped models, split into building the jaxpr
(`jax.make_jaxpr` over abstract shapes) and analysing it (the union-find over dimensions, group extraction, policy).

Run: ``python benchmarks/bench_trace.py`` (writes its section of docs/benchmarks.md).
Target: analysing VGG-16's jaxpr takes <= 1 s after the jaxpr is built (median).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, median_ms, timeit, write_section

import jaxprune as jp
from jaxprune.trace import extract as tr_extract
from jaxprune.trace import policy as tr_policy


def measure(name: str, size: int) -> dict:
    model = jp.models.get(name)
    abs_vars = jax.tree_util.tree_map(tr_extract._abstract, jp.abstract_variables(model))
    abs_x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def build():
        return jax.make_jaxpr(lambda v, x: model.apply(v, x), return_shape=True)(abs_vars, abs_x)

    closed, out_shape = build()

    def analyse():
        trace = tr_extract._analyze_jaxpr(closed, out_shape, abs_vars, abs_x)
        tr_policy._apply_policy(trace.specs, trace.dims, model)  # the model's declaration names the groups
        return [tr_extract._materialize(s, trace.dims, {}) for s in trace.specs]

    groups = analyse()
    declared = {g.name: g for g in model.channel_groups()}
    matched = sum(
        1
        for g in groups
        if g.name in declared
        and set(g.producers) == set(declared[g.name].producers)
        and set(g.consumers) == set(declared[g.name].consumers)
    )
    t_build = timeit(build, repeats=5, warmup=1)
    t_analyse = timeit(analyse, repeats=7, warmup=1)
    return {
        "name": name,
        "eqns": _count_eqns(closed.jaxpr),
        "groups": len(groups),
        "matched": matched,
        "declared": len(declared),
        "build": median_ms(t_build),
        "analyse": median_ms(t_analyse),
    }


def _count_eqns(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count_eqns(sub)
    return n


def main() -> None:
    rows = [measure("vgg16", 32), measure("resnet56", 32), measure("resnet110", 32), measure("resnet34", 224)]
    vgg = rows[0]
    met = vgg["analyse"] <= 1000.0
    lines = [
        "## Coupling discovery from jaxprs (`benchmarks/bench_trace.py`)",
        "",
        f"Machine: {machine_line()}. Medians. Abstract shapes, batch 1; nothing is compiled. *Build* is "
        "`jax.make_jaxpr` of `model.apply`; *analyse* is what `trace_groups` adds after that (union-find over every "
        "axis of every value, group extraction, the model's policy). *Declared matched*: traced groups whose name, "
        "producers and consumers equal a declared group (CIFAR ResNet streams are traced as pieces split by the "
        "zero-padded shortcuts, so they never match a declared stream one to one).",
        "",
        "| model | eqns (incl. sub-jaxprs) | build jaxpr | analyse | traced groups | declared matched | target | met |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        target = "analyse <= 1 s" if r is vgg else ""
        ok = ("yes" if met else "**no**") if r is vgg else ""
        lines.append(
            f"| {r['name']} | {r['eqns']} | {r['build']:.0f} ms | {r['analyse']:.0f} ms | {r['groups']} | "
            f"{r['matched']} of {r['declared']} | {target} | {ok} |"
        )
    text = "\n".join(lines)
    print(text)
    write_section("bench_trace", text)


if __name__ == "__main__":
    main()
