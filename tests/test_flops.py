"""Cost accounting (docs/paper.md §3, §10): exact MACs and params, a brute-force cross-check, XLA cost analysis, bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import flops, models, presets

# (MACs with every layer, params with BN, MACs without projections, params without BN or projections): docs/paper.md §10.
EXPECTED = {
    "vgg16": (313_463_808, 14_987_722, 313_463_808, 14_978_250),
    "vgg16-A": (206_279_680, 5_397_034, 206_279_680, 5_390_698),
    "resnet56": (125_485_696, 853_018, 125_485_696, 848_954),
    "resnet56-A": (112_435_840, 773_336, 112_435_840, 769_466),
    "resnet56-B": (90_907_264, 735_712, 90_907_264, 732_026),
    "resnet110": (252_887_680, 1_727_962, 252_887_680, 1_719_866),
    "resnet110-A": (212_779_648, 1_688_522, 212_779_648, 1_680_698),
    "resnet110-B": (155_124_352, 1_168_424, 155_124_352, 1_161_722),
    "resnet34": (3_663_761_408, 21_797_672, 3_644_493_824, 21_608_616),
    "resnet34-A": (3_100_184_576, 20_151_764, 3_080_916_992, 19_963_560),
    "resnet34-B": (2_782_269_440, 19_469_372, 2_763_001_856, 19_281_576),
    "resnet34-C": (3_391_105_024, 20_206_160, 3_374_446_592, 20_051_112),
}
#: The three projections: 64*128 + 128*256 + 256*512 weights; 1x1 convs at 28x28, 14x14, 7x7.
PROJ_PARAMS = 172_032
PROJ_MACS = 19_267_584


def _model(zoo, name):
    if name in models.MODELS:
        return models.get(name)
    m, v = zoo(presets.PRESETS[name].base)
    return m.with_widths(jp.preset(name, m, v).new_widths)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exact_counts(zoo, name):
    m = _model(zoo, name)
    macs, params, macs_paper, params_paper = EXPECTED[name]
    r = jp.count_macs(m, models.default_input_shape(m))
    assert (r.macs, r.params) == (macs, params)
    p = jp.count_macs(m, exclude_projections=True)
    assert (p.macs, p.params_no_bn) == (macs_paper, params_paper)
    if name.startswith("resnet34"):
        assert p.excluded == ("stage2_block1_shortcut", "stage3_block1_shortcut", "stage4_block1_shortcut")
        assert r.macs - p.macs == (PROJ_MACS if name != "resnet34-C" else 16_658_432)
        assert r.params - p.params == (PROJ_PARAMS if name != "resnet34-C" else 64 * 128 + 128 * 204 + 204 * 512)
        assert "1x1 projection convs left out" in p.convention and "left out" not in r.convention
    else:
        assert p.excluded == ()
        assert (p.macs, p.params) == (r.macs, r.params)


def test_resnet34_paper_convention_with_projections():
    r = jp.count_macs(models.resnet34())
    assert r.params_no_bn == 21_780_648  # docs/paper.md §3: 2.18e7 with the projections, which the paper does not print


def test_rows_of_vgg16():
    r = jp.count_macs(models.vgg16(), (1, 32, 32, 3))
    conv1, bn1 = r.rows[0], r.rows[1]
    assert conv1 == flops.MacRow("conv1", "conv", 3, 64, (32, 32), 1_769_472, 1_728, 1_728, (3, 3))
    assert (bn1.kind, bn1.out_width, bn1.out_hw, bn1.macs, bn1.params) == ("bn", 64, (32, 32), 0, 128)
    fc1 = r.row("fc1")
    assert (fc1.kind, fc1.in_width, fc1.out_width, fc1.out_hw, fc1.macs, fc1.params, fc1.weights) == (
        "dense",
        512,
        512,
        None,
        262_144,
        262_656,
        262_144,
    )
    assert [x.name for x in r.rows if x.kind == "conv"] == [f"conv{i}" for i in range(1, 14)]
    assert r.row("conv11").out_hw == (2, 2)
    assert r.weights == 14_977_728  # docs/paper.md §2 Table 2 total (weights only)
    assert "1 per MAC" in r.convention and "(1, 32, 32, 3)" in r.convention
    text = str(r)
    assert "conv13" in text and "313,463,808" in text and r.convention in text
    with pytest.raises(KeyError, match="no layer 'conv14'; layers: conv1, bn1"):
        r.row("conv14")


def test_batch_scales_macs_not_params():
    one, four = jp.count_macs(models.resnet20()), jp.count_macs(models.resnet20(), (4, 32, 32, 3))
    assert four.macs == 4 * one.macs and four.params == one.params


def test_input_size_changes_imagenet_counts():
    small = jp.count_macs(models.resnet18(), (1, 64, 64, 3))
    big = jp.count_macs(models.resnet18(), (1, 224, 224, 3))
    stem = small.row("stem")
    assert stem.out_hw == (32, 32) and stem.macs == 32 * 32 * 7 * 7 * 3 * 64
    assert small.params == big.params and small.macs < big.macs


# -- brute force: params from jax.eval_shape leaves, MACs from the conv/dot_general shapes in the jaxpr ---------------


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            total += int(np.prod(out)) * int(np.prod(rhs)) // rhs[out_dim]
        elif name == "dot_general":
            lhs = eqn.invars[0].aval.shape
            (contract, _), _ = eqn.params["dimension_numbers"]
            total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in contract]))
        for v in eqn.params.values():
            for sub in _sub_jaxprs(v):
                total += _jaxpr_macs(sub)
    return total


def _brute_force(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    # The plain lax path: conv_impl="auto" may compute a width with zero filters up to a multiple of 16 (layers.py);
    # parameter shapes do not depend on the path (tests/test_layers.py::test_parameters_do_not_depend_on_the_path).
    plain = model.clone(conv_impl="lax") if hasattr(model, "conv_impl") else model
    # One trace serves both counts: `init` runs the inference forward once on its input, so the jaxpr of `init` holds
    # that forward's convs and dot_generals (the initializers only draw random numbers), and its output shapes are
    # the variables'.
    jaxpr, variables = jax.make_jaxpr(lambda x: plain.init(jax.random.key(0), x, train=False), return_shape=True)(x)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    return _jaxpr_macs(jaxpr.jaxpr), params


def _odd_widths(model):
    """Every prunable group at a bit under half its width (odd widths; streams of the ImageNet ResNets too)."""
    return model.with_widths({g.name: max(1, g.width // 2 - 1) for g in model.channel_groups() if g.prunable})


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("pruned", [False, True], ids=["original", "pruned"])
def test_counter_agrees_with_brute_force(name, pruned):
    m = models.get(name)
    if pruned:
        m = _odd_widths(m)
    shape = (2, 64, 64, 3) if name in ("resnet18", "resnet34") else models.default_input_shape(m, 2)
    r = jp.count_macs(m, shape)
    assert (r.macs, r.params) == _brute_force(m, shape)


class _UserNet(nn.Module):
    """A user model with the protocol, flax's own Conv (grouped, SAME padding) and a bare parameter."""

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Conv(8, (3, 3), strides=(2, 2), name="c1")(x)
        x = nn.Conv(8, (3, 3), feature_group_count=4, use_bias=False, name="c2")(x)
        x = x * self.param("gain", nn.initializers.ones, (8,))
        return nn.Dense(5, name="head")(x.mean(axis=(1, 2)))

    def channel_groups(self):
        return ()

    def with_widths(self, mapping):
        return self


