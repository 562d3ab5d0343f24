"""Ratios -> counts -> kept indices: the rounding rule, ratio mappings, independent and greedy strategies."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxprune as jp
from jaxprune.strategies import kept_count, resolve_ratios, select_top


@pytest.mark.parametrize(
    ("width", "p", "expected"),
    [(16, 0.1, 14), (64, 0.1, 57), (32, 0.3, 22), (256, 0.4, 153), (256, 0.2, 204), (10, 0.8, 2), (512, 0.5, 256)],
)
def test_floor_rule_matches_the_reimplementation(width, p, expected):
    assert kept_count(width, p) == expected


def test_float_error_is_guarded():
    assert int(10 * (1 - 0.8)) == 1  # what the plain float expression gives
    assert kept_count(10, 0.8) == 2
    assert kept_count(10, np.float32(0.8)) == 2
    assert kept_count(10, 1 - 0.7) == 7  # 0.30000000000000004
    assert kept_count(10, 0.1 * 3) == 7
    assert kept_count(256, np.float32(0.2)) == 204
    assert kept_count(100, 0.7) == 30
    assert kept_count(3, 0.0) == 3


@pytest.mark.parametrize(
    ("width", "p", "round_to", "expected"),
    [(16, 0.6, 8, 8), (32, 0.3, 8, 24), (64, 0.1, 8, 56), (16, 0.25, 8, 16), (64, 0.97, 8, 8), (20, 0.4, 8, 16)],
)
def test_round_to_nearest_multiple_ties_up(width, p, round_to, expected):
    # 6/22/57 -> 8/24/56; 12 is a tie -> 16; 1 -> at least 8; 12 (20*0.6) tie -> 16
    assert kept_count(width, p, round_to=round_to) == expected


def test_min_keep_then_width_wins():
    assert kept_count(16, 0.95, min_keep=4) == 4
    assert kept_count(4, 0.5, round_to=8) == 4  # never above width, which wins over round_to
    assert kept_count(4, 0.5, min_keep=9) == 4


def test_select_top_is_stable_lower_index_wins_ties():
    assert select_top(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2) == (1, 2)
    assert select_top(np.array([5.0, 1.0, 4.0, 4.0]), 3) == (0, 2, 3)


def test_float_ratio_reaches_conv_groups_only(zoo):
    vgg, _ = zoo("vgg16")
    assert list(resolve_ratios(vgg, 0.5)) == [f"conv{i}" for i in range(1, 14)]
    r34, _ = zoo("resnet34")
    r = resolve_ratios(r34, 0.3)
    assert len(r) == 16
    assert not any(n.endswith("_stream") for n in r)


def test_mapping_stage_group_override_and_skip(zoo):
    vgg, _ = zoo("vgg16")
    r = resolve_ratios(vgg, {"stage4": 0.5, "conv9": 0.25, "fc1": 0.5}, skip=("conv10",))
    assert r == {"conv8": 0.5, "conv9": 0.25, "fc1": 0.5}
    # The override does not depend on the mapping's order.
    assert resolve_ratios(vgg, {"conv9": 0.25, "stage4": 0.5}) == {"conv8": 0.5, "conv9": 0.25, "conv10": 0.5}
    r34, _ = zoo("resnet34")
    assert "stage3_stream" not in resolve_ratios(r34, {"stage3": 0.3})
    assert resolve_ratios(r34, {"stage3_stream": 0.2}) == {"stage3_stream": 0.2}


def test_independent_equals_numpy_top_l1(zoo):
    m, v = zoo("resnet56")
    plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.6, "stage2": 0.3, "stage3": 0.1})
    for g in m.channel_groups():
        if not g.prunable:
            continue
        k = np.asarray(v["params"][g.name]["kernel"], np.float64)
        l1 = np.abs(k).sum(axis=(0, 1, 2))
        n_keep = {16: 6, 32: 22, 64: 57}[g.width]
        ref = tuple(sorted(np.argsort(-l1, kind="stable")[:n_keep].tolist()))
        assert plan.keep[g.name] == ref
    assert plan.new_widths["stage1_block1_conv1"] == 6
    assert plan.meta["strategy"] == "independent"


def _greedy_fixture(zoo):
    """VGG-16 where conv9's largest filters read only channels that pruning conv8 removes."""
    m, v = zoo("vgg16")
    v = jax.tree_util.tree_map(lambda a: a, v)
    k8 = np.array(v["params"]["conv8"]["kernel"])
    k8[..., 256:] *= 1e-3  # conv8 keeps filters 0..255 at 50 %
    k9 = np.zeros((3, 3, 512, 512), np.float32)
    k9[1, 1, 300, :256] = 1.0  # filters 0..255: L1 = 1, all of it on a channel conv8 drops
    k9[1, 1, 7, 256:] = 0.5  # filters 256..511: L1 = 0.5 on a channel conv8 keeps
    v["params"]["conv8"]["kernel"] = k8
    v["params"]["conv9"]["kernel"] = k9
    return m, v


