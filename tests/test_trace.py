"""Tests for jaxprune.trace: channel coupling discovered from jaxprs.

Shipped models: the traced groups contain exactly the declared ones. User-style models defined here (DenseNet-like
concatenation, MobileNet-like depthwise-separable block, squeeze-excitation, two-branch Inception-like block, an MLP,
an NNX CNN, an nn.scan/nn.remat stack with cond and custom_vjp, a GLU split): each traces, prunes at random ratios,
and the pruned model (re-run jaxpr, and the rebuilt module) equals the masked original within docs/design.md §4's
tolerance. Tracing is abstract (`jax.make_jaxpr` on `jax.ShapeDtypeStruct`s): nothing is compiled for it.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_leaf
from conftest import linen_random_variables as random_variables
from flax import nnx

import jaxprune as jp
from jaxprune import models
from jaxprune.groups import AxisRef, ChannelGroup, check_groups, kept_indices

CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def random_ratios(traced, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {g.name: float(rng.uniform(0.1, 0.8)) for g in traced.channel_groups() if g.prunable}


def by_name(groups):
    return {g.name: g for g in groups}


# -- AxisRef offsets and check_groups ----------------------------------------------------------------------------


def test_axisref_offset_validation():
    assert AxisRef(("params", "k"), 0).offset is None
    assert AxisRef(("params", "k"), 0, offset=3).offset == 3
    with pytest.raises(ValueError, match=r"offset must be None or an int >= 0, got -1"):
        AxisRef(("params", "k"), 0, offset=-1)
    with pytest.raises(ValueError, match=r"offset must be None or an int >= 0, got True"):
        AxisRef(("params", "k"), 0, offset=True)


def test_check_groups_side_by_side_and_overlaps():
    v = {
        "params": {
            "a": {"kernel": np.zeros((3, 4))},
            "b": {"kernel": np.zeros((3, 6))},
            "c": {"kernel": np.zeros((10, 2))},
        }
    }
    ka, kb = AxisRef(("params", "a", "kernel"), 1), AxisRef(("params", "b", "kernel"), 1)
    ga = ChannelGroup("a", 4, (ka,), (AxisRef(("params", "c", "kernel"), 0, offset=0),), ka)
    gb = ChannelGroup("b", 6, (kb,), (AxisRef(("params", "c", "kernel"), 0, offset=4),), kb)
    check_groups((ga, gb), v)
    overlap = dataclasses.replace(gb, consumers=(AxisRef(("params", "c", "kernel"), 0, offset=3),))
    with pytest.raises(ValueError, match=r"group 'b': path params/c/kernel axis 0 is already claimed by group 'a' "):
        check_groups((ga, overlap), v)
    short = dataclasses.replace(gb, consumers=(AxisRef(("params", "c", "kernel"), 0, offset=5),))
    with pytest.raises(ValueError, match=r"has length 10, too short for channels \[5, 11\)"):
        check_groups((ga, short), v)
    # A whole-axis ref (offset None) keeps the exact length check.
    whole = dataclasses.replace(gb, consumers=(AxisRef(("params", "c", "kernel"), 0),))
    with pytest.raises(ValueError, match=r"axis 0 has length 10, expected 6"):
        check_groups((whole,), v)


def test_kept_indices_on_the_original_layout():
    a = AxisRef(("params", "k"), 0, offset=0)
    b = AxisRef(("params", "k"), 0, repeat=2, offset=4)
    # a keeps 0, 2 of 4; b (width 3, two blocks at offset 4) keeps channel 1 -> 4 + [1, 4].
    assert kept_indices(12, [(a, 4, (0, 2)), (b, 3, (1,))]).tolist() == [0, 2, 5, 8, 10, 11]
    whole = AxisRef(("params", "k"), 0, repeat=2)
    assert kept_indices(6, [(whole, 3, (0, 2))]).tolist() == [0, 2, 3, 5]


# -- shipped models ----------------------------------------------------------------------------------------------


def _trace_zoo(name):
    m = models.get(name)
    size = 64 if name in ("resnet18", "resnet34") else 32
    return m, jp.trace_groups(m, jp.abstract_variables(m), sds(2, size, size, 3))


@pytest.fixture(scope="module")
def zoo_traces():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _trace_zoo(name)
        return cache[name]

    return get


# VGG-13/19 and the deeper CIFAR ResNets (44, 56, 110) repeat the layers of VGG-11/16 and ResNet-20/32;
# benchmarks/bench_trace.py matches ResNet-56 and ResNet-110's traced groups against their declarations.
TRACED_ZOO = [n for n in models.available() if n not in ("vgg13", "vgg19", "resnet44", "resnet56", "resnet110")]


@pytest.mark.parametrize("name", TRACED_ZOO)
def test_shipped_models_trace_to_their_declared_groups(zoo_traces, name):
    m, traced = zoo_traces(name)
    declared = m.channel_groups()
    tmap = by_name(traced)
    for d in declared:
        if d.kind == "stream" and not d.prunable:
            continue  # CIFAR streams: checked below
        t = tmap[d.name]
        assert (t.width, t.kind, t.stage, t.prunable, t.scored) == (d.width, d.kind, d.stage, d.prunable, d.scored)
        assert set(t.producers) == set(d.producers)
        assert set(t.consumers) == set(d.consumers)
    if name in CIFAR_RESNETS:
        streams = [t for t in traced if t.kind == "stream"]
        assert len(traced) == len(declared)  # 3n block groups + 3 stream pieces
        assert all(not t.prunable for t in streams)
        # The zero-padded shortcuts split the declared streams into pieces of 16, 16 and 32 channels that run across
        # stages: stage 1 (whole) + the first 16 channels of stages 2 and 3, and so on.
        assert [t.width for t in streams] == [16, 16, 32]
        assert [t.name for t in streams] == [
            "stage1_stream+stage2_stream[0:16]+stage3_stream[0:16]",
            "stage2_stream[16:32]+stage3_stream[16:32]",
            "stage3_stream[32:64]",
        ]
        traced_axes = {(r.path, r.axis) for t in streams for r in t.axes}
        declared_axes = {(r.path, r.axis) for d in declared if d.kind == "stream" for r in d.axes}
        assert traced_axes == declared_axes
    else:
        # VGG and ImageNet ResNets: exactly the declared groups (ImageNet streams prunable, scored by the shortcut).
        assert {t.name for t in traced} == {d.name for d in declared}
        for d in declared:
            t = tmap[d.name]
            assert (set(t.producers), set(t.consumers), t.prunable, t.scored) == (
                set(d.producers),
                set(d.consumers),
                d.prunable,
                d.scored,
            )


@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_both_conv_paths_trace_to_the_declared_groups(impl):
    # im2col: slices, a concatenation of kh*kw copies of the input channels, a kernel reshape, one matmul.
    for m, size in ((models.vgg11(conv_impl=impl), 32), (models.resnet18(conv_impl=impl), 64)):
        traced = jp.trace_groups(m, jp.abstract_variables(m), sds(1, size, size, 3))
        declared = by_name(m.channel_groups())
        assert len(traced) == len(declared)
        for t in traced:
            d = declared[t.name]
            assert (t.width, set(t.producers), set(t.consumers)) == (d.width, set(d.producers), set(d.consumers))


def test_trace_is_data_and_policy_decides_prunability():
    m = models.resnet20()
    v = jp.abstract_variables(m)
    raw = jp.trace_groups(lambda variables, x: m.apply(variables, x), v, sds(1, 32, 32, 3))  # no model policy
    streams = [g for g in raw if g.kind == "stream"]
    assert [g.name for g in streams] == ["stem", "stage2_block1_conv2[16:32]", "stage3_block1_conv2[32:64]"]
    assert all(g.prunable for g in streams)  # the trace alone does not forbid it
    assert streams[1].scored == AxisRef(("params", "stage2_block1_conv2", "kernel"), 3, offset=16)
    with_policy = jp.trace_groups(m.apply, v, sds(1, 32, 32, 3))  # a bound apply: the model's policy
    assert [g.prunable for g in with_policy if g.kind == "stream"] == [False, False, False]
    assert [set(g.axes) for g in raw] == [set(g.axes) for g in with_policy]


def test_zoo_model_pruned_through_its_trace_matches_declared_surgery(zoo):
    m, v = zoo("vgg11")
    tm = jp.trace_model(m, v, sds(1, 32, 32, 3))
    assert tm.stages() == m.stages()
    plan = jp.make_plan(tm, v, prune_ratio=0.4)
    assert plan == jp.make_plan(m, v, prune_ratio=0.4)
    assert tm.float_ratio_kinds == ("conv",) and "fc1" not in plan.keep  # the paper's rule, traced or not
    tm2, v2 = jp.prune(tm, v, plan)
    m2, w2 = jp.prune(m, v, plan)
    assert tm2.module == m2
    for a, b in zip(jax.tree_util.tree_leaves(v2), jax.tree_util.tree_leaves(w2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_zoo_rerun_at_pruned_widths_equals_the_zoo_masking_reference(zoo):
    # VGG-11 on CPU computes its 2x2 convs as im2col (slices, concatenation, kernel reshape): the re-run rewrites
    # all of those shapes.
    m, v = zoo("vgg11")
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    tm = jp.trace_model(m, v, x)
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(m, v, plan, x))


def test_wrong_input_rank_for_a_shipped_model():
    m = models.vgg11()
    with pytest.raises(ValueError, match=r"input must be NHWC of rank 4"):
        jp.trace_groups(m, jp.abstract_variables(m), sds(32, 32, 3))


# -- user-style Linen models ---------------------------------------------------------------------------------------


class DenseNetBlock(nn.Module):
    """Stem, then three BN-ReLU-conv layers whose outputs are concatenated to the running features, a transition."""

    stem: int = 8
    growth: tuple[int, ...] = (6, 6, 6)
    trans: int = 10

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.stem, (3, 3), use_bias=False, name="stem")(x)
        for i, g in enumerate(self.growth):
            y = nn.relu(nn.BatchNorm(use_running_average=True, name=f"bn{i}")(h))
            y = nn.Conv(g, (3, 3), use_bias=False, name=f"conv{i}")(y)
            h = jnp.concatenate([h, y], axis=-1)
        h = nn.relu(nn.BatchNorm(use_running_average=True, name="bn_t")(h))
        h = nn.avg_pool(nn.Conv(self.trans, (1, 1), name="trans")(h), (2, 2), (2, 2))
        return nn.Dense(5, name="head")(h.reshape(h.shape[0], -1))


DENSE_FIELDS = {
    "stem": "stem",
    "conv0": ("growth", 0),
    "conv1": ("growth", 1),
    "conv2": ("growth", 2),
    "trans": "trans",
}


class MobileBlock(nn.Module):
    """MobileNetV2-like: stem, expand 1x1, depthwise 3x3, project 1x1 with a residual, a 1x1 head conv."""

    c: int = 8
    e: int = 24
    o: int = 12

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.BatchNorm(True, name="bn0")(nn.Conv(self.c, (3, 3), use_bias=False, name="stem")(x)))
        y = nn.relu6(nn.BatchNorm(True, name="bn1")(nn.Conv(self.e, (1, 1), use_bias=False, name="expand")(h)))
        y = nn.Conv(self.e, (3, 3), feature_group_count=self.e, use_bias=False, name="dw")(y)
        y = nn.relu6(nn.BatchNorm(True, name="bn2")(y))
        h = h + nn.BatchNorm(True, name="bn3")(nn.Conv(self.c, (1, 1), use_bias=False, name="project")(y))
        h = nn.relu(nn.BatchNorm(True, name="bn4")(nn.Conv(self.o, (1, 1), use_bias=False, name="head_conv")(h)))
        return nn.Dense(4, name="fc")(jnp.mean(h, axis=(1, 2)))


class SqueezeExcite(nn.Module):
    c: int = 16
    r: int = 4
    o: int = 8

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.c, (3, 3), name="conv")(x))
        s = nn.relu(nn.Dense(self.r, name="se_reduce")(jnp.mean(h, axis=(1, 2))))
        s = nn.sigmoid(nn.Dense(self.c, name="se_expand")(s))
        h = nn.relu(nn.Conv(self.o, (3, 3), name="conv2")(h * s[:, None, None, :]))
        return nn.Dense(3, name="fc")(h.mean((1, 2)))


class InceptionBlock(nn.Module):
    s: int = 8
    a: int = 6
    b_red: int = 4
    b: int = 10
    m: int = 12

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.s, (3, 3), name="stem")(x))
        b1 = nn.relu(nn.Conv(self.a, (1, 1), name="b1")(h))
        b2 = nn.relu(nn.Conv(self.b_red, (1, 1), name="b2_reduce")(h))
        b2 = nn.relu(nn.Conv(self.b, (3, 3), name="b2")(b2))
        b3 = nn.max_pool(h, (3, 3), (1, 1), padding="SAME")
        h = nn.BatchNorm(True, name="bn")(jnp.concatenate([b1, b2, b3], axis=-1))
        h = nn.relu(nn.Conv(self.m, (1, 1), name="mix")(h))
        return nn.Dense(3, name="fc")(h.reshape(h.shape[0], -1))


INCEPTION_FIELDS = {"stem": "s", "b1": "a", "b2_reduce": "b_red", "b2": "b", "mix": "m"}


class MLP(nn.Module):
    hidden: tuple[int, ...] = (32, 24, 16)

    @nn.compact
    def __call__(self, x):
        h = x
        for i, w in enumerate(self.hidden):
            h = nn.gelu(nn.Dense(w, name=f"dense{i}")(h))
        return nn.Dense(5, name="out")(h)


MLP_FIELDS = {"dense0": ("hidden", 0), "dense1": ("hidden", 1), "dense2": ("hidden", 2)}

IMG = (2, 8, 8, 3)

USER_MODELS = {
    "densenet": (DenseNetBlock, IMG, DENSE_FIELDS),
    "mobilenet": (MobileBlock, IMG, {"stem": "c", "expand": "e", "head_conv": "o"}),
    "squeeze_excite": (SqueezeExcite, IMG, {"conv": "c", "se_reduce": "r", "conv2": "o"}),
    "inception": (InceptionBlock, IMG, INCEPTION_FIELDS),
    "mlp": (MLP, (4, 20), MLP_FIELDS),
}


@pytest.fixture(scope="module")
def user():
    cache = {}

    def get(name):
        if name not in cache:
            cls, shape, fields = USER_MODELS[name]
            m = cls()
            x = jax.random.normal(jax.random.key(7), shape, jnp.float32)
            v = random_variables(m, x)
            cache[name] = (m, x, v, jp.trace_model(m, v, x, fields=fields))
        return cache[name]

    return get


def test_densenet_concat_offsets(user):
    _m, _x, _v, tm = user("densenet")
    g = by_name(tm.channel_groups())
    assert list(g) == ["stem", "conv0", "conv1", "conv2", "trans"]
    assert [g[n].width for n in g] == [8, 6, 6, 6, 10]
    # bn_t sees [stem 0:8 | conv0 8:14 | conv1 14:20 | conv2 20:26]; conv1 reads [stem | conv0].
    assert AxisRef(("params", "bn_t", "scale"), 0, offset=14) in g["conv1"].producers
    assert AxisRef(("params", "trans", "kernel"), 2, offset=20) in g["conv2"].consumers
    assert AxisRef(("params", "conv1", "kernel"), 2, offset=0) in g["stem"].consumers
    assert AxisRef(("params", "conv1", "kernel"), 2, offset=8) in g["conv0"].consumers
    assert AxisRef(("params", "bn0", "scale"), 0) in g["stem"].producers  # the whole axis: no offset
    # avg-pooled 8x8 -> 4x4 then flattened: the head reads 16 blocks of the transition's channels.
    assert g["trans"].consumers == (AxisRef(("params", "head", "kernel"), 0, repeat=16),)
    assert [len(g[n].producers) for n in g] == [17, 13, 9, 5, 2]


def test_mobilenet_depthwise_ties_input_and_output(user):
    _m, _x, _v, tm = user("mobilenet")
    g = by_name(tm.channel_groups())
    assert list(g) == ["stem", "expand", "head_conv"]
    assert AxisRef(("params", "dw", "kernel"), 3) in g["expand"].producers  # depthwise: one space in and out
    assert set(g["expand"].consumers) == {AxisRef(("params", "project", "kernel"), 2)}
    assert g["stem"].kind == "stream"  # the residual add joins stem and project
    assert AxisRef(("params", "project", "kernel"), 3) in g["stem"].producers
    assert g["expand"].kind == "conv" and g["head_conv"].kind == "conv"


def test_squeeze_excite_gate_joins_the_gated_channels(user):
    _m, _x, _v, tm = user("squeeze_excite")
    g = by_name(tm.channel_groups())
    assert list(g) == ["conv", "se_reduce", "conv2"]
    assert set(g["conv"].producers) == {
        AxisRef(("params", "conv", "kernel"), 3),
        AxisRef(("params", "conv", "bias"), 0),
        AxisRef(("params", "se_expand", "kernel"), 1),
        AxisRef(("params", "se_expand", "bias"), 0),
    }
    assert set(g["conv"].consumers) == {
        AxisRef(("params", "se_reduce", "kernel"), 0),
        AxisRef(("params", "conv2", "kernel"), 2),
    }
    assert g["se_reduce"].kind == "fc"


def test_inception_branches_side_by_side(user):
    _m, _x, _v, tm = user("inception")
    g = by_name(tm.channel_groups())
    assert list(g) == ["stem", "b1", "b2_reduce", "b2", "mix"]
    # concat [b1 (6) | b2 (10) | max-pooled stem (8)] feeds BN and the mix conv.
    assert AxisRef(("params", "mix", "kernel"), 2, offset=0) in g["b1"].consumers
    assert AxisRef(("params", "mix", "kernel"), 2, offset=6) in g["b2"].consumers
    assert AxisRef(("params", "mix", "kernel"), 2, offset=16) in g["stem"].consumers
    assert AxisRef(("params", "bn", "bias"), 0, offset=16) in g["stem"].producers
    assert g["mix"].consumers == (AxisRef(("params", "fc", "kernel"), 0, repeat=64),)


@pytest.mark.parametrize("name", list(USER_MODELS))
def test_user_model_pruned_equals_masked(user, name):
    m, x, v, tm = user(name)
    seed = list(USER_MODELS).index(name)  # one random plan per model, a different seed each
    plan = jp.make_plan(tm, v, prune_ratio=random_ratios(tm, seed), criterion="random", key=jax.random.key(seed))
    assert not plan.is_identity
    tm2, v2 = jp.prune(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    original = jax.jit(m.apply)(v, x)
    # The re-run traced program is the model. Same float32 ops, but compiled as another program XLA may fuse and
    # reassociate differently: a few ulp (eps 6e-8) per layer over these <= 10-layer models, so the suite's 1e-5.
    assert_close(tm.apply(v, x), original)
    assert float(jnp.max(jnp.abs(masked - original))) > 1e-3  # masking changes the output
    assert_close(tm2.apply(v2, x), masked)  # the re-run jaxpr at the pruned widths
    assert_close(jax.jit(tm2.module.apply)(v2, x), masked)  # the module rebuilt through its constructor fields
    assert tm2.group_widths() == {n: len(k) for n, k in plan.keep.items()}
    check_groups(tm2.channel_groups(), v2)


def test_greedy_strategy_on_concatenated_inputs(user):
    _m, x, v, tm = user("densenet")
    plan = jp.make_plan(tm, v, prune_ratio={n: 0.5 for n in DENSE_FIELDS}, strategy="greedy")
    independent = jp.make_plan(tm, v, prune_ratio={n: 0.5 for n in DENSE_FIELDS})
    assert plan.keep["stem"] == independent.keep["stem"]  # nothing upstream of the stem
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(jax.jit(tm2.module.apply)(v2, x), jp.mask_dropped(tm, v, plan, x))


def test_pruning_twice_recomputes_offsets(user):
    _m, x, v, tm = user("densenet")
    tm2, v2 = jp.prune(tm, v, jp.make_plan(tm, v, prune_ratio={"stem": 0.5, "conv0": 0.5}))
    assert AxisRef(("params", "bn_t", "scale"), 0, offset=7) in by_name(tm2.channel_groups())["conv1"].producers
    plan2 = jp.make_plan(tm2, v2, prune_ratio={"conv1": 0.5, "conv2": 0.5})
    tm3, v3 = jp.prune(tm2, v2, plan2)
    assert tm3.module.growth == (3, 3, 3) and tm3.module.stem == 4
    assert_close(tm3.apply(v3, x), jp.mask_dropped(tm2, v2, plan2, x))


def test_apply_function_route_reruns_the_jaxpr(user):
    m, x, v, _ = user("squeeze_excite")
    tm = jp.trace_model(lambda variables, inp: m.apply(variables, inp), v, x)
    assert tm.kind == "function"
    plan = jp.make_plan(tm, v, prune_ratio={"conv": 0.5, "se_reduce": 0.5, "conv2": 0.25})
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))
    with pytest.raises(ValueError, match="traced from an apply function"):
        _ = tm2.module


def test_rerun_at_another_batch_size_retraces(user):
    _m, _x, v, tm = user("inception")
    plan = jp.make_plan(tm, v, prune_ratio={"b1": 0.5, "stem": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    x5 = jax.random.normal(jax.random.key(3), (5, 8, 8, 3))
    assert_close(tm2.apply(v2, x5), jax.jit(tm2.module.apply)(v2, x5))


def test_unmapped_field_means_no_module_but_apply_works(user):
    m, x, v, _ = user("inception")
    tm = jp.trace_model(m, v, x, fields={"b1": "a"})
    plan = jp.make_plan(tm, v, prune_ratio={"b1": 0.5, "b2": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    with pytest.raises(ValueError, match=r"pruned groups \['b2'\] have no constructor field"):
        _ = tm2.module
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))
    only_b1, _w2 = jp.prune(tm, v, jp.make_plan(tm, v, prune_ratio={"b1": 0.5}))
    assert only_b1.module.a == 3


def test_layernorm_normalises_over_the_kept_channels():
    class Normed(nn.Module):
        width: int = 12

        @nn.compact
        def __call__(self, x):
            h = nn.gelu(nn.LayerNorm(name="ln")(nn.Dense(self.width, name="d")(x)))
            return nn.Dense(3, name="out")(h)

    m = Normed()
    x = jax.random.normal(jax.random.key(0), (3, 5))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x, fields={"d": "width"})
    plan = jp.make_plan(tm, v, prune_ratio={"d": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    # The mean and variance divide by the channels kept (6), in the re-run and in the masked reference alike, so both
    # equal a LayerNorm module rebuilt over 6 channels (docs/design.md §6).
    assert AxisRef(("params", "ln", "scale"), 0) in by_name(tm.channel_groups())["d"].producers
    masked = jp.mask_dropped(tm, v, plan, x)
    assert_close(tm2.apply(v2, x), masked)
    assert tm2.module.width == 6
    assert_close(jax.jit(tm2.module.apply)(v2, x), masked)


class GroupNormed(nn.Module):
    c: int = 16
    groups: int = 4
    group_size: int | None = None  # set: GroupNorm(num_groups=None, group_size=...) instead of num_groups

    @nn.compact
    def __call__(self, x):
        sizes = (
            {"num_groups": self.groups}
            if self.group_size is None
            else {"num_groups": None, "group_size": self.group_size}
        )
        h = nn.relu(nn.GroupNorm(**sizes, name="gn")(nn.Conv(self.c, (3, 3), name="conv")(x)))
        return nn.Dense(3, name="fc")(h.mean((1, 2)))


def test_groupnorm_groups_keep_an_equal_count_each_chosen_by_their_own_scores():
    m = GroupNormed()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x, fields={"conv": "c"})
    (g,) = tm.channel_groups()
    # (N, H, W, 16) -> (N, H, W, 4 groups, 4): the group spans all 16 filters, in 4 blocks of 4 (one per norm group).
    assert (g.width, g.blocks, g.scored) == (16, 4, AxisRef(("params", "conv", "kernel"), 3))
    assert AxisRef(("params", "gn", "scale"), 0) in g.producers
    assert re.search(
        r"\n    balanced across 4 GroupNorm groups: each keeps an equal count of channels, chosen by its own scores "
        r".*GroupNorm",
        jp.format_groups(tm),
    )
    plan = jp.make_plan(tm, v, prune_ratio={"conv": 0.5})
    # Reference: per norm group, the 2 of its 4 filters with the largest L1 norms (numpy, float64).
    l1 = np.abs(np.asarray(v["params"]["conv"]["kernel"], np.float64)).sum((0, 1, 2)).reshape(4, 4)
    want = [b * 4 + int(j) for b in range(4) for j in np.sort(np.argsort(-l1[b], kind="stable")[:2])]
    assert plan.keep["conv"] == tuple(want)
    assert len({tuple(np.asarray(want[2 * b : 2 * b + 2]) - 4 * b) for b in range(4)}) > 1  # not one slot set for all
    tm2, v2 = jp.prune(tm, v, plan)
    assert tm2.module.c == 8 and v2["params"]["gn"]["scale"].shape == (8,)
    np.testing.assert_array_equal(v2["params"]["gn"]["scale"], np.asarray(v["params"]["gn"]["scale"])[want])
    masked = jp.mask_dropped(tm, v, plan, x)
    assert_close(tm2.apply(v2, x), masked)
    # The group statistics divide by the kept count (2 channels x 6 x 6 positions), as GroupNorm(4) over 8 channels.
    assert_close(jax.jit(tm2.module.apply)(v2, x), tm2.apply(v2, x))
    # A ratio applies within each norm group: 30 % of 4 channels keeps floor(2.8) = 2 in each, 8 in all.
    assert jp.make_plan(tm, v, prune_ratio={"conv": 0.3}).new_widths == {"conv": 8}
    # A MAC budget searches the same per-block counts: 3 per block (12 filters) is over 70 %, 2 per block meets it,
    # and the plan records the MACs the pruned model really has: 3x3x3 conv to 8 filters at 6x6, dense 8 -> 3.
    budget = jp.make_plan(tm, v, target_macs=0.7, input_shape=(1, 6, 6, 3))
    assert budget.new_widths == {"conv": 8}
    assert (
        budget.meta["kept_macs"]
        == jp.count_macs(jp.prune(tm, v, budget)[0], (1, 6, 6, 3)).macs
        == 9 * 3 * 8 * 36 + 8 * 3
        == 7800
    )
    # A rounding no equal count per block reaches (round_to=6: 6 of 16), or blocks keeping different counts: errors
    # naming the group.
    with pytest.raises(
        ValueError,
        match=r"group 'conv' keeps an equal count in each of its 4 blocks \(4 x 4 channels\), but round_to=6 makes it "
        r"keep 6 of 16; allowed keep counts: 4, 8, 12, 16",
    ):
        jp.make_plan(tm, v, prune_ratio={"conv": 0.6}, round_to=6)
    with pytest.raises(
        ValueError,
        match=r"width of group 'conv' must keep an equal count in each of its 4 blocks; "
        r"got 6, allowed: 4, 8, 12, 16",
    ):
        tm.with_widths({"conv": 6})
    with pytest.raises(ValueError, match=r"plan keeps \[4, 4, 0, 0\] channels in the 4 blocks of group 'conv'"):
        jp.prune(tm, v, jp.PruningPlan(keep={"conv": tuple(range(8))}, widths={"conv": 16}))
    with pytest.raises(ValueError, match=r"mask for group 'conv' keeps \[4, 4, 0, 0\] channels in its 4 blocks"):
        tm.apply(v, x, masks={"conv": np.r_[np.ones(8), np.zeros(8)]})
    with pytest.raises(
        ValueError,
        match=r"scope='global' ranks filters across groups, but group 'conv' keeps an "
        r"equal count in each of its 4 blocks",
    ):
        jp.make_plan(tm, v, prune_ratio=0.5, scope="global", normalize="none")
    kernel = AxisRef(("params", "conv", "kernel"), 3)
    with pytest.raises(ValueError, match=r"group 'g': width 16 does not split into 3 equal blocks"):
        ChannelGroup("g", 16, (kernel,), (), kernel, blocks=3)
    with pytest.raises(ValueError, match=r"group 'g': blocks must be an int >= 1, got 0"):
        ChannelGroup("g", 16, (kernel,), (), kernel, blocks=0)
    with pytest.raises(ValueError, match=r"GroupNormed.groups is 4, but group 'conv' has width 16"):
        jp.trace_model(m, v, x, fields={"conv": "groups"})
    # GroupNorm(group_size=4) traces alike (4 groups over 16 channels), but rebuilt over 8 channels it would make 2
    # groups of 4 where the pruned model keeps 4 groups of 2: refused, naming the norm and what to give it.
    m = GroupNormed(group_size=4)
    tm = jp.trace_model(m, v, x, fields={"conv": "c"})
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), masked)
    with pytest.raises(
        ValueError,
        match=r"cannot rebuild GroupNormed: its GroupNorm gn normalises 4 groups over 16 channels .* the rebuilt "
        r"GroupNorm\(num_groups=None, group_size=4\) over 8 channels makes 2; give it num_groups=4",
    ):
        tm2.module  # noqa: B018 - the property rebuilds the module
    # Groups of one channel (an instance norm) are the channels themselves: any 8 of 16, rebuilt as 8 groups of 1.
    m = GroupNormed(group_size=1)
    tm = jp.trace_model(m, v, x, fields={"conv": "c"})
    assert [(g.width, g.scored.repeat, jp.format_groups([g]).count("tied")) for g in tm.channel_groups()] == [
        (16, 1, 0)
    ]
    plan = jp.make_plan(tm, v, prune_ratio={"conv": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(jax.jit(tm2.module.apply)(v2, x), jp.mask_dropped(tm, v, plan, x))
    # The same with num_groups=16 written in the code: the rebuilt GroupNorm(16) over 8 channels cannot initialise.
    tm2, v2 = jp.prune(jp.trace_model(GroupNormed(groups=16), v, x, fields={"conv": "c"}), v, plan)
    with pytest.raises(ValueError, match=r"cannot rebuild GroupNormed: the module rebuilt at the new widths fails to"):
        tm2.module  # noqa: B018


class GroupNormStream(nn.Module):
    """conv(16) -> GroupNorm(4) -> conv(8) starting a residual stream normalised by two GroupNorm(2)s."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.GroupNorm(num_groups=4, name="gn1")(nn.Conv(16, (3, 3), name="c1")(x)))
        r = h = nn.Conv(8, (3, 3), name="c2")(h)
        h = nn.relu(nn.GroupNorm(num_groups=2, name="gn2")(h))
        h = nn.GroupNorm(num_groups=2, name="gn3")(nn.Conv(8, (3, 3), name="c3")(h)) + r
        return nn.Dense(3, name="fc")(h.mean((1, 2)))


