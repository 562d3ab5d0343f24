"""Third-party-style models through the trace: each is written the way public code writes it (big_vision's ViT and
MAP head, a U-Net, Swin's windowed attention, a ConvNeXt block, a ResNeXt-style grouped conv, Flax NNX grouped-query
attention), traced once per module, pruned 50 % in every prunable group and compared with the masked original.

Tolerances (float32): pruned vs masked <= 1e-4 relative to max(1, max|masked|) (docs/design.md §4: a few layers of
float32 accumulation in another order); for the LayerNorm models the pruned output also equals the same class built
at the new widths with the kept weights, <= 1e-5 (the same program up to the reduction order of the smaller axes).
"""

from __future__ import annotations

import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from conftest import linen_random_variables as random_variables
from flax import nnx

import jaxprune as jp
from jaxprune.trace import UntracedChannelsWarning


def half_plan(tm, v, *, skip=()):
    """50 % of every prunable group (minus `skip`)."""
    return jp.make_plan(tm, v, prune_ratio={g.name: 0.5 for g in tm.channel_groups() if g.prunable}, skip=skip)


_PRUNED: dict = {}


def pruned(tm, v, plan):
    """`jp.prune`, shared between tests that prune a model by the same plan (one compile of the pruned re-run)."""
    key = (id(tm), tuple((n, tuple(k)) for n, k in plan.keep.items()))
    if key not in _PRUNED:
        _PRUNED[key] = (tm, *jp.prune(tm, v, plan))  # tm kept alive with its id
    return _PRUNED[key][1:]


def head_dims(tm):
    """Attention head-feature groups: a rebuilt attention would scale by 1/sqrt(its head features), the traced program
    by the traced count, so the rebuild comparisons keep them (pruned = masked holds for them too; rebuilding a Linen
    attention with pruned head features is refused: `test_linen_attention_rebuilt_with_fewer_heads`)."""
    return [g.name for g in tm.channel_groups() if g.prunable and (g.name.endswith(":2") or g.name == "attn/qkv")]


# -- big_vision-style ViT: class token by jnp.tile, or a MAP head with a tiled probe -------------------------------


class MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = nn.gelu(nn.Dense(self.mlp_dim, name="Dense_0")(x))
        return nn.Dense(d, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int
    qkv_features: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.qkv_features, name="MultiHeadDotProductAttention_0"
        )(y, y)
        x = x + y
        y = nn.LayerNorm(name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, name="MlpBlock_0")(y)


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision): a learnt probe, tiled over the batch, attends to the tokens."""

    mlp_dim: int
    num_heads: int
    qkv_features: int

    @nn.compact
    def __call__(self, x):
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), x.dtype)
        probe = jnp.tile(probe, [n, 1, 1])
        x = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.qkv_features)(probe, x)
        y = nn.LayerNorm()(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim)(y)
        return x[:, 0]


class ViT(nn.Module):
    width: int = 16
    mlp_dim: int = 32
    num_heads: int = 2
    head_dim: int = 4
    pool_type: str = "tok"
    patch: int = 4

    @nn.compact
    def __call__(self, image):
        x = nn.Conv(self.width, (self.patch,) * 2, strides=(self.patch,) * 2, padding="VALID", name="embedding")(image)
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, c), x.dtype)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), x.dtype)
            x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
        qkv = self.num_heads * self.head_dim
        x = Encoder1DBlock(self.mlp_dim, self.num_heads, qkv, name="encoderblock_0")(x)
        x = nn.LayerNorm(name="encoder_norm")(x)
        x = MAPHead(self.mlp_dim, self.num_heads, qkv, name="MAPHead_0")(x) if self.pool_type == "map" else x[:, 0]
        return nn.Dense(3, name="head")(x)


# -- U-Net: nearest-neighbour jax.image.resize and concatenated skips ------------------------------------------------


class UNet(nn.Module):
    c1: int = 8
    c2: int = 12

    @nn.compact
    def __call__(self, x):
        e1 = nn.relu(nn.Conv(self.c1, (3, 3), name="enc1")(x))
        e2 = nn.relu(nn.Conv(self.c2, (3, 3), name="enc2")(nn.max_pool(e1, (2, 2), (2, 2))))
        n, h, w, c = e2.shape
        up = jax.image.resize(e2, (n, 2 * h, 2 * w, c), method="nearest")
        d = nn.relu(nn.Conv(self.c1, (3, 3), name="dec1")(jnp.concatenate([up, e1], axis=-1)))
        return nn.Conv(2, (1, 1), name="out")(d)


# -- Swin-style windowed attention with a relative-position-bias table looked up by index ---------------------------


class WindowAttention(nn.Module):
    dim: int
    num_heads: int
    head_dim: int
    window: int

    @nn.compact
    def __call__(self, x):
        b, n, _ = x.shape
        w = self.window
        table = self.param(
            "relative_position_bias_table", nn.initializers.normal(0.02), ((2 * w - 1) ** 2, self.num_heads)
        )
        coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
        rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
        index = rel[..., 0] * (2 * w - 1) + rel[..., 1]
        qkv = nn.Dense(3 * self.num_heads * self.head_dim, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.head_dim**-0.5) @ k.swapaxes(-2, -1)
        bias = table[index.reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
        attn = jax.nn.softmax(attn + bias[None], axis=-1)
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, self.num_heads * self.head_dim)
        return nn.Dense(self.dim, name="proj")(y)


class SwinBlock(nn.Module):
    dim: int = 16
    mlp_dim: int = 32
    num_heads: int = 2
    head_dim: int = 4
    window: int = 2

    @nn.compact
    def __call__(self, image):
        x = nn.Conv(self.dim, (2, 2), strides=(2, 2), name="patch_embed")(image)
        bsz, h, w_, c = x.shape
        w = self.window
        y = nn.LayerNorm(name="norm1")(x)
        y = y.reshape(bsz, h // w, w, w_ // w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        y = WindowAttention(self.dim, self.num_heads, self.head_dim, w, name="attn")(y)
        y = y.reshape(bsz, h // w, w_ // w, w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(bsz, h, w_, c)
        x = x + y
        x = x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="norm2")(x))
        return nn.Dense(3, name="head")(x.mean((1, 2)))


# -- ConvNeXt block: depthwise 7x7, LayerNorm over channels, inverted MLP, layer scale -------------------------------


class ConvNeXt(nn.Module):
    dim: int = 16
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(epsilon=1e-6, name="stem_norm")(nn.Conv(self.dim, (4, 4), strides=(4, 4), name="stem")(x))
        y = nn.Conv(self.dim, (7, 7), padding=3, feature_group_count=self.dim, name="dwconv")(x)
        y = nn.LayerNorm(epsilon=1e-6, name="norm")(y)
        y = nn.Dense(self.dim, name="pwconv2")(nn.gelu(nn.Dense(self.hidden, name="pwconv1")(y)))
        gamma = self.param("gamma", nn.initializers.constant(1e-6), (self.dim,))
        x = x + gamma * y
        return nn.Dense(3, name="head")(nn.LayerNorm(epsilon=1e-6, name="head_norm")(x.mean((1, 2))))


# -- ResNeXt-style grouped conv ------------------------------------------------------------------------------------


class GroupedCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(16, (3, 3), use_bias=False, name="stem")(x)))
        h = nn.Conv(16, (3, 3), feature_group_count=4, use_bias=False, name="grouped")(h)
        h = nn.relu(nn.BatchNorm(use_running_average=True)(h))
        h = nn.relu(nn.Conv(8, (1, 1), name="proj")(h))
        return nn.Dense(3, name="fc")(h.mean((1, 2)))


IMG = (2, 8, 8, 3)

LINEN = {
    "vit_tile_cls": (ViT(), IMG),
    "vit_map_head": (ViT(pool_type="map"), IMG),
    "unet_nearest": (UNet(), IMG),
    "swin_window": (SwinBlock(), IMG),
    "convnext": (ConvNeXt(), IMG),
    "grouped_conv": (GroupedCNN(), IMG),
}


@pytest.fixture(scope="module")
def linen():
    cache = {}

    def get(name):
        if name not in cache:
            m, shape = LINEN[name]
            x = jax.random.normal(jax.random.key(3), shape, jnp.float32)
            v = random_variables(m, x)
            cache[name] = (m, x, v, jp.trace_model(m, v, x))
        return cache[name]

    return get


def names(tm):
    return [g.name for g in tm.channel_groups()]


def test_vit_tile_class_token_groups(linen):
    _m, _x, _v, tm = linen("vit_tile_cls")
    g = {h.name: h for h in tm.channel_groups()}
    assert names(tm) == [
        "embedding",
        "encoderblock_0/MultiHeadDotProductAttention_0/query:1",
        "encoderblock_0/MultiHeadDotProductAttention_0/query:2",
        "encoderblock_0/MultiHeadDotProductAttention_0/value:2",
        "encoderblock_0/MlpBlock_0/Dense_0",
    ]
    assert g["embedding"].kind == "stream"
    # The tiled class token is one more producer of the residual stream.
    assert jp.AxisRef(("params", "cls"), 2) in g["embedding"].producers
    assert all(h.prunable for h in g.values())


def test_map_head_tiled_probe_groups(linen):
    _m, _x, _v, tm = linen("vit_map_head")
    g = {h.name: h for h in tm.channel_groups()}
    # The tiled probe is only read by the head's query kernel: its channels are its own, in no group. The head's
    # attention output starts a residual stream of its own (probe + attention + MLP).
    assert not any(r.path[-1] == "probe" for h in g.values() for r in h.axes)
    assert g["MAPHead_0/MultiHeadDotProductAttention_0/out"].kind == "stream"
    assert g["MAPHead_0/MlpBlock_0/Dense_0"].kind == "fc"
    assert sum(h.prunable for h in g.values()) == len(g) == 10


def test_unet_stages_follow_resolution(linen):
    _m, _x, v, tm = linen("unet_nearest")
    assert names(tm) == ["enc1", "enc2", "dec1"]
    # enc1 and dec1 write at 8x8, enc2 at 4x4 (after the pool, before the nearest upsampling).
    assert tm.stages() == {"stage1": ("enc1", "dec1"), "stage2": ("enc2",)}
    assert jp.make_plan(tm, v, prune_ratio={"stage2": 0.5}).new_widths == {"enc2": 6}
    g = {h.name: h for h in tm.channel_groups()}
    # The upsampled enc2 channels and the enc1 skip sit side by side on dec1's input axis.
    assert jp.AxisRef(("params", "dec1", "kernel"), 2, offset=0) in g["enc2"].consumers
    assert jp.AxisRef(("params", "dec1", "kernel"), 2, offset=12) in g["enc1"].consumers


def test_swin_window_attention_groups(linen):
    _m, _x, _v, tm = linen("swin_window")
    g = {h.name: h for h in tm.channel_groups()}
    assert names(tm) == ["patch_embed", "attn/qkv", "mlp/Dense_0"]
    # qkv is reshaped to (3, heads, head features): the head features are one space, 6 blocks of the kernel's axis;
    # the heads index the bias table (gathered by a constant index) and stay whole.
    assert (g["attn/qkv"].width, g["attn/qkv"].scored) == (
        4,
        jp.AxisRef(("params", "attn", "qkv", "kernel"), 1, repeat=6),
    )
    assert jp.AxisRef(("params", "attn", "proj", "kernel"), 0, repeat=2) in g["attn/qkv"].consumers


def test_grouped_conv_keeps_equal_counts_per_group(linen):
    _m, _x, v, tm = linen("grouped_conv")
    g = {h.name: h for h in tm.channel_groups()}
    # feature_group_count=4: a channel slot is one space across the 4 conv groups (input and output).
    assert (g["stem"].width, g["stem"].scored.repeat) == (4, 4)
    assert (g["grouped"].width, g["grouped"].scored.repeat) == (4, 4)
    text = jp.format_groups(tm)
    assert re.search(r"\nstem .*\n    tied across 4 conv feature groups \(feature_group_count=4\): the same", text)
    assert re.search(r"\ngrouped .*\n    tied across 4 conv feature groups \(feature_group_count=4\)", text)
    plan = half_plan(tm, v)
    _, v2 = jp.prune(tm, v, plan)
    assert v2["params"]["grouped"]["kernel"].shape == (3, 3, 2, 8)  # 2 of 4 inputs and outputs in each group


@pytest.mark.parametrize("name", list(LINEN))
def test_pruned_half_equals_masked(linen, name):
    _m, x, v, tm = linen(name)
    plan = half_plan(tm, v)
    assert {n: len(k) for n, k in plan.keep.items()} == {
        g.name: g.width // 2 for g in tm.channel_groups() if g.prunable
    }
    tm2, v2 = pruned(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    unmasked = jp.masked_forward(tm)(v, x, jp.full_masks(tm))  # the masked forward's own compile, all ones
    assert float(jnp.max(jnp.abs(masked - unmasked))) > 1e-3  # masking changes the output
    assert_close(tm2.apply(v2, x), masked, rel=1e-4)


# name -> (the class at the new widths, groups the class cannot set apart). The MAP head's probe and its stream have
# the encoder's width by construction (d = x.shape[-1]), although no computation ties them: they stay whole there.
REBUILT = {
    "vit_tile_cls": (
        lambda w: ViT(width=w["embedding"], mlp_dim=w["encoderblock_0/MlpBlock_0/Dense_0"], num_heads=1),
        (),
    ),
    "vit_map_head": (
        lambda w: ViT(pool_type="map", mlp_dim=w["encoderblock_0/MlpBlock_0/Dense_0"], num_heads=1),
        ("embedding", "MAPHead_0/MultiHeadDotProductAttention_0/out"),
    ),
    "swin_window": (lambda w: SwinBlock(dim=w["patch_embed"], mlp_dim=w["mlp/Dense_0"]), ()),
    "convnext": (lambda w: ConvNeXt(dim=w["stem"], hidden=w["pwconv1"]), ()),
}


@pytest.mark.parametrize("name", list(REBUILT))
def test_layernorm_models_equal_the_class_rebuilt_at_the_new_widths(linen, name):
    _m, x, v, tm = linen(name)
    build, keep_whole = REBUILT[name]
    plan = half_plan(tm, v, skip=[*head_dims(tm), *keep_whole])
    if name == "vit_map_head":  # one width per field: the encoder's and the head's MLP keep the same count
        assert plan.new_widths["MAPHead_0/MlpBlock_0/Dense_0"] == plan.new_widths["encoderblock_0/MlpBlock_0/Dense_0"]
    tm2, v2 = pruned(tm, v, plan)
    rebuilt = build(tm2.group_widths())
    assert_close(jax.jit(rebuilt.apply)(v2, x), tm2.apply(v2, x), rel=1e-5)


class HeadAttention(nn.Module):
    heads: int = 2
    head_dim: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="embed")(x)
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.heads * self.head_dim, name="attn"
        )
        return nn.Dense(3, name="head")(attn(h).mean(1))


def test_linen_attention_rebuilt_with_fewer_heads():
    m = HeadAttention()
    x = jax.random.normal(jax.random.key(4), (2, 5, 6))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    assert names(tm) == ["embed", "attn/query:1", "attn/query:2", "attn/value:2", "attn/out"]
    # Heads pruned: the module rebuilt with heads=1 keeps the head features, so its 1/sqrt(4) is the traced one.
    plan = jp.make_plan(tm, v, prune_ratio={"attn/query:1": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    assert (tm2.module.heads, tm2.module.head_dim) == (1, 4)
    # float32, one attention and three dense layers: the same ops (1e-5); the masked original sums zeros too (1e-4).
    assert_close(jax.jit(tm2.module.apply)(v2, x), tm2.apply(v2, x), rel=1e-5)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x), rel=1e-4)
    # Head features pruned: the traced program keeps 1/sqrt(4) (pruned = masked), a rebuilt nn.MultiHeadDotProductAttention
    # would divide by sqrt(2): refused, naming the attention and the group to prune instead.
    plan = jp.make_plan(tm, v, prune_ratio={"attn/query:2": 0.5, "attn/value:2": 0.5})
    tm3, v3 = jp.prune(tm, v, plan)
    assert_close(tm3.apply(v3, x), jp.mask_dropped(tm, v, plan, x), rel=1e-4)
    with pytest.raises(
        ValueError,
        match=r"cannot rebuild HeadAttention: the plan prunes the query/key head features of its attention attn "
        r"\(group 'attn/query:2': 4 -> 2 per head\); a rebuilt flax.linen.MultiHeadDotProductAttention would divide "
        r"its logits by sqrt\(2\).*skip=\['attn/query:2'\]\)\) and prune its heads \(group 'attn/query:1'\)",
    ):
        tm3.module  # noqa: B018 - the property rebuilds the module


# -- grouped-query attention (Flax NNX MultiHeadAttention with num_kv_heads) and RMSNorm ------------------------------


class GQABlock(nnx.Module):
    def __init__(self, *, dim=16, heads=4, kv_heads=2, mlp=24, rngs):
        self.embed = nnx.Linear(6, dim, rngs=rngs)
        self.norm = nnx.RMSNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=dim, qkv_features=dim, num_kv_heads=kv_heads, decode=False, rngs=rngs
        )
        self.up = nnx.Linear(dim, mlp, rngs=rngs)
        self.down = nnx.Linear(mlp, dim, rngs=rngs)
        self.head = nnx.Linear(dim, 3, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        h = h + self.attn(self.norm(h))
        h = h + self.down(nnx.swish(self.up(h)))
        return self.head(h.mean(1))


@pytest.fixture(scope="module")
def gqa():
    abstract = nnx.eval_shape(lambda: GQABlock(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    m = nnx.merge(graphdef, jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.4, a.shape), a.dtype), state))
    x = jax.random.normal(jax.random.key(1), (2, 5, 6))
    return m, x, jp.trace_model(m, None, x)


def test_grouped_query_attention_pruned_equals_masked(gqa):
    m, x, tm = gqa
    g = {h.name: h for h in tm.channel_groups()}
    assert list(g) == ["embed", "attn/query:2", "attn/query:1", "attn/value:2", "up"]
    # 4 query heads over 2 key/value heads: the query heads within a kv group are a group (2 blocks of 2); the kv
    # heads stay whole.
    assert (g["attn/query:1"].width, g["attn/query:1"].scored.repeat) == (2, 2)
    v = jp.nnx_variables(m)
    plan = jp.make_plan(tm, v, prune_ratio=0.5)  # a float reaches every hidden dense group, never the stream
    assert plan.new_widths == {"attn/query:2": 2, "attn/query:1": 1, "attn/value:2": 2, "up": 12}
    tm2, v2 = jp.prune(tm, v, plan)
    masked = jp.mask_dropped(tm, v, plan, x)
    assert_close(tm2.apply(v2, x), masked, rel=1e-4)
    assert v2["params"]["attn"]["query"]["kernel"].shape == (16, 2, 2)
    assert v2["params"]["attn"]["key"]["kernel"].shape == (16, 2, 2)
    # RMSNorm over the stream: pruning the stream divides by the kept count, as an RMSNorm of that width does.
    plan = jp.make_plan(tm, v, prune_ratio={"embed": 0.5, "up": 0.5, "attn/query:1": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    m2 = tm2.nnx_module(v2)
    assert (m2.norm.num_features, m2.attn.num_heads, m2.attn.num_kv_heads) == (8, 2, 2)
    assert_close(nnx.jit(lambda mod, inp: mod(inp))(m2, x), jp.mask_dropped(tm, v, plan, x), rel=1e-5)


# -- primitives that already trace: one model through all of them --------------------------------------------------


@jax.custom_jvp
def _softclip(z):
    return jnp.tanh(z)


_softclip.defjvp(lambda p, t: (jnp.tanh(p[0]), t[0] * (1.0 - jnp.tanh(p[0]) ** 2)))


@jax.custom_vjp
def _doubled(z):
    return 2.0 * z


_doubled.defvjp(lambda z: (2.0 * z, None), lambda _, g: (2.0 * g,))


class ManyOps(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(12, name="a")(x)
        h = jnp.cumsum(h, axis=1)  # over tokens
        h = jnp.where(h > 0, h, 0.1 * h)  # select_n
        h = jax.lax.clamp(-3.0, h, 3.0)
        h = _doubled(_softclip(h))  # custom_jvp, custom_vjp
        h = jax.jit(nn.gelu)(h)
        h = jax.checkpoint(nn.swish)(h)  # remat
        h = jnp.roll(h, 1, axis=1)
        h = nn.Dense(10, name="b")(h)
        return nn.Dense(3, name="out")(jnp.cumsum(h, axis=-1))  # cumsum over channels: a mix, masked as such


def _primitives(jaxpr) -> set[str]:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out |= _primitives(sub)
    return out


def test_primitives_that_already_trace():
    m = ManyOps()
    x = jax.random.normal(jax.random.key(0), (2, 4, 5))
    v = random_variables(m, x)
    used = _primitives(jax.make_jaxpr(m.apply)(v, x).jaxpr)
    assert {"cumsum", "select_n", "clamp", "custom_jvp_call", "custom_vjp_call", "jit", "remat2", "tanh"} <= used
    assert {"logistic", "slice", "concatenate"} <= used  # swish; roll is a slice and a concatenation
    tm = jp.trace_model(m, v, x)
    assert names(tm) == ["a", "b"]  # a cumsum over b's channels mixes them: masked before it, like a contraction
    assert tm.blocked == {}
    plan = half_plan(tm, v)
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x), rel=1e-4)


# -- a channel operation without a rule: only its group is blocked ----------------------------------------------------


class CallbackCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(8, (3, 3), name="a")(x))
        b = nn.Conv(6, (3, 3), name="b")(a)
        b = jax.pure_callback(np.tanh, jax.ShapeDtypeStruct(b.shape, b.dtype), b)  # CALLBACK LINE
        c = nn.relu(nn.Conv(4, (3, 3), name="c")(b))
        return nn.Dense(3, name="fc")(c.mean((1, 2)))


def test_unsupported_channel_op_blocks_only_its_group(capsys):
    m = CallbackCNN()
    x = jax.random.normal(jax.random.key(0), IMG)
    v = random_variables(m, x)
    line = next(i for i, s in enumerate(open(__file__).read().splitlines(), 1) if s.endswith("# CALLBACK LINE"))
    where = rf"'pure_callback' at .*test_trace_models\.py:{line}"
    with pytest.warns(UntracedChannelsWarning, match=rf"1 of 3 channel groups are not prunable.*b: .*{where}"):
        tm = jp.trace_model(m, v, x)
    assert [(g.name, g.prunable) for g in tm.channel_groups()] == [("a", True), ("b", False), ("c", True)]
    assert re.search(where, tm.blocked["b"])
    jp.describe_groups(tm)
    out = capsys.readouterr().out
    assert re.search(rf"b +conv +6 +no .*\n    not prunable: its channels pass through .*{where}", out)
    assert out.rstrip("\n") == jp.format_groups(tm.channel_groups())  # plain groups carry the reason as well
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    assert plan.new_widths == {"a": 4, "c": 2}
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x), rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntracedChannelsWarning)  # the trace warns again before the policy refuses
        with pytest.raises(
            ValueError, match=r"policy makes group 'b' prunable, but the trace cannot follow it: .*pure_"
        ):
            jp.trace_model(m, v, x, policy={"b": True})


class IndexOps(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="a")(x)
        h = h.at[:, jnp.array([0, 2])].add(1.0)  # scatter-add over tokens
        h = h.at[:, jnp.array([1])].set(jnp.zeros((x.shape[0], 1, 8)))  # scatter over tokens
        h = jnp.take(h, jnp.array([3, 1, 0, 2]), axis=1)  # gather over tokens
        g = nn.Dense(6, name="b")(nn.relu(h))
        g = g[..., jnp.array([1, 0, 2, 3, 4, 5])]  # GATHER LINE: a gather that selects channels
        return nn.Dense(3, name="out")(g.mean(1))


def test_gather_and_scatter_pass_channels_unless_they_index_them():
    m = IndexOps()
    x = jax.random.normal(jax.random.key(0), (2, 4, 5))
    v = random_variables(m, x)
    used = _primitives(jax.make_jaxpr(m.apply)(v, x).jaxpr)
    assert {"scatter-add", "scatter", "gather"} <= used
    line = next(
        i
        for i, s in enumerate(open(__file__).read().splitlines(), 1)
        if s.endswith("# GATHER LINE: a gather that selects channels")
    )
    with pytest.warns(
        UntracedChannelsWarning, match=rf"b: .*a gather that selects along a channel axis: 'gather' at .*py:{line}"
    ):
        tm = jp.trace_model(m, v, x)
    assert [(g.name, g.prunable) for g in tm.channel_groups()] == [("a", True), ("b", False)]
    plan = jp.make_plan(tm, v, prune_ratio=0.5)
    assert plan.new_widths == {"a": 4}
    tm2, v2 = jp.prune(tm, v, plan)
    assert_close(tm2.apply(v2, x), jp.mask_dropped(tm, v, plan, x), rel=1e-4)


# -- bad input: plans and masks that do not match the trace ----------------------------------------------------------


def test_plan_or_mask_not_matching_the_trace(linen):
    _m, x, v, tm = linen("unet_nearest")
    plan = jp.make_plan(tm, v, prune_ratio={"enc2": 0.5})
    tm2, v2 = jp.prune(tm, v, plan)
    with pytest.raises(
        ValueError, match=r"enc2.*(6 in the model, the plan expects 12|12 in the plan's, 6 in the given)"
    ):
        jp.prune(tm2, v2, plan)
    with pytest.raises(
        ValueError, match=r"enc2.*(6 in the model, the plan expects 12|12 in the plan's, 6 in the given)"
    ):
        jp.mask_dropped(tm2, v2, plan, x)
    other = jp.PruningPlan(keep={"enc3": (0,)}, widths={"enc3": 4})
    with pytest.raises(ValueError, match=r"plan names unknown group 'enc3'; this model's prunable groups: enc1, enc2"):
        jp.prune(tm, v, other)
    with pytest.raises(ValueError, match=r"mask for group 'enc2' must have shape \(6,\), got \(12,\)"):
        tm2.apply(v2, x, masks={"enc2": np.ones(12)})


def test_float_ratio_reaching_no_group():
    class Residual(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(8, name="embed")(x)
            return nn.Dense(2, name="out")(h + nn.Dense(8, name="res")(nn.relu(h)))

    m = Residual()
    x = jnp.ones((2, 3))
    v = random_variables(m, x)
    tm = jp.trace_model(m, v, x)
    assert [(g.name, g.kind) for g in tm.channel_groups()] == [("embed", "stream")]
    with pytest.raises(
        ValueError,
        match=r"a float prune_ratio reaches the prunable conv/fc groups and this model has "
        r"none; name groups in a mapping instead; groups: embed \(stream\)",
    ):
        jp.make_plan(tm, v, prune_ratio=0.5)
    assert jp.make_plan(tm, v, prune_ratio={"embed": 0.5}).new_widths == {"embed": 4}
