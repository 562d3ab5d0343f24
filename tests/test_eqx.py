"""Equinox models pruned as themselves: `make_plan(model, ..., state=)` / `prune(model, plan, state=, opt_state=)` return
the user's own `eqx.Module` classes with their `eqx.nn.State`; they equal the pruned trace and the masked original,
are counted, and keep training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_eqx_tree

eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

import jaxprune as jp  # noqa: E402
from jaxprune.trace.eqx_adapter import trace_eqx  # noqa: E402

WIDTHS = (8, 16, 16)


class Block(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm

    def __init__(self, cin, cout, stride, key):
        self.conv = eqx.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, key=key)
        self.bn = eqx.nn.BatchNorm(cout, axis_name="batch", mode="batch")

    def __call__(self, x, state):
        x, state = self.bn(self.conv(x), state)
        return jax.nn.relu(x), state


class CNN(eqx.Module):
    """Conv-BN-relu x3 (strides 1, 2, 1), a LayerNorm on the pooled features and a Linear head; one (C, H, W) example."""

    blocks: list
    ln: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, key, cin=1, classes=10):
        k = jax.random.split(key, 4)
        chans = (cin, *WIDTHS)
        self.blocks = [Block(chans[i], chans[i + 1], s, k[i]) for i, s in enumerate((1, 2, 1))]
        self.ln = eqx.nn.LayerNorm(WIDTHS[-1])
        self.head = eqx.nn.Linear(WIDTHS[-1], classes, key=k[3])

    def __call__(self, x, state):
        for b in self.blocks:
            x, state = b(x, state)
        return self.head(self.ln(x.mean((1, 2)))), state


def _random(tree, seed):
    """`conftest.random_eqx_tree` with its own seeded generator."""
    return random_eqx_tree(tree, np.random.default_rng(seed))


def _built(make, seed=0):
    model, state = eqx.filter_eval_shape(eqx.nn.make_with_state(make), jax.random.key(0))
    return _random(model, seed), _random(state, seed + 100)


def _macs(c):  # 3x3 SAME convs on 8x8 (strides 1, 2, 1), then the head on the pooled features
    return 8 * 8 * c[0] * 9 * 1 + 4 * 4 * c[1] * 9 * c[0] + 4 * 4 * c[2] * 9 * c[1] + c[2] * 10


@pytest.fixture(scope="module")
def cnn():
    model, state = _built(CNN)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8))
    plan = jp.make_plan(model, prune_ratio=0.5, example_input=x, state=state)
    return model, state, x, plan


@eqx.filter_jit  # one compile per model shape (eager calls compile every op on its own)
def _infer(model, state, x):
    return eqx.nn.inference_mode(model)(x, state)[0]


@eqx.filter_jit
def _infer_stateless(model, x, **kw):
    return eqx.nn.inference_mode(model)(x, **kw)


def test_eqx_cnn_pruned_is_its_own_class(cnn):
    model, state, x, plan = cnn
    tm, v = trace_eqx(model, x, state=state)
    assert {g.name for g in tm.channel_groups() if g.prunable} == set(plan.keep)
    assert set(plan.keep) == {"blocks/0/conv", "blocks/1/conv", "blocks/2/conv"}
    before = jax.tree_util.tree_map(np.asarray, (eqx.filter(model, eqx.is_array), state))
    m2, s2 = jp.prune(model, plan, state=state)
    assert type(m2) is CNN and all(type(b) is Block for b in m2.blocks) and type(s2) is eqx.nn.State
    w = [len(plan.keep[f"blocks/{i}/conv"]) for i in range(3)]
    assert w == [4, 8, 8]
    for i, b in enumerate(m2.blocks):
        cin = 1 if i == 0 else w[i - 1]
        assert (b.conv.in_channels, b.conv.out_channels, b.conv.groups, b.bn.input_size) == (cin, w[i], 1, w[i])
        assert b.conv.weight.shape == (w[i], cin, 3, 3) and b.conv.bias.shape == (w[i], 1, 1)
        keep = np.array(plan.keep[f"blocks/{i}/conv"])
        mean, var = s2.get(b.bn.batch_state_index)
        mean0, var0 = state.get(model.blocks[i].bn.batch_state_index)
        np.testing.assert_array_equal(mean, np.asarray(mean0)[keep])  # the running statistics, sliced
        np.testing.assert_array_equal(var, np.asarray(var0)[keep])
    assert (m2.ln.shape, m2.ln.weight.shape, m2.head.in_features, m2.head.weight.shape) == ((8,), (8,), 8, (10, 8))
    assert [b.conv.out_channels for b in model.blocks] == list(WIDTHS) and model.head.in_features == 16

    out = _infer(m2, s2, x)
    tm2, v2 = jp.prune(tm, v, plan)
    # float32, four layers: the rebuilt module and the pruned trace run the same ops (1e-5); the masked original adds
    # the zeroed channels' exact zeros in other orders (1e-4).
    np.testing.assert_allclose(out, tm2.apply(v2, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, jp.mask_dropped(tm, v, plan, x), rtol=1e-4, atol=1e-4)
    after = jax.tree_util.tree_map(np.asarray, (eqx.filter(model, eqx.is_array), state))
    jax.tree_util.tree_map(np.testing.assert_array_equal, after, before)  # the original is untouched

    r0, r1 = jp.count_macs(model, (1, 8, 8)), jp.count_macs(m2, (1, 8, 8))
    assert (r0.macs, r1.macs) == (_macs(WIDTHS), _macs(w)) == (60064, 16208)
    assert [r.name for r in r1.rows if r.kind == "conv"] == ["blocks/0/conv", "blocks/1/conv", "blocks/2/conv"]
    assert r1.row("blocks/1/conv").out_width == 8
    n_params = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(eqx.filter(m2, eqx.is_inexact_array)))
    assert r1.params == n_params == 4 * 9 + 4 + 8 + 8 * 36 + 8 + 16 + 8 * 72 + 8 + 16 + 16 + 80 + 10


def test_eqx_opt_state_is_sliced_like_the_params(cnn):
    model, state, _, plan = cnn
    opt_state = optax.adam(1e-3).init(eqx.filter(model, eqx.is_array))
    # a distinct value per element, to follow through the slicing
    opt_state = jax.tree_util.tree_map(lambda a: jnp.arange(a.size, dtype=a.dtype).reshape(a.shape), opt_state)
    m2, _, o2 = jp.prune(model, plan, state=state, opt_state=opt_state)
    mu, mu0 = o2[0].mu, opt_state[0].mu
    assert type(mu) is CNN and int(o2[0].count) == 0
    k2 = np.array(plan.keep["blocks/2/conv"])
    np.testing.assert_array_equal(mu.head.weight, np.asarray(mu0.head.weight)[:, k2])
    k0, k1 = np.array(plan.keep["blocks/0/conv"]), np.array(plan.keep["blocks/1/conv"])
    np.testing.assert_array_equal(mu.blocks[1].conv.weight, np.asarray(mu0.blocks[1].conv.weight)[k1][:, k0])
    # the pruned state has the pruned model's structure and shapes
    want = jax.tree_util.tree_map(jnp.shape, eqx.filter(m2, eqx.is_array))
    assert jax.tree_util.tree_map(jnp.shape, o2[0].nu) == want


def test_eqx_pruned_model_fine_tunes(cnn):
    model, state, _, plan = cnn
    tx = optax.adam(1e-2)
    m2, s2, opt = jp.prune(model, plan, state=state, opt_state=tx.init(eqx.filter(model, eqx.is_array)))
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.normal(size=(16, 1, 8, 8)), jnp.float32)
    yb = jnp.asarray(rng.integers(0, 10, 16))

    def loss(m, s, x, y):  # training mode: batch statistics over the named batch axis, running averages updated
        logits, s = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, s)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s

    @eqx.filter_jit
    def step(m, s, o, x, y):
        (value, s), grads = eqx.filter_value_and_grad(loss, has_aux=True)(m, s, x, y)
        updates, o = tx.update(grads, o, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, o, value

    m, s, losses = m2, s2, []
    for _ in range(8):
        m, s, opt, value = step(m, s, opt, xb, yb)
        losses.append(float(value))
    assert losses[-1] < losses[0], losses
    assert type(m) is CNN and m.blocks[0].bn.input_size == 4
    mean = s.get(m.blocks[0].bn.batch_state_index)[0]
    assert not np.allclose(mean, s2.get(m2.blocks[0].bn.batch_state_index)[0])  # the running statistics moved


# ----------------------------------------------------------------------------------------------------------------------
# Other call conventions
# ----------------------------------------------------------------------------------------------------------------------
class KeyNet(eqx.Module):
    """Stateless, with dropout: ``model(x, key=...)`` (the key is required)."""

    conv: eqx.nn.Conv2d
    gn: eqx.nn.GroupNorm
    drop: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 8, 3, padding=1, key=k1)
        self.gn = eqx.nn.GroupNorm(2, 8)
        self.drop = eqx.nn.Dropout(0.5)
        self.head = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x, *, key):
        h = self.drop(jax.nn.relu(self.gn(self.conv(x))), key=key)
        return self.head(h.mean((1, 2)))


def test_eqx_stateless_model_with_a_key():
    model = _random(eqx.filter_eval_shape(KeyNet, jax.random.key(0)), 7)
    x = jax.random.normal(jax.random.key(2), (2, 4, 4))
    plan = jp.make_plan(model, prune_ratio=0.5, example_input=x)
    m2 = jp.prune(model, plan)  # no state: the module alone comes back
    assert type(m2) is KeyNet
    assert (m2.conv.out_channels, m2.gn.channels, m2.gn.groups, m2.head.in_features) == (4, 4, 2, 4)
    tm, v = trace_eqx(model, x)
    # GroupNorm(2, 8) splits the conv's filters into 2 norm groups: the group spans all 8 in 2 blocks, and each norm
    # group keeps 2 of its 4 filters, its own top 2 by L1 norm (numpy reference, float64).
    (g,) = tm.channel_groups()
    assert (g.width, g.blocks, g.scored.repeat) == (8, 2, 1)
    assert "balanced across 2 GroupNorm groups" in jp.format_groups([g])
    l1 = np.abs(np.asarray(model.conv.weight, np.float64)).sum((1, 2, 3)).reshape(2, 4)
    assert plan.keep[g.name] == tuple(b * 4 + int(j) for b in range(2) for j in np.sort(np.argsort(-l1[b])[:2]))
    np.testing.assert_array_equal(m2.gn.weight, np.asarray(model.gn.weight)[list(plan.keep[g.name])])
    out = _infer_stateless(m2, x, key=jax.random.key(0))
    # float32, two layers; GroupNorm's statistics over the kept channels in both (docs/design.md §6). The module
    # rebuilt with GroupNorm(2, 4) runs the pruned trace's ops (1e-5); the masked original sums zeros too (1e-4).
    tm2, v2 = jp.prune(tm, v, plan)
    np.testing.assert_allclose(out, tm2.apply(v2, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, jp.mask_dropped(tm, v, plan, x), rtol=1e-4, atol=1e-4)
    assert jp.count_macs(m2, (2, 4, 4)).macs == 4 * 4 * 4 * 9 * 2 + 4 * 3
    # XLA's count of the compiled inference forward (2 per MAC over in-bounds taps, plus norm and activation work):
    # positive, and lower once half of the filters are gone.
    before, after = jp.xla_flops(model, None, (2, 4, 4)), jp.xla_flops(m2, None, (2, 4, 4))
    assert 0 < after < before
    with pytest.raises(TypeError, match="Equinox module carries its own parameters"):
        jp.xla_flops(model, {"params": {}}, (2, 4, 4))


class InstanceNet(eqx.Module):
    """GroupNorm with one channel per group (an instance norm)."""

    conv: eqx.nn.Conv2d
    gn: eqx.nn.GroupNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k1)
        self.gn = eqx.nn.GroupNorm(4, 4)
        self.head = eqx.nn.Linear(4, 3, key=k2)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.gn(self.conv(x))).mean((1, 2)))


def test_eqx_instance_norm_keeps_one_group_per_kept_channel():
    model = _random(eqx.filter_eval_shape(InstanceNet, jax.random.key(0)), 8)
    x = jax.random.normal(jax.random.key(2), (2, 4, 4))
    plan = jp.make_plan(model, prune_ratio=0.5, example_input=x)
    m2 = jp.prune(model, plan)
    # Groups of one channel are the channels themselves (no tie): 2 of 4 kept, GroupNorm(2, 2) rebuilt.
    assert (m2.conv.out_channels, m2.gn.channels, m2.gn.groups) == (2, 2, 2)
    tm, v = trace_eqx(model, x)
    tm2, v2 = jp.prune(tm, v, plan)
    out = _infer_stateless(m2, x)
    # float32, two layers: the same ops as the pruned trace (1e-5); the masked original sums zeros too (1e-4).
    np.testing.assert_allclose(out, tm2.apply(v2, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, jp.mask_dropped(tm, v, plan, x), rtol=1e-4, atol=1e-4)


class Attn(eqx.Module):
    """A pre-norm transformer block on one (tokens, features) example: MultiheadAttention, an MLP, a pooled head."""

    ln: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    mlp: eqx.nn.MLP
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.ln = eqx.nn.LayerNorm(16)
        self.attn = eqx.nn.MultiheadAttention(4, 16, key=k[0])
        self.mlp = eqx.nn.MLP(16, 16, 32, 2, key=k[1])
        self.head = eqx.nn.Linear(16, 5, key=k[2])

    def __call__(self, x):
        h = jax.vmap(self.ln)(x)
        x = x + self.attn(h, h, h)
        x = x + jax.vmap(self.mlp)(x)
        return self.head(x.mean(0))


def test_eqx_attention_and_mlp_sizes_follow_their_arrays():
    model = _random(eqx.filter_eval_shape(Attn, jax.random.key(0)), 9)
    x = jax.random.normal(jax.random.key(3), (6, 16))
    ratios = {"attn/value_proj": 0.5, "mlp/layers/0": 0.5, "mlp/layers/1": 0.5}  # value head features, MLP hidden
    plan = jp.make_plan(model, prune_ratio=ratios, example_input=x)
    m2 = jp.prune(model, plan)
    a = m2.attn
    assert (a.num_heads, a.qk_size, a.vo_size, a.query_size, a.output_size) == (4, 4, 2, 16, 16)
    assert (m2.mlp.width_size, m2.mlp.layers[1].in_features, m2.mlp.layers[2].in_features) == (16, 16, 16)
    assert (m2.mlp.in_size, m2.mlp.out_size) == (16, 16)
    tm, v = trace_eqx(model, x)
    # float32, a block of six contractions: the masked original sums the zeroed features in other orders (1e-4).
    np.testing.assert_allclose(_infer_stateless(m2, x), jp.mask_dropped(tm, v, plan, x), rtol=1e-4, atol=1e-4)

    def macs(vo, hidden, t=6, d=16):  # q, k, v and out projections, the MLP, the head on the pooled tokens
        return 2 * t * d * d + 2 * t * d * vo + t * (d * hidden + hidden * hidden + hidden * d) + d * 5

    # Weight MACs only: the attention scores (activation x activation) are not among them.
    assert (jp.count_macs(model, (6, 16)).macs, jp.count_macs(m2, (6, 16)).macs) == (macs(16, 32), macs(8, 16))
    with pytest.raises(ValueError, match=r"cannot rebuild MultiheadAttention at attn: field qk_size would change"):
        jp.prune(model, jp.make_plan(model, prune_ratio={"attn/query_proj": 0.5}, example_input=x))
    uneven = jp.make_plan(model, prune_ratio={"mlp/layers/0": 0.5, "mlp/layers/1": 0.25}, example_input=x)
    with pytest.raises(ValueError, match=r"cannot rebuild MLP at mlp: field width_size .* keeps \[16, 24\]"):
        jp.prune(model, uneven)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------
def test_eqx_make_plan_without_example_input_or_state_says_what_to_pass(cnn):
    model, state, x, _ = cnn
    fresh, fresh_state = _built(CNN, seed=3)
    with pytest.raises(ValueError, match=r"needs an example input.*example_input=x"):
        jp.make_plan(fresh, prune_ratio=0.5, state=fresh_state)
    with pytest.raises(ValueError, match=r"holds state \(blocks/0/bn/.*make_plan\(\.\.\., state=state\)"):
        jp.make_plan(fresh, prune_ratio=0.5, example_input=x)
    with pytest.raises(ValueError, match=r"fails on the example input of shape \(4, 1, 8, 8\).*pass x\[0\] of a batch"):
        jp.make_plan(model, prune_ratio=0.5, example_input=jnp.ones((4, 1, 8, 8)), state=state)
    with pytest.raises(TypeError, match="example_input must be an array or a jax.ShapeDtypeStruct.*got str"):
        jp.make_plan(model, prune_ratio=0.5, example_input="x", state=state)
    with pytest.raises(TypeError, match="carries its own parameters"):
        jp.make_plan(model, {"params": {}}, prune_ratio=0.5, example_input=x, state=state)
    with pytest.raises(ValueError, match="input_shape is required for the Equinox module CNN"):
        jp.count_macs(model)


class Flat(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear
    channels: int = eqx.field(static=True)

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
        self.head = eqx.nn.Linear(8, 2, key=k2)
        self.channels = 8

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        return self.head(h.reshape(self.channels, -1).mean(1))  # the width read from a field


class Holder(eqx.Module):
    net: Flat

    def __init__(self, key):
        self.net = Flat(key)

    def __call__(self, x):
        return self.net(x)


def test_eqx_field_that_cannot_be_rebuilt_is_named():
    model = _random(eqx.filter_eval_shape(Holder, jax.random.key(0)), 4)
    x = jnp.ones((1, 4, 4))
    plan = jp.make_plan(model, prune_ratio=0.5, example_input=x)
    with pytest.raises(ValueError, match=r"cannot rebuild the Equinox module Holder.*Flat net: field channels=8"):
        jp.prune(model, plan)


def test_eqx_opt_state_that_does_not_match_names_the_leaf(cnn):
    model, state, _, plan = cnn
    other = _random(eqx.filter_eval_shape(KeyNet, jax.random.key(0)), 6)
    with pytest.raises(ValueError, match=r"optimizer-state leaf .*mu.* matches no parameter"):
        jp.prune(model, plan, state=state, opt_state=optax.adam(1e-3).init(eqx.filter(other, eqx.is_array)))
    bad = optax.adam(1e-3).init(eqx.filter(model, eqx.is_array))
    bad = eqx.tree_at(lambda o: o[0].mu.head.bias, bad, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"leaf .*mu\.head\.bias has shape \(3,\) but parameter head/bias has"):
        jp.prune(model, plan, state=state, opt_state=bad)


def test_eqx_wrong_kinds_are_refused(cnn, zoo):
    model, state, x, plan = cnn
    with pytest.raises(TypeError, match="expected an eqx.Module, got object"):
        trace_eqx(object(), x)
    m, v = zoo("vgg11")
    with pytest.raises(TypeError, match="state= and opt_state= are for an Equinox module, got a VGG"):
        jp.prune(m, v, jp.PruningPlan(keep={}, widths={}), state=state)
    with pytest.raises(TypeError, match="state= is for an Equinox module"):
        jp.make_plan(m, v, prune_ratio=0.5, state=state)
    with pytest.raises(TypeError, match="state must be the module's eqx.nn.State, got dict"):
        jp.prune(model, plan, state={})
    with pytest.raises(ValueError, match="holds no eqx.nn.StateIndex, so it takes no state="):
        jp.prune(_random(eqx.filter_eval_shape(Holder, jax.random.key(0)), 1), plan, state=state)


def test_eqx_module_keeping_its_initial_state_needs_no_state():
    """Built without `eqx.nn.make_with_state`, each StateIndex keeps its initial value: it is the state's template, so
    no `state=` is needed, and it is sliced with the channels (as is an optax state over it)."""
    model = _random(eqx.filter_eval_shape(CNN, jax.random.key(0)), 8)
    x = jnp.ones((1, 8, 8))
    plan = jp.make_plan(model, prune_ratio={"blocks/1/conv": 0.5}, example_input=x)
    opt_state = optax.sgd(0.1, momentum=0.9).init(eqx.filter(model, eqx.is_array))
    m2, o2 = jp.prune(model, plan, opt_state=opt_state)
    keep = np.array(plan.keep["blocks/1/conv"])
    init = m2.blocks[1].bn.batch_state_index.init
    np.testing.assert_array_equal(init[1], np.asarray(model.blocks[1].bn.batch_state_index.init[1])[keep])
    state2 = eqx.nn.State(m2)  # the pruned module makes its own state again
    assert _infer(m2, state2, x).shape == (10,) and m2.blocks[1].bn.input_size == 8
    assert o2[0].trace.blocks[1].bn.batch_state_index.init[0].shape == (8,)  # the momentum of the initial value too
    assert jp.count_macs(m2, (1, 8, 8)).macs == _macs((8, 8, 16))
    o3 = jp.prune_like_params(opt_state, model, plan)  # the same slicing and structure as prune(..., opt_state=)
    assert jax.tree_util.tree_structure(o3) == jax.tree_util.tree_structure(o2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, o3, o2)


def test_eqx_pruned_arrays_stay_uncommitted_as_they_were(cnn):
    """Arrays made by jax.numpy are not committed to a device; their slices (model, state, optax state) are not
    either: jit keys its programs on it, and a mix made the first step after pruning compile twice."""
    model, state, _, plan = cnn
    opt_state = optax.adam(1e-3).init(eqx.filter(model, eqx.is_array))
    before = [a for a in jax.tree_util.tree_leaves((model, state, opt_state)) if isinstance(a, jax.Array)]
    assert before and not any(a.committed for a in before)
    out = jp.prune(model, plan, state=state, opt_state=opt_state)
    after = [a for a in jax.tree_util.tree_leaves(out) if isinstance(a, jax.Array)]
    assert len(after) == len(before) and not any(a.committed for a in after)