def test_groupnorm_is_recognised_where_site_packages_sit_under_the_standard_library(monkeypatch):
    # An interpreter without a virtual environment (CI's) keeps site-packages beneath the stdlib folder, and jax's
    # location summary skips everything there, Flax and Equinox included: the GroupNorm's reshape then read as the
    # caller's line, and an NNX or Equinox GroupNorm (whose caller is no "GroupNorm") was taken for plain blocks.
    # The trace reads the caller from the equation's frames itself, so where the packages lie does not matter.
    import os
    import sysconfig

    from jaxprune.trace import _jaxpr

    flax_file = nn.normalization.__file__
    site = flax_file[: flax_file.index("flax" + os.sep)]  # .../site-packages/
    monkeypatch.setattr(_jaxpr, "_STDLIB", os.path.dirname(site.rstrip(os.sep)) + os.sep)  # as CI's layout
    assert _jaxpr._is_caller_file(flax_file)
    assert not _jaxpr._is_caller_file(os.path.join(os.path.dirname(site.rstrip(os.sep)), "contextlib.py"))
    assert not _jaxpr._is_caller_file(jnp.__file__)
    assert _jaxpr._is_caller_file(__file__)
    monkeypatch.undo()
    assert not _jaxpr._is_caller_file(os.path.join(sysconfig.get_path("stdlib"), "functools.py"))
    gn = nnx.GroupNorm(8, num_groups=4, rngs=nnx.Rngs(0))
    jaxpr = jax.make_jaxpr(lambda x: gn(x))(jnp.ones((1, 2, 2, 8)))
    callers = {_jaxpr._caller(e) for e in jaxpr.jaxpr.eqns if e.primitive.name == "reshape"}
    assert "GroupNorm.__call__" in callers