def test_greedy_differs_from_independent_hand_worked(zoo):
    m, v = _greedy_fixture(zoo)
    ratios = {"conv8": 0.5, "conv9": 0.5}
    ind = jp.make_plan(m, v, prune_ratio=ratios, strategy="independent")
    gre = jp.make_plan(m, v, prune_ratio=ratios, strategy="greedy")
    assert ind.keep["conv8"] == gre.keep["conv8"] == tuple(range(256))
    assert ind.keep["conv9"] == tuple(range(256))  # scores 1.0 vs 0.5 on the unpruned kernel
    assert gre.keep["conv9"] == tuple(range(256, 512))  # scores 0 vs 0.5 once channel 300 is gone


def test_greedy_equals_independent_when_nothing_upstream_is_pruned(zoo):
    m, v = zoo("resnet56")
    ratios = {"stage1": 0.6, "stage2": 0.3, "stage3": 0.1}
    assert jp.make_plan(m, v, prune_ratio=ratios).keep == jp.make_plan(m, v, prune_ratio=ratios, strategy="greedy").keep


def test_precomputed_scores_and_criteria(zoo):
    m, v = zoo("resnet20")
    scores = {g.name: np.arange(g.width, dtype=np.float32) for g in m.channel_groups() if g.prunable}
    plan = jp.make_plan(m, v, prune_ratio=0.5, scores=scores)
    assert plan.keep["stage1_block1_conv1"] == tuple(range(8, 16))
    assert plan.meta["criterion"] == "precomputed"
    small = jp.make_plan(m, v, prune_ratio=0.5, criterion="largest_l1")
    big = jp.make_plan(m, v, prune_ratio=0.5)
    for name in small.keep:
        assert set(small.keep[name]).isdisjoint(big.keep[name])
    r = jp.make_plan(m, v, prune_ratio=0.5, criterion="random", key=jax.random.key(0))
    assert r.new_widths == big.new_widths
    assert sum(r.keep[n] != big.keep[n] for n in big.keep) >= 8  # random picks are not the L1 picks


def test_zero_ratio_groups_are_not_in_the_plan(zoo):
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5, "stage2": 0.0})
    assert set(plan.keep) == {f"stage1_block{b}_conv1" for b in (1, 2, 3)}


# -- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_range(zoo, p):
    m, v = zoo("resnet20")
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        jp.make_plan(m, v, prune_ratio=p)
    with pytest.raises(ValueError, match=r"stage 'stage1'.*must be in \[0, 1\)"):
        jp.make_plan(m, v, prune_ratio={"stage1": p})


