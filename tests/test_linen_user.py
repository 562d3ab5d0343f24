"""A researcher's own Linen models (flax-examples style): traced, pruned, trained through `jaxprune.train`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_leaf

import jaxprune as jp
from jaxprune import train as jt

# -- a ResNet written as flax-examples' ImageNet one (ResNetBlock, num_filters * 2**i, train as a call argument, a
# BatchNorm with momentum averaging over axis_name="batch"), small: 2 stages of 8 and 16 filters.


class ResNetBlock(nn.Module):
    filters: int
    conv: Any
    norm: Any
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    num_classes: int
    num_filters: int = 8
    act: Callable = nn.relu
    axis_name: str | None = "batch"

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name
        )
        x = conv(self.num_filters, (3, 3), name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(self.num_filters * 2**i, conv=conv, norm=norm, act=self.act, strides=strides)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


X = jax.ShapeDtypeStruct((4, 16, 16, 1), jnp.float32)


def _variables(m, x=X, seed=0, **init_kwargs):
    """Seeded random variables of `m` from abstract shapes (no `init` compile); BN statistics non-trivial."""
    abstract = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), **init_kwargs))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(lambda path, leaf: random_leaf(rng, path[-1].key, leaf), dict(abstract))


@pytest.fixture(scope="module")
def resnet():
    m = ResNet(stage_sizes=(1, 1), num_classes=10)
    v = _variables(m, train=False)  # random BN scale/bias/mean/var: non-trivial stats
    return m, v, jp.trace_model(m, v, X)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(2).standard_normal(X.shape), jnp.float32)


def _flax_train(m, v, x):
    """flax-examples' training forward, its "batch" axis bound by a size-1 vmap (what pmap would do per device)."""
    run = jax.jit(jax.vmap(lambda xx: m.apply(v, xx, train=True, mutable=["batch_stats"]), axis_name="batch"))
    out, upd = run(x[None])  # jitted: one compile, not one per eager op
    return out[0], jax.tree.map(lambda a: a[0], upd)


def test_plain_jit_train_names_an_unbound_axis(resnet, images):
    m, v, _ = resnet
    with pytest.raises(NameError, match="unbound axis name"):
        jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, images)


def test_traced_with_train_false_and_runs_both_passes(resnet, images):
    m, v, tm = resnet
    # The module route traced train=False (else BatchNorm's axis_name would have failed the trace); float32, depth 6:
    # the re-run program is the same ops, so <= 1e-5.
    np.testing.assert_allclose(tm.apply(v, images), jax.jit(partial(m.apply, train=False))(v, images), atol=1e-5)
    out, upd = tm.apply(v, images, train=True, mutable=["batch_stats"])
    ref, rupd = _flax_train(m, v, images)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(rupd), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert jax.tree.structure(upd) == jax.tree.structure({"batch_stats": v["batch_stats"]})


def test_pruned_train_pass_equals_masked_original(resnet, images):
    _, v, tm = resnet
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    tm2, v2 = jp.prune(tm, v, plan)
    assert tm2.group_widths()["ResNetBlock_1/Conv_0"] == 8
    out, upd = tm2.apply(v2, images, train=True, mutable=["batch_stats"])
    masks = {k: jnp.asarray(a) for k, a in jp.masking.plan_masks(tm, plan).items()}
    ref, _ = tm.apply(v, images, train=True, mutable=["batch_stats"], masks=masks)
    # float32 through 6 layers and 5 batch norms in training mode: <= 1e-4.
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert upd["batch_stats"]["ResNetBlock_1"]["BatchNorm_0"]["mean"].shape == (8,)


def test_train_true_without_a_train_argument_is_refused(images):
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Conv(4, (3, 3))(x)).mean((1, 2)))

    m = Plain()
    v = _variables(m)
    tm = jp.trace_model(m, v, X)
    with pytest.raises(ValueError, match="traced without a `train` argument"):
        tm.apply(v, images, train=True)
    fn = jp.trace_model(lambda v, x: m.apply(v, x), v, X)
    with pytest.raises(ValueError, match="train_kwargs"):
        fn.apply(v, images, train=True)
    with pytest.raises(ValueError, match="must not hold"):
        jp.trace_model(m, v, X, apply_kwargs={"mutable": True})


