"""Tests for jaxprune.latency (what is measured and reported, never how fast: speed targets live in benchmarks/),
for `round_to` as the presets surface it, and for the cost report's warning about widths that are not a multiple of 8.

One small model (ResNet-20, pruned to odd and to rounded widths) is compiled once per module; the timing calls use
few repeats. The two width-warning tests share one set of odd widths (`odd_pair`), so their programs compile once.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import types
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import HANG_TIMEOUT_S

import jaxprune as jp
from jaxprune import latency, models

IMAGE = (32, 32, 3)


@pytest.fixture(scope="module")
def pair():
    m = models.resnet20()
    v = jp.random_variables(m, seed=0)
    small, small_v = jp.prune(m, v, jp.make_plan(m, v, prune_ratio=0.5))
    return m, v, small, small_v


@pytest.fixture(scope="module")
def comparison(pair):
    m, v, small, small_v = pair
    return jp.compare_latency(m, v, small, small_v, IMAGE, batch_sizes=(1, 3), repeats=4, warmup=1)


# -- benchmark_latency / benchmark_many --------------------------------------------------------------------------------


def test_benchmark_latency_statistics(pair):
    m, v, _, _ = pair
    r = jp.benchmark_latency(m, v, IMAGE, batch_sizes=(2, 1), repeats=5, warmup=1)
    assert isinstance(r, jp.LatencyResult)
    assert r.batch_sizes == (2, 1)
    assert r.image_shape == IMAGE and r.name == "CifarResNet-20"
    assert {b: len(s) for b, s in r.samples_ms.items()} == {2: 5, 1: 5}
    for b in (1, 2):
        s = r.samples_ms[b]
        assert r.median_ms(b) == statistics.median(s)
        assert r.min_ms(b) == min(s) and r.max_ms(b) == max(s)
        assert 0 < r.min_ms(b) <= r.median_ms(b) <= r.max_ms(b)
        assert r.compile_s[b] > 0
    assert r.backend == jax.default_backend()
    with pytest.raises(KeyError, match=r"batch size 64 was not timed; timed: 2, 1"):
        r.median_ms(64)
    text = str(r)
    assert "median ms" in text and "compile s" in text and latency.LATENCY_CONVENTION in text
    assert f"{r.median_ms(2):.3f}" in text and "5 timed calls" in text


def test_benchmark_many_times_every_entry_interleaved(pair):
    m, v, small, small_v = pair
    out = jp.benchmark_many({"b": (small, small_v), "a": (m, v)}, IMAGE, batch_sizes=(1,), repeats=3, warmup=0)
    assert list(out) == ["b", "a"]
    assert all(len(r.samples_ms[1]) == 3 and r.name == k for k, r in out.items())


def test_an_int_batch_size_is_one_batch_size(pair):
    m, v, _, _ = pair
    r = jp.benchmark_latency(m, v, IMAGE, batch_sizes=2, repeats=1, warmup=0)
    assert r.batch_sizes == (2,) and len(r.samples_ms[2]) == 1


# -- compare_latency ---------------------------------------------------------------------------------------------------


def test_compare_latency_ratios(pair, comparison):
    m, _, small, _ = pair
    c = comparison
    assert c.macs_before == jp.count_macs(m, (1, *IMAGE)).macs == 40_551_040
    assert c.macs_after == jp.count_macs(small, (1, *IMAGE)).macs
    assert c.mac_ratio == c.macs_after / c.macs_before
    for b in (1, 3):
        assert c.latency_ratio(b) == c.after.median_ms(b) / c.before.median_ms(b)
        assert c.speedup(b) == pytest.approx(1 / c.latency_ratio(b), rel=1e-12)
    assert c.before.name == "CifarResNet-20 (original)" and c.after.name == "CifarResNet-20 (pruned)"


def test_latency_reports_the_xla_flops_of_the_program_it_timed(pair, comparison):
    # Read from the timed program's cost analysis: the figure xla_flops compiles for, exactly (the same HLO).
    m, v, small, small_v = pair
    assert set(comparison.before.xla_flops) == set(comparison.after.xla_flops) == {1, 3}
    assert comparison.before.xla_flops[1] == jp.xla_flops(m, v, (1, *IMAGE))
    assert comparison.after.xla_flops[1] == jp.xla_flops(small, small_v, (1, *IMAGE))
    assert comparison.after.xla_flops[1] < comparison.before.xla_flops[1] < comparison.before.xla_flops[3]


def test_compare_latency_prints_latency_ratio_next_to_mac_ratio(comparison):
    text = str(comparison)
    header = next(line for line in text.splitlines() if "latency ratio" in line)
    assert header.split() == [
        "batch",
        "original",
        "ms",
        "pruned",
        "ms",
        "latency",
        "ratio",
        "MAC",
        "ratio",
        "latency",
        "-",
        "MAC",
    ]
    row = next(line for line in text.splitlines() if line.strip().startswith("3 "))
    assert f"{comparison.latency_ratio(3):.3f}" in row and f"{comparison.mac_ratio:.3f}" in row
    assert f"{comparison.macs_before:,} -> {comparison.macs_after:,}" in text
    assert "the paper's FLOP" in text


def test_compare_latency_verbose_prints(pair, capsys):
    m, v, small, small_v = pair
    c = jp.compare_latency(m, v, small, small_v, IMAGE, batch_sizes=(1,), repeats=1, warmup=0, verbose=True)
    assert capsys.readouterr().out.strip() == str(c).strip()


# -- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_sizes": (0,)}, ValueError, r"batch sizes must be >= 1, got 0 in \(0,\)"),
        ({"batch_sizes": (1, -4)}, ValueError, r"batch sizes must be >= 1, got -4 in \(1, -4\)"),
        ({"batch_sizes": 0}, ValueError, r"batch sizes must be >= 1, got 0"),
        ({"batch_sizes": ()}, ValueError, "at least one batch size"),
        ({"batch_sizes": (2, 2)}, ValueError, "distinct, got 2 twice"),
        ({"batch_sizes": (1.5,)}, TypeError, "batch_sizes must hold ints >= 1, got float 1.5"),
        ({"batch_sizes": (True,)}, TypeError, "batch_sizes must hold ints"),
        ({"batch_sizes": "64"}, TypeError, "batch_sizes must be a tuple of ints"),
        ({"repeats": 0}, ValueError, "repeats must be >= 1, got 0"),
        ({"repeats": -3}, ValueError, "repeats must be >= 1, got -3"),
        ({"repeats": 2.0}, TypeError, "repeats must be an int >= 1, got float"),
        ({"warmup": -1}, ValueError, "warmup must be >= 0, got -1"),
    ],
)
def test_bad_benchmark_knobs(pair, kwargs, error, match):
    m, v, small, small_v = pair
    with pytest.raises(error, match=match):
        jp.benchmark_latency(m, v, IMAGE, **kwargs)
    with pytest.raises(error, match=match):
        jp.compare_latency(m, v, small, small_v, IMAGE, **kwargs)


@pytest.mark.parametrize(
    ("shape", "error", "match"),
    [
        ((1, 32, 32, 3), ValueError, r"image_shape must be \(H, W, C\) of length 3 \(no batch axis"),
        ((32, 32), ValueError, r"image_shape must be \(H, W, C\) of length 3"),
        ((0, 32, 3), ValueError, r"image_shape must hold sizes >= 1, got \(0, 32, 3\)"),
        ((32.0, 32, 3), TypeError, "image_shape must hold ints"),
        ("32x32x3", TypeError, "image_shape must be a tuple"),
    ],
)
def test_bad_image_shape(pair, shape, error, match):
    m, v, _, _ = pair
    with pytest.raises(error, match=match):
        jp.benchmark_latency(m, v, shape)


def test_bad_models_and_entries(pair):
    m, v, small, small_v = pair
    with pytest.raises(TypeError, match="Dense is not a prunable model"):
        jp.benchmark_latency(nn.Dense(3), v, IMAGE)
    with pytest.raises(TypeError, match="variables must be a mapping with a 'params' collection"):
        jp.benchmark_latency(m, [v], IMAGE)
    with pytest.raises(TypeError, match="variables must be a mapping with a 'params' collection"):
        jp.benchmark_latency(m, {"batch_stats": {}}, IMAGE)
    with pytest.raises(TypeError, match="variables hold abstract shapes"):
        jp.benchmark_latency(m, jp.abstract_variables(m), IMAGE)
    with pytest.raises(TypeError, match="new_model: Dense is not a prunable model"):
        jp.compare_latency(m, v, nn.Dense(3), small_v, IMAGE)
    with pytest.raises(TypeError, match="verbose must be a bool"):
        jp.compare_latency(m, v, small, small_v, IMAGE, verbose="yes")
    with pytest.raises(ValueError, match="at least one"):
        jp.benchmark_many({}, IMAGE)
    with pytest.raises(TypeError, match="entries must be a mapping"):
        jp.benchmark_many([(m, v)], IMAGE)
    with pytest.raises(TypeError, match="entry 'x' must be a \\(model, variables\\) pair"):
        jp.benchmark_many({"x": m}, IMAGE)
    with pytest.raises(TypeError, match="collect must be a bool"):
        jp.benchmark_many({"x": (m, v)}, IMAGE, collect=1)


# -- round_to through the presets, and the cost report's width warning ---------------------------------------------------


def test_preset_round_to_widths():
    m = models.resnet56()
    v = jp.random_variables(m, seed=1)
    plain = jp.preset("resnet56-B", m, v).new_widths
    rounded = jp.preset("resnet56-B", m, v, round_to=8).new_widths
    first = ("stage1_block1_conv1", "stage2_block2_conv1", "stage3_block2_conv1")
    assert [plain[g] for g in first] == [6, 22, 57]
    assert [rounded[g] for g in first] == [8, 24, 56]
    assert all(w % 8 == 0 for w in rounded.values())
    # Same groups pruned, the same filters ranked: the rounded plan keeps a superset (6 -> 8) or a subset (57 -> 56).
    p8 = jp.preset("resnet56-B", m, v, round_to=8)
    p1 = jp.preset("resnet56-B", m, v)
    assert set(p1.keep["stage1_block1_conv1"]) < set(p8.keep["stage1_block1_conv1"])
    assert set(p8.keep["stage3_block2_conv1"]) < set(p1.keep["stage3_block2_conv1"])
    assert p8.meta["round_to"] == 8 and p8.meta["preset"] == "resnet56-B"


@pytest.mark.parametrize(("round_to", "error"), [(0, ValueError), (-8, ValueError), (2.5, TypeError)])
def test_preset_bad_round_to(round_to, error):
    m = models.resnet56()
    v = jp.random_variables(m, seed=1)
    with pytest.raises(error, match=r"round_to must be"):
        jp.preset("resnet56-B", m, v, round_to=round_to)


@pytest.fixture(scope="module")
def odd_pair(pair):
    """ResNet-20 pruned by 30 % (16 -> 11, 32 -> 22, 64 -> 44): widths that are not multiples of 8."""
    m, v, _, _ = pair
    return jp.prune(m, v, jp.make_plan(m, v, prune_ratio=0.3))


def test_cost_report_warns_for_widths_not_a_multiple_of_8(pair, odd_pair):
    m, v, _, _ = pair
    odd, odd_v = odd_pair  # 16 -> 11, 32 -> 22, 64 -> 44
    with pytest.warns(
        jp.WidthAlignmentWarning, match=r"9 pruned width\(s\) not a multiple of 8 \(stage1_block1_conv1 = 11"
    ) as rec:
        report = jp.cost_report(m, v, odd, odd_v, (1, *IMAGE))
    assert len(rec) == 1 and "round_to=8" in str(rec[0].message)
    assert dict(report.unaligned) == {g: w for g, w in odd.group_widths().items() if g.endswith("conv1")}
    assert sorted(set(report.unaligned.values())) == [11, 22, 44]
    assert "warning: 9 pruned width(s)" in str(report)

    even, even_v = jp.prune(m, v, jp.make_plan(m, v, prune_ratio=0.3, round_to=8))  # 16 -> 8, 32 -> 24, 64 -> 48
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = jp.cost_report(m, v, even, even_v, (1, *IMAGE))
    assert dict(report.unaligned) == {} and "warning" not in str(report)
    assert issubclass(jp.WidthAlignmentWarning, UserWarning)


def test_unpruned_odd_widths_do_not_warn(pair, odd_pair):
    # Only widths that pruning changed are reported: a model built with odd widths on purpose is the user's choice.
    # Built here at the odd widths of `odd_pair` (9 groups at 11, 22, 44), with its own fresh variables: the same
    # program as that test's pruned model, so its compile is shared.
    m = pair[0]
    odd = m.with_widths({g: w for g, w in odd_pair[0].group_widths().items() if w != m.group_widths()[g]})
    assert sorted(set(odd.group_widths().values())) == [11, 16, 22, 32, 44, 64]
    odd_v = jp.random_variables(odd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = jp.cost_report(odd, odd_v, odd, odd_v, (1, *IMAGE))
    assert dict(report.unaligned) == {}
    assert np.isfinite(report.xla_before)


# -- the Torch-Pruning comparison without torch -------------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_vs_torch_pruning.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_vs_torch_pruning", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_torch_comparison_skips_with_one_line_without_torch():
    env = {**os.environ, "JAXPRUNE_BENCH_NO_TORCH": "1"}
    out = subprocess.run(
        [sys.executable, str(BENCH), "--no-write"], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "bench_vs_torch_pruning: skipped: torch comparison disabled by JAXPRUNE_BENCH_NO_TORCH=1"
    )
    assert "pip install torch==2.13.0 torch-pruning==1.6.1" in lines[0]


def test_torch_import_guard(monkeypatch):
    bench = _bench_module()
    assert "disabled by JAXPRUNE_BENCH_NO_TORCH=yes" in bench.import_torch({"JAXPRUNE_BENCH_NO_TORCH": "yes"})
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert bench.import_torch({}).startswith("torch is not installed; pip install torch==2.13.0")
    assert bench.import_torch({"JAXPRUNE_BENCH_NO_TORCH": "0"}).startswith("torch is not installed")
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    assert bench.import_torch({}).startswith("torch-pruning is not installed")


def test_torch_comparison_rejects_bad_repeats():
    env = {**os.environ, "JAXPRUNE_BENCH_NO_TORCH": "1"}
    out = subprocess.run(
        [sys.executable, str(BENCH), "--repeats", "0"], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S
    )
    assert out.returncode == 2 and "--repeats and --latency-repeats must be >= 1, got 0" in out.stderr
