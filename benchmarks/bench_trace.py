"""Coupling discovery speed: `trace_groups` on the shipped models, split into building the jaxpr (`jax.make_jaxpr`
over abstract shapes) and analysing it (the union-find over dimensions, group extraction, policy); and the whole
trace + plan + prune of third-party-style models (flax's ImageNet ResNet-50, a big_vision ViT-Ti/16, a U-Net).

Run: ``python benchmarks/bench_trace.py`` (writes its section of docs/benchmarks.md).
Targets: analysing VGG-16's jaxpr takes <= 1 s after the jaxpr is built (median); trace + plan + prune of a
ResNet-50 at 224x224 takes <= 2 s (median; nothing of the forward is compiled, the scoring kernels are warm).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, median_ms, timeit, write_section
from _thirdparty import ResNet50, UNet, ViT

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


def _random(abstract, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract)


def measure_pipeline(name: str, model, shape: tuple[int, ...], apply) -> dict:
    """trace_model + make_plan(0.5 on every conv/fc group the float reaches) + prune, on random variables."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = _random(jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x))

    def trace():
        # A fresh function each time: jax caches the jaxpr of a function it has traced, and this measures tracing.
        return jp.trace_model(lambda v, inp: apply(v, inp), variables, x)

    def plan(tm):
        return jp.make_plan(tm, variables, prune_ratio=0.5)

    tm = trace()
    p = plan(tm)  # warms the jitted per-kernel scoring (compiled once per kernel shape)
    jp.prune(tm, variables, p)
    t_trace = timeit(trace, repeats=5, warmup=0)
    t_plan = timeit(lambda: plan(tm), repeats=5, warmup=0)
    t_prune = timeit(lambda: jp.prune(tm, variables, p), repeats=5, warmup=0)

    def pipeline():
        traced = trace()
        return jp.prune(traced, variables, plan(traced))

    t_all = timeit(pipeline, repeats=3, warmup=0)
    groups = tm.channel_groups()
    return {
        "name": name,
        "input": "x".join(str(s) for s in shape[1:]),
        "groups": len(groups),
        "prunable": sum(g.prunable for g in groups),
        "reached": len(p.keep),
        "trace": median_ms(t_trace),
        "plan": median_ms(t_plan),
        "prune": median_ms(t_prune),
        "total": median_ms(t_all),
    }


def main() -> None:
    load = os.getloadavg()[0]
    resnet50, vit, unet = ResNet50(), ViT(), UNet()
    pipe = [
        measure_pipeline(
            "ResNet-50 (flax examples)", resnet50, (1, 224, 224, 3), lambda v, x: resnet50.apply(v, x, train=False)
        ),
        measure_pipeline("ViT-Ti/16 (big_vision style)", vit, (1, 224, 224, 3), lambda v, x: vit.apply(v, x)),
        measure_pipeline("U-Net, nearest resize", unet, (1, 64, 64, 3), lambda v, x: unet.apply(v, x)),
    ]
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
    r50 = pipe[0]
    met50 = r50["total"] <= 2000.0
    lines += [
        "",
        "Third-party-style models (`benchmarks/_thirdparty.py`: flax's ImageNet-example ResNet-50, a big_vision-style "
        "ViT-Ti/16 with a `jnp.tile` class token, a U-Net with GroupNorm, nearest-neighbour `jax.image.resize` and "
        "concatenated skips), batch 1, random variables: *trace* is `trace_model`, *plan* `make_plan(prune_ratio=0.5)` "
        "(a float reaches every conv and hidden dense group; the per-kernel L1 scoring is compiled once before "
        "timing), *prune* `prune`; *total* runs the three in a row. *Trace* includes `jax.make_jaxpr` of a new "
        "function each time (no jaxpr cache; it is most of the time: flax's `apply` under `make_jaxpr`), and the "
        "residual streams are not reached by a float. Nothing of the forward pass is compiled. Load average at the "
        f"start: {load:.1f} (other work on the machine inflates these times).",
        "",
        "| model | input | traced groups | prunable | reached by 0.5 | trace | plan | prune | total | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in pipe:
        target = "total <= 2 s" if r is r50 else ""
        ok = ("yes" if met50 else "**no**") if r is r50 else ""
        lines.append(
            f"| {r['name']} | {r['input']} | {r['groups']} | {r['prunable']} | {r['reached']} | {r['trace']:.0f} ms | "
            f"{r['plan']:.0f} ms | {r['prune']:.0f} ms | {r['total']:.0f} ms | {target} | {ok} |"
        )
    text = "\n".join(lines)
    print(text)
    write_section("bench_trace", text)


if __name__ == "__main__":
    main()