def test_user_model_with_the_protocol():
    r = jp.count_macs(_UserNet(), (1, 8, 8, 3))
    assert [(x.name, x.kind) for x in r.rows] == [
        ("c1", "conv"),
        ("c2", "conv"),
        ("head", "dense"),
        ("<root>", "other"),
    ]
    assert r.row("c1").macs == 4 * 4 * 8 * 9 * 3
    assert r.row("c2").macs == 4 * 4 * 8 * 9 * 2 and r.row("c2").in_width == 8
    assert r.row("<root>").params == 8
    assert (r.macs, r.params) == _brute_force(_UserNet(), (1, 8, 8, 3))
    assert r.params_no_bn == r.params - 8


# -- compare ----------------------------------------------------------------------------------------------------------


def test_compare_vgg16_a_like_table2(zoo):
    before = jp.count_macs(models.vgg16())
    after = jp.count_macs(_model(zoo, "vgg16-A"))
    text = jp.compare(before, after)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "64 -> 32" in lines["conv1"] and "50.00%" in lines["conv1"]
    assert "0.00%" in lines["conv3"]
    for i in (9, 10, 11, 12, 13):
        assert "75.00%" in lines[f"conv{i}"] and "512 -> 256" in lines[f"conv{i}"]
    assert "50.00%" in lines["fc1"] and "0.00%" in lines["fc2"]
    assert "313,463,808" in lines["MACs"] and "206,279,680" in lines["MACs"] and "34.19%" in lines["MACs"]
    assert "64.01%" in text and "5,390,698" in text
    assert text.splitlines()[-1] == f"convention: {before.convention}"


def test_compare_bad_input():
    a = jp.count_macs(models.resnet34())
    with pytest.raises(TypeError, match="compare: after must be a MacReport"):
        jp.compare(a, 3)
    with pytest.raises(ValueError, match="exclude_projections False vs True"):
        jp.compare(a, jp.count_macs(models.resnet34(), exclude_projections=True))
    with pytest.raises(ValueError, match=r"input shapes \(1, 224, 224, 3\) vs \(1, 64, 64, 3\)"):
        jp.compare(a, jp.count_macs(models.resnet34(), (1, 64, 64, 3)))


# -- XLA cost analysis --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_lax(zoo):
    m, v = zoo("vgg16")
    m = m.clone(conv_impl="lax")
    plan = jp.preset("vgg16-A", m, v)
    new_m, new_v = jp.prune(m, v, plan)
    return m, v, new_m, new_v


