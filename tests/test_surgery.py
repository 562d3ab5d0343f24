"""Surgery: the pruned model equals the masked original (the heart of the suite), shapes, dtypes, sharing,
optimizer state, and every bad input.

Tolerances (docs/design.md §4): inference max|Δ| ≤ 1e-5·max(1, max|y|) in float32. In `train=True` mode BN normalises
with batch statistics over few positions, which amplifies float32 rounding: the *same unpruned* VGG-11 computed by
its two conv paths (lax vs im2col) already differs by ~1.5e-5 relative there. Train mode therefore uses 1e-4 in
float32, and one float64 case shows the equivalence is exact up to float64 rounding (1e-10).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close, input_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune import models
from jaxprune.plan import PruningPlan

TRAIN_REL = 1e-4


def _check_equivalence(m, v, plan, x, *, train_too=True):
    m2, v2 = jp.prune(m, v, plan)
    assert m2.group_widths() == {**m.group_widths(), **plan.new_widths}
    if train_too:
        # Both modes of the pruned model in one program: one compile per pruned model instead of two (measured cold,
        # ResNet-20 and VGG-11: 10-20 % less CPU than two programs).
        y, (yt, st2) = jax.jit(lambda v, x: (m2.apply(v, x), m2.apply(v, x, train=True, mutable=["batch_stats"])))(
            v2, x
        )
    else:
        y = jax.jit(lambda v, x: m2.apply(v, x))(v2, x)
    assert_close(y, jp.mask_dropped(m, v, plan, x))
    if train_too:
        ref, ref_stats = jp.mask_dropped(m, v, plan, x, train=True)
        assert_close(yt, ref, rel=TRAIN_REL)
        # Updated running statistics of kept channels equal the masked original's.
        _, pruned_ref_stats = jp.prune(m, {"params": v["params"], "batch_stats": ref_stats}, plan)
        for layer, stats in st2["batch_stats"].items():
            for k in ("mean", "var"):
                assert_close(stats[k], pruned_ref_stats["batch_stats"][layer][k], rel=TRAIN_REL)
    return m2, v2


ratio = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9])


# 4 examples per model: each one compiles a new pruned program of both modes (~4 s CPU), and every zoo model is also
# checked at fixed ratios below.
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    r1=ratio,
    r2=ratio,
    r3=ratio,
    strategy=st.sampled_from(["independent", "greedy"]),
    round_to=st.sampled_from([1, 4, 8]),
)
def test_property_resnet20_pruned_equals_masked(zoo, r1, r2, r3, strategy, round_to):
    m, v = zoo("resnet20", seed=1)
    plan = jp.make_plan(
        m, v, prune_ratio={"stage1": r1, "stage2": r2, "stage3": r3}, strategy=strategy, round_to=round_to
    )
    _check_equivalence(m, v, plan, input_batch(m, 4, seed=2))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rs=st.lists(ratio, min_size=5, max_size=5),
    fc=ratio,
    strategy=st.sampled_from(["independent", "greedy"]),
    round_to=st.sampled_from([1, 8]),
)
def test_property_vgg11_pruned_equals_masked(zoo, rs, fc, strategy, round_to):
    m, v = zoo("vgg11", seed=1)
    ratios = {f"stage{i + 1}": r for i, r in enumerate(rs)} | {"fc1": fc}
    plan = jp.make_plan(m, v, prune_ratio=ratios, strategy=strategy, round_to=round_to)
    _check_equivalence(m, v, plan, input_batch(m, 4, seed=3))


FIXED = {
    "vgg13": {"stage1": 0.5, "stage4": 0.5, "fc1": 0.25},
    "vgg16": {"conv1": 0.5, "stage4": 0.5, "stage5": 0.5},
    "vgg19": {"stage2": 0.3, "stage5": 0.6},
    "resnet32": {"stage1": 0.6, "stage2": 0.3, "stage3": 0.1},
    "resnet44": 0.5,
    "resnet56": {"stage1": 0.6, "stage2": 0.3, "stage3": 0.1},
    "resnet110": {"stage1": 0.5, "stage2": 0.4, "stage3": 0.3},
    "resnet18": {"stage2": 0.5, "stage1_stream": 0.25, "stage3_stream": 0.2, "stage4_stream": 0.5},
    "resnet34": {"stage1": 0.3, "stage2": 0.3, "stage3": 0.3, "stage3_stream": 0.2},
}


def test_every_zoo_model_has_an_equivalence_test():
    """The property tests draw VGG-11 and ResNet-20; `FIXED` covers the rest of the zoo, so pruned = masked original
    is checked for every shipped model (tests/test_layers.py relies on this)."""
    assert sorted({"vgg11", "resnet20", *FIXED}) == sorted(models.available())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_ratio_every_other_model(zoo, name):
    """Pruned = masked original in inference for every zoo model the property tests above do not draw from.

    Train mode is proven once per family, where the same block code runs: VGG by the VGG-11 property test, CIFAR
    ResNets by the ResNet-20 one, ImageNet ResNets by `test_imagenet_streams_pruned_equals_masked`. ImageNet ResNets
    run at 32x32, the smallest input their pooling allows (stage 4 at 1x1).
    """
    m, v = zoo(name, seed=4)
    plan = jp.make_plan(m, v, prune_ratio=FIXED[name])
    x = input_batch(m, 2, seed=5, size=32 if isinstance(m, models.ImageNetResNet) else None)
    _check_equivalence(m, v, plan, x, train_too=False)


def test_imagenet_streams_pruned_equals_masked(zoo):
    """Prunable streams (projection-scored) in the quick loop: ResNet-18 at 64x64, stem and stage-3 streams."""
    m, v = zoo("resnet18", seed=6)
    plan = jp.make_plan(m, v, prune_ratio={"stage1_stream": 0.5, "stage3_stream": 0.2, "stage2": 0.5})
    _check_equivalence(m, v, plan, input_batch(m, 2, seed=7, size=64))


def test_prune_like_params_accepts_full_variables(zoo):
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    state = optax.sgd(0.1, momentum=0.9).init(v["params"])
    a = jp.prune_like_params(state, m, plan, params=v)
    b = jp.prune_like_params(state, m, plan, params=v["params"])
    assert jax.tree_util.tree_map(np.shape, a) == jax.tree_util.tree_map(np.shape, b)


def test_unshardable_leaf_is_replicated_with_a_warning(tmp_path):
    """A channel axis sharded over 2 host devices, pruned to an odd width: ReshardWarning, then replicated; a leaf
    committed to the second device stays there (one batched put serves leaves of different shardings)."""
    code = """