def test_bad_names_and_options(zoo):
    m, v = zoo("resnet20")
    with pytest.raises(ValueError, match=r"unknown group or stage 'stage4'; valid stages: stage1, stage2, stage3"):
        jp.make_plan(m, v, prune_ratio={"stage4": 0.5})
    with pytest.raises(ValueError, match=r"group 'stage1_stream' is not prunable"):
        jp.make_plan(m, v, prune_ratio={"stage1_stream": 0.5})
    with pytest.raises(ValueError, match=r"skip names unknown group 'conv3'"):
        jp.make_plan(m, v, prune_ratio=0.5, skip=["conv3"])
    with pytest.raises(ValueError, match=r"round_to must be >= 1, got 0"):
        jp.make_plan(m, v, prune_ratio=0.5, round_to=0)
    with pytest.raises(ValueError, match=r"min_keep must be >= 1, got 0"):
        jp.make_plan(m, v, prune_ratio=0.5, min_keep=0)
    with pytest.raises(ValueError, match=r"unknown strategy 'global'; valid strategies: independent, greedy"):
        jp.make_plan(m, v, prune_ratio=0.5, strategy="global")
    with pytest.raises(ValueError, match=r"unknown criterion 'hessian'; valid criteria: l1, l2, random, largest_l1"):
        jp.make_plan(m, v, prune_ratio=0.5, criterion="hessian")
    with pytest.raises(TypeError, match="prune_ratio must be a float or a mapping"):
        jp.make_plan(m, v, prune_ratio="0.5")
    with pytest.raises(TypeError, match="must be a real number"):
        jp.make_plan(m, v, prune_ratio={"stage1": "half"})
    with pytest.raises(TypeError, match="round_to must be an int"):
        jp.make_plan(m, v, prune_ratio=0.5, round_to=2.5)


def test_bad_scores(zoo):
    m, v = zoo("resnet20")
    good = {g.name: np.ones(g.width) for g in m.channel_groups() if g.prunable}
    with pytest.raises(ValueError, match=r"scores has no entry for reached groups \['stage1_block1_conv1'\]"):
        jp.make_plan(m, v, prune_ratio=0.5, scores={k: s for k, s in good.items() if k != "stage1_block1_conv1"})
    with pytest.raises(ValueError, match=r"scores for group 'stage1_block1_conv1' must have shape \(16,\)"):
        jp.make_plan(m, v, prune_ratio=0.5, scores={**good, "stage1_block1_conv1": np.ones(3)})
    with pytest.raises(ValueError, match="hold NaN or inf"):
        jp.make_plan(m, v, prune_ratio=0.5, scores={**good, "stage1_block1_conv1": np.full(16, np.nan)})
    with pytest.raises(ValueError, match="scores name unknown groups"):
        jp.make_plan(m, v, prune_ratio=0.5, scores={**good, "bogus": np.ones(3)})


def test_not_a_prunable_model():
    import flax.linen as nn

    # A plain Linen module is traced on the spot, so it needs an example input; the error says what to pass.
    with pytest.raises(ValueError, match=r"Linen module Dense needs an example input.*example_input=x.*trace_model"):
        jp.make_plan(nn.Dense(3), {"params": {}}, prune_ratio=0.5)
    with pytest.raises(TypeError, match=r"object is not a prunable model: it needs channel_groups\(\).*trace_model"):
        jp.make_plan(object(), {"params": {}}, prune_ratio=0.5)


def test_meta_is_json_ready_and_skip_may_be_a_generator(zoo):
    m, v = zoo("resnet20")
    plan = jp.make_plan(m, v, prune_ratio={"stage1": np.float32(0.5)}, skip=(n for n in ["stage1_block2_conv1"]))
    assert plan.meta["skip"] == ["stage1_block2_conv1"]
    assert "stage1_block2_conv1" not in plan.keep
    assert jp.PruningPlan.from_json(plan.to_json()) == plan
    assert jp.make_plan(m, v, prune_ratio=0.5, meta={"note": "x"}).meta["note"] == "x"


def test_scores_with_a_criterion_is_an_error(zoo):
    m, v = zoo("resnet20")
    scores = {g.name: np.ones(g.width) for g in m.channel_groups() if g.prunable}
    with pytest.raises(ValueError, match="scores= replaces the criterion"):
        jp.make_plan(m, v, prune_ratio=0.5, scores=scores, criterion="l2")


def test_plan_from_scores_rejects_unknown_and_non_prunable_groups(zoo):
    from jaxprune.strategies import plan_from_scores

    m, _ = zoo("resnet20")
    with pytest.raises(ValueError, match=r"ratios name unknown group 'nope'; prunable groups: stage1_block1_conv1"):
        plan_from_scores(m.channel_groups(), {"nope": 0.5}, {"nope": np.ones(3)})
    with pytest.raises(ValueError, match=r"non-prunable group 'stage1_stream'"):
        plan_from_scores(m.channel_groups(), {"stage1_stream": 0.5}, {"stage1_stream": np.ones(16)})
