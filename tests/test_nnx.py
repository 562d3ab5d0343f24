"""NNX models pruned as themselves: `make_plan(module, ...)` / `prune(module, plan)` return the user's own classes, with
their `nnx.Optimizer` pruned alongside; they equal the masked original and keep training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close, random_leaf
from flax import nnx

import jaxprune as jp


class Ema(nnx.Variable):
    """A custom variable holding per-channel state (sliced with its module's channels)."""


class Odd(nnx.Variable):
    """A custom variable of a pruned width that no parameter's shape fits."""


class ConvBlock(nnx.Module):
    def __init__(self, cin, cout, *, stride, rngs, dtype=jnp.float32):
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, rngs=rngs, dtype=dtype, param_dtype=dtype)
        self.bn = nnx.BatchNorm(cout, rngs=rngs, dtype=dtype, param_dtype=dtype)
        self.ema = Ema(jnp.zeros((cout,), dtype))

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class CNN(nnx.Module):
    """Conv-BN-relu x3 and a Linear head on global average pooling."""

    WIDTHS = (8, 16, 16)

    def __init__(self, *, rngs, cin=1, classes=10, dtype=jnp.float32):
        w = self.WIDTHS
        self.blocks = nnx.List(
            [
                ConvBlock(a, b, stride=s, rngs=rngs, dtype=dtype)
                for a, b, s in zip((cin, *w[:-1]), w, (1, 2, 1), strict=True)
            ]
        )
        self.head = nnx.Linear(w[-1], classes, rngs=rngs, dtype=dtype, param_dtype=dtype)

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean((1, 2)))


class Block(nnx.Module):
    """A pre-norm transformer block (attention + MLP, residuals) and a pooled Linear head."""

    def __init__(self, *, rngs, d=16, heads=4, qkv=16, hidden=32, classes=5):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, qkv_features=qkv, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d, rngs=rngs)
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