import os, warnings, jax, numpy as np
import jaxprune as jp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
m = jp.models.resnet20()
v = jp.random_variables(m)
mesh = Mesh(np.array(jax.devices()), ("d",))
k = v["params"]["stage1_block1_conv1"]["kernel"]
v["params"]["stage1_block1_conv1"]["kernel"] = jax.device_put(k, NamedSharding(mesh, P(None, None, None, "d")))
v["params"]["stage1_block1_conv2"]["kernel"] = jax.device_put(v["params"]["stage1_block1_conv2"]["kernel"], jax.devices()[1])
plan = jp.PruningPlan(keep={"stage1_block1_conv1": (0, 1, 2)}, widths={"stage1_block1_conv1": 16})
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    _, v2 = jp.prune(m, v, plan)
new = v2["params"]["stage1_block1_conv1"]["kernel"]
print([type(x.message).__name__ for x in w], new.shape, len(new.sharding.device_set), new.sharding.is_fully_replicated)
c2 = v2["params"]["stage1_block1_conv2"]["kernel"]
print(c2.shape, c2.devices() == {jax.devices()[1]}, v2["params"]["stage1_block1_bn1"]["scale"].devices() == {jax.devices()[0]})
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-2:] == [
        "['ReshardWarning'] (3, 3, 16, 3) 2 True",
        "(3, 3, 3, 16) True True",
    ]