def test_groupnorm_balanced_groups_feed_convs_and_a_residual_stream():
    m = GroupNormStream()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    assert {g.name: (g.kind, g.width, g.blocks) for g in tm.channel_groups()} == {
        "c1": ("conv", 16, 4),
        "c2": ("stream", 8, 2),  # two GroupNorm(2)s on one stream: one balanced group
    }
    ratios = {"c1": 0.5, "c2": 0.5}
    for strategy in ("independent", "greedy"):  # greedy: c2 is scored on the inputs c1 keeps
        plan = jp.make_plan(tm, v, prune_ratio=ratios, strategy=strategy)
        assert {n: tm.channel_groups()[i].block_counts(plan.keep[n]) for i, n in enumerate(("c1", "c2"))} == {
            "c1": (2, 2, 2, 2),
            "c2": (2, 2),
        }
        tm2, v2 = jp.prune(tm, v, plan)
        assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))
    # The sensitivity scan's masked forward (vmapped masks) masks each norm group's own channels too.
    res = jp.sensitivity(tm, v, data=(x, jnp.array([0, 1])), ratios=(0.25, 0.5, 0.75))
    assert res.groups == ("c1",) and res.kept.tolist() == [[12, 8, 4]]


class GroupNorm(nn.Module):
    """A user's own GroupNorm (4 groups) that also reads the first group's channels alone."""

    @nn.compact
    def __call__(self, x):
        y = x.reshape(*x.shape[:-1], 4, x.shape[-1] // 4)
        first = y[..., 0, :].sum(-1, keepdims=True)
        return (y - y.mean((1, 2, 4), keepdims=True)).reshape(x.shape) + first


class OneGroupRead(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="fc")(GroupNorm()(nn.Conv(16, (3, 3), name="conv")(x)).mean((1, 2)))


def test_groupnorm_groups_read_one_at_a_time_stay_tied():
    # Summing one norm group's channels apart from the others needs that group's own mask, which balanced selection
    # (one mask over all blocks, masked beside the block axis) cannot give: the group stays tied, same slots in each.
    m = OneGroupRead()
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    (g,) = tm.channel_groups()
    assert (g.width, g.blocks, g.scored.repeat) == (4, 1, 4)
    assert "tied across 4 GroupNorm groups" in jp.format_groups(tm)
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))