def test_function_route_trains_with_kwargs_and_rngs(images):
    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, *, deterministic: bool):
            h = nn.relu(nn.Conv(6, (3, 3))(x))
            h = nn.Dropout(0.5, deterministic=deterministic)(h)
            return nn.Dense(3)(h.mean((1, 2)))

    m = Drop()
    v = _variables(m, deterministic=True)
    tm = jp.trace_model(m.apply, v, X, apply_kwargs={"deterministic": True}, train_kwargs={"deterministic": False})
    key = jax.random.key(5)
    out = tm.apply(v, images, train=True, rngs={"dropout": key})
    apply_train = jax.jit(partial(m.apply, deterministic=False))  # one compile, used twice below
    ref = apply_train(v, images, rngs={"dropout": key})
    np.testing.assert_allclose(out, ref, atol=1e-5)  # float32, same ops: <= 1e-5
    assert not np.allclose(out, tm.apply(v, images), atol=1e-3)  # dropout did act
    # jaxprune.train's step draws one dropout key per step for a model naming its streams.
    tmr = jp.trace_model(
        m.apply,
        v,
        X,
        apply_kwargs={"deterministic": True},
        train_kwargs={"deterministic": False},
        train_rngs=("dropout",),
    )
    state = jt.TrainState.create(tmr, v, jt.sgd(0.1))
    labels = jnp.arange(4) % 3
    _, metrics = jt.train_step(state, images, labels)
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0), 1)
    want = jt.cross_entropy_loss(apply_train(v, images, rngs={"dropout": key}), labels)
    np.testing.assert_allclose(metrics["loss"], want, atol=1e-5)  # float32, same ops
    with pytest.raises(TypeError, match="train_rngs"):
        jp.trace_model(m.apply, v, X, train_rngs="dropout")


# -- rebuilding the user's class ---------------------------------------------------------------------------------


def _resnet_macs(f: int, n: int = 4) -> int:
    """Conv + dense MACs of the 2-stage ResNet above at `f` filters, input (n, 16, 16, 1), written out layer by layer."""
    stem = n * 16 * 16 * f * 9 * 1
    block0 = 2 * n * 16 * 16 * f * 9 * f
    block1 = n * 8 * 8 * 2 * f * 9 * f + n * 8 * 8 * 2 * f * 9 * 2 * f + n * 8 * 8 * 2 * f * f  # conv0, conv1, proj
    return stem + block0 + block1 + n * 2 * f * 10


def _all_half(tm, v):
    return jp.make_plan(tm, v, prune_ratio={g.name: 0.5 for g in tm.channel_groups() if g.prunable})


def test_resnet_rebuilt_as_its_own_class_with_derived_widths(resnet, images):
    _, v, tm = resnet
    assert sum(g.prunable for g in tm.channel_groups()) == 4
    plan = _all_half(tm, v)
    tm2, v2 = jp.prune(tm, v, plan)
    assert tm2.group_widths() == {
        "conv_init": 4,
        "ResNetBlock_0/Conv_0": 4,
        "ResNetBlock_1/Conv_0": 8,
        "ResNetBlock_1/Conv_1": 8,
    }
    rebuilt = tm2.module
    assert type(rebuilt) is ResNet and rebuilt.num_filters == 4 and rebuilt.stage_sizes == (1, 1)
    out = rebuilt.apply(v2, images, train=False)
    np.testing.assert_allclose(out, tm2.apply(v2, images), atol=1e-5)  # float32, same ops: <= 1e-5
    masked = jp.mask_dropped(tm, v, plan, images)
    np.testing.assert_allclose(out, masked, atol=1e-4)  # float32 through 6 convs and 5 BNs: <= 1e-4
    assert jp.count_macs(tm).macs == _resnet_macs(8) == 2_171_520
    assert jp.count_macs(tm2).macs == _resnet_macs(4) == 561_472


def _factory(width: int) -> nn.Sequential:
    return nn.Sequential(
        [nn.Conv(width, (3, 3)), nn.relu, nn.Conv(2 * width, (3, 3), strides=2), nn.relu, _pool, nn.Dense(10)]
    )


def _pool(x):
    return x.mean((1, 2))


def test_sequential_from_a_factory_rebuilt(images):
    s = _factory(8)
    v = _variables(s)
    tm = jp.trace_model(s, v, X)
    plan = _all_half(tm, v)
    tm2, v2 = jp.prune(tm, v, plan)
    rebuilt = tm2.module
    assert type(rebuilt) is nn.Sequential
    assert [getattr(layer, "features", None) for layer in rebuilt.layers] == [4, None, 8, None, None, 10]
    out = rebuilt.apply(v2, images)
    np.testing.assert_allclose(out, tm2.apply(v2, images), atol=1e-5)  # float32, same ops
    np.testing.assert_allclose(out, jp.mask_dropped(tm, v, plan, images), atol=1e-4)  # float32, 3 layers

    # conv 3x3 (1 -> w) at 16x16, conv 3x3 stride 2 (w -> 2w) at 8x8, dense 2w -> 10; batch 4.
    def macs(w):
        return 4 * (16 * 16 * w * 9 + 8 * 8 * 2 * w * 9 * w + 2 * w * 10)

    assert jp.count_macs(tm).macs == macs(8) == 369_280
    assert jp.count_macs(tm2).macs == macs(4) == 110_912