def test_xla_flops_of_vgg16_on_the_lax_path(vgg_lax):
    m, v, new_m, new_v = vgg_lax
    report = jp.cost_report(m, v, new_m, new_v, (1, 32, 32, 3))
    assert 0.70 <= report.xla_before / (2 * 313_463_808) <= 0.90
    assert report.xla_after < report.xla_before
    assert report.xla_before == jp.xla_flops(m, v, (1, 32, 32, 3))  # same figure as the plain function
    assert report.before.macs == 313_463_808 and report.after.macs == 206_279_680
    assert report.ratio_before == pytest.approx(report.xla_before / 626_927_616, rel=1e-12)
    # XLA's saving is smaller than the paper's 34.19 % (it adds BN, ReLU, pooling): docs/perf-notes.md surprise 4.
    xla_saving = 1 - report.xla_after / report.xla_before
    assert 0.20 < xla_saving < 0.3419
    text = str(report)
    assert "XLA / (2 x MACs)" in text and f"{report.ratio_before:.4f}" in text and "34.19%" in text
    assert flops.XLA_CONVENTION in text and report.before.convention in text and "conv_impl='lax'" in text


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="conv_impl='auto' only switches to im2col on CPU")
def test_im2col_path_counts_padded_taps(vgg_lax):
    m, v, _, _ = vgg_lax
    lax_flops = jp.xla_flops(m, v)
    auto_flops = jp.xla_flops(m.clone(conv_impl="auto"), v)
    assert auto_flops > lax_flops


def test_flops_of_both_cost_analysis_forms():
    assert flops._flops_of({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
    assert flops._flops_of([{"flops": 10.0}, {"flops": 5.0}]) == 15.0
    with pytest.raises(RuntimeError, match="reported no 'flops'"):
        flops._flops_of(None)
    with pytest.raises(RuntimeError, match="reported no 'flops'"):
        flops._flops_of([{"bytes accessed": 1.0}])


# -- bad input ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "shape", "match"),
    [
        ("vgg16", (32, 32, 3), r"rank 4 \(N, H, W, C\), got rank 3"),
        ("resnet56", (1, 32, 32, 32, 3), "got rank 5"),
        ("resnet56", (1, 32, 32, 1), r"must have 3 channels"),
        ("resnet56", (1, 0, 32, 3), "positive sizes"),
        ("resnet56", (1, 2, 2, 3), r"too small for the model's pooling: CifarResNet-56 downsamples by 4"),
        ("resnet34", (1, 16, 16, 3), r"too small for the model's pooling: ImageNetResNet-34 downsamples by 32"),
        ("vgg16", (1, 16, 16, 3), r"too small for the model's pooling: VGG-16 downsamples by 32"),
        ("vgg16", (1, 64, 64, 3), "does not match the VGG's image_size 32"),
    ],
)
def test_bad_input_shape(factory, shape, match):
    with pytest.raises(ValueError, match=match):
        jp.count_macs(models.get(factory), shape)


def test_bad_input_shape_xla(zoo):
    m, v = zoo("resnet20")
    with pytest.raises(ValueError, match="rank 4"):
        jp.xla_flops(m, v, (32, 32, 3))
    with pytest.raises(TypeError, match="variables must be a mapping"):
        jp.xla_flops(m, [v], (1, 32, 32, 3))


def test_bad_kinds():
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints \(N, H, W, C\), got str"):
        jp.count_macs(models.resnet20(), "1,32,32,3")
    with pytest.raises(TypeError, match="input_shape must hold ints"):
        jp.count_macs(models.resnet20(), (1, 32.0, 32, 3))
    with pytest.raises(TypeError, match="exclude_projections must be a bool"):
        jp.count_macs(models.resnet20(), exclude_projections="yes")
    with pytest.raises(ValueError, match="input_shape is required for _UserNet"):
        jp.count_macs(_UserNet())


def test_model_without_the_protocol():
    # A plain Linen module is counted from its jaxpr (and compiled for XLA), variables from an abstract init.
    conv = nn.Conv(4, (3, 3))
    r = jp.count_macs(conv, (1, 8, 8, 3))
    assert [(x.name, x.kind, x.macs, x.params) for x in r.rows] == [("<root>", "conv", 8 * 8 * 4 * 9 * 3, 4 * 27 + 4)]
    assert jp.xla_flops(conv, None, (1, 8, 8, 3)) > 0
    with pytest.raises(ValueError, match="input_shape is required for Conv"):
        jp.count_macs(conv)
    with pytest.raises(TypeError, match="int is not a model jaxprune can count"):
        jp.count_macs(3, (1, 8, 8, 3))
    protocol = r"Conv is not a prunable model: it needs channel_groups\(\) and with_widths\(mapping\)"
    with pytest.raises(TypeError, match=protocol):
        jp.cost_report(conv, {}, conv, {}, (1, 8, 8, 3))