def test_float64_train_mode_is_exact():
    # ResNet-8 (one block per stage) has every block kind of a CIFAR ResNet (stride-2 first blocks, zero-padded
    # shortcuts, BN in train mode) in fewer layers than ResNet-20, so the two train-mode programs compile faster;
    # ResNet-20 itself is checked in train mode in float32 by the property test above.
    with jax.enable_x64(True):
        m = models.CifarResNet(depth=8, widths=(16, 32, 64), dtype=jnp.float64)
        v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), jp.random_variables(m, seed=2))
        plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5, "stage2": 0.7, "stage3": 0.25})
        # 16x16 input: float64 rounding does not need many positions per channel, and stage 3 still sees 4x4x4.
        x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3), jnp.float64)
        m2, v2 = jp.prune(m, v, plan)
        assert v2["params"]["stage2_block1_conv1"]["kernel"].dtype == jnp.float64
        y, _ = jax.jit(lambda v, x: m2.apply(v, x, train=True, mutable=["batch_stats"]))(v2, x)
        masks = jp.plan_masks(m, plan, np.float64)
        ref, _ = jax.jit(lambda v, x, k: m.apply(v, x, train=True, masks=k, mutable=["batch_stats"]))(v, x, masks)
        assert y.dtype == jnp.float64
        assert_close(y, ref, rel=1e-10)


def test_bfloat16_variables_keep_their_dtype(zoo):
    m, v = zoo("resnet20")
    bf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v)
    plan = jp.make_plan(m, bf, prune_ratio=0.5)
    _, v2 = jp.prune(m, bf, plan)
    assert {a.dtype for a in jax.tree_util.tree_leaves(v2)} == {jnp.dtype(jnp.bfloat16)}


def test_kernels_and_bn_sliced_with_the_kept_indices(zoo):
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio={"stage2": 0.5})
    _, v2 = jp.prune(m, v, plan)
    keep = np.array(plan.keep["stage2_block2_conv1"])
    p, p2 = v["params"], v2["params"]
    np.testing.assert_array_equal(
        p2["stage2_block2_conv1"]["kernel"], np.asarray(p["stage2_block2_conv1"]["kernel"])[..., keep]
    )
    np.testing.assert_array_equal(
        p2["stage2_block2_conv2"]["kernel"], np.asarray(p["stage2_block2_conv2"]["kernel"])[:, :, keep]
    )
    for coll, leaf in (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")):
        np.testing.assert_array_equal(
            v2[coll]["stage2_block2_bn1"][leaf], np.asarray(v[coll]["stage2_block2_bn1"][leaf])[keep]
        )


def test_new_shapes_equal_eval_shape_of_new_model(zoo):
    for name in ("vgg16", "resnet56", "resnet34"):
        m, v = zoo(name)
        plan = jp.make_plan(m, v, prune_ratio=0.4)
        m2, v2 = jp.prune(m, v, plan)
        shapes = jax.tree_util.tree_map(lambda a: a.shape, v2)
        assert shapes == jax.tree_util.tree_map(lambda a: a.shape, jp.abstract_variables(m2))


def test_identity_plan_and_sharing(zoo):
    m, v = zoo("resnet20")
    ident = PruningPlan(keep={"stage1_block1_conv1": tuple(range(16))}, widths={"stage1_block1_conv1": 16})
    m2, v2 = jp.prune(m, v, ident)
    assert m2 == m
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(v2), strict=True):
        assert a is b
    plan = jp.make_plan(m, v, prune_ratio={"stage1_block1_conv1": 0.5})
    _, v3 = jp.prune(m, v, plan)
    assert v3["params"]["stage3_block3_conv2"]["kernel"] is v["params"]["stage3_block3_conv2"]["kernel"]
    assert isinstance(v3["params"]["stage1_block1_conv1"]["kernel"], jax.Array)
    assert (
        v3["params"]["stage1_block1_conv1"]["kernel"].sharding == v["params"]["stage1_block1_conv1"]["kernel"].sharding
    )


def test_numpy_variables_stay_numpy(zoo):
    m, v = zoo("resnet20")
    vn = jax.tree_util.tree_map(np.asarray, v)
    _, v2 = jp.prune(m, vn, jp.make_plan(m, vn, prune_ratio=0.5))
    assert all(isinstance(a, np.ndarray) for a in jax.tree_util.tree_leaves(v2))


# -- optimizer state ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet8():
    """ResNet-8 (one block per stage): every leaf kind of a CIFAR ResNet (convs, BN, shortcuts across stages, fc) in a
    third of ResNet-20's leaves; the mirror test below prunes the whole tree once per optimizer-state leaf."""
    m = models.CifarResNet(depth=8, widths=(16, 32, 64))
    return m, jp.random_variables(m, seed=0)