def test_rebuild_impossible_names_group_and_field(resnet, images):
    _, v, tm = resnet
    tm2, v2 = jp.prune(tm, v, jp.make_plan(tm, v, prune_ratio={"ResNetBlock_0/Conv_0": 0.5}))
    with pytest.raises(
        ValueError,
        match=r"field ResNet\.num_filters sets groups .*ResNetBlock_0/Conv_0 .*kept 4, "
        r"needs num_filters = 4.*still runs and trains",
    ):
        _ = tm2.module
    assert tm2.apply(v2, images).shape == (4, 10)  # the TracedModel still runs


def test_group_no_field_sets_is_named(images):
    class Literal(nn.Module):
        classes: int = 3

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.classes)(nn.relu(nn.Conv(6, (3, 3), name="c6")(x)).mean((1, 2)))

    m = Literal()
    v = _variables(m)
    tm = jp.trace_model(m, v, X)
    tm2, _ = jp.prune(tm, v, jp.make_plan(tm, v, prune_ratio={"c6": 0.5}))
    with pytest.raises(
        ValueError,
        match=r"\['c6'\] have no constructor field .*params/c6/kernel.*no int "
        r"constructor field of Literal sets it.*still runs and trains",
    ):
        _ = tm2.module


def test_user_field_shared_by_groups_with_different_counts(resnet):
    m, v, _ = resnet
    tm = jp.trace_model(m, v, X, fields={"conv_init": "num_filters", "ResNetBlock_0/Conv_0": "num_filters"})
    tm2, _ = jp.prune(tm, v, jp.make_plan(tm, v, prune_ratio={"ResNetBlock_0/Conv_0": 0.5}))
    with pytest.raises(
        ValueError,
        match=r"field ResNet\.num_filters sets groups \['ResNetBlock_0/Conv_0', "
        r"'conv_init'\], and no single value",
    ):
        _ = tm2.module


@pytest.mark.slow
def test_fit_finetunes_the_pruned_linen_resnet_on_digits():
    data = jp.data.load_digits(image_size=16, channels=1)
    m = ResNet(stage_sizes=(1, 1), num_classes=10)
    v = _variables(m, jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32), train=False)
    tm = jp.trace_model(m, v, jax.ShapeDtypeStruct((64, 16, 16, 1), jnp.float32))
    state = jt.TrainState.create(tm, v, jt.sgd(0.05))
    # One epoch (22 steps) before pruning and one of fine-tuning: the pruned model starts near chance (~0.12 test
    # accuracy here) and one epoch of fine-tuning lifts it to ~0.5, a wide margin for `after > before`; a second
    # epoch of either adds no check, only ~2 s of CPU.
    state, _ = jt.fit(state, data, epochs=1, batch_size=64, progress=False, eval_every=0)
    plan = jp.make_plan(state.model, state.variables, prune_ratio=0.5)
    pruned = jt.prune_state(state, plan)
    before = jt.evaluate(pruned, data.x_test, data.y_test, batch_size=64)["accuracy"]
    tuned, hist = jt.finetune(pruned, data, epochs=1, lr=0.02, batch_size=64, progress=False)
    after = hist[-1]["test_accuracy"]
    assert after > before, (before, after)
    bs0 = jax.tree.leaves(pruned.batch_stats)
    bs1 = jax.tree.leaves(tuned.batch_stats)
    assert all(a.shape == b.shape for a, b in zip(bs0, bs1, strict=True))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(bs0, bs1, strict=True)) > 1e-3


@pytest.mark.slow
def test_iterative_prune_takes_a_traced_model_without_batch_norm():
    data = jp.data.load_digits(image_size=16, channels=1)
    small = (data.x_train[:256], data.y_train[:256], data.x_test[:128], data.y_test[:128])
    s = _factory(8)
    v = _variables(s, jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32))
    # No `train` argument: train_kwargs={} says its training pass is its inference one.
    tm = jp.trace_model(s, v, jax.ShapeDtypeStruct((64, 16, 16, 1), jnp.float32), train_kwargs={})
    state = jt.TrainState.create(tm, v, jt.sgd(0.05))  # batch_stats={}: the model has none
    state, rounds = jt.iterative_prune(state, small, (0.5,), epochs_per_round=1, batch_size=64, lr=0.01, progress=False)
    assert state.model.group_widths() == {"layers_0": 4, "layers_2": 8}
    # batch 1 at 16x16: conv 1 -> w, conv stride 2 w -> 2w at 8x8, dense 2w -> 10.
    assert rounds[0]["macs_before"] == 16 * 16 * 8 * 9 + 8 * 8 * 16 * 9 * 8 + 16 * 10 == 92_320
    assert rounds[0]["macs_after"] == 16 * 16 * 4 * 9 + 8 * 8 * 8 * 9 * 4 + 8 * 10 == 27_728
    assert type(state.model.module) is nn.Sequential
