"""Paper presets (docs/paper.md §5-§6): exact widths, skip lists through paper_layer, selection, and every bad input."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import models, presets

# Per-block first-conv widths of docs/paper.md §5 (VGG: conv widths), and the streams.
WIDTHS = {
    "vgg16-A": [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256],
    "resnet56-A": [14] * 7 + [16, 14] + [32] + [28] * 8 + [64] + [57] * 7 + [64],
    "resnet56-B": [6] * 7 + [16, 16] + [32] + [22] * 6 + [32, 22] + [64] + [57] * 7 + [64],
    "resnet110-A": [8] * 17 + [16] + [32] * 18 + [64] * 18,
    "resnet110-B": [8] * 17 + [16] + [32] + [19] * 17 + [64] + [44] * 17,
    "resnet34-A": [64, 44, 44, 128, 89, 89, 128, 256] + [179] * 4 + [256, 512, 512, 512],
    "resnet34-B": [64, 32, 32, 128, 51, 51, 128, 256] + [153] * 4 + [256, 512, 512, 512],
    "resnet34-C": [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3,
}
STREAMS = {"resnet34-C": (64, 128, 204, 512), "resnet34-A": (64, 128, 256, 512), "resnet56-B": (16, 32, 64)}


def _pruned(zoo, name, **kw):
    m, v = zoo(presets.PRESETS[name].base)
    plan = jp.preset(name, m, v, **kw)
    return m, v, plan, m.with_widths(plan.new_widths)


@pytest.mark.parametrize("name", list(WIDTHS))
def test_preset_widths_equal_paper(zoo, name):
    _, _, plan, new = _pruned(zoo, name)
    assert list(new.widths) == WIDTHS[name]
    assert plan.meta["preset"] == name
    assert plan.meta["strategy"] == "independent"
    if name in STREAMS:
        assert tuple(new.stream_widths) == STREAMS[name]
    if name == "vgg16-A":
        assert new.fc_width == 512


def test_available_lists_every_preset_with_one_line():
    av = presets.available()
    assert list(av) == list(WIDTHS)
    for name, line in av.items():
        assert "\n" not in line
        assert presets.PRESETS[name].table1_row in line
        assert "MACs" in line and "params" in line


@pytest.mark.parametrize(
    ("factory", "layer", "group"),
    [
        ("resnet56", 1, "stage1_stream"),
        ("resnet56", 2, "stage1_block1_conv1"),
        ("resnet56", 3, "stage1_stream"),
        ("resnet56", 16, "stage1_block8_conv1"),
        ("resnet56", 18, "stage1_block9_conv1"),
        ("resnet56", 20, "stage2_block1_conv1"),
        ("resnet56", 21, "stage2_stream"),
        ("resnet56", 34, "stage2_block8_conv1"),
        ("resnet56", 38, "stage3_block1_conv1"),
        ("resnet56", 54, "stage3_block9_conv1"),
        ("resnet56", 55, "stage3_stream"),
        ("resnet110", 36, "stage1_block18_conv1"),
        ("resnet110", 38, "stage2_block1_conv1"),
        ("resnet110", 74, "stage3_block1_conv1"),
        ("resnet34", 2, "stage1_block1_conv1"),
        ("resnet34", 6, "stage1_block3_conv1"),
        ("resnet34", 8, "stage2_block1_conv1"),
        ("resnet34", 14, "stage2_block4_conv1"),
        ("resnet34", 16, "stage3_block1_conv1"),
        ("resnet34", 26, "stage3_block6_conv1"),
        ("resnet34", 27, "stage3_stream"),
        ("resnet34", 28, "stage4_block1_conv1"),
        ("resnet34", 32, "stage4_block3_conv1"),
        ("resnet34", 33, "stage4_stream"),
        ("vgg16", 1, "conv1"),
        ("vgg16", 13, "conv13"),
    ],
)
def test_paper_layer_numbering(factory, layer, group):
    assert presets.paper_layer(models.get(factory), layer) == group


def test_skip_lists_are_mapped_through_paper_layer():
    m = models.resnet56()
    ratios = presets.preset_ratios("resnet56-B", m)
    skipped = {presets.paper_layer(m, L) for L in (16, 18, 20, 34, 38, 54)}
    assert skipped == {
        "stage1_block8_conv1",
        "stage1_block9_conv1",
        "stage2_block1_conv1",
        "stage2_block8_conv1",
        "stage3_block1_conv1",
        "stage3_block9_conv1",
    }
    assert not skipped & set(ratios)
    assert len(ratios) == 27 - 6
    assert ratios["stage1_block1_conv1"] == 0.6 and ratios["stage2_block2_conv1"] == 0.3
    assert ratios["stage3_block2_conv1"] == 0.1
    # resnet110-A: stages 2 and 3 at p = 0 are not in the mapping at all.
    r110 = presets.preset_ratios("resnet110-A", models.resnet110())
    assert set(r110) == {f"stage1_block{b}_conv1" for b in range(1, 18)}
    assert presets.preset_ratios("resnet34-C", models.resnet34()) == {"stage3_stream": 0.2}


def test_selection_is_top_l1_of_the_scored_kernel(zoo):
    _, v, plan, _ = _pruned(zoo, "resnet56-B")
    w = np.asarray(v["params"]["stage2_block2_conv1"]["kernel"])
    l1 = np.abs(w).sum(axis=(0, 1, 2))
    expected = tuple(sorted(np.argsort(-l1, kind="stable")[:22].tolist()))
    assert plan.keep["stage2_block2_conv1"] == expected
    # resnet34-C: the stage-3 stream is chosen by the 1x1 projection shortcut's L1 (docs/paper.md §6).
    _, v34, plan34, _ = _pruned(zoo, "resnet34-C")
    proj = np.abs(np.asarray(v34["params"]["stage3_block1_shortcut"]["kernel"])).sum(axis=(0, 1, 2))
    assert plan34.keep["stage3_stream"] == tuple(sorted(np.argsort(-proj, kind="stable")[:204].tolist()))
    assert set(plan34.keep) == {"stage3_stream"}


def test_greedy_and_round_to(zoo):
    _, v, plan_g, new_g = _pruned(zoo, "vgg16-A", strategy="greedy")
    _, _, plan_i, _ = _pruned(zoo, "vgg16-A")
    assert list(new_g.widths) == WIDTHS["vgg16-A"]
    assert plan_g.meta["strategy"] == "greedy"
    # conv8 reads an unpruned conv7, so both strategies agree there; conv9 is re-scored on conv8's kept inputs.
    assert plan_g.keep["conv8"] == plan_i.keep["conv8"]
    k9 = np.asarray(v["params"]["conv9"]["kernel"])[:, :, list(plan_g.keep["conv8"]), :]
    greedy_l1 = np.abs(k9.astype(np.float64)).sum(axis=(0, 1, 2))
    assert plan_g.keep["conv9"] == tuple(sorted(np.argsort(-greedy_l1, kind="stable")[:256].tolist()))
    assert plan_g.keep["conv9"] != plan_i.keep["conv9"]
    _, _, plan8, new8 = _pruned(zoo, "resnet56-B", round_to=8)
    assert (new8.widths[0], new8.widths[10], new8.widths[19]) == (8, 24, 56)
    assert plan8.meta["round_to"] == 8


def test_pruned_preset_model_runs(zoo):
    m, v, plan, _ = _pruned(zoo, "resnet56-B")
    new_m, new_v = jp.prune(m, v, plan)
    assert new_v["params"]["stage1_block1_conv1"]["kernel"].shape == (3, 3, 16, 6)
    assert new_v["params"]["stage3_block2_conv2"]["kernel"].shape == (3, 3, 57, 64)
    assert list(new_m.widths) == WIDTHS["resnet56-B"]


# -- bad input -------------------------------------------------------------------------------------------------------


def test_unknown_preset_lists_valid_names(zoo):
    m, v = zoo("resnet56")
    with pytest.raises(
        ValueError, match=r"unknown preset 'resnet56-C'; valid presets: vgg16-A, resnet56-A, .*resnet34-C"
    ):
        jp.preset("resnet56-C", m, v)
    with pytest.raises(TypeError, match="preset name must be a str"):
        jp.preset(56, m, v)


def test_preset_for_another_family_or_depth(zoo):
    m, v = zoo("resnet56")
    with pytest.raises(ValueError, match=r"preset 'vgg16-A' is for VGG depth 16 \(vgg16\), got CIFAR ResNet depth 56"):
        jp.preset("vgg16-A", m, v)
    with pytest.raises(
        ValueError, match=r"preset 'resnet110-B' is for CIFAR ResNet depth 110.*got CIFAR ResNet depth 56"
    ):
        jp.preset("resnet110-B", m, v)
    with pytest.raises(ValueError, match=r"is for ImageNet ResNet depth 34.*presets for this family: resnet56-A"):
        jp.preset("resnet34-A", m, v)
    with pytest.raises(ValueError, match="is for CIFAR ResNet depth 56"):
        presets.preset_ratios("resnet56-A", models.resnet20())


def test_preset_on_an_already_pruned_model():
    m = models.resnet56().with_widths({"stage1_block1_conv1": 8})
    with pytest.raises(ValueError, match=r"prunes the original resnet56; .*stage1_block1_conv1 8 \(original 16\)"):
        presets.preset_ratios("resnet56-A", m)


def test_bad_strategy_or_round_to(zoo):
    m, v = zoo("resnet56")
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        jp.preset("resnet56-A", m, v, strategy="best")
    with pytest.raises(ValueError, match="round_to must be >= 1"):
        jp.preset("resnet56-A", m, v, round_to=0)


def test_model_without_the_protocol():
    with pytest.raises(TypeError, match=r"Dense is not a prunable model: it needs channel_groups\(\) and with_widths"):
        jp.preset("vgg16-A", nn.Dense(3), {})
    with pytest.raises(TypeError, match=r"channel_groups\(\) and with_widths"):
        presets.paper_layer(nn.Dense(3), 1)


def test_paper_layer_bad_numbers():
    m = models.resnet56()
    with pytest.raises(ValueError, match=r"paper layer 56 out of range for ResNet-56: valid layers are 1..55"):
        presets.paper_layer(m, 56)
    with pytest.raises(ValueError, match=r"paper layer 0 out of range"):
        presets.paper_layer(m, 0)
    with pytest.raises(ValueError, match=r"paper layer 14 out of range for VGG-16: valid layers are 1..13"):
        presets.paper_layer(models.vgg16(), 14)
    with pytest.raises(ValueError, match=r"paper layer 34 out of range for ResNet-34: valid layers are 1..33"):
        presets.paper_layer(models.resnet34(), 34)
    with pytest.raises(TypeError, match="paper layer must be an int, got float"):
        presets.paper_layer(m, 2.0)
    with pytest.raises(TypeError, match="paper layer must be an int, got bool"):
        presets.paper_layer(m, True)


class _Declared(nn.Module):
    """Follows the protocol but is not a zoo family: it has no paper numbering."""

    @nn.compact
    def __call__(self, x, *, train=False):
        return nn.Dense(2)(x)

    def channel_groups(self):
        return ()

    def with_widths(self, mapping):
        return self


def test_paper_layer_and_preset_need_a_zoo_family():
    with pytest.raises(ValueError, match="paper layer numbering is defined for the zoo's VGG and ResNet families"):
        presets.paper_layer(_Declared(), 1)
    with pytest.raises(
        ValueError, match=r"preset 'resnet56-A' is for CIFAR ResNet depth 56 \(resnet56\), got _Declared"
    ):
        presets.preset_ratios("resnet56-A", _Declared())