def test_float_ratio_reaches_hidden_dense_groups_of_a_traced_model(user):
    _m, _x, v, tm = user("mlp")
    assert tm.float_ratio_kinds == ("conv", "fc")
    assert jp.make_plan(tm, v, prune_ratio=0.5).new_widths == {"dense0": 16, "dense1": 12, "dense2": 8}


def test_prune_like_params_for_a_traced_model(user):
    _m, _x, v, tm = user("mlp")
    plan = jp.make_plan(tm, v, prune_ratio={"dense1": 0.5})
    state = (v["params"], jnp.zeros((), jnp.int32))  # like optax: a tuple of a params-shaped tree and a count
    new = jp.prune_like_params(state, tm, plan)
    _, v2 = jp.prune(tm, v, plan)
    assert new[0]["dense1"]["kernel"].shape == (32, 12)
    np.testing.assert_array_equal(np.asarray(new[0]["dense2"]["kernel"]), np.asarray(v2["params"]["dense2"]["kernel"]))
    assert tm.abstract_variables()["params"]["dense1"]["kernel"].shape == (32, 24)


# -- split kernels, scan / remat / cond / custom_vjp -------------------------------------------------------------------


class SplitAndGate(nn.Module):
    """A kernel split between two groups (jnp.split), and a GLU gate that pairs channel i with channel i + 8."""

    @nn.compact
    def __call__(self, x):
        c, e = jnp.split(nn.Dense(12, name="proj")(x), [4], axis=-1)
        a, b = jnp.split(nn.Dense(16, name="gate")(x), 2, axis=-1)
        y = nn.Dense(3, name="out_c")(c) + nn.Dense(3, name="out_e")(nn.relu(e))
        return y + nn.Dense(3, name="out_g")(a * nn.sigmoid(b))


