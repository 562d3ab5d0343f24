"""Filter scoring: the paper's L1 against a numpy reference, other criteria, tracing, NaN handling."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import scoring
from jaxprune.groups import AxisRef, ChannelGroup, flatten_variables

#: Scores against a float64 numpy reference: each is a float32 sum of up to n = 4608 terms of one sign (3x3x512),
#: reduced in blocks by XLA, so its rounding error stays near log2(n) ~ 12 ulp at worst; measured at most 3.6 ulp
#: (4.3e-7) over VGG-16 and ResNet-20 for `l1` and `l2`. 1e-5 (84 ulp) fails only on a real error.
NORM_RTOL = 1e-5


def test_l1_equals_numpy_reference_for_every_vgg16_group(zoo):
    m, v = zoo("vgg16")
    scores = jp.l1_filter_norms(v, m.channel_groups())
    assert list(scores) == [f"conv{i}" for i in range(1, 14)] + ["fc1"]
    for i in range(1, 14):
        k = np.asarray(v["params"][f"conv{i}"]["kernel"], np.float64)
        np.testing.assert_allclose(scores[f"conv{i}"], np.abs(k).sum(axis=(0, 1, 2)), rtol=NORM_RTOL)
    np.testing.assert_allclose(scores["fc1"], np.abs(np.asarray(v["params"]["fc1"]["kernel"])).sum(0), rtol=NORM_RTOL)


def test_streams_without_scored_kernel_are_not_scored(zoo):
    m, v = zoo("resnet20")
    scores = jp.l1_filter_norms(v, m.channel_groups())
    assert len(scores) == 9
    assert "stage1_stream" not in scores


def test_imagenet_streams_are_scored_by_projection(zoo):
    m, v = zoo("resnet18")
    s = jp.l1_filter_norms(v, m.channel_groups())
    ref = np.abs(np.asarray(v["params"]["stage3_block1_shortcut"]["kernel"])).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(s["stage3_stream"], ref, rtol=NORM_RTOL)


def test_scorer_traces_once_per_kernel_shape(zoo):
    m, v = zoo("resnet56")
    jp.l1_filter_norms(v, m.channel_groups())
    before = scoring.trace_count()
    for _ in range(3):
        jp.l1_filter_norms(v, m.channel_groups())
    assert scoring.trace_count() == before
    m2, v2 = zoo("resnet56", seed=5)
    jp.l1_filter_norms(v2, m2.channel_groups())  # same shapes, new values: no new trace
    assert scoring.trace_count() == before
    # All kernels of a call go out in one dispatch, but each shape is traced once: a new mix of known shapes (a
    # subset, in another order) traces nothing; a mix with one unseen shape traces that shape only.
    groups = m.channel_groups()
    jp.l1_filter_norms(v, [groups[9], groups[3], groups[20]])
    assert scoring.trace_count() == before
    width = 1000 + before  # a width no earlier trace in this process can have used (the count only grows)
    k = AxisRef(("params", "odd", "kernel"), 3)
    odd = ChannelGroup("odd", width, producers=(k,), consumers=(), scored=k)
    v_odd = {"params": {**v["params"], "odd": {"kernel": np.ones((3, 3, 5, width), np.float32)}}}
    scores = jp.l1_filter_norms(v_odd, [groups[3], odd])
    assert scoring.trace_count() == before + 1
    np.testing.assert_array_equal(scores["odd"], np.full(width, 45.0, np.float32))
    shape = v["params"][groups[3].scored.path[1]]["kernel"].shape
    twin = next(g for g in groups[4:] if g.scored and v["params"][g.scored.path[1]]["kernel"].shape == shape)
    jp.l1_filter_norms(v_odd, [odd, twin, groups[3]])  # a new mix of seen shapes: nothing new is traced
    assert scoring.trace_count() == before + 1


def test_any_ratio_mapping_reuses_the_models_compiled_scorer(zoo):
    """make_plan dispatches every scored kernel of the model, so a new subset of reached groups, or the same
    kernels in another order, compiles nothing new."""
    m, v = zoo("resnet56")
    jp.make_plan(m, v, prune_ratio=0.5)
    compiled = scoring._norms._cache_size()
    for ratio in ({"stage1": 0.5}, {"stage2": 0.3, "stage3": 0.1}, {"stage3_block4_conv1": 0.5}):
        plan = jp.make_plan(m, v, prune_ratio=ratio)
        assert plan.keep  # a real plan, not an empty one
    groups = [g for g in m.channel_groups() if g.scored is not None]
    a = jp.l1_filter_norms(v, groups)
    b = jp.l1_filter_norms(v, groups[::-1])
    assert scoring._norms._cache_size() == compiled  # the same kernels in either order: make_plan's program
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_kernels_on_different_devices(tmp_path):
    """Kernels committed to different devices are scored in one dispatch per device (one jit cannot mix them)."""
    code = """
