"""FPGM, BN-scale and Taylor criteria against numpy references and central differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tinynet import TinyNet

import jaxprune as jp
from jaxprune import models
from jaxprune.criteria import bn_scale_scores, fpgm_scores, taylor_scores
from jaxprune.groups import AxisRef, ChannelGroup


def _fpgm_reference(kernel: np.ndarray) -> np.ndarray:
    """Sum of Euclidean distances to every other filter, with an explicit double loop (He et al. 2019)."""
    f = np.moveaxis(np.asarray(kernel, np.float64), -1, 0).reshape(kernel.shape[-1], -1)
    return np.array([sum(np.linalg.norm(f[i] - f[j]) for j in range(len(f)) if j != i) for i in range(len(f))])


@pytest.fixture(scope="module")
def r20(zoo):
    return zoo("resnet20")


def test_fpgm_equals_numpy_reference(r20):
    m, v = r20
    groups = [g for g in m.channel_groups() if g.scored is not None]
    got = fpgm_scores(v, groups)
    assert set(got) == {g.name for g in groups}
    for g in groups:
        ref = _fpgm_reference(np.asarray(v["params"][g.scored.path[1]]["kernel"]))
        # float64 on both sides; the Gram-matrix form loses ~1e-16 * |f|^2 against the loop: 1e-9 relative is ample.
        np.testing.assert_allclose(got[g.name], ref, rtol=1e-9)


def test_fpgm_on_a_span_with_offset_and_repeat():
    # A dense kernel (6 inputs, 7 outputs); the group owns outputs [2, 5) in 1 block, and a second group owns
    # inputs laid out as 2 blocks of 3 (a channel-last flatten).
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(6, 7))
    out = AxisRef(("params", "fc", "kernel"), 1, offset=2)
    g = ChannelGroup("span", 3, producers=(out,), consumers=(), scored=out)
    np.testing.assert_allclose(fpgm_scores({"params": {"fc": {"kernel": kernel}}}, [g])["span"],
                               _fpgm_reference(kernel[:, 2:5]), rtol=1e-9)  # fmt: skip
    rep = AxisRef(("params", "fc", "kernel"), 0, repeat=2)
    h = ChannelGroup("rep", 3, producers=(rep,), consumers=(), scored=rep)
    # Channel c's filter is rows c and 3 + c side by side.
    filters = np.stack([np.concatenate([kernel[c], kernel[3 + c]]) for c in range(3)], axis=-1)
    np.testing.assert_allclose(fpgm_scores({"params": {"fc": {"kernel": kernel}}}, [h])["rep"],
                               _fpgm_reference(filters), rtol=1e-9)  # fmt: skip


def test_fpgm_through_make_plan_keeps_the_farthest(r20):
    m, v = r20
    plan = jp.make_plan(m, v, prune_ratio=0.5, criterion="fpgm")
    assert plan.meta["criterion"] == "fpgm"
    for name, keep in plan.keep.items():
        ref = _fpgm_reference(np.asarray(v["params"][name]["kernel"]))
        assert keep == jp.select_top(ref, len(keep))
    greedy = jp.make_plan(m, v, prune_ratio=0.5, criterion="fpgm", strategy="greedy")
    assert set(greedy.keep) == set(plan.keep)  # ResNet block groups read no pruned input: the same choice
    assert dict(greedy.keep) == dict(plan.keep)


def test_fpgm_greedy_leaves_out_removed_inputs(zoo):
    m, v = zoo("vgg11")
    plan = jp.make_plan(m, v, prune_ratio={"conv1": 0.5, "conv2": 0.5}, criterion="fpgm", strategy="greedy")
    k2 = np.asarray(v["params"]["conv2"]["kernel"])[:, :, list(plan.keep["conv1"]), :]
    assert plan.keep["conv2"] == jp.select_top(_fpgm_reference(k2), 64)


def test_bn_scale_equals_abs_gamma(r20, zoo):
    m, v = r20
    groups = [g for g in m.channel_groups() if g.kind == "conv"]
    got = bn_scale_scores(v, groups)
    for g in groups:
        bn = g.name.replace("_conv1", "_bn1")
        np.testing.assert_array_equal(got[g.name], np.abs(np.asarray(v["params"][bn]["scale"], np.float64)))
    vm, vv = zoo("vgg11")
    fc1 = [g for g in vm.channel_groups() if g.name == "fc1"]
    np.testing.assert_array_equal(bn_scale_scores(vv, fc1)["fc1"], np.abs(np.asarray(vv["params"]["bn_fc1"]["scale"])))
    plan = jp.make_plan(m, v, prune_ratio=0.25, criterion="bn_scale")
    for name, keep in plan.keep.items():
        assert keep == jp.select_top(got[name], len(keep))


def test_bn_scale_without_bn_is_an_error():
    k = AxisRef(("params", "conv", "kernel"), 3)
    g = ChannelGroup("conv", 2, producers=(k, AxisRef(("params", "conv", "bias"), 0)), consumers=(), scored=k)
    with pytest.raises(ValueError, match="group 'conv' has none among its producers"):
        bn_scale_scores({"params": {"conv": {"kernel": np.ones((1, 1, 1, 2)), "bias": np.ones(2)}}}, [g])


def test_bn_scale_on_a_stream_with_several_bns_is_an_error():
    m = models.resnet18()
    stream = [g for g in m.channel_groups() if g.name == "stage2_stream"]
    with pytest.raises(ValueError, match=r"group 'stage2_stream' has \d+ BatchNorms"):
        bn_scale_scores({}, stream)


# -- Taylor ------------------------------------------------------------------------------------------------------------

TINY_SHAPE = (3, 6, 6, 3)


@pytest.fixture(scope="module")
def tiny64():
    """TinyNet in float64 with random variables, inputs and labels (x64 on only inside the tests)."""
    with jax.enable_x64(True):
        m = TinyNet(dtype=jnp.float64)
        v = jp.random_variables(m, seed=3, input_shape=TINY_SHAPE)
        v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v)
        x = np.random.default_rng(0).normal(size=TINY_SHAPE)
        y = np.array([0, 2, 1])
    return m, v, x, y


def _loss(m, train):
    def f(v, x, y, masks):
        if train:
            logits = m.apply(v, x, train=True, masks=masks, mutable=["batch_stats"])[0]
        else:
            logits = m.apply(v, x, train=False, masks=masks)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(logp[jnp.arange(len(y)), y])

    return jax.jit(f)


@pytest.mark.parametrize("train", [False, True])
def test_taylor_equals_central_differences(tiny64, train):
    m, v, x, y = tiny64
    hw = {"conv1": 36, "conv2": 9, "conv3": 9}  # conv2 has stride 2: 6x6 -> 3x3
    with jax.enable_x64(True):
        got = taylor_scores(m, v, x, y, train=train)
        loss = _loss(m, train)
        ones = {g.name: np.ones(g.width) for g in m.channel_groups()}
        h = 1e-4
        for g in m.channel_groups():
            fd = np.empty(g.width)
            for c in range(g.width):
                up = {**ones, g.name: ones[g.name] + h * np.eye(g.width)[c]}
                down = {**ones, g.name: ones[g.name] - h * np.eye(g.width)[c]}
                fd[c] = (float(loss(v, x, y, up)) - float(loss(v, x, y, down))) / (2 * h)
            # ReLU(m * a) = m * ReLU(a) for m > 0, so L is smooth around m = 1: the central difference is off by
            # O(h^2 L''') ~ 1e-8 plus rounding ~ 1e-16 / h; 1e-6 relative (of the group's largest) holds with margin.
            np.testing.assert_allclose(got[g.name], np.abs(fd) / hw[g.name], rtol=0, atol=1e-6 * np.abs(fd).max())
            assert got[g.name].dtype == np.float64


def test_taylor_is_mean_activation_times_gradient(tiny64):
    # The definition itself on conv3: |mean over images n and positions (h, w) of a * d loss_n / da|, with a the
    # post-BN activation and loss_n image n's loss. A mask of the activation's full shape (N, H, W, C) gives the
    # elementwise product: d L / d M[n,h,w,c] = a * dL/da = a * d loss_n / da / N, with L the batch mean.
    m, v, x, y = tiny64
    n = len(y)
    with jax.enable_x64(True):
        got = taylor_scores(m, v, x, y)["conv3"]
        ones = {g.name: jnp.ones(g.width) for g in m.channel_groups()}

        def loss_of_mask(full):
            return _loss(m, False)(v, x, y, {**ones, "conv3": full})

        per_element = n * np.asarray(jax.grad(loss_of_mask)(jnp.ones((n, 3, 3, 4))))  # a * d loss_n / da
    np.testing.assert_allclose(got, np.abs(per_element.mean(axis=(0, 1, 2))), rtol=1e-12)  # float64 throughout


def test_taylor_through_make_plan(r20):
    m, v = r20
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    s = taylor_scores(m, v, x, np.array([0, 1, 2, 3]))
    plan = jp.make_plan(m, v, prune_ratio=0.5, scores=s, scope="global", normalize="l2", meta={"scores": "taylor"})
    assert (
        plan.meta["criterion"] == "precomputed" and plan.meta["scores"] == "taylor" and plan.meta["normalize"] == "l2"
    )
    assert sum(len(k) for k in plan.keep.values()) == 336 // 2  # 9 groups: 3 x (16 + 32 + 64) filters


def test_taylor_without_data_is_an_error(r20):
    m, v = r20
    with pytest.raises(ValueError, match=r"criterion 'taylor' needs data: compute scores = jaxprune.taylor_scores"):
        jp.make_plan(m, v, prune_ratio=0.5, criterion="taylor")
    with pytest.raises(ValueError, match=r"criterion 'taylor' needs data"):
        jp.make_plan(m, v, prune_ratio=0.5, criterion="taylor", scope="global", normalize="mean")


def test_taylor_bad_inputs(tiny64):
    m, v, x, y = tiny64
    with pytest.raises(ValueError, match=r"labels must be 3 integer class labels"):
        taylor_scores(m, v, x, y[:2])
    with pytest.raises(ValueError, match=r"labels must be 3 integer class labels"):
        taylor_scores(m, v, x, y.astype(np.float32))
    with pytest.raises(ValueError, match="x must be NHWC images of rank 4"):
        taylor_scores(m, v, x[0], y)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        taylor_scores(m, v, x, y, loss_fn="ce")


def test_unknown_criterion_lists_the_new_ones(r20):
    m, v = r20
    with pytest.raises(
        ValueError, match=r"unknown criterion 'fgpm'; valid criteria: l1, l2, random, largest_l1, fpgm, bn_scale \("
    ):  # each name once: the registry jaxprune.CRITERIA already holds the data-free criteria of this module
        jp.make_plan(m, v, prune_ratio=0.5, criterion="fgpm")
    with pytest.raises(ValueError, match=r"unknown criterion 'fgpm'; valid criteria: l1, l2, random, largest_l1, fpgm, bn_scale$"):  # fmt: skip
        jp.filter_norms(v, m.channel_groups(), criterion="fgpm")


# -- Wiring: the public names, filter_norms, sensitivity and the registry ----------------------------------------------


def test_public_names_and_registry():
    from jaxprune import criteria, global_rank

    assert jp.CRITERIA == ("l1", "l2", "random", "largest_l1", "fpgm", "bn_scale")
    assert jp.DATA_FREE_CRITERIA == ("fpgm", "bn_scale") and jp.DATA_CRITERIA == ("taylor",)
    assert jp.taylor_scores is criteria.taylor_scores and jp.fpgm_scores is fpgm_scores
    assert jp.bn_scale_scores is bn_scale_scores
    assert jp.SCOPES == global_rank.SCOPES == ("layer", "global")
    assert jp.NORMALIZATIONS == global_rank.NORMALIZATIONS
    from jaxprune.sensitivity import ALL_CRITERIA

    assert ALL_CRITERIA[:6] == jp.CRITERIA  # sensitivity and compare_criteria accept every data-free criterion


def test_filter_norms_dispatches_to_the_criteria(r20):
    m, v = r20
    groups = list(m.channel_groups())
    conv = [g for g in groups if g.kind == "conv"]
    got = jp.filter_norms(v, groups, criterion="fpgm")
    ref = fpgm_scores(v, groups)
    assert set(got) == set(ref) and all(np.array_equal(got[n], ref[n]) for n in ref)  # the same host computation
    got = jp.filter_norms(v, conv, criterion="bn_scale")
    ref = bn_scale_scores(v, conv)
    assert set(got) == set(ref) and all(np.array_equal(got[n], ref[n]) for n in ref)
    # Every group with a scored kernel is scored, as for the norms (ResNet-20's streams have none: prunable=False).
    assert set(jp.filter_norms(v, groups, criterion="bn_scale")) == {g.name for g in conv}
    assert {g.name for g in groups if g.scored is not None} == {g.name for g in conv}


@pytest.fixture(scope="module")
def tiny32():
    m = TinyNet()
    v = jp.random_variables(m, seed=5, input_shape=TINY_SHAPE)
    rng = np.random.default_rng(1)
    return m, v, rng.normal(size=(8, 6, 6, 3)).astype(np.float32), rng.integers(0, 3, size=8)


def test_sensitivity_and_compare_criteria_accept_fpgm_and_bn_scale(tiny32):
    from jaxprune.sensitivity import compare_criteria, sensitivity

    m, v, x, y = tiny32
    ratios = (0.25, 0.5)
    cmp = compare_criteria(m, v, (x, y), criteria=("l1", "fpgm", "bn_scale"), ratios=ratios, metric="loss")
    assert cmp.criteria == ("l1", "fpgm", "bn_scale")
    for crit, fn in (("fpgm", fpgm_scores), ("bn_scale", bn_scale_scores)):
        r = cmp.results[crit]
        assert r.criterion == crit
        same = sensitivity(m, v, data=(x, y), scores=fn(v, m.channel_groups()), ratios=ratios, metric="loss")
        # One compiled masked forward on the same masks: the same float32 program, bit for bit.
        np.testing.assert_array_equal(r.values, same.values)