def test_split_kernels_offsets_and_paired_halves():
    m = SplitAndGate()
    x = jax.random.normal(jax.random.key(0), (4, 5))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    g = by_name(tm.channel_groups())
    assert list(g) == ["proj[0:4]", "proj[4:12]", "gate"]
    assert g["proj[4:12]"].scored == AxisRef(("params", "proj", "kernel"), 1, offset=4)
    assert g["proj[4:12]"].consumers == (AxisRef(("params", "out_e", "kernel"), 0),)
    # a * sigmoid(b): the two halves are one index space, so the gate kernel holds 2 blocks of 8 channels.
    assert g["gate"].width == 8 and g["gate"].scored == AxisRef(("params", "gate", "kernel"), 1, repeat=2)
    scores = jp.l1_filter_norms(v, tm.channel_groups())
    k = np.abs(np.asarray(v["params"]["proj"]["kernel"]))
    np.testing.assert_allclose(scores["proj[4:12]"], k[:, 4:].sum(0), rtol=1e-6)
    kg = np.abs(np.asarray(v["params"]["gate"]["kernel"])).sum(0)
    np.testing.assert_allclose(scores["gate"], kg[:8] + kg[8:], rtol=1e-6)
    plan = jp.make_plan(tm, v, prune_ratio={"proj[0:4]": 0.5, "proj[4:12]": 0.5, "gate": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    assert v2["params"]["proj"]["kernel"].shape == (5, 6)
    assert v2["params"]["gate"]["kernel"].shape == (5, 8)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))