@pytest.mark.parametrize(
    "tx",
    [
        optax.sgd(0.1, momentum=0.9),
        optax.adamw(1e-3, weight_decay=1e-4),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
        optax.chain(
            optax.add_decayed_weights(1e-4, mask=lambda p: jax.tree_util.tree_map(lambda a: a.ndim > 1, p)),
            optax.sgd(0.1, momentum=0.9),
        ),
    ],
    ids=["sgd_momentum", "adamw", "chain_clip_adam", "inject_hyperparams", "masked_decay"],
)
def test_prune_like_params_slices_every_mirror(resnet8, tx):
    m, v = resnet8
    params = v["params"]
    # Jitted: eagerly, every leaf shape of every optimizer op would be an XLA compile of its own.
    state = jax.jit(tx.init)(params)
    # Fill the state with recognisable values: a real step with a random gradient.
    grads = jax.tree_util.tree_map(lambda a: np.cos(a * 7.0), params)
    _, state = jax.jit(tx.update)(grads, state, params)
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    _, v2 = jp.prune(m, v, plan)
    new_state = jp.prune_like_params(state, m, plan)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(
        jax.eval_shape(tx.init, v2["params"])
    )
    # Every mirror leaf equals pruning a params-shaped tree holding that leaf; scalars untouched.
    flat_old = jax.tree_util.tree_flatten_with_path(state)[0]
    flat_new = jax.tree_util.tree_flatten_with_path(new_state)[0]
    n_sliced = 0
    for (path, old), (_, new) in zip(flat_old, flat_new, strict=True):
        if np.ndim(old) == 0:
            assert new is old
            continue
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        ref_params = jax.tree_util.tree_map(lambda a: a, params)
        node = ref_params
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = old
        _, pruned = jp.prune(m, {"params": ref_params, "batch_stats": v["batch_stats"]}, plan)
        ref = pruned["params"]
        for k in keys:
            ref = ref[k]
        np.testing.assert_array_equal(new, ref)
        n_sliced += np.shape(new) != np.shape(old)
    assert n_sliced > 0


def test_prune_like_params_keeps_each_leaf_kind_and_sharding(zoo):
    """Sliced jax leaves come back as jax arrays on their sharding (one batched put); numpy leaves stay numpy."""
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    state = optax.sgd(0.1, momentum=0.9).init(v["params"])
    trace = state[0].trace
    bn = "stage1_block1_bn1"
    mixed = (state[0]._replace(trace={**trace, bn: jax.tree_util.tree_map(np.asarray, trace[bn])}), state[1])
    new = jp.prune_like_params(mixed, m, plan)
    kept = len(plan.keep["stage1_block1_conv1"])
    kernel = new[0].trace["stage1_block1_conv1"]["kernel"]
    assert isinstance(kernel, jax.Array) and kernel.sharding == trace["stage1_block1_conv1"]["kernel"].sharding
    assert kernel.shape == (3, 3, 16, kept)
    scale = new[0].trace[bn]["scale"]
    assert isinstance(scale, np.ndarray) and not isinstance(scale, jax.Array) and scale.shape == (kept,)
    assert new[0].trace["stem"]["kernel"] is trace["stem"]["kernel"]  # a stream: not sliced, shared