import jax, numpy as np
import jaxprune as jp
from jaxprune.groups import AxisRef, ChannelGroup
d0, d1 = jax.devices()[:2]
refs = [AxisRef(("params", n, "kernel"), 3) for n in ("a", "b", "c")]
groups = [ChannelGroup(r.path[1], w, producers=(r,), consumers=(), scored=r) for r, w in zip(refs, (8, 16, 8))]
k = {n: np.full((3, 3, 2, w), -1.0, np.float32) for n, w in (("a", 8), ("b", 16), ("c", 8))}
v = {"params": {"a": {"kernel": jax.device_put(k["a"], d0)}, "b": {"kernel": jax.device_put(k["b"], d1)},
               "c": {"kernel": k["c"]}}}
s = jp.l1_filter_norms(v, groups)
print({n: (a.shape[0], float(a[0])) for n, a in s.items()})
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "{'a': (8, 18.0), 'b': (16, 18.0), 'c': (8, 18.0)}"


def test_other_criteria(zoo):
    m, v = zoo("resnet20")
    groups = m.channel_groups()
    l1 = jp.filter_norms(v, groups, criterion="l1")
    l2 = jp.filter_norms(v, groups, criterion="l2")
    largest = jp.filter_norms(v, groups, criterion="largest_l1")
    k = np.asarray(v["params"]["stage2_block3_conv1"]["kernel"], np.float64)
    np.testing.assert_allclose(l2["stage2_block3_conv1"], np.sqrt((k**2).sum(axis=(0, 1, 2))), rtol=NORM_RTOL)
    np.testing.assert_array_equal(largest["stage2_block3_conv1"], -l1["stage2_block3_conv1"])
    r1 = jp.filter_norms(v, groups, criterion="random", key=jax.random.key(1))
    r1b = jp.filter_norms(v, groups, criterion="random", key=jax.random.key(1))
    r2 = jp.filter_norms(v, groups, criterion="random", key=jax.random.key(2))
    np.testing.assert_array_equal(r1["stage1_block1_conv1"], r1b["stage1_block1_conv1"])
    assert not np.array_equal(r1["stage1_block1_conv1"], r2["stage1_block1_conv1"])
    assert not np.array_equal(r1["stage1_block1_conv1"], r1["stage1_block2_conv1"])  # groups draw independently


def test_low_precision_kernels_accumulate_in_float32(zoo):
    m, v = zoo("resnet20")
    bf = jax.tree_util.tree_map(lambda a: a.astype("bfloat16"), v)
    s = jp.l1_filter_norms(bf, m.channel_groups())["stage3_block1_conv1"]
    assert s.dtype == np.float32
    ref = np.abs(np.asarray(bf["params"]["stage3_block1_conv1"]["kernel"]).astype(np.float64)).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(s, ref, rtol=NORM_RTOL)


def test_nan_or_inf_in_a_kernel_names_the_layer(zoo):
    m, v = zoo("resnet20")
    flat = flatten_variables(v)
    for bad in (np.nan, np.inf):
        k = np.array(flat[("params", "stage2_block2_conv1", "kernel")])
        k[0, 0, 0, 5] = bad
        v_bad = jax.tree_util.tree_map(lambda a: a, v)
        v_bad["params"]["stage2_block2_conv1"]["kernel"] = k
        with pytest.raises(ValueError, match=r"group 'stage2_block2_conv1'.*NaN or inf \(filters \[5\]\)"):
            jp.l1_filter_norms(v_bad, m.channel_groups())


def test_bad_criterion_and_missing_key(zoo):
    m, v = zoo("resnet20")
    with pytest.raises(ValueError, match=r"unknown criterion 'l3'; valid criteria: l1, l2, random, largest_l1"):
        jp.filter_norms(v, m.channel_groups(), criterion="l3")
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        jp.filter_norms(v, m.channel_groups(), criterion="random")