@jax.custom_vjp
def _doubled(z):
    return 2.0 * z


_doubled.defvjp(lambda z: (2.0 * z, None), lambda _, g: (2.0 * g,))


class _Residual(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, h, _):
        y = nn.Dense(h.shape[-1], name="down")(nn.relu(nn.Dense(self.hidden, name="up")(h)))
        return h + y, None


class ScanStack(nn.Module):
    width: int = 12
    hidden: int = 20

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width, name="embed")(x)
        blocks = nn.scan(nn.remat(_Residual), variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        h, _ = blocks(self.hidden, name="blocks")(h, None)
        h = jax.lax.cond(jnp.sum(x) > 0, jnp.tanh, _doubled, h)
        return nn.Dense(3, name="out")(h)


def test_scan_remat_cond_and_custom_vjp_stack():
    m = ScanStack()
    x = jax.random.normal(jax.random.key(1), (4, 6))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x, fields={"embed": "width", "blocks/up": "hidden"})
    g = by_name(tm.channel_groups())
    assert list(g) == ["embed", "blocks/up"]
    # Stacked parameters: the layer axis is the scan's, the channels are one space across all layers.
    assert g["embed"].kind == "stream"
    assert AxisRef(("params", "blocks", "down", "kernel"), 2) in g["embed"].producers
    assert g["blocks/up"].scored == AxisRef(("params", "blocks", "up", "kernel"), 2)
    plan = jp.make_plan(tm, v, prune_ratio={"embed": 0.5, "blocks/up": 0.6})
    tm2, v2 = jp.prune(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    assert_close(tm2.apply(v2, x), masked)
    assert_close(jax.jit(tm2.module.apply)(v2, x), masked)
    assert v2["params"]["blocks"]["up"]["kernel"].shape == (3, 6, 8)


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, one pre-LN attention + MLP block."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(16, (4, 4), strides=(4, 4), name="patch")(x)
        n, hh, ww, c = h.shape
        h = h.reshape(n, hh * ww, c)
        cls = jnp.broadcast_to(self.param("cls", nn.initializers.zeros, (1, 1, c)), (n, 1, c))
        h = jnp.concatenate([cls, h], axis=1) + self.param("pos", nn.initializers.normal(0.02), (1, hh * ww + 1, c))
        y = nn.LayerNorm(name="ln_a")(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(y, y)
        y = nn.gelu(nn.Dense(24, name="mlp_in")(nn.LayerNorm(name="ln_b")(h)))
        h = h + nn.Dense(c, name="mlp_out")(y)
        return nn.Dense(3, name="head")(h[:, 0])


def test_attention_heads_and_head_features_are_groups():
    m = TinyViT()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    g = by_name(tm.channel_groups())
    assert list(g) == ["patch", "attn/query:1", "attn/query:2", "attn/value:2", "mlp_in"]
    heads = g["attn/query:1"]
    assert heads.width == 2 and heads.consumers == (AxisRef(("params", "attn", "out", "kernel"), 0),)
    assert {r.path[2] for r in heads.producers if r.path[-1] == "kernel"} == {"query", "key", "value"}
    assert g["patch"].kind == "stream" and AxisRef(("params", "pos"), 2) in g["patch"].producers
    plan = jp.make_plan(tm, v, prune_ratio={n: 0.5 for n in g})
    tm2, v2 = jp.prune(tm, v, plan)
    assert v2["params"]["attn"]["out"]["kernel"].shape == (1, 2, 8)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x))