def _randomized(make, seed=0):
    """A module built abstractly, then filled with seeded random state (eager init compiles every initializer)."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-2].key) if len(path) > 1 else ""
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype) if leaf.shape != () or name != "key" else jax.random.key(seed)
        return random_leaf(rng, name, leaf)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _all_half(module, x):
    tm = jp.trace_model(module, None, x)
    return {g.name: 0.5 for g in tm.channel_groups() if g.prunable}, tm


_call = nnx.jit(lambda mod, inp: mod(inp))


@pytest.fixture(scope="module")
def cnn():
    m = _randomized(lambda: CNN(rngs=nnx.Rngs(0)))
    m.eval()
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    ratios, tm = _all_half(m, x)
    plan = jp.make_plan(m, prune_ratio=ratios, example_input=x)
    return m, x, tm, plan


@pytest.fixture(scope="module")
def block():
    m = _randomized(lambda: Block(rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    ratios, tm = _all_half(m, x)
    plan = jp.make_plan(m, prune_ratio=ratios, example_input=x)
    return m, x, tm, plan


def _check_pruned(m, x, tm, plan, cls):
    v = jp.nnx_variables(m)
    before = jax.tree_util.tree_map(np.asarray, v)
    m2 = jp.prune(m, plan)
    assert type(m2) is cls and m2 is not m
    tm2, v2 = jp.prune(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    out = _call(m2, x)
    # float32, a handful of layers: the pruned module and the pruned trace run the same ops (1e-5); the masked
    # original sums zeros in other orders (1e-4).
    np.testing.assert_allclose(out, tm2.apply(v2, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, masked, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jp.nnx_variables(m), before)  # the original is untouched
    return m2, v2


def test_nnx_cnn_pruned_is_its_own_class(cnn):
    m, x, tm, plan = cnn
    assert set(plan.keep) == {"blocks/0/conv", "blocks/1/conv", "blocks/2/conv"}
    m2, v2 = _check_pruned(m, x, tm, plan, CNN)
    w = [len(plan.keep[f"blocks/{i}/conv"]) for i in range(3)]
    assert w == [4, 8, 8]
    for i, b in enumerate(m2.blocks):
        cin = 1 if i == 0 else w[i - 1]
        assert (b.conv.in_features, b.conv.out_features, b.bn.num_features) == (cin, w[i], w[i])
        assert b.conv.kernel[...].shape == (3, 3, cin, w[i])
        assert b.ema[...].shape == (w[i],)
    assert m2.head.in_features == w[2] and m2.head.kernel[...].shape == (w[2], 10)

    def macs(c):  # 3x3 SAME convs on 8x8 (stride 1, 2, 1), then the head on the pooled features
        return 8 * 8 * c[0] * 9 * 1 + 4 * 4 * c[1] * 9 * c[0] + 4 * 4 * c[2] * 9 * c[1] + c[2] * 10

    before, after = jp.count_macs(m, (1, 8, 8, 1)), jp.count_macs(m2, (1, 8, 8, 1))
    assert (before.macs, after.macs) == (macs((8, 16, 16)), macs(w)) == (60064, 16208)
    assert [r.name for r in after.rows if r.kind == "conv"] == ["blocks/0/conv", "blocks/1/conv", "blocks/2/conv"]
    assert after.row("blocks/1/conv").out_hw == (4, 4) and after.row("blocks/1/bn").params == 2 * w[1]
    assert before.params == sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(jp.nnx_variables(m)["params"]))
    assert [b.conv.out_features for b in m.blocks] == [8, 16, 16]  # the original's attributes too
    # The module-level helper reaches the same variables as the TracedModel route.
    jax.tree_util.tree_map(np.testing.assert_array_equal, jp.nnx_variables(m2), v2)


def test_nnx_custom_variable_is_sliced_with_its_channels():
    m = _randomized(lambda: CNN(rngs=nnx.Rngs(0)), seed=3)
    m.eval()
    for b in m.blocks:
        b.ema[...] = jnp.arange(b.ema[...].shape[0], dtype=jnp.float32)
    x = jnp.ones((1, 8, 8, 1))
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=x)
    m2 = jp.prune(m, plan)
    for i, b in enumerate(m2.blocks):
        np.testing.assert_array_equal(b.ema[...], np.array(plan.keep[f"blocks/{i}/conv"], np.float32))


def test_nnx_transformer_block_pruned_is_its_own_class(block):
    m, x, tm, plan = block
    assert set(plan.keep) == {"attn/query:1", "attn/query:2", "attn/value:2", "fc1"}  # heads, q/k and v features
    m2, _ = _check_pruned(m, x, tm, plan, Block)
    a = m2.attn
    assert (a.num_heads, a.head_dim, a.qkv_features, a.in_features, a.out_features) == (2, 2, 4, 16, 16)
    assert a.query.kernel[...].shape == (16, 2, 2) and a.out.kernel[...].shape == (2, 2, 16)
    assert (a.query.in_features, a.query.out_features, a.out.in_features) == ((16,), (2, 2), (2, 2))
    assert (m2.fc1.out_features, m2.fc2.in_features, m2.ln1.num_features) == (16, 16, 16)
    assert (m.attn.num_heads, m.attn.head_dim, m.fc1.out_features) == (4, 4, 32)

    def macs(qkv, hidden, t=6, d=16):  # q, k, v and out projections, the MLP, the head on the pooled tokens
        return 3 * t * d * qkv + t * qkv * d + 2 * t * d * hidden + d * 5

    before, after = jp.count_macs(m, (1, 6, 16)), jp.count_macs(m2, (1, 6, 16))
    # Weight MACs only: the attention scores (activation x activation) are not among them.
    assert (before.macs, after.macs) == (macs(16, 32), macs(4, 16)) == (12368, 4688)
    assert after.row("attn/query").out_width == 4 and after.row("ln1").kind == "bn"


class UpNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 8, (3, 3), rngs=rngs)
        self.up = nnx.ConvTranspose(8, 6, (2, 2), strides=(2, 2), rngs=rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.up(nnx.relu(self.conv(x)))))


def test_nnx_conv_transpose_sizes_follow_the_kernel():
    m = _randomized(lambda: UpNet(nnx.Rngs(0)), seed=6)
    x = jax.random.normal(jax.random.key(2), (1, 4, 4, 2))
    ratios, tm = _all_half(m, x)
    assert sorted(ratios) == ["conv", "up"]
    plan = jp.make_plan(m, prune_ratio=ratios, example_input=x)
    m2, _ = _check_pruned(m, x, tm, plan, UpNet)
    assert (m2.up.in_features, m2.up.out_features, m2.up.kernel_shape) == (4, 3, (2, 2, 4, 3))
    assert (m2.conv.out_features, m2.out.in_features) == (4, 3)


class GroupNet(nnx.Module):
    def __init__(self, rngs, group_size=2, conv_groups=4):
        self.conv = nnx.Conv(2, 8, (3, 3), rngs=rngs)
        self.gn = nnx.GroupNorm(8, num_groups=None, group_size=group_size, rngs=rngs)
        self.grouped = nnx.Conv(8, 8, (3, 3), feature_group_count=conv_groups, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.grouped(nnx.relu(self.gn(self.conv(x))))).mean((1, 2)))


def test_nnx_groupnorm_and_grouped_conv_keep_their_group_counts():
    m = _randomized(lambda: GroupNet(nnx.Rngs(0)), seed=7)
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 2))
    ratios, tm = _all_half(m, x)
    # 4 norm groups of 2 and 4 conv feature groups of 2: one slot space each, tied across the 4 groups (the grouped
    # conv reads "conv" too, and a grouped conv's input kernel holds one block's channels for all its groups, so the
    # same slots must go in every block: no per-block choice, docs/design.md §6).
    assert {g.name: (g.width, g.scored.repeat, g.blocks) for g in tm.channel_groups()} == {
        "conv": (2, 4, 1),
        "grouped": (2, 4, 1),
    }
    plan = jp.make_plan(m, prune_ratio=ratios, example_input=x)
    m2, _ = _check_pruned(m, x, tm, plan, GroupNet)
    # The norm keeps 4 groups, each of 1 channel (its group_size follows); the conv keeps 4 feature groups.
    assert (m2.gn.num_features, m2.gn.num_groups, m2.gn.group_size) == (4, 4, 1)
    assert (m2.grouped.in_features, m2.grouped.out_features, m2.grouped.feature_group_count) == (4, 4, 4)
    # Without the grouped conv, the GroupNorm'd filters are balanced: all 8 in 4 blocks of 2, each norm group keeping
    # its own better filter by L1 norm (numpy reference, float64); the norm keeps 4 groups of 1.
    m = _randomized(lambda: GroupNet(nnx.Rngs(0), conv_groups=1), seed=7)
    ratios, tm = _all_half(m, x)
    g = {h.name: h for h in tm.channel_groups()}["conv"]
    assert (g.width, g.blocks, g.scored.repeat) == (8, 4, 1)
    plan = jp.make_plan(m, prune_ratio={"conv": 0.5}, example_input=x)
    l1 = np.abs(np.asarray(m.conv.kernel[...], np.float64)).sum((0, 1, 2)).reshape(4, 2)
    assert plan.keep["conv"] == tuple(2 * b + int(np.argmax(l1[b])) for b in range(4))
    m2, _ = _check_pruned(m, x, tm, plan, GroupNet)
    assert (m2.gn.num_features, m2.gn.num_groups, m2.gn.group_size, m2.grouped.in_features) == (4, 4, 1, 4)
    np.testing.assert_array_equal(m2.gn.scale[...], np.asarray(m.gn.scale[...])[list(plan.keep["conv"])])
    # Groups of one channel (an instance norm) are the channels themselves: any 4 of the 8, 4 groups of 1 after.
    m = _randomized(lambda: GroupNet(nnx.Rngs(0), group_size=1, conv_groups=1), seed=7)
    ratios, tm = _all_half(m, x)
    assert {g.name: (g.width, g.scored.repeat) for g in tm.channel_groups()} == {"conv": (8, 1), "grouped": (8, 1)}
    m2, _ = _check_pruned(m, x, tm, jp.make_plan(m, prune_ratio={"conv": 0.5}, example_input=x), GroupNet)
    assert (m2.gn.num_features, m2.gn.num_groups, m2.gn.group_size) == (4, 4, 1)


def _step_fn(tx):
    @nnx.jit
    def step(model, opt, x, y):
        def loss(mod):
            return optax.softmax_cross_entropy_with_integer_labels(mod(x), y).mean()

        grads = nnx.grad(loss)(model)
        opt.update(model, grads)

    return step


@pytest.mark.slow  # ~40 s on 2 shared cores: float64 compiles of the NNX train step and the masked reference
def test_nnx_one_step_after_pruning_equals_the_masked_original_float64():
    with jax.enable_x64(True):
        m = _randomized(lambda: CNN(rngs=nnx.Rngs(0), dtype=jnp.float64), seed=5)
        m.eval()  # running statistics: the masked reference is the inference program
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(8, 8, 8, 1)))
        y = jnp.asarray(rng.integers(0, 10, 8))
        tx = optax.adam(1e-2)
        opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
        step = _step_fn(tx)
        step(m, opt, x, y)  # a warm-up step, so the state the pruned optimizer inherits is not zero
        plan = jp.make_plan(m, prune_ratio=0.5, example_input=x)
        tm = jp.trace_model(m, None, x)
        v = jp.nnx_variables(m)
        m2, opt2 = jp.prune(m, plan, optimizer=opt)
        assert type(opt2) is nnx.Optimizer and int(opt2.step[...]) == 1
        step(m2, opt2, x, y)
        # The masked original, one step: masked channels contribute nothing, so the kept parameters get the same
        # gradients and the same Adam update.
        masks = {k: jnp.asarray(a) for k, a in jp.masking.plan_masks(tm, plan, np.float64).items()}

        def loss(params):
            out = tm.apply({**v, "params": params}, x, masks=masks)
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

        @jax.jit  # one compiled reference step instead of an eager compile per op and leaf
        def reference_step(params, opt_state):
            upd, _ = tx.update(jax.grad(loss)(params), opt_state, params)
            return optax.apply_updates(params, upd)

        state = nnx.as_pure(opt.opt_state)
        stepped = reference_step(v["params"], jax.tree_util.tree_map(lambda a: a, _str_keyed(state)))
        _, want = jp.prune(tm, {**v, "params": stepped}, plan)
        got = jp.nnx_variables(m2)["params"]
        # float64, three conv layers: agreement to rounding (1e-10).
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10), got, want["params"]
        )


def _str_keyed(state):
    """The optax state with nnx.State mu/nu as nested dicts of string keys (the layout of `jp.nnx_variables`)."""

    def conv(node):
        if isinstance(node, nnx.State):
            return jax.tree_util.tree_map(lambda a: a, _to_str(node.to_pure_dict()))
        return node

    return jax.tree_util.tree_map(conv, state, is_leaf=lambda n: isinstance(n, nnx.State))


def _to_str(tree):
    return {str(k): _to_str(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _accuracy(model, x, y):
    return float((np.asarray(_call(model, x)).argmax(-1) == np.asarray(y)).mean())


@pytest.mark.slow  # 160 train steps at two widths; each width's step compiles
def test_nnx_cnn_with_its_optimizer_fine_tunes_after_pruning():
    ds = jp.data.load_digits(image_size=8, channels=1)
    m = _randomized(lambda: CNN(rngs=nnx.Rngs(0)), seed=1)
    # Adam at 1e-2 for 80 steps per width: the trained CNN reaches ~0.3 test accuracy, the pruned one starts at chance
    # (~0.10) and its 80 fine-tuning steps lift it to ~0.36, a clear margin for `acc_tuned > acc_pruned`.
    tx = optax.adam(1e-2)
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
    step = _step_fn(tx)
    rng = np.random.default_rng(0)
    n = len(ds.x_train)

    def train(model, o, steps):
        model.train()
        for _ in range(steps):
            idx = rng.integers(0, n, 64)
            step(model, o, jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx]))
        model.eval()

    train(m, opt, 80)
    m.eval()
    x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=x_test[:2])
    m2, opt2 = jp.prune(m, plan, optimizer=opt)
    m2.eval()
    acc_pruned = _accuracy(m2, x_test, y_test)
    stats = [np.asarray(b.bn.mean[...]) for b in m2.blocks]
    train(m2, opt2, 80)
    acc_tuned = _accuracy(m2, x_test, y_test)
    assert acc_tuned > acc_pruned, (acc_pruned, acc_tuned)
    for b, s in zip(m2.blocks, stats, strict=True):
        assert not np.allclose(np.asarray(b.bn.mean[...]), s)  # the BatchNorm statistics moved
    assert int(opt2.step[...]) == 160


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------
def test_nnx_make_plan_without_example_input_says_what_to_pass():
    m = _randomized(lambda: CNN(rngs=nnx.Rngs(0)), seed=2)
    with pytest.raises(ValueError, match=r"needs an example input.*example_input=x"):
        jp.make_plan(m, prune_ratio=0.5)
    with pytest.raises(ValueError, match=r"prune on an NNX module needs an example input"):
        jp.prune(m, jp.PruningPlan(keep={}, widths={}))
    with pytest.raises(TypeError, match="carries its own variables"):
        jp.make_plan(m, jp.nnx_variables(m), prune_ratio=0.5, example_input=jnp.ones((1, 8, 8, 1)))


def test_nnx_count_macs_needs_an_input_shape(cnn):
    with pytest.raises(ValueError, match="input_shape is required for the NNX module CNN"):
        jp.count_macs(cnn[0])
    with pytest.raises(ValueError, match="positive ints"):
        jp.count_macs(cnn[0], (1, 0, 8, 1))


def test_nnx_optimizer_state_sliced_like_the_params(cnn):
    m, _, _, plan = cnn
    opt = nnx.Optimizer(m, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    for var in jax.tree_util.tree_leaves(opt.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable)):
        a = var.get_value()
        if a.ndim:  # a distinct momentum per element, to follow through the slicing
            var.set_value(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape))
    before = nnx.as_pure(opt.opt_state)
    _, opt2 = jp.prune(m, plan, optimizer=opt)
    via_fn = jp.prune_like_params(before, m, plan)  # the plain-function route takes the NNX module too
    got = nnx.as_pure(opt2.opt_state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, via_fn)
    keep = np.array(plan.keep["blocks/2/conv"])
    head = got[0].trace["head"]["kernel"]
    np.testing.assert_array_equal(head, np.asarray(before[0].trace["head"]["kernel"])[keep])  # the head's rows
    assert before[0].trace["head"]["kernel"].shape == (16, 10)  # the original optimizer is untouched


def test_nnx_plan_of_another_module_is_refused(cnn, block):
    with pytest.raises(ValueError, match="plan does not match the model"):
        jp.prune(block[0], cnn[3])
    with pytest.raises(TypeError, match=r"prune\(module, plan\)"):
        jp.prune(cnn[0], jp.nnx_variables(cnn[0]), cnn[3])


def test_nnx_attention_head_sizes_must_stay_tied(block):
    m, x, _, _ = block
    plan = jp.make_plan(m, prune_ratio={"attn/query:2": 0.5, "attn/value:2": 0.75}, example_input=x)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention attn holds one head size.*'attn/query:2'.*'attn/value:2'"
    ):
        jp.prune(m, plan)


def test_nnx_optimizer_of_another_module_names_the_leaf(cnn, block):
    m, _, _, plan = cnn
    other = nnx.Optimizer(block[0], optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"optimizer-state leaf .*'attn'.* matches no parameter"):
        jp.prune(m, plan, optimizer=other)
    with pytest.raises(TypeError, match="optimizer must be an nnx.Optimizer"):
        jp.prune(m, plan, optimizer=optax.sgd(0.1))


def test_nnx_unsliceable_custom_variable_is_named():
    class Holder(nnx.Module):
        def __init__(self, rngs):
            self.net = CNN(rngs=rngs)
            self.odd = Odd(jnp.zeros((8, 3)))  # of the width of blocks/0/conv, but no parameter's shape

        def __call__(self, x):
            return self.net(x)

    m = _randomized(lambda: Holder(nnx.Rngs(0)), seed=4)
    m.eval()
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=jnp.ones((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"Odd odd \(shape \(8, 3\)\).*pruned group 'net/blocks/0/conv'"):
        jp.prune(m, plan)


class DropoutCNN(nnx.Module):
    """Flax's NNX MNIST-tutorial shape: conv, dropout, conv, dense; built in training mode (dropout on)."""

    def __init__(self, rngs):
        self.c1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.c2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        x = self.drop(nnx.relu(self.c1(x)))
        return self.fc(nnx.relu(self.c2(x)).mean((1, 2)))