def test_public_score_group_validates_the_criterion(zoo):
    from jaxprune.scoring import score_group, score_groups

    m, v = zoo("resnet20")
    flat = jp.groups.flatten_variables(v)
    g = m.channel_groups()[0]
    with pytest.raises(ValueError, match="unknown criterion 'l3'"):
        score_group(flat, g, criterion="l3")
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        score_groups(flat, [g], criterion="random")


def test_one_call_mixes_dtypes_and_axes():
    """Kernels of different dtypes and scored axes share one dispatch; each keeps its own accumulation dtype."""
    a_ref, b_ref = AxisRef(("params", "a", "kernel"), 3), AxisRef(("params", "b", "kernel"), 1)
    groups = [
        ChannelGroup("a", 4, producers=(a_ref,), consumers=(), scored=a_ref),
        ChannelGroup("b", 3, producers=(b_ref,), consumers=(), scored=b_ref, kind="fc"),
    ]
    a = -np.arange(1, 5, dtype=np.float32) * np.ones((3, 3, 2, 4), np.float32)
    b = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], np.float32)
    v = {"params": {"a": {"kernel": jax.numpy.asarray(a, jax.numpy.bfloat16)}, "b": {"kernel": b}}}
    s = jp.l1_filter_norms(v, groups)
    assert s["a"].dtype == np.float32 and s["b"].dtype == np.float32
    np.testing.assert_array_equal(s["a"], [18.0, 36.0, 54.0, 72.0])
    np.testing.assert_array_equal(s["b"], [5.0, 7.0, 9.0])


def test_float64_kernels_stay_float64_in_a_batched_call():
    """Under x64 a float64 kernel is reduced in float64 in the one-dispatch path, not cast down."""
    kernels = [np.full((3, 3, 8, 4), -1.0 / 3.0), np.full((3, 3, 4, 8), 1.0 / 3.0), np.ones((2, 5), np.float32)]
    with jax.enable_x64(True):
        norms = scoring._batched_norms(kernels, [3, 3, 1], 1)
    assert [n.dtype for n in norms] == [np.float64, np.float64, np.float32]
    # Sums of 72 and 36 terms of 1/3: float64 rounding error is ~1e-16 per term, far below 1e-12 relative.
    np.testing.assert_allclose(norms[0], np.full(4, 72 / 3), rtol=1e-12)
    np.testing.assert_allclose(norms[1], np.full(8, 36 / 3), rtol=1e-12)
    np.testing.assert_array_equal(norms[2], np.full(5, 2.0, np.float32))


def test_float64_numpy_kernels_beside_float32_without_x64():
    """Without x64 a float64 numpy kernel is reduced in float32, as jax computes it, so it shares the float32 result
    vector of its call with the float32 and bfloat16 kernels: every kernel still gets its own norms, in order."""
    kernels = [
        np.full((3, 3, 2, 4), -0.5),  # float64 numpy
        jax.numpy.full((3, 3, 2, 6), 0.25, jax.numpy.float32),
        jax.numpy.full((3, 3, 2, 3), 2.0, jax.numpy.bfloat16),
        np.ones((2, 5), np.float32),
    ]
    norms = scoring._batched_norms(kernels, [3, 3, 3, 1], 1)
    assert [n.dtype for n in norms] == [np.float32] * 4
    # Sums of 18 (or 2) equal terms exactly representable in binary: exact in float32.
    for n, want in zip(norms, [np.full(4, 9.0), np.full(6, 4.5), np.full(3, 36.0), np.full(5, 2.0)], strict=True):
        np.testing.assert_array_equal(n, want)


def test_every_kernel_of_one_placement_goes_out_in_one_dispatch(zoo, monkeypatch):
    m, v = zoo("vgg16")
    calls = []
    real = scoring._norms

    def counting(kernels, axes, p, parts):
        calls.append(len(kernels))
        return real(kernels, axes, p, parts)

    monkeypatch.setattr(scoring, "_norms", counting)
    scores = jp.l1_filter_norms(v, m.channel_groups())
    assert calls == [14]  # 13 conv kernels + fc1, one jitted call
    assert len(scores) == 14
