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


@pytest.fixture(scope="module")
def resnet():
    m = ResNet(stage_sizes=(1, 1), num_classes=10)
    v = m.init(jax.random.key(0), jnp.zeros(X.shape), train=False)
    v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), v)  # non-trivial stats
    v = {"params": v["params"], "batch_stats": jax.tree.map(jnp.abs, v["batch_stats"])}
    return m, v, jp.trace_model(m, v, X)


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(2), X.shape)


def _flax_train(m, v, x):
    """flax-examples' training forward, its "batch" axis bound by a size-1 vmap (what pmap would do per device)."""
    out, upd = jax.vmap(lambda xx: m.apply(v, xx, train=True, mutable=["batch_stats"]), axis_name="batch")(x[None])
    return out[0], jax.tree.map(lambda a: a[0], upd)


def test_plain_jit_train_names_an_unbound_axis(resnet, images):
    m, v, _ = resnet
    with pytest.raises(NameError, match="unbound axis name"):
        jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, images)


def test_traced_with_train_false_and_runs_both_passes(resnet, images):
    m, v, tm = resnet
    # The module route traced train=False (else BatchNorm's axis_name would have failed the trace); float32, depth 6:
    # the re-run program is the same ops, so <= 1e-5.
    np.testing.assert_allclose(tm.apply(v, images), m.apply(v, images, train=False), atol=1e-5)
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
    v = m.init(jax.random.key(0), jnp.zeros(X.shape))
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
    v = m.init(jax.random.key(0), jnp.zeros(X.shape), deterministic=True)
    tm = jp.trace_model(m.apply, v, X, apply_kwargs={"deterministic": True}, train_kwargs={"deterministic": False})
    key = jax.random.key(5)
    out = tm.apply(v, images, train=True, rngs={"dropout": key})
    ref = m.apply(v, images, deterministic=False, rngs={"dropout": key})
    np.testing.assert_allclose(out, ref, atol=1e-5)  # float32, same ops: <= 1e-5
    assert not np.allclose(out, tm.apply(v, images), atol=1e-3)  # dropout did act


@pytest.mark.slow
def test_fit_finetunes_the_pruned_linen_resnet_on_digits():
    data = jp.data.load_digits(image_size=16, channels=1)
    m = ResNet(stage_sizes=(1, 1), num_classes=10)
    v = m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)
    tm = jp.trace_model(m, v, jax.ShapeDtypeStruct((64, 16, 16, 1), jnp.float32))
    state = jt.TrainState.create(tm, v, jt.sgd(0.05))
    state, _ = jt.fit(state, data, epochs=2, batch_size=64, progress=False, eval_every=0)  # 2 x 22 steps
    plan = jp.make_plan(state.model, state.variables, prune_ratio=0.5)
    pruned = jt.prune_state(state, plan)
    before = jt.evaluate(pruned, data.x_test, data.y_test, batch_size=64)["accuracy"]
    tuned, hist = jt.finetune(pruned, data, epochs=2, lr=0.02, batch_size=64, progress=False)
    after = hist[-1]["test_accuracy"]
    assert after > before, (before, after)
    bs0 = jax.tree.leaves(pruned.batch_stats)
    bs1 = jax.tree.leaves(tuned.batch_stats)
    assert all(a.shape == b.shape for a, b in zip(bs0, bs1, strict=True))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(bs0, bs1, strict=True)) > 1e-3