# -- NNX -------------------------------------------------------------------------------------------------------------


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(16 * 4 * 4, 24, rngs=rngs), nnx.Linear(24, 4, rngs=rngs)])

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = nnx.relu(self.dw(h))
        h = nnx.relu(self.bn2(self.conv2(h)))
        h = nnx.relu(self.layers[0](h.reshape(h.shape[0], -1)))
        return self.layers[1](h)


@pytest.fixture(scope="module")
def nnx_net():
    # Abstract construction, then seeded random state (eager NNX init would compile every initializer).
    abstract = nnx.eval_shape(lambda: NNXNet(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        return random_leaf(rng, str(path[-2].key) if len(path) > 1 else "", leaf)

    m = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    m.eval()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    return m, x, jp.trace_model(m, None, x)


def test_nnx_variables_layout(nnx_net):
    m, _, tm = nnx_net
    v = jp.nnx_variables(m)
    assert sorted(v) == ["batch_stats", "params"]
    assert v["params"]["layers"]["0"]["kernel"].shape == (256, 24)
    assert tm.kind == "nnx"
    with pytest.raises(TypeError, match="takes a flax.nnx.Module"):
        jp.nnx_variables(MLP())


def test_nnx_groups(nnx_net):
    _, _, tm = nnx_net
    g = by_name(tm.channel_groups())
    assert list(g) == ["conv1", "conv2", "layers/0"]
    assert AxisRef(("params", "dw", "kernel"), 3) in g["conv1"].producers
    assert AxisRef(("batch_stats", "bn1", "var"), 0) in g["conv1"].producers
    assert g["conv2"].consumers == (AxisRef(("params", "layers", "0", "kernel"), 0, repeat=16),)


def test_nnx_pruned_module_equals_masked(nnx_net):
    m, x, tm = nnx_net
    seed = 1
    v = jp.nnx_variables(m)
    plan = jp.make_plan(tm, v, prune_ratio=random_ratios(tm, seed), criterion="random", key=jax.random.key(seed))
    tm2, v2 = jp.prune(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    call = nnx.jit(lambda mod, inp: mod(inp))
    assert_close(tm.apply(v, x), call(m, x))  # two compiled float32 programs: 1e-5, as above
    assert_close(tm2.apply(v2, x), masked)
    m2 = tm2.nnx_module(v2)
    assert_close(call(m2, x), masked)
    w1 = len(plan.keep["conv1"])
    assert (m2.dw.feature_group_count, m2.dw.in_features, m2.dw.out_features, m2.bn1.num_features) == (w1, w1, w1, w1)
    assert m2.layers[0].in_features == 16 * len(plan.keep["conv2"])
    assert m.dw.feature_group_count == 8 and m.layers[0].kernel[...].shape == (256, 24)  # the original is untouched
    with pytest.raises(ValueError, match="use nnx_module"):
        _ = tm2.module
    with pytest.raises(ValueError, match="needs a model traced from an NNX module"):
        jp.trace_model(MLP(), random_variables(MLP(), jnp.ones((1, 20))), jnp.ones((1, 20))).nnx_module(v2)


# -- policy, fields, protocol errors -----------------------------------------------------------------------------


def test_policy_mapping_and_callable(user):
    m, x, v, _ = user("mlp")
    tm = jp.trace_model(m, v, x, policy={"dense1": False})
    assert [g.prunable for g in tm.channel_groups()] == [True, False, True]
    with pytest.raises(ValueError, match=r"group 'dense1' is not prunable"):
        jp.make_plan(tm, v, prune_ratio={"dense1": 0.5})

    def rename(g):
        return dataclasses.replace(g, name=g.name.upper(), kind="conv", stage="stage1")

    tm = jp.trace_model(m, v, x, policy=rename)
    assert [g.name for g in tm.channel_groups()] == ["DENSE0", "DENSE1", "DENSE2"]
    assert tm.stages() == {"stage1": ("DENSE0", "DENSE1", "DENSE2")}
    plan = jp.make_plan(tm, v, prune_ratio=0.5)  # a float reaches the groups the policy made conv groups
    assert plan.new_widths == {"DENSE0": 16, "DENSE1": 12, "DENSE2": 8}
    with pytest.raises(ValueError, match=r"policy names unknown group 'nope'; traced groups: dense0, dense1, dense2"):
        jp.trace_model(m, v, x, policy={"nope": False})
    with pytest.raises(TypeError, match="must be a bool"):
        jp.trace_model(m, v, x, policy={"dense0": 1})
    with pytest.raises(TypeError, match="must return a bool or a ChannelGroup"):
        jp.trace_model(m, v, x, policy=lambda g: "yes")
    with pytest.raises(ValueError, match="not its axes"):
        jp.trace_model(m, v, x, policy=lambda g: dataclasses.replace(g, consumers=()))
    with pytest.raises(TypeError, match="policy must be None, a model"):
        jp.trace_model(m, v, x, policy=3)


def test_fields_errors(user):
    m, x, v, _ = user("mlp")
    with pytest.raises(ValueError, match=r"fields names unknown group 'dense9'"):
        jp.trace_model(m, v, x, fields={"dense9": "hidden"})
    with pytest.raises(ValueError, match=r"MLP has no constructor field 'width'"):
        jp.trace_model(m, v, x, fields={"dense0": "width"})
    with pytest.raises(ValueError, match=r"MLP.hidden\[1\] is 24, but group 'dense0' has width 32"):
        jp.trace_model(m, v, x, fields={"dense0": ("hidden", 1)})
    with pytest.raises(ValueError, match=r"hidden\[7\] is not an index"):
        jp.trace_model(m, v, x, fields={"dense0": ("hidden", 7)})
    with pytest.raises(TypeError, match="must be a field name or"):
        jp.trace_model(m, v, x, fields={"dense0": 3})
    vgg = models.vgg11()
    with pytest.raises(ValueError, match="zoo models rebuild themselves"):
        jp.trace_model(vgg, jp.abstract_variables(vgg), sds(1, 32, 32, 3), fields={"conv1": "widths"})


def test_with_widths_and_apply_errors(user):
    _m, x, v, tm = user("mlp")
    assert tm.with_widths({"dense0": 32}) is tm
    with pytest.raises(ValueError, match=r"unknown group 'nope'"):
        tm.with_widths({"nope": 3})
    with pytest.raises(ValueError, match=r"must be in \[1, 32\].*got 33"):
        tm.with_widths({"dense0": 33})
    with pytest.raises(TypeError, match="must be an int"):
        tm.with_widths({"dense0": 3.0})
    with pytest.raises(TypeError, match="mapping"):
        tm.with_widths([("dense0", 3)])
    with pytest.raises(ValueError, match="traced without a `train` argument"):
        tm.apply(v, x, train=True)
    with pytest.raises(ValueError, match=r"params/dense0/bias has shape \(32,\), expected \(16,\)"):
        tm.with_widths({"dense0": 16}).apply(v, x)
    with pytest.raises(ValueError, match=r"mask for unknown group 'x'"):
        tm.apply(v, x, masks={"x": np.ones(3)})
    with pytest.raises(ValueError, match=r"mask for group 'dense0' must have shape \(32,\)"):
        tm.apply(v, x, masks={"dense0": np.ones(3)})
    with pytest.raises(ValueError, match="do not match the traced structure"):
        tm.apply({"params": v["params"], "extra": {"w": np.ones(2)}}, x)
    assert repr(tm) == "TracedModel(kind='linen', 3 groups, 3 prunable)"


def test_argument_kinds():
    m = MLP()
    x = jnp.ones((1, 20))
    v = random_variables(m, x)
    with pytest.raises(TypeError, match="expected a flax Linen module, an NNX module or an apply function"):
        jp.trace_groups(3, v, x)
    with pytest.raises(TypeError, match="variables must be a mapping"):
        jp.trace_groups(m, [1, 2], x)
    with pytest.raises(TypeError, match="variables are required"):
        jp.trace_groups(m, None, x)
    with pytest.raises(TypeError, match="example_input leaves must be arrays"):
        jp.trace_groups(m, v, "image")
    with pytest.raises(TypeError, match="got no leaves"):
        jp.trace_groups(m, v, None)


# -- bad models ----------------------------------------------------------------------------------------------------


class SortsChannels(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.sort(nn.Conv(8, (3, 3), name="conv")(x), axis=-1)
        return nn.Dense(2, name="fc")(h.mean((1, 2)))


class SumsAParameter(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.ones, (5,))
        return nn.Dense(4, name="fc")(x) * jnp.sum(w)


class UnusedParameter(nn.Module):
    @nn.compact
    def __call__(self, x):
        self.param("w", nn.initializers.ones, (5, 3))
        return nn.Dense(4, name="fc")(x)


class ChannelFirstFlatten(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(8, (3, 3), name="conv")(x)
        return nn.Dense(2, name="fc")(jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1))


class FlattenAfterConcat(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.concatenate([nn.Conv(4, (3, 3), name="a")(x), nn.Conv(4, (3, 3), name="b")(x)], axis=-1)
        return nn.Dense(2, name="fc")(h.reshape(h.shape[0], -1))


def _abstract_init(m, x):
    return jax.eval_shape(lambda: m.init(jax.random.key(0), x))


def test_unsupported_primitive_on_a_channel_path_names_it_and_where():
    m, x = SortsChannels(), jnp.ones(IMG)
    with pytest.raises(
        ValueError, match=r"params/conv/kernel axis 3.*'sort' at .*test_trace\.py:\d+.*SUPPORTED_PRIMITIVES"
    ):
        jp.trace_groups(m, _abstract_init(m, x), x)
    assert "sort" not in jp.trace.SUPPORTED_PRIMITIVES and "conv_general_dilated" in jp.trace.SUPPORTED_PRIMITIVES


def test_parameter_without_a_channel_preserving_path():
    m, x = SumsAParameter(), jnp.ones((2, 6))
    with pytest.raises(
        ValueError, match=r"parameter params/w \(shape \(5,\)\) reaches the output through no channel-preserving path"
    ):
        jp.trace_groups(m, _abstract_init(m, x), x)


def test_unused_parameter():
    m, x = UnusedParameter(), jnp.ones((2, 6))
    with pytest.raises(ValueError, match=r"parameter params/w \(shape \(5, 3\)\) is not used by the traced function"):
        jp.trace_groups(m, _abstract_init(m, x), x)


def test_channel_first_flatten_is_refused():
    m, x = ChannelFirstFlatten(), jnp.ones((2, 4, 4, 3))
    with pytest.raises(
        ValueError,
        match=r"no channel group.*\(conv: params/conv/kernel axis 3.*blocked: its channels pass through a reshape that does not keep",
    ):
        jp.trace_groups(m, _abstract_init(m, x), x)


def test_flatten_after_concat_cannot_be_expressed():
    m, x = FlattenAfterConcat(), jnp.ones((2, 2, 2, 3))
    with pytest.raises(
        ValueError, match=r"blocked: parameter params/fc/kernel axis 0 holds its channels in several separate blocks"
    ):
        jp.trace_groups(m, _abstract_init(m, x), x)


# -- describe --------------------------------------------------------------------------------------------------------


def test_describe_groups(user, capsys):
    _m, _x, _v, tm = user("densenet")
    groups = tm.channel_groups()
    jp.describe_groups(groups[:2])
    assert capsys.readouterr().out == (
        "group  kind  width  prunable  scored kernel           producers  consumers\n"
        "-----  ----  -----  --------  ----------------------  ---------  ---------\n"
        "stem   conv      8  yes       params/stem/kernel[3]          17          4\n"
        "conv0  conv      6  yes       params/conv0/kernel[3]         13          3\n"
        "2 groups, 2 prunable, 14 channels\n"
    )
    text = jp.format_groups(groups, verbose=True)
    assert "    consumer params/head/kernel[0]x16" in text
    assert "    producer params/bn_t/scale[0]@8" in text
    with pytest.raises(TypeError, match="takes ChannelGroups"):
        jp.format_groups(["conv1"])
