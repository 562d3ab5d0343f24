"""Cost accounting for any model: `count_macs` and `xla_flops` on an NNX transformer block and on a Linen U-Net called
with two inputs ``(x, t)`` (a `TracedModel` traced with both), against counts written out here; and `make_plan` on a
plain Linen module (traced on the spot with an example input, or an error saying what to pass)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linen_random_variables, random_leaf
from flax import nnx
from test_trace import ScanStack, TinyViT  # the tracing tests' scan / remat / cond stack and ViT

import jaxprune as jp

B, L, D = 2, 4, 8  # transformer block: batch, tokens, model width


class Block(nnx.Module):
    """A pre-norm transformer block: self-attention and an MLP, with residuals."""

    def __init__(self, *, rngs, d=D, heads=2, hidden=16):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, qkv_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


def _block_macs(heads, qk, v, hidden):
    """Weight MACs and activation MACs of `Block` on (B, L, D) by hand: q and k projections D -> heads x qk, v
    D -> heads x v, out heads x v -> D, the MLP D -> hidden -> D, per token; scores q.k: B x heads x L x L x qk, and
    attention x values: B x heads x L x L x v."""
    weight = B * L * (2 * D * heads * qk + D * heads * v + heads * v * D + 2 * D * hidden)
    act = B * heads * L * L * qk + B * heads * L * L * v
    return weight, act


@pytest.fixture(scope="module")
def block():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Block(rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype) if leaf.shape != () else jax.random.key(0)
        return random_leaf(rng, str(path[-2].key), leaf)

    m = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    x = jax.ShapeDtypeStruct((B, L, D), jnp.float32)
    tm = jp.trace_model(m, None, x)
    plan = jp.make_plan(m, prune_ratio={g.name: 0.5 for g in tm.channel_groups() if g.prunable}, example_input=x)
    return m, x, plan, jp.prune(m, plan)


def test_block_counts_weight_and_activation_macs(block):
    m, x, _, _ = block
    r = jp.count_macs(m, (B, L, D))
    assert [(row.name, row.kind) for row in r.rows] == [
        ("attn/query", "dense"),
        ("attn/key", "dense"),
        ("attn/value", "dense"),
        ("attn/dot_general_0", "act"),  # scores q.k
        ("attn/dot_general_1", "act"),  # attention weights x values
        ("attn/out", "dense"),
        ("fc1", "dense"),
        ("fc2", "dense"),
        ("ln1", "bn"),
        ("ln2", "bn"),
    ]
    weight, act = _block_macs(2, 4, 4, 16)
    assert (r.macs, r.activation_macs) == (weight, act) == (4096, 512)
    assert r.row("attn/dot_general_0").macs == B * 2 * L * L * 4 == 256  # 2 * B * heads * L * L * head_dim in all
    assert r.row("attn/query").macs == B * L * D * D and r.row("attn/query").out_width == 8
    # Parameters: q, k, v kernels (8, 2, 4) + biases (2, 4); out (2, 4, 8) + 8; two LayerNorms; the MLP.
    assert r.params == 4 * 72 + 2 * 16 + (8 * 16 + 16) + (16 * 8 + 8) == 600
    assert r.params == sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(jp.nnx_variables(m)["params"]))
    assert r.params_no_bn == 600 - 32 and r.row("ln1").out_width == 8
    text = r.format()
    assert "act MACs" in text and "512 activation MACs (apart)" in text and "activation MACs = products" in text
    # The same counts through the module's TracedModel, and with the input given as a ShapeDtypeStruct.
    tr = jp.count_macs(jp.trace_model(m, None, x))
    assert (tr.macs, tr.activation_macs, tr.params) == (4096, 512, 600)
    assert jp.count_macs(m, x).rows == r.rows


def test_block_pruned_counts_and_xla_flops(block):
    m, x, plan, m2 = block
    w = plan.new_widths
    heads, qk, v = w["attn/query:1"], w["attn/query:2"], w["attn/value:2"]
    assert (heads, qk, v, w["fc1"]) == (1, 2, 2, 8)
    r2 = jp.count_macs(m2, (B, L, D))
    assert (r2.macs, r2.activation_macs) == _block_macs(heads, qk, v, 8) == (1536, 128)
    before, after = jp.xla_flops(m, None, x), jp.xla_flops(m2, None, x)
    assert isinstance(before, float) and 0 < after < before
    assert jp.xla_flops(m, jp.nnx_variables(m), x) == before  # its own variables agree: the cached figure
    text = jp.compare(jp.count_macs(m, (B, L, D)), r2)
    assert "activation MACs (apart)" in text and "75.00%" in text


def test_block_bad_input(block):
    m, x, _, _ = block
    v = jp.nnx_variables(m)
    wrong = jax.tree_util.tree_map(lambda a: a, v)
    wrong["params"]["fc1"]["kernel"] = jnp.zeros((8, 5))
    with pytest.raises(ValueError, match=r"variables differ from the NNX module Block's own at params/fc1/kernel"):
        jp.xla_flops(m, wrong, x)
    with pytest.raises(ValueError, match=r"count_macs: Block cannot run at input\(s\) \(2, 4, 5\) float32"):
        jp.count_macs(m, (B, L, 5))
    with pytest.raises(ValueError, match="input_shape is required for the NNX module Block"):
        jp.xla_flops(m)
    with pytest.raises(TypeError, match=r"input_shape must be a shape \(a tuple of ints\)"):
        jp.count_macs(m, "2,4,8")


class Conditioned(nnx.Module):
    """An NNX module of two inputs: features x (B, 6) and a condition c (B, 3)."""

    def __init__(self, *, rngs):
        self.fx = nnx.Linear(6, 8, rngs=rngs)
        self.fc = nnx.Linear(3, 8, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x, c):
        return self.out(nnx.relu(self.fx(x) + self.fc(c)))


def test_nnx_module_of_two_inputs():
    m = nnx.eval_shape(lambda: Conditioned(rngs=nnx.Rngs(0)))
    xs = (jax.ShapeDtypeStruct((B, 6), jnp.float32), jax.ShapeDtypeStruct((B, 3), jnp.float32))
    r = jp.count_macs(m, xs)
    assert [(row.name, row.macs) for row in r.rows] == [("fx", B * 6 * 8), ("fc", B * 3 * 8), ("out", B * 8 * 2)]
    tm = jp.trace_model(m, None, *xs)
    assert tm.n_inputs == 2 and jp.count_macs(tm).rows == r.rows and r.input_shape == ((B, 6), (B, 3))


# -- a Linen U-Net called as unet.apply(v, x, t) ------------------------------------------------------------------------


class TinyUNet(nn.Module):
    """A diffusion U-Net in miniature: a time embedding added to the first features, a strided conv down, a transposed
    conv up, a skip concatenation and a 1x1 output conv."""

    @nn.compact
    def __call__(self, x, t):
        e = t[:, None].astype(jnp.float32) * jnp.array([[1.0, 0.1]])
        emb = nn.Dense(8, name="temb")(jnp.concatenate([jnp.sin(e), jnp.cos(e)], -1))
        h = nn.relu(nn.Conv(8, (3, 3), name="down")(x) + emb[:, None, None, :])
        d = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="mid")(h))
        u = nn.ConvTranspose(8, (2, 2), strides=(2, 2), name="up")(d)
        return nn.Conv(3, (1, 1), name="out")(jnp.concatenate([h, u], -1))


XS = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
TS = jax.ShapeDtypeStruct((2,), jnp.int32)


def _unet_macs(a, b, c, n=2):
    """By hand, batch n on 8x8: time embedding 4 -> a; down 3x3 3 -> a at 8x8; mid 3x3 stride 2 a -> b at 4x4; up, a
    2x2 stride-2 transposed conv b -> c (each of the 4x4 input pixels meets each of the 4 taps once); out 1x1 over the
    concatenated a + c channels at 8x8."""
    return n * (4 * a + 64 * 9 * 3 * a + 16 * 9 * a * b + 16 * 4 * b * c + 64 * (a + c) * 3)


@pytest.fixture(scope="module")
def unet():
    m = TinyUNet()
    abstract = jax.eval_shape(lambda x, t: m.init(jax.random.key(0), x, t), XS, TS)
    rng = np.random.default_rng(1)
    v = jax.tree_util.tree_map_with_path(lambda p, leaf: random_leaf(rng, p[-1].key, leaf), dict(abstract))
    tm = jp.trace_model(m, v, XS, TS)
    plan = jp.make_plan(tm, v, prune_ratio={g.name: 0.5 for g in tm.channel_groups() if g.prunable})
    tm2, v2 = jp.prune(tm, v, plan)
    return m, v, tm, plan, tm2, v2


def test_unet_traced_with_two_inputs_runs_as_the_module(unet):
    m, v, tm, _, _, _ = unet
    assert tm.n_inputs == 2 and [a.shape for a in tm.example_inputs] == [(2, 8, 8, 3), (2,)]
    x = jax.random.normal(jax.random.key(0), XS.shape)
    t = jnp.array([3, 7], jnp.int32)
    # float32, the same ops in the same order: equal to 1e-5.
    want = jax.jit(m.apply)(v, x, t)
    np.testing.assert_allclose(tm.apply(v, x, t), want, rtol=1e-5, atol=1e-5)
    # The call route (mutable collections / rngs: the module's own apply, traced) unpacks both inputs too.
    out = tm.apply(v, x, t, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"traced with 2 input\(s\) and is called as apply\(variables, x0, x1\)"):
        tm.apply(v, x)


def test_unet_pruned_equals_the_masked_original(unet):
    _, v, tm, plan, tm2, v2 = unet
    x = jax.random.normal(jax.random.key(3), XS.shape)
    t = jnp.array([1, 9], jnp.int32)
    # float32 through 4 convs and a dense layer: the masked original sums zeros in another order (<= 1e-4).
    np.testing.assert_allclose(tm2.apply(v2, x, t), jp.mask_dropped(tm, v, plan, x, t), rtol=1e-4, atol=1e-4)


def test_unet_counts_and_xla_flops(unet):
    m, v, tm, plan, tm2, v2 = unet
    r = jp.count_macs(tm)
    assert [(row.name, row.kind) for row in r.rows] == [
        ("temb", "dense"),
        ("down", "conv"),
        ("mid", "conv"),
        ("up", "conv"),
        ("out", "conv"),
    ]
    assert r.macs == _unet_macs(8, 16, 8) == 87_104 and r.activation_macs == 0
    assert r.row("up").macs == 2 * 16 * 4 * 16 * 8 and r.row("mid").out_hw == (4, 4)
    assert r.params == (4 * 8 + 8) + (27 * 8 + 8) + (72 * 16 + 16) + (4 * 16 * 8 + 8) + (16 * 3 + 3) == 2003
    assert r.input_shape == ((2, 8, 8, 3), (2,))
    # The plain Linen module, counted directly with both inputs, gives the same rows.
    assert jp.count_macs(m, (XS, TS)).rows == r.rows
    a, b, c = (tm2.group_widths()[n] for n in ("temb", "mid", "up"))  # temb: the stream the embedding joins
    assert (a, b, c) == (4, 8, 4) and set(plan.keep) == {"temb", "mid", "up"}
    assert jp.count_macs(tm2).macs == _unet_macs(4, 8, 4) == 30_240
    assert jp.count_macs(tm2, (jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32), (1,))).macs == _unet_macs(4, 8, 4, 1)
    before, after = jp.xla_flops(tm), jp.xla_flops(tm2, v2)
    assert isinstance(before, float) and 0 < after < before
    # The module itself: the traced re-run binds the module's own primitives, so XLA compiles the same program.
    assert jp.xla_flops(m, None, (XS, TS)) == before
    with pytest.warns(jp.WidthAlignmentWarning, match="not a multiple of 8"):
        rep = jp.cost_report(tm, v, tm2, v2)  # both figures side by side; the XLA ones from the cache
    assert (rep.before.macs, rep.after.macs, rep.xla_before, rep.xla_after) == (87_104, 30_240, before, after)
    # A plain function of two inputs, traced with both, is counted the same way.
    fn = jp.trace_model(lambda v, x, t: m.apply(v, x, t), tm.abstract_variables(), XS, TS)
    assert jp.count_macs(fn).rows == r.rows and fn.kind == "function"


def test_unet_bad_input(unet):
    _, _, tm, _, _, _ = unet
    with pytest.raises(ValueError, match=r"count_macs: this TracedModel takes 2 input\(s\).*got 1: \(2, 8, 8, 3\)"):
        jp.count_macs(tm, (2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"xla_flops: this TracedModel takes 2 input\(s\)"):
        jp.xla_flops(tm, None, (XS, TS, TS))
    with pytest.raises(ValueError, match=r"count_macs: TracedModel\(linen\) cannot run at input\(s\) \(2, 8, 8, 5\)"):
        jp.count_macs(tm, ((2, 8, 8, 5), TS))
    with pytest.raises(ValueError, match="positive ints"):
        jp.count_macs(tm, ((2, 0, 8, 3), TS))


# -- the counter through scan / remat / cond / custom_vjp, and Linen attention -----------------------------------------


def _abstract_init(m, x):
    return jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)


def test_scan_stack_counts_each_layer_of_the_scan():
    m = ScanStack()  # embed 6 -> 12; a scan of 3 remat'd residual blocks 12 -> 20 -> 12; a cond; out 12 -> 3
    x = jax.ShapeDtypeStruct((4, 6), jnp.float32)
    r = jp.count_macs(jp.trace_model(m, _abstract_init(m, x), x))
    assert [(row.name, row.macs, row.params) for row in r.rows] == [
        ("embed", 4 * 6 * 12, 6 * 12 + 12),
        ("blocks/up", 3 * 4 * 12 * 20, 3 * (12 * 20 + 20)),  # the scan body counts once per layer
        ("blocks/down", 3 * 4 * 20 * 12, 3 * (20 * 12 + 12)),
        ("out", 4 * 12 * 3, 12 * 3 + 3),
    ]
    assert r.macs == 6192 and r.activation_macs == 0 and jp.count_macs(m, x).rows == r.rows


def test_linen_attention_activation_macs():
    m = TinyViT()  # 4x4 stride-4 patches of 8x8: 4 tokens + a class token, width 16, 2 heads of 4 features
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    r = jp.count_macs(m, x)
    n, t = 2, 5
    assert [row.name for row in r.rows if row.kind == "act"] == ["attn/dot_general_0", "attn/dot_general_1"]
    assert r.activation_macs == 2 * (n * 2 * t * t * 4) == 800  # q.k and attention x values
    patch = n * 2 * 2 * 16 * 16 * 3
    assert r.macs == patch + n * t * (3 * 16 * 8 + 8 * 16 + 2 * 16 * 24) + n * 16 * 3 == 19_040
    assert r.row("ln_a").kind == "bn" and r.row("<root>").kind == "other" and r.row("<root>").params == 16 + 5 * 16


# -- make_plan on a plain Linen module ---------------------------------------------------------------------------------


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="c1")(x))
        return nn.Dense(4, name="head")(x.mean((1, 2)))


def test_make_plan_traces_a_plain_linen_module():
    m = Net()
    x = jnp.zeros((1, 8, 8, 3))
    v = linen_random_variables(m, x)
    plan = jp.make_plan(m, v, prune_ratio=0.5, example_input=x)
    assert plan.keep == jp.make_plan(jp.trace_model(m, v, x), v, prune_ratio=0.5).keep and len(plan.keep["c1"]) == 4
    # A module object nothing has traced (make_plan's trace of `m` is reused for `m` itself, as for prune):
    with pytest.raises(ValueError, match=r"make_plan on the Linen module Net needs an example input.*example_input=x"):
        jp.make_plan(Net(), v, prune_ratio=0.5)
    with pytest.raises(ValueError, match=r"jaxprune\.trace_model\(module, variables, x\)"):
        jp.make_plan(Net(), v, prune_ratio=0.5)
    with pytest.raises(TypeError, match="make_plan on the Linen module Net needs its variables"):
        jp.make_plan(m, prune_ratio=0.5, example_input=x)


class WideNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), name="c1")(x))
        return nn.Dense(4, name="head")(x.mean((1, 2)))


def test_prune_rebuilds_a_plain_linen_module_as_its_own_class():
    m, x = WideNet(), jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    v = linen_random_variables(m, x)
    plan = jp.make_plan(m, v, prune_ratio=0.5, example_input=x)
    m2, v2 = jp.prune(m, v, plan)  # make_plan's trace of this module object is reused: no example input
    assert type(m2) is WideNet and m2.width == 4 and v2["params"]["c1"]["kernel"].shape == (3, 3, 3, 4)
    # float32, one conv and a dense layer: the rebuilt module equals the masked original to rounding.
    np.testing.assert_allclose(m2.apply(v2, x), jp.mask_dropped(jp.trace_model(m, v, x), v, plan, x), atol=1e-5)
    m3, _ = jp.prune(WideNet(), v, plan, example_input=x)  # another module object: traced on the spot
    assert m3 == m2
    with pytest.raises(ValueError, match=r"prune on the Linen module WideNet needs an example input"):
        jp.prune(WideNet(), v, plan)
    literal = Net()  # its width is a literal in __call__: no field sets it
    lv = linen_random_variables(literal, x)
    with pytest.raises(ValueError, match=r"To keep the pruned model as a TracedModel"):
        jp.prune(literal, lv, jp.make_plan(literal, lv, prune_ratio=0.5, example_input=x))
