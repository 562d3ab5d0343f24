"""The model zoo: parameter counts, declared coupling, shapes, BN modes and bad configurations."""

from __future__ import annotations

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_MODELS, assert_close, input_batch

import jaxprune as jp
from jaxprune import models
from jaxprune.groups import AxisRef, ChannelGroup, check_groups
from jaxprune.models.base import PrunableMixin, bn_refs
from jaxprune.models.layers import Conv, apply_mask, batch_norm


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("vgg16", {}, 14_987_722),
        ("resnet56", {}, 853_018),
        ("resnet110", {}, 1_727_962),
        ("resnet34", {}, 21_797_672),
        ("resnet20", {}, 269_722),
    ],
)
def test_param_counts_exact(name, kwargs, expected):
    m = models.get(name, **kwargs)
    assert jp.count_leaves(jp.abstract_variables(m)["params"]) == expected


def test_vgg16_pruned_a_param_count():
    m = models.vgg16().with_widths(
        {"conv1": 32, **{f"conv{i}": 256 for i in range(8, 14)}},
    )
    assert m.widths == (32, 64, 128, 128, 256, 256, 256) + (256,) * 6
    assert jp.count_leaves(jp.abstract_variables(m)["params"]) == 5_397_034


def test_group_names_follow_the_paper():
    vgg = models.vgg16()
    assert [g.name for g in vgg.channel_groups()] == [f"conv{i}" for i in range(1, 14)] + ["fc1"]
    assert vgg.stages() == {
        "stage1": ("conv1", "conv2"),
        "stage2": ("conv3", "conv4"),
        "stage3": ("conv5", "conv6", "conv7"),
        "stage4": ("conv8", "conv9", "conv10"),
        "stage5": ("conv11", "conv12", "conv13"),
    }
    r56 = models.resnet56()
    names = [g.name for g in r56.channel_groups()]
    assert len(names) == 30
    assert names[:2] == ["stage1_block1_conv1", "stage1_block2_conv1"]
    assert names[26] == "stage3_block9_conv1"
    assert names[27:] == ["stage1_stream", "stage2_stream", "stage3_stream"]
    assert [g.prunable for g in r56.channel_groups()].count(False) == 3
    r34 = models.resnet34()
    streams = [g for g in r34.channel_groups() if g.kind == "stream"]
    assert [g.prunable for g in streams] == [True] * 4
    assert streams[2].scored == AxisRef(("params", "stage3_block1_shortcut", "kernel"), 3)
    assert streams[0].scored == AxisRef(("params", "stem", "kernel"), 3)


def test_resnet34_stage3_stream_axes_as_designed():
    g = {g.name: g for g in models.resnet34().channel_groups()}["stage3_stream"]
    producers = {r.path[1] for r in g.producers}
    assert producers == {
        "stage3_block1_shortcut",
        "stage3_block1_shortcut_bn",
        *(f"stage3_block{b}_conv2" for b in range(1, 7)),
        *(f"stage3_block{b}_bn2" for b in range(1, 7)),
    }
    consumers = {(r.path[1], r.axis) for r in g.consumers}
    assert consumers == {
        *((f"stage3_block{b}_conv1", 2) for b in range(2, 7)),
        ("stage4_block1_conv1", 2),
        ("stage4_block1_shortcut", 2),
    }


