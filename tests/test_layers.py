"""Tests for jaxprune.models.layers: every conv path equals lax.conv, the `auto` choice per backend and layer shape.

Not timed: speed is measured in benchmarks/bench_latency.py. Whole models are checked for one model per family only:
jitting a ResNet-110 on the im2col path costs more than a minute of XLA compile on 2 cores. The three family models
run jitted (one program per path): op by op, every op of every distinct layer shape compiles on its own, which costs
more than the one program (measured cold on 2 cores, lax + im2col: VGG-11 8.2 s eager vs 3.7 s jitted, ResNet-18
11.7 vs 5.7, ResNet-20 6.7 vs 5.6 s of CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_MODELS, assert_close

import jaxprune as jp
from jaxprune import models
from jaxprune.models.layers import (
    CONV_IMPLS,
    PAD_MULTIPLE,
    Conv,
    conv_im2col,
    conv_lax,
    conv_padded,
    padded_width,
    resolve_conv_impl,
)


def _batch(model, n: int = 1, seed: int = 0):
    shape = list(models.default_input_shape(model, n))
    if isinstance(model, models.ImageNetResNet):
        shape[1] = shape[2] = 32  # the smallest input its pooling allows: stage 4 runs at 1x1
    return jax.random.normal(jax.random.key(seed), tuple(shape), jnp.float32)


def _jit_apply(model, v, x):
    """A model's inference forward, jitted: one program for the whole (small) model costs less XLA compile than op
    by op, where each op of each distinct layer shape compiles once. tests/test_models.py::test_conv_impls_agree
    builds the same VGG-11 programs (same function, shapes and dtypes), so the persistent compilation cache serves
    whichever of the two runs second."""
    return jax.jit(lambda v, x: model.apply(v, x))(v, x)


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# -- the conv functions ------------------------------------------------------------------------------------------------

CONV_CASES = [
    # (N, H, W, Cin), (kh, kw, Cout), strides, padding
    ((2, 2, 2, 8), (3, 3, 5), (1, 1), (1, 1)),  # VGG's conv11-13 shape class: 2x2 output
    ((2, 1, 1, 4), (3, 3, 6), (1, 1), (1, 1)),  # 1x1 output: 8 of 9 taps in the padding
    ((2, 7, 9, 3), (3, 3, 4), (2, 2), (1, 1)),  # stride 2, odd sizes
    ((1, 8, 8, 3), (7, 7, 5), (2, 2), (3, 3)),  # ImageNet stem class
    ((2, 6, 6, 5), (1, 1, 7), (2, 2), (0, 0)),  # 1x1 projection shortcut, stride 2
    ((1, 5, 4, 2), (3, 1, 3), (1, 2), (1, 0)),  # non-square kernel, strides and padding
]


@pytest.mark.parametrize(("xs", "ks", "strides", "padding"), CONV_CASES)
def test_conv_paths_equal_lax(xs, ks, strides, padding):
    x = _rand(xs, 0)
    k = _rand((ks[0], ks[1], xs[3], ks[2]), 1)
    ref = conv_lax(x, k, strides, padding)
    assert_close(conv_im2col(x, k, strides, padding), ref)
    assert_close(conv_padded(x, k, strides, padding), ref)
    assert_close(conv_padded(x, k, strides, padding, multiple=4), ref)


def test_padded_width():
    assert [padded_width(w) for w in (1, 6, 16, 17, 56, 57, 64, 120)] == [16, 16, 16, 32, 64, 64, 64, 128]
    assert padded_width(22, 8) == 24
    assert PAD_MULTIPLE == 16


def test_conv_padded_computes_at_the_padded_width_and_slices():
    x = jax.ShapeDtypeStruct((2, 8, 8, 64), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 64, 57), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, k: conv_padded(x, k, (1, 1), (1, 1)))(x, k)
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 1 and convs[0].outvars[0].aval.shape == (2, 8, 8, 64)
    assert jaxpr.out_avals[0].shape == (2, 8, 8, 57)


# -- resolve_conv_impl -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "out_hw", "cin", "cout", "cpu"),
    [
        ((3, 3), (2, 2), 512, 512, "im2col"),  # docs/perf-notes.md, surprise 1
        ((3, 3), (1, 1), 512, 512, "im2col"),
        ((3, 3), (1, 2), 64, 64, "im2col"),
        ((3, 3), (4, 4), 512, 512, "lax"),  # measured: within noise at batch <= 32, lax faster at 64
        ((1, 1), (2, 2), 256, 512, "lax"),  # a 1x1 conv is a matmul already
        ((1, 1), (1, 1), 3, 8, "lax"),
        ((3, 3), (32, 32), 3, 32, "im2col"),  # first layer: depth 27 <= 32
        ((3, 3), (32, 32), 1, 64, "im2col"),
        ((3, 3), (32, 32), 4, 64, "lax"),  # depth 36
        ((7, 7), (16, 16), 3, 64, "lax"),  # ImageNet stem: depth 147
        ((3, 3), (8, 8), 64, 57, "padded"),  # 57 -> 64 adds 7 <= 57/7 filters
        ((3, 3), (8, 8), 64, 56, "padded"),  # 56 -> 64 adds exactly 1/7
        ((3, 3), (8, 8), 128, 120, "padded"),
        ((3, 3), (8, 8), 64, 55, "lax"),  # 55 -> 64 adds 9 > 55/7
        ((3, 3), (16, 16), 32, 22, "lax"),
        ((3, 3), (32, 32), 16, 6, "lax"),
        ((3, 3), (8, 8), 64, 64, "lax"),
        ((3, 3), (2, 2), 512, 57, "im2col"),  # the small-spatial rule comes first
    ],
)
def test_auto_choice_per_layer_shape(kernel, out_hw, cin, cout, cpu):
    kw = {"in_width": cin, "out_width": cout}
    assert resolve_conv_impl("auto", kernel, out_hw, "cpu", **kw) == cpu
    assert resolve_conv_impl("auto", kernel, out_hw, "gpu", **kw) == "lax"
    assert resolve_conv_impl("auto", kernel, out_hw, "tpu", **kw) == "lax"


def test_explicit_impls_are_kept_and_widths_are_optional():
    for impl in ("lax", "im2col", "padded"):
        assert resolve_conv_impl(impl, (3, 3), (2, 2), "cpu", in_width=3, out_width=57) == impl
        assert resolve_conv_impl(impl, (3, 3), (8, 8), "gpu") == impl
    # Without widths only the spatial rule applies.
    assert resolve_conv_impl("auto", (3, 3), (8, 8), "cpu") == "lax"
    assert resolve_conv_impl("auto", (3, 3), (2, 2), "cpu") == "im2col"
    assert CONV_IMPLS == ("auto", "lax", "im2col", "padded")


def test_auto_uses_the_default_backend():
    expect = "im2col" if jax.default_backend() == "cpu" else "lax"
    assert resolve_conv_impl("auto", (3, 3), (2, 2)) == expect


def test_bad_impl():
    with pytest.raises(ValueError, match=r"conv_impl must be one of \('auto', 'lax', 'im2col', 'padded'\), got 'fast'"):
        resolve_conv_impl("fast", (3, 3), (2, 2), "cpu")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        Conv(4, impl="fast").init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        models.resnet20(conv_impl="winograd")


def _count_primitives(jaxpr, acc):
    for e in jaxpr.eqns:
        acc[e.primitive.name] = acc.get(e.primitive.name, 0) + 1
        for p in e.params.values():
            for sub in p if isinstance(p, tuple | list) else (p,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    _count_primitives(inner, acc)
    return acc


def _conv_ops(model, x) -> tuple[int, int]:
    """(conv_general_dilated, dot_general) counts in the traced inference forward (abstract: nothing runs)."""
    v = jp.abstract_variables(model, x.shape)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(v, x)
    acc = _count_primitives(jaxpr.jaxpr, {})
    return acc.get("conv_general_dilated", 0), acc.get("dot_general", 0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto picks im2col / padded only on CPU")
def test_auto_paths_in_the_zoo_on_cpu():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    # VGG-16: conv1 (RGB, depth 27) and conv11-13 (2x2) as im2col matmuls, conv2-conv10 through lax; + fc1, fc2.
    assert _conv_ops(models.vgg16(), x) == (9, 4 + 2)
    assert _conv_ops(models.vgg16(conv_impl="lax"), x) == (13, 2)
    assert _conv_ops(models.vgg16(conv_impl="im2col"), x) == (0, 13 + 2)
    # ResNet-56: the stem is a first layer (im2col); 54 convs through lax (widths 16/32/64, no padding); + fc.
    assert _conv_ops(models.resnet56(), x) == (54, 2)
    assert _conv_ops(models.resnet56(conv_impl="lax"), x) == (55, 1)


def test_parameters_do_not_depend_on_the_path():
    m = models.resnet20()
    shapes = {
        impl: jax.tree.map(lambda a: (a.shape, a.dtype), jp.abstract_variables(m.clone(conv_impl=impl)))
        for impl in CONV_IMPLS
    }
    assert all(s == shapes["lax"] for s in shapes.values())


def test_conv_bias_and_dtype_on_every_path():
    x = _rand((2, 2, 2, 6), 0)
    ref_mod = Conv(5, use_bias=True, impl="lax")
    v = ref_mod.init(jax.random.key(0), x)
    v = {"params": {"kernel": v["params"]["kernel"], "bias": jnp.arange(5, dtype=jnp.float32)}}
    ref = ref_mod.apply(v, x)
    for impl in ("im2col", "padded", "auto"):
        assert_close(Conv(5, use_bias=True, impl=impl).apply(v, x), ref)
    low = Conv(5, use_bias=True, impl="im2col", dtype=jnp.bfloat16).apply(v, x)
    assert low.dtype == jnp.bfloat16
    assert_close(low.astype(jnp.float32), ref, rel=3e-2)


# -- every shipped model: im2col (and padded, auto) equal lax ----------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_vars():
    cache = {}

    def get(name):
        if name not in cache:
            m = models.get(name)
            cache[name] = (m, jp.random_variables(m, seed=0))
        return cache[name]

    return get


#: One model per family: the depths within a family repeat the same blocks, hence the same conv code path.
#: Pruned = masked original is checked for every zoo model in tests/test_surgery.py (on the `auto` path).
FAMILY_MODELS = ("vgg11", "resnet20", "resnet18")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_im2col_path_equals_lax_for_one_model_per_family(zoo_vars, name):
    assert name in ALL_MODELS
    m, v = zoo_vars(name)
    x = _batch(m, 1)
    ref = _jit_apply(m.clone(conv_impl="lax"), v, x)
    out = _jit_apply(m.clone(conv_impl="im2col"), v, x)
    assert out.shape == ref.shape
    assert_close(out, ref)


@pytest.mark.parametrize(("name", "ratio"), [("resnet20", 0.3)])
def test_padded_and_auto_paths_equal_lax_on_pruned_models(zoo_vars, name, ratio):
    m, v = zoo_vars(name)
    small, small_v = jp.prune(m, v, jp.make_plan(m, v, prune_ratio=ratio))
    widths = set(small.group_widths().values())
    assert any(w % PAD_MULTIPLE for w in widths)  # the padded path has work to do
    x = _batch(m, 2)
    ref = _jit_apply(small.clone(conv_impl="lax"), small_v, x)
    for impl in ("padded", "auto"):
        assert_close(_jit_apply(small.clone(conv_impl=impl), small_v, x), ref)


def test_auto_equals_lax_on_vgg16_a_with_masks(zoo_vars):
    # auto mixes all three paths on the paper's VGG-16-A; the masked reference runs through the same layers.
    m, v = zoo_vars("vgg16")
    plan = jp.preset("vgg16-A", m, v)
    small, small_v = jp.prune(m, v, plan)
    x = _batch(m, 2)
    ref = _jit_apply(small.clone(conv_impl="lax"), small_v, x)
    assert_close(_jit_apply(small, small_v, x), ref)
    assert small.conv_impl == "auto"