def test_prune_like_params_refuses_unknown_leaves(zoo):
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    state = optax.sgd(0.1, momentum=0.9).init(v["params"])
    bad = (state, {"extra": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"optimizer-state leaf .*'extra'.* with shape \(3, 4\) matches no parameter"):
        jp.prune_like_params(bad, m, plan)
    wrong = jax.tree_util.tree_map(lambda a: a[..., :1] if a.ndim == 4 else a, state)
    with pytest.raises(
        ValueError,
        match=r"leaf \[0\]\.trace\['stage1_block1_conv1'\]\['kernel'\] has shape \(3, 3, 16, 1\) but parameter",
    ):
        jp.prune_like_params(wrong, m, plan)


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_plan_that_does_not_match_the_model(zoo):
    m, v = zoo("resnet20")
    with pytest.raises(ValueError, match=r"group 'stage1_block1_conv1' has width 16 in the model, the plan expects 32"):
        jp.prune(m, v, PruningPlan(keep={"stage1_block1_conv1": (0, 1)}, widths={"stage1_block1_conv1": 32}))
    with pytest.raises(
        ValueError, match=r"plan names unknown group 'conv3'; this model's prunable groups: stage1_block1"
    ):
        jp.prune(m, v, PruningPlan(keep={"conv3": (0,)}, widths={"conv3": 4}))
    with pytest.raises(ValueError, match=r"plan prunes group 'stage2_stream', which the model declares not prunable"):
        jp.prune(m, v, PruningPlan(keep={"stage2_stream": (0,)}, widths={"stage2_stream": 32}))
    with pytest.raises(TypeError, match="plan must be a jaxprune.PruningPlan"):
        jp.prune(m, v, {"stage1_block1_conv1": (0,)})


def test_variables_missing_a_collection_or_leaf(zoo):
    m, v = zoo("vgg11")
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    with pytest.raises(ValueError, match=r"variables have no 'batch_stats' collection.*present: params"):
        jp.prune(m, {"params": v["params"]}, plan)
    partial = {"params": dict(v["params"]), "batch_stats": v["batch_stats"]}
    del partial["params"]["bn3"]
    with pytest.raises(ValueError, match=r"group 'conv3': path params/bn3/scale not found"):
        jp.prune(m, partial, plan)


def test_variables_of_other_widths(zoo):
    m, v = zoo("resnet20")
    small = m.with_widths({"stage1_block1_conv1": 8})
    plan = jp.make_plan(m, v, prune_ratio=0.5)
    with pytest.raises(ValueError, match=r"prune: variables leaf batch_stats/stage1_block1_bn1/mean has shape \(16,\)"):
        jp.prune(small, v, plan)  # the variables do not fit the model: said at the door
    small_v = jp.random_variables(small)
    with pytest.raises(ValueError, match="plan does not match the model"):
        jp.prune(small, small_v, plan)
    ident = PruningPlan(keep={"stage2_block1_conv1": (0,)}, widths={"stage2_block1_conv1": 32})
    # Checked at the door, every leaf against the model's abstract variables (jaxprune._checks).
    with pytest.raises(
        ValueError,
        match=r"leaf batch_stats/stage1_block1_bn1/mean has shape \(16,\), the model CifarResNet needs \(8,\)",
    ):
        jp.prune(small, v, ident)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.int32, np.uint8])
def test_sliced_leaves_of_every_dtype_come_back_as_device_put_gives_them(zoo, dtype):
    """The batched `jax.device_put` back to the device gives what one put per leaf gives: value, dtype, shape,
    sharding, weak type."""
    m, v = zoo("resnet20")
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a) * 5, dtype), v)
    name = "stage2_block2_conv1"
    keep = (0, 3, 5, 30)
    _, v2 = jp.prune(m, v, PruningPlan(keep={name: keep}, widths={name: 32}))
    for coll, layer, leaf, axis in (
        ("params", name, "kernel", 3),
        ("params", "stage2_block2_bn1", "scale", 0),
        ("batch_stats", "stage2_block2_bn1", "var", 0),
        ("params", "stage2_block2_conv2", "kernel", 2),
    ):
        old, got = v[coll][layer][leaf], v2[coll][layer][leaf]
        want = jax.device_put(np.take(np.asarray(old), keep, axis=axis), old.sharding)
        assert isinstance(got, jax.Array) and got.sharding == want.sharding
        assert (got.shape, got.dtype, got.weak_type) == (want.shape, want.dtype, want.weak_type)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_host_memory_leaves_stay_in_host_memory(zoo):
    """Leaves placed in pinned host memory come back there, labelled as host memory."""
    dev = jax.devices()[0]
    if "pinned_host" not in [mem.kind for mem in dev.addressable_memories()]:
        pytest.skip("this backend has no pinned_host memory")
    host = jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host")
    m, v = zoo("resnet20")
    v = jax.tree_util.tree_map(lambda a: a, v)
    name = "stage1_block1_conv1"
    v["params"][name]["kernel"] = jax.device_put(v["params"][name]["kernel"], host)
    _, v2 = jp.prune(m, v, PruningPlan(keep={name: (0, 3, 5)}, widths={name: 16}))
    new = v2["params"][name]["kernel"]
    ref = jax.device_put(np.asarray(v["params"][name]["kernel"])[..., [0, 3, 5]], host)
    assert new.sharding == host and jax.typeof(new) == jax.typeof(ref)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))
    assert v2["params"]["stage1_block1_conv2"]["kernel"].sharding.memory_kind in (None, "device")
