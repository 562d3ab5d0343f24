"""The accelerator check behind `benchmarks/gpu_check.sh`: quick tests, latency, XLA flops and conv paths off CPU.

Run from the checkout: ``benchmarks/gpu_check.sh`` (it sets ``PYTHONPATH=.``, so the checkout's jaxprune is used
whatever is installed; nothing is downloaded). On the accelerator jax sees it runs, within about 6 minutes:

1. the quick tests that exercise numerics (`TEST_FILES`, ``-m "not slow"``), float32 matmuls at
   ``JAX_DEFAULT_MATMUL_PRECISION=highest`` (the tests' tolerances assume exact float32 products; GPUs default to
   TF32). CPU-only tests are left out: the two that ask for several host devices (`CPU_ONLY_TESTS`) are deselected,
   the CPU conv-path tests skip themselves off CPU, and the multi-device and multi-process test files (which pin
   ``JAX_PLATFORMS=cpu``) are not in the list;
2. inference latency, pruned / original, for VGG-16 -> VGG-16-A and ResNet-56 -> ResNet-56-B at batch 1, 64 and 256
   (`jaxprune.benchmark_many`, interleaved);
3. XLA's flops (`jaxprune.xla_flops`) against the analytic MACs (`jaxprune.count_macs`) for the same models;
4. whether ``conv_impl='auto'`` picks the fastest path there: VGG-16 at batch 64 timed on every path.

It writes the ``gpu_check`` section of docs/benchmarks.md (``--out`` another file). Without an accelerator the full
run refuses (exit 2); ``--smoke`` runs every phase at toy sizes on CPU to check the script itself and writes the line
saying that no accelerator was available (on an accelerator, ``--smoke`` writes nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, write_section

#: Quick test files that exercise the numerics on the device (models, layers, masking, surgery, flops, scoring).
TEST_FILES = (
    "tests/test_layers.py",
    "tests/test_models.py",
    "tests/test_masking.py",
    "tests/test_surgery.py",
    "tests/test_flops.py",
    "tests/test_scoring.py",
    "tests/test_strategies.py",
    "tests/test_latency.py",
)
#: CPU-only tests among them: they ask for several host devices (``--xla_force_host_platform_device_count``), which
#: a process on an accelerator backend does not have. Deselected in the full run.
CPU_ONLY_TESTS = (
    "tests/test_surgery.py::test_unshardable_leaf_is_replicated_with_a_warning",
    "tests/test_scoring.py::test_kernels_on_different_devices",
)
#: The smoke run's tests: cheap, and enough to check that pytest runs from the checkout.
SMOKE_TEST_FILES = ("tests/test_plan.py::test_invariants", "tests/test_plan.py::test_from_json_errors")
#: (model, preset, label); the smoke run prunes ResNet-20's first stage by half instead (seconds of compile, not
#: minutes, on CPU), through the same code.
PAIRS = (("vgg16", "vgg16-A", "VGG-16"), ("resnet56", "resnet56-B", "ResNet-56"))
SMOKE_PAIRS = (("resnet20", {"stage1": 0.5}, "ResNet-20"),)
IMAGE = (32, 32, 3)
SECTION = "gpu_check"
TITLE = "## Accelerator check (`benchmarks/gpu_check.sh`)"


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_tests(files, *, timeout: int, deselect=()) -> dict:
    """pytest on `files` in a subprocess; returns counts parsed from its summary line and the line itself."""
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *files]
    for test in deselect:
        cmd += ["--deselect", test]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "summary": f"timed out after {timeout} s", "passed": 0, "failed": 0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ (passed|failed|error)", ln)), "")
    counts = {
        k: int(m.group(1)) for k in ("passed", "failed", "skipped", "error") if (m := re.search(rf"(\d+) {k}", summary))
    }
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    return {"rc": proc.returncode, "summary": summary or "no summary", **{"passed": 0, "failed": 0, **counts}}


def build(smoke: bool) -> tuple[dict, list]:
    """Name -> (model, variables), originals first; and the (original, pruned) name pairs."""
    import jaxprune as jp
    from jaxprune import models

    entries, pairs = {}, []
    for base, preset, label in SMOKE_PAIRS if smoke else PAIRS:
        m = models.get(base)
        v = jp.random_variables(m, seed=0)
        entries[label] = (m, v)
        if isinstance(preset, str):
            pruned, plan = f"{label}-{preset.split('-')[1]}", jp.preset(preset, m, v)
        else:
            pruned, plan = f"{label} pruned", jp.make_plan(m, v, prune_ratio=preset)
        entries[pruned] = jp.prune(m, v, plan)
        pairs.append((label, pruned))
    return entries, pairs


def latency(entries, pairs, batches, repeats: int, warmup: int) -> list[str]:
    import jaxprune as jp

    res = jp.benchmark_many(entries, IMAGE, batch_sizes=batches, repeats=repeats, warmup=warmup)
    macs = {n: jp.count_macs(m, (1, *IMAGE)).macs for n, (m, _) in entries.items()}
    lines = ["| pair | MAC ratio | batch | original ms | pruned ms | latency ratio |", "|---|---|---|---|---|---|"]
    for orig, pruned in pairs:
        for b in batches:
            o, p = res[orig].median_ms(b), res[pruned].median_ms(b)
            lines.append(
                f"| {orig} -> {pruned} | {macs[pruned] / macs[orig]:.3f} | {b} | {o:.3f} | {p:.3f} | {p / o:.3f} |"
            )
    return lines


def flops(entries) -> list[str]:
    import jaxprune as jp

    lines = ["| model | MACs | XLA flops | / (2 x MACs) |", "|---|---|---|---|"]
    for name, (m, v) in entries.items():
        macs = jp.count_macs(m, (1, *IMAGE)).macs
        fl = jp.xla_flops(m, v, (1, *IMAGE))
        lines.append(f"| {name} | {macs:,} | {fl:,.0f} | {fl / (2 * macs):.4f} |")
    return lines


def conv_paths(entries, name: str, batch: int, repeats: int, warmup: int) -> tuple[list[str], bool]:
    """`name` (VGG-16 in the full run) on every conv path; whether 'auto' resolves to (within 5 % of) the fastest."""
    import jax

    import jaxprune as jp
    from jaxprune.models.layers import resolve_conv_impl

    m, v = entries[name]
    impls = ("lax", "im2col", "padded")
    res = jp.benchmark_many(
        {i: (m.clone(conv_impl=i), v) for i in impls}, IMAGE, batch_sizes=(batch,), repeats=repeats, warmup=warmup
    )
    ms = {i: res[i].median_ms(batch) for i in impls}
    rows = [r for r in jp.count_macs(m, (1, *IMAGE)).rows if r.kind == "conv"]
    chosen = sorted(
        {resolve_conv_impl("auto", r.kernel_size, r.out_hw, in_width=r.in_width, out_width=r.out_width) for r in rows}
    )
    best = min(ms, key=ms.get)
    # 'auto' may mix paths per layer (it does on CPU); off CPU it is one path, compared with the fastest whole-model one.
    auto_ms = ms[chosen[0]] if len(chosen) == 1 else None
    right = auto_ms is not None and auto_ms <= 1.05 * ms[best]
    lines = [
        f"{name} at batch {batch}, every conv on one path ({repeats} rounds interleaved), on {jax.default_backend()}:",
        "",
        "| path | ms |",
        "|---|---|",
        *[f"| {i} | {ms[i]:.3f} |" for i in impls],
        "",
        f"`conv_impl='auto'` resolves to {', '.join(chosen)} here; fastest measured: {best}. Right path: "
        + (
            ("yes." if right else "**no**.")
            if auto_ms is not None
            else "not decided by this table (auto mixes paths per layer here, as on CPU)."
        ),
    ]
    return lines, right


def device_line() -> str:
    import jax

    d = jax.devices()
    return (
        f"{d[0].device_kind} x {len(d)} ({jax.default_backend()}), jax {jax.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes, runs on CPU: checks the script itself")
    ap.add_argument("--out", default="docs/benchmarks.md", help="file whose gpu_check section is written")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (default 20)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    try:
        import flax
        import jax
        import numpy
        import optax  # noqa: F401 (jaxprune.train needs it)
    except ImportError as e:
        print(
            f"gpu_check: {sys.executable} cannot import {e.name}; activate the environment that has jax, flax, optax",
            file=sys.stderr,
        )
        return 2
    _log(f"jax {jax.__version__}, flax {flax.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}")
    backend = jax.default_backend()
    accelerator = backend != "cpu"
    _log(f"devices: {device_line()}")
    if not accelerator and not args.smoke:
        print(
            f"gpu_check: jax sees no accelerator here (backend {backend!r}, devices {jax.devices()}); run it where jax "
            "sees a GPU or TPU, or pass --smoke to check the script on CPU",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    smoke = args.smoke
    # The smoke run times one batch size: the table's per-batch loop is the same code for one row as for three, and
    # every further batch size is two more compiles (original and pruned) that check nothing new about the script.
    batches = (1,) if smoke else (1, 64, 256)
    repeats, warmup = (1, 0) if smoke else (args.repeats, 3)

    _log("phase 1: quick tests")
    if smoke:
        tests = run_tests(SMOKE_TEST_FILES, timeout=240)
    else:
        tests = run_tests(TEST_FILES, timeout=240, deselect=CPU_ONLY_TESTS)
    _log(f"tests: {tests['summary']}")
    _log("phase 2: latency")
    entries, pairs = build(smoke)
    lat = latency(entries, pairs, batches, repeats, warmup)
    _log("phase 3: XLA flops")
    fl = flops(entries)
    _log("phase 4: conv paths")
    conv, right = conv_paths(entries, pairs[0][0], 2 if smoke else 64, repeats, warmup)
    seconds = time.perf_counter() - t0
    ok = tests["rc"] == 0
    _log(f"done in {seconds:.0f} s; tests {'passed' if ok else 'FAILED'}; auto path right: {right}")

    report = "\n".join(
        [
            TITLE,
            "",
            f'Device: {device_line()}; {seconds:.0f} s in all. Quick tests ({len(TEST_FILES)} files, `-m "not slow"`, '
            f"float32 matmuls at `JAX_DEFAULT_MATMUL_PRECISION=highest`, {len(CPU_ONLY_TESTS)} CPU-only tests "
            f"deselected): {tests['summary']}.",
            "",
            f"Latency = median ms of one jitted inference forward ({repeats} rounds interleaved, {warmup} warm-up "
            "calls, compile excluded); ratio = pruned / original of the same run; MACs = conv + dense "
            "multiply-accumulates per image.",
            "",
            *lat,
            "",
            "XLA's flops (`cost_analysis()['flops']` of the compiled forward, batch 1, default conv path) against "
            "2 x the analytic MACs:",
            "",
            *fl,
            "",
            *conv,
        ]
    )
    print(report)  # the smoke run prints it too, so that building it is checked before a real run needs it
    if not smoke:
        write_section(SECTION, report, file=args.out)
    elif not accelerator:
        body = "\n".join(
            [
                TITLE,
                "",
                f"No accelerator was available for this run: jax saw only the CPU ({device_line()}). "
                "`benchmarks/gpu_check.sh --smoke` ran every phase at toy sizes on CPU instead, to check the script "
                f"(tests: {tests['summary']}; latency, XLA flops and conv paths completed in {seconds:.0f} s; "
                "figures not recorded, they say nothing about an accelerator). Run `benchmarks/gpu_check.sh` "
                "where jax sees a GPU or TPU to fill this section with the device name, the latency ratios of "
                "VGG-16-A and ResNet-56-B at batch 1/64/256, XLA flops vs analytic MACs, and whether "
                "`conv_impl='auto'` picks the right path there.",
            ]
        )
        write_section(SECTION, body, file=args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