@pytest.mark.parametrize("name", ALL_MODELS)
def test_check_groups_original_and_random_widths(name):
    m = models.get(name)
    check_groups(m.channel_groups(), jp.abstract_variables(m))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    new = {g.name: int(rng.integers(1, g.width + 1)) for g in m.channel_groups() if g.prunable}
    small = m.with_widths(new)
    assert small.group_widths() == {**m.group_widths(), **new}
    check_groups(small.channel_groups(), jp.abstract_variables(small))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shapes(name):
    m = models.get(name, num_classes=7)
    shape = models.default_input_shape(m, 3)
    v = jp.abstract_variables(m)
    out = jax.eval_shape(lambda v, x: m.apply(v, x), v, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == (3, 7)


def test_train_mode_updates_batch_stats_and_eval_does_not(zoo):
    m, v = zoo("resnet20")
    x = input_batch(m, 4)

    # Both modes in one jitted program: op by op, every op of every distinct layer shape would compile on its own.
    @jax.jit
    def both_modes(v, x):
        return m.apply(v, x, train=True, mutable=["batch_stats"]), m.apply(v, x, train=False, mutable=["batch_stats"])

    (y, upd), (_, upd_eval) = both_modes(v, x)
    before = v["batch_stats"]["stage2_block1_bn1"]["mean"]
    after = upd["batch_stats"]["stage2_block1_bn1"]["mean"]
    assert y.shape == (4, 10)
    assert float(jnp.max(jnp.abs(after - before))) > 1e-3
    np.testing.assert_array_equal(upd_eval["batch_stats"]["stage2_block1_bn1"]["mean"], before)


def test_real_init_matches_abstract_shapes_and_bn_defaults():
    m = models.resnet20()
    v = jp.init_variables(m)
    assert jax.tree_util.tree_map(lambda a: a.shape, v) == jax.tree_util.tree_map(
        lambda a: a.shape, jp.abstract_variables(m)
    )
    np.testing.assert_array_equal(v["batch_stats"]["stem_bn"]["var"], np.ones(16))


def test_batchnorm_uses_pytorch_momentum_and_epsilon():
    bn = batch_norm("bn", True, jnp.float32)
    assert bn.momentum == 0.9
    assert bn.epsilon == 1e-5


def test_conv_impls_agree(zoo):
    m, v = zoo("vgg11")
    # Jitted, batch 1: tests/test_layers.py::test_im2col_path_equals_lax_for_one_model_per_family compiles the same two
    # programs (same function, shapes and dtypes), so the persistent compilation cache serves whichever runs second;
    # op by op, every op of every distinct layer shape would compile on its own.
    x = input_batch(m, 1)
    lax_out = jax.jit(lambda v, x: m.clone(conv_impl="lax").apply(v, x))(v, x)
    im2col_out = jax.jit(lambda v, x: m.clone(conv_impl="im2col").apply(v, x))(v, x)
    assert_close(im2col_out, lax_out)


# -- the flatten / repeat case ---------------------------------------------------------------------------------------


class FlattenNet(PrunableMixin, nn.Module):
    """Test-only model: conv -> BN -> 2x2 max-pool to a 2x2 map -> channel-last flatten -> Dense."""

    width: int = 6
    num_classes: int = 5
    dtype = jnp.float32
    family = "flatten_test"

    @nn.compact
    def __call__(self, x, *, train=False, masks=None):
        h = Conv(self.width, name="conv")(x)
        h = batch_norm("bn", train, jnp.float32)(h)
        h = nn.relu(apply_mask(h, masks, "conv"))
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes, name="fc")(h.reshape(h.shape[0], -1))

    def channel_groups(self):
        k = AxisRef(("params", "conv", "kernel"), 3)
        return (
            ChannelGroup(
                "conv", self.width, (k, *bn_refs("bn")), (AxisRef(("params", "fc", "kernel"), 0, repeat=4),), k
            ),
        )

    def _replace_widths(self, new):
        return self.clone(width=new["conv"])


def test_flatten_repeat_consumer_is_sliced_blockwise():
    m = FlattenNet()
    x = jax.random.normal(jax.random.key(3), (3, 4, 4, 2))
    v = jp.random_variables(m, input_shape=x.shape)
    check_groups(m.channel_groups(), v)
    assert v["params"]["fc"]["kernel"].shape == (24, 5)
    plan = jp.PruningPlan(keep={"conv": (1, 4)}, widths={"conv": 6})
    m2, v2 = jp.prune(m, v, plan)
    assert m2.width == 2
    rows = [p * 6 + c for p in range(4) for c in (1, 4)]
    np.testing.assert_array_equal(v2["params"]["fc"]["kernel"], np.asarray(v["params"]["fc"]["kernel"])[rows])
    assert_close(m2.apply(v2, x), jp.mask_dropped(m, v, plan, x))


def test_vgg_at_64px_flattens_four_positions(zoo):
    m = models.vgg11(image_size=64)
    g = m.channel_groups()[7]
    assert g.consumers == (AxisRef(("params", "fc1", "kernel"), 0, repeat=4),)
    check_groups(m.channel_groups(), jp.abstract_variables(m))


# -- bad input -------------------------------------------------------------------------------------------------------


def test_with_widths_errors():
    m = models.resnet20()
    with pytest.raises(ValueError, match=r"unknown group 'conv1'.*valid groups: stage1_block1_conv1"):
        m.with_widths({"conv1": 3})
    with pytest.raises(ValueError, match=r"must be in \[1, 16\].*got 0"):
        m.with_widths({"stage1_block1_conv1": 0})
    with pytest.raises(ValueError, match=r"must be in \[1, 16\].*got 17"):
        m.with_widths({"stage1_block1_conv1": 17})
    with pytest.raises(TypeError, match=r"width of group 'stage1_block1_conv1' must be an int, got float"):
        m.with_widths({"stage1_block1_conv1": 8.0})
    with pytest.raises(ValueError, match=r"group 'stage2_stream' is not prunable"):
        m.with_widths({"stage2_stream": 8})
    with pytest.raises(TypeError, match="mapping"):
        m.with_widths([("stage1_block1_conv1", 8)])