def test_nnx_module_with_dropout_in_training_mode_is_planned_and_pruned():
    """Dropout draws from the module's Rngs, which a trace cannot advance: the trace sees it as the identity (it couples
    no channels), and the pruned module keeps its dropout on, with its own Rngs."""
    m = DropoutCNN(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    plan = jp.make_plan(m, prune_ratio=0.5, example_input=x)
    assert plan.new_widths == {"c1": 4, "c2": 4}
    small = jp.prune(m, plan)
    assert type(small) is DropoutCNN and small.drop.deterministic is False and m.drop.deterministic is False
    assert (small.c1.out_features, small.c2.in_features, small.fc.in_features) == (4, 4, 4)
    # Training mode really drops: two calls differ (the Rngs advance).
    assert not np.array_equal(np.asarray(small(x)), np.asarray(small(x)))
    # With dropout off the pruned module equals the masked original (float32, three layers: 1e-5 relative).
    small.eval()
    traced = jp.trace_model(m, None, x)
    ref = jp.mask_dropped(traced, jp.nnx_variables(m), plan, x)
    assert_close(small(x), ref)


def test_pruned_leaves_stay_committed_or_not_as_they_were(cnn):
    """A sliced leaf comes back committed to a device only if its source was: jit keys its programs on it, so a mix
    (sliced leaves committed, untouched ones not) made the first training step after pruning compile twice."""
    m, _, _, plan = cnn
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
    leaves = jax.tree_util.tree_leaves((nnx.state(m), nnx.state(opt)))
    assert leaves and not any(a.committed for a in leaves if isinstance(a, jax.Array))  # made by jax.numpy
    m2, opt2 = jp.prune(m, plan, optimizer=opt)
    got = [a for a in jax.tree_util.tree_leaves((nnx.state(m2), nnx.state(opt2))) if isinstance(a, jax.Array)]
    assert len(got) == len(leaves) and not any(a.committed for a in got)

    zoo = jp.models.CifarResNet(depth=8, widths=(16, 32, 64))
    dev = jax.devices()[0]
    v = jax.device_put(jp.random_variables(zoo, seed=0), dev)  # committed to that device
    _, v2 = jp.prune(zoo, v, jp.make_plan(zoo, v, prune_ratio={"stage1": 0.5}))
    got = jax.tree_util.tree_leaves(v2)
    assert got and all(a.committed and a.sharding.device_set == {dev} for a in got)