def test_check_groups_errors():
    m = models.resnet20()
    v = jp.abstract_variables(m)
    groups = m.channel_groups()
    no_leaf = jax.tree_util.tree_map(lambda a: a, v)
    del no_leaf["params"]["stage1_block2_conv2"]
    with pytest.raises(ValueError, match=r"group 'stage1_block2_conv1': path params/stage1_block2_conv2/kernel not"):
        check_groups(groups, no_leaf)
    with pytest.raises(ValueError, match=r"variables have no 'batch_stats' collection.*present: params"):
        check_groups(groups, {"params": v["params"]})
    wrong = models.resnet20().with_widths({"stage1_block1_conv1": 8})
    with pytest.raises(ValueError, match=r"group 'stage1_block1_conv1': path params/stage1_block1_conv1/kernel axis 3"):
        check_groups(wrong.channel_groups(), v)
    g = groups[0]
    twice = (*groups, ChannelGroup("dup", g.width, g.producers[:1], (), g.producers[0]))
    with pytest.raises(ValueError, match=r"group 'dup': path params/stage1_block1_conv1/kernel axis 3 is already"):
        check_groups(twice, v)
    with pytest.raises(ValueError, match="no axis 7"):
        check_groups((ChannelGroup("x", 16, (AxisRef(("params", "stem", "kernel"), 7),), (), None, False),), v)


def test_channel_group_validation():
    k = AxisRef(("params", "c", "kernel"), 3)
    with pytest.raises(ValueError, match="scored kernel params/other/kernel"):
        ChannelGroup("g", 4, (k,), (), AxisRef(("params", "other", "kernel"), 3))
    with pytest.raises(ValueError, match="needs a scored kernel"):
        ChannelGroup("g", 4, (k,), (), None)
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        ChannelGroup("g", 0, (k,), (), k)
    with pytest.raises(ValueError, match="kind must be one of"):
        ChannelGroup("g", 4, (k,), (), k, kind="bogus")
    with pytest.raises(ValueError, match="axis must be an int >= 0"):
        AxisRef(("params",), -1)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: models.VGG(depth=16, widths=(64,) * 12), r"widths needs 13 entries, got 12"),
        (lambda: models.VGG(depth=15), r"depth must be one of \[11, 13, 16, 19\]"),
        (lambda: models.CifarResNet(depth=56, widths=(16,) * 26), r"widths needs 27 entries, got 26"),
        (lambda: models.CifarResNet(depth=57), r"depth must be 6n\+2"),
        (lambda: models.ImageNetResNet(depth=34, widths=(64,) * 15), r"widths needs 16 entries, got 15"),
        (lambda: models.vgg16(num_classes=0), r"num_classes must be >= 1, got 0"),
        (lambda: models.resnet56(num_classes=-3), r"num_classes must be >= 1, got -3"),
        (lambda: models.resnet34(num_classes=0), r"num_classes must be >= 1, got 0"),
        (lambda: models.vgg16(conv_impl="fast"), r"conv_impl must be one of"),
        (lambda: models.get("resnet57"), r"unknown model 'resnet57'; valid models: vgg11"),
    ],
)
def test_bad_configurations(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_non_int_widths_are_a_type_error():
    with pytest.raises(TypeError, match=r"widths\[0\] must be an int, got float"):
        models.VGG(depth=11, widths=(64.0, 128, 256, 256, 512, 512, 512, 512))


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("resnet20", (32, 32, 3), r"rank 4"),
        ("resnet20", (1, 32, 32, 1), r"must have 3 channels"),
        ("vgg16", (1, 32, 32, 4), r"must have 3 channels"),
        ("vgg16", (1, 64, 64, 3), r"must be 32x32"),
        ("resnet34", (1, 224, 224), r"rank 4"),
    ],
)
def test_bad_inputs(name, shape, match):
    m = models.get(name)
    v = jp.abstract_variables(m)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda v, x: m.apply(v, x), v, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_config_round_trip():
    for name in ALL_MODELS:
        m = models.get(name)
        small = m.with_widths({m.channel_groups()[0].name: 3})
        back = models.from_config(small.config())
        assert back == small
    with pytest.raises(ValueError, match="unknown model family"):
        models.from_config({"family": "alexnet"})
    with pytest.raises(ValueError, match="unknown fields"):
        models.from_config({"family": "vgg", "bogus": 1})


def test_flatten_variables_recurses_into_every_mapping_kind():
    """Leaf types are cached as non-mappings; dicts, FrozenDicts and user Mappings are still recursed into."""
    from collections.abc import Mapping

    from flax.core import FrozenDict

    from jaxprune.groups import flatten_variables

    class Box(Mapping):  # a user mapping type flatten has never seen
        def __init__(self, d):
            self._d = d

        def __getitem__(self, k):
            return self._d[k]

        def __iter__(self):
            return iter(self._d)

        def __len__(self):
            return len(self._d)

    a, b, c, d = np.zeros(2), jnp.ones(3), np.float32(1.5), 7
    tree = {"params": FrozenDict({"x": {"k": a}, "y": Box({"k": b, "z": Box({"s": c})})}), "other": {"n": d}}
    for _ in range(2):  # the second pass runs with every leaf type cached
        flat = flatten_variables(tree)
        assert list(flat) == [("params", "x", "k"), ("params", "y", "k"), ("params", "y", "z", "s"), ("other", "n")]
        assert flat[("params", "x", "k")] is a and flat[("params", "y", "k")] is b
        assert flat[("params", "y", "z", "s")] is c and flat[("other", "n")] == 7
