"""Global ranking (`make_plan(scope="global")`) and MAC/param targets (`target_macs`, `target_params`)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from _tinynet import TinyNet
from conftest import assert_close, input_batch

import jaxprune as jp
from jaxprune.global_rank import Budget, CostModel, floor_count, global_counts, normalize_scores

TINY_SHAPE = (1, 6, 6, 3)

# Mean |w| per filter (every weight of a filter set to this value), so L1 / fan_in gives these numbers back.
TINY_VALUES = {
    "conv1": [0.1, 0.9, 0.2, 0.8],
    "conv2": [0.5, 0.6, 0.7, 0.4],
    "conv3": [0.05, 0.03, 0.3, 0.025],
}


@pytest.fixture(scope="module")
def tiny():
    m = TinyNet()
    v = jp.random_variables(m, seed=0, input_shape=TINY_SHAPE)
    params = dict(v["params"])
    for name, vals in TINY_VALUES.items():
        k = np.asarray(params[name]["kernel"])
        signs = np.sign(np.random.default_rng(1).normal(size=k.shape))  # signs do not change |w|
        params[name] = {"kernel": np.asarray(signs * np.asarray(vals)[None, None, None, :], np.float32)}
    return m, {**v, "params": params}


def test_hand_built_layer_and_global_choose_differently(tiny):
    m, v = tiny
    layer = jp.make_plan(m, v, prune_ratio=0.5)
    assert dict(layer.keep) == {"conv1": (1, 3), "conv2": (1, 2), "conv3": (0, 2)}
    # Global, L1 / fan-in (27 weights per conv1 filter, 36 for conv2/conv3) = the values above. Ascending:
    # conv3: .025 (3), .03 (1), .05 (0); conv1: .1 (0), .2 (2); conv3 .3 (2); conv2 .4 (3); ... Removing 6 of 12:
    # conv3 stops at 1 kept (min_keep), so its 4th filter stays and the 7th in line (conv2's .4) goes instead.
    glob = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in")
    assert dict(glob.keep) == {"conv1": (1, 3), "conv2": (0, 1, 2), "conv3": (2,)}
    assert glob.meta["scope"] == "global" and glob.meta["normalize"] == "fan_in"
    assert (glob.meta["kept_filters"], glob.meta["total_filters"]) == (6, 12)
    # Mean normalisation: conv3 / 0.10125 = .494 .296 2.963 .247; conv1 / 0.5 = .2 1.8 .4 1.6; conv2 / 0.55 =
    # .909 1.091 1.273 .727. Ascending: conv1 (0), conv3 (3), conv3 (1), conv1 (2), conv3 (0), conv2 (3): the same
    # six filters go.
    mean = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="mean")
    assert dict(mean.keep) == {"conv1": (1, 3), "conv2": (0, 1, 2), "conv3": (2,)}
    # A cap of 50 % (2 of 4 kept at least) stops conv3 after 2 and conv1 after 2: conv2 loses its two lowest.
    capped = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", max_ratio=0.5)
    assert dict(capped.keep) == {"conv1": (1, 3), "conv2": (1, 2), "conv3": (0, 2)}
    # Raw L1 (normalize="none"): conv1 2.7 24.3 5.4 21.6; conv2 18 21.6 25.2 14.4; conv3 1.8 1.08 10.8 0.9.
    # Ascending: conv3 (3), (1), (0); conv1 (0), (2); conv3 (2), kept by min_keep; conv2 (3) 14.4: the same six.
    raw = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="none")
    assert dict(raw.keep) == {"conv1": (1, 3), "conv2": (0, 1, 2), "conv3": (2,)}


def test_hand_built_mac_target(tiny):
    m, v = tiny
    # MACs at 6x6 (conv2 has stride 2): conv1 36*9*3*k1 = 972 k1, conv2 9*9*k1*k2 = 81 k1 k2, conv3 81 k2 k3,
    # fc 3 k3; 6492 in all, so target_macs=0.5 allows 3246. Removing by the ranking (see the test above):
    # 3 of conv3 -> 5511; conv1 (0) -> (3, 4, 1): 4215; conv1 (2) -> (2, 4, 1): 1944 + 648 + 324 + 3 = 2919.
    assert jp.count_macs(m, TINY_SHAPE).macs == 6492
    plan = jp.make_plan(m, v, target_macs=0.5, scope="global", normalize="fan_in", input_shape=TINY_SHAPE)
    assert dict(plan.keep) == {"conv1": (1, 3), "conv2": (0, 1, 2, 3), "conv3": (2,)}
    assert (plan.meta["kept_macs"], plan.meta["total_macs"]) == (2919, 6492)
    assert jp.count_macs(m.with_widths(plan.new_widths), TINY_SHAPE).macs == 2919
    # Putting conv1's filter 2 back (the next one by the ranking) gives 4215 > 3246.
    assert jp.count_macs(m.with_widths({"conv1": 3, "conv3": 1}), TINY_SHAPE).macs == 4215
    # Layer scope: ratios 0.25 keep 3 of 4 everywhere: 2916 + 729 + 729 + 9 = 4383 > 3246; 0.5 keeps 2: 2598.
    layer = jp.make_plan(m, v, target_macs=0.5, input_shape=TINY_SHAPE)
    assert layer.meta["prune_ratio"] == 0.5 and layer.meta["kept_macs"] == 2598
    assert dict(layer.keep) == {"conv1": (1, 3), "conv2": (1, 2), "conv3": (0, 2)}


def test_hand_built_largest_l1_goes_from_the_top(tiny):
    m, v = tiny
    # The paper's control with one ranking: removal from the largest mean |w|: conv1 .9, .8; conv2 .7, .6, .5; conv2's
    # .4 stays (min_keep); conv3's .3 goes sixth.
    plan = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", criterion="largest_l1")
    assert dict(plan.keep) == {"conv1": (0, 2), "conv2": (3,), "conv3": (0, 1, 3)}


def test_min_keep_and_round_to_in_global(tiny):
    m, v = tiny
    # min_keep=2: conv3 keeps 2 (0.3 and 0.05), so conv2's .4 and .5 both go.
    plan = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", min_keep=2)
    assert dict(plan.keep) == {"conv1": (1, 3), "conv2": (1, 2), "conv3": (0, 2)}
    # round_to=2: kept counts are rounded up to even numbers as the ranking removes filters.
    plan = jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", round_to=2)
    assert all(len(k) % 2 == 0 for k in plan.keep.values())
    assert sum(len(k) for k in plan.keep.values()) == 6


def test_floor_count_rule():
    assert floor_count(16, 0.9, round_to=1, min_keep=1) == 2  # at most 14.4 removed -> 14
    assert floor_count(10, 0.9, round_to=1, min_keep=1) == 1  # 10 * 0.1 = 0.99999... snaps to 1
    assert floor_count(64, 0.5, round_to=8, min_keep=1) == 32
    assert floor_count(20, 0.5, round_to=8, min_keep=1) == 16  # 10 rounded up to a multiple of 8
    assert floor_count(4, 1.0, round_to=8, min_keep=1) == 4  # never above width
    assert floor_count(16, 1.0, round_to=1, min_keep=3) == 3


@pytest.fixture(scope="module")
def r20(zoo):
    return zoo("resnet20")


def _fan_in_scores(m, v):
    groups = [g for g in m.channel_groups() if g.prunable and g.kind == "conv"]
    flat = {g.scored.path: np.asarray(v["params"][g.scored.path[1]]["kernel"]) for g in groups}
    return normalize_scores(jp.l1_filter_norms(v, groups), groups, normalize="fan_in", criterion="l1", flat=flat)


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_mac_target_lands_within_one_filter(r20, target):
    m, v = r20
    total = jp.count_macs(m).macs
    plan = jp.make_plan(m, v, target_macs=target, scope="global", normalize="fan_in", max_ratio=0.9)
    exact = jp.count_macs(m.with_widths(plan.new_widths)).macs
    assert plan.meta["kept_macs"] == exact  # the bisection's cost model is exact
    assert plan.meta["total_macs"] == total
    assert exact <= target * total
    # Put back the highest-ranked removed filter: its group grows by one, and the target is exceeded.
    scores = _fan_in_scores(m, v)
    best, where = -np.inf, None
    for name, keep in plan.keep.items():
        removed = np.setdiff1d(np.arange(plan.widths[name]), keep)
        if removed.size and scores[name][removed].max() > best:
            best, where = scores[name][removed].max(), name
    widths = dict(plan.new_widths)
    widths[where] += 1
    assert jp.count_macs(m.with_widths(widths)).macs > target * total
    # Every kept filter outranks every removed one of a group not held at its floor (one threshold).
    floors = {n: floor_count(w, 0.9, round_to=1, min_keep=1) for n, w in plan.widths.items()}
    kept_min = min(scores[n][list(k)].min() for n, k in plan.keep.items() if len(k) > floors[n])
    assert kept_min >= best


@pytest.mark.parametrize(("name", "shape"), [("vgg11", None), ("resnet18", (1, 64, 64, 3))])
def test_mac_and_param_targets_exact_on_other_layouts(zoo, name, shape):
    # VGG: the last conv feeds fc1 through a flatten; ResNet-18: projection shortcuts and prunable streams (not
    # reached by the global scope, so they stay at full width).
    m, v = zoo(name)
    plan = jp.make_plan(m, v, target_macs=0.4, target_params=0.5, scope="global", normalize="fan_in", input_shape=shape)
    report = jp.count_macs(m.with_widths(plan.new_widths), shape)
    assert (plan.meta["kept_macs"], plan.meta["kept_params"]) == (report.macs, report.params)
    assert report.macs <= 0.4 * plan.meta["total_macs"] and report.params <= 0.5 * plan.meta["total_params"]


def test_cap_and_min_keep_respected_at_a_budget(r20):
    m, v = r20
    plan = jp.make_plan(m, v, target_macs=0.55, scope="global", normalize="fan_in", max_ratio=0.6, min_keep=12)
    kept = {n: len(k) for n, k in plan.keep.items()}
    for name, k in kept.items():
        w = plan.widths[name]
        assert w - k <= 0.6 * w  # the cap
        assert k >= 12  # the minimum
    # Both bind somewhere: a 16-wide group held at min_keep (the cap alone would allow 7), and 64-wide groups held
    # at the cap (ceil(0.4 * 64) = 26), so the test sees each rule act.
    assert 12 in [kept[f"stage1_block{b}_conv1"] for b in (1, 2, 3)]
    assert 26 in [kept[f"stage3_block{b}_conv1"] for b in (1, 2, 3)]
    assert jp.count_macs(m.with_widths(plan.new_widths)).macs <= 0.55 * jp.count_macs(m).macs


def test_round_to_at_a_budget(r20):
    m, v = r20
    plan = jp.make_plan(m, v, target_macs=0.5, scope="global", normalize="mean", round_to=8)
    assert all(len(k) % 8 == 0 for k in plan.keep.values())
    assert plan.meta["kept_macs"] == jp.count_macs(m.with_widths(plan.new_widths)).macs <= 0.5 * plan.meta["total_macs"]


def test_param_target_is_exact_and_combines_with_macs(r20):
    m, v = r20
    plan = jp.make_plan(m, v, target_params=0.6, target_macs=0.45, scope="global", normalize="fan_in")
    report = jp.count_macs(m.with_widths(plan.new_widths))
    assert plan.meta["kept_params"] == report.params  # every params leaf, BN included
    assert plan.meta["total_params"] == jp.count_macs(m).params
    assert report.params <= 0.6 * plan.meta["total_params"]
    assert report.macs <= 0.45 * plan.meta["total_macs"]


def test_layer_scope_target_is_the_smallest_uniform_ratio(r20):
    m, v = r20
    total = jp.count_macs(m).macs
    plan = jp.make_plan(m, v, target_macs=0.6)
    p = plan.meta["prune_ratio"]
    assert plan == jp.make_plan(
        m, v, prune_ratio=p, meta={k: plan.meta[k] for k in ("target_macs", "kept_macs", "total_macs")}
    )
    assert jp.count_macs(m.with_widths(plan.new_widths)).macs == plan.meta["kept_macs"] <= 0.6 * total
    # The next smaller ratio at which any kept count changes exceeds the target.
    widths = {g.width for g in m.channel_groups() if g.kind == "conv" and g.prunable}
    prev = max(q for q in {1 - k / w for w in widths for k in range(1, w + 1)} | {0.0} if q < p - 1e-12)
    assert jp.count_macs(m.with_widths(jp.make_plan(m, v, prune_ratio=prev).new_widths)).macs > 0.6 * total


def test_global_plan_prunes_to_the_masked_original(r20):
    m, v = r20
    plan = jp.make_plan(m, v, target_macs=0.5, scope="global", normalize="fan_in")
    small, sv = jp.prune(m, v, plan)
    x = input_batch(m)
    # Jitted: a global plan gives every layer its own width, so op-by-op it would compile each op once per layer.
    assert_close(jax.jit(lambda v, x: small.apply(v, x, train=False))(sv, x), jp.mask_dropped(m, v, plan, x))
    assert jp.PruningPlan.from_json(plan.to_json()) == plan


def test_global_other_criteria(r20):
    m, v = r20
    a = jp.make_plan(m, v, prune_ratio=0.4, scope="global", normalize="none", criterion="random", key=jax.random.key(0))
    assert sum(len(k) for k in a.keep.values()) == jp.kept_count(sum(a.widths.values()), 0.4)
    b = jp.make_plan(m, v, target_macs=0.5, scope="global", normalize="mean", criterion="fpgm")
    assert b.meta["criterion"] == "fpgm" and b.meta["kept_macs"] <= 0.5 * b.meta["total_macs"]


# -- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_max_ratio_outside_0_1(r20, bad):
    m, v = r20
    with pytest.raises(ValueError, match=r"max_ratio must be in \(0, 1\]"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", max_ratio=bad)
    with pytest.raises(ValueError, match=r"max_ratio must be in \(0, 1\]"):
        jp.make_plan(m, v, prune_ratio=0.5, max_ratio=bad)


def test_max_ratio_wrong_type(r20):
    m, v = r20
    with pytest.raises(TypeError, match="max_ratio must be a real number"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", max_ratio="0.5")


def test_unreachable_budget_names_the_closest(r20):
    m, v = r20
    floor = {g.name: math.ceil(g.width * 0.5) for g in m.channel_groups() if g.prunable and g.kind == "conv"}
    closest = jp.count_macs(m.with_widths(floor)).macs / jp.count_macs(m).macs
    with pytest.raises(
        ValueError, match=rf"target_macs=0.2 cannot be met .* closest reachable is target_macs={closest:.6g}"
    ):
        jp.make_plan(m, v, target_macs=0.2, scope="global", normalize="fan_in", max_ratio=0.5)
    with pytest.raises(ValueError, match=r"target_macs=0.2 cannot be met with one prune ratio"):
        jp.make_plan(m, v, target_macs=0.2, max_ratio=0.5)


def test_unreachable_filter_budget(tiny):
    m, v = tiny
    with pytest.raises(ValueError, match=r"prune_ratio=0.5 cannot be met .* closest reachable is prune_ratio=0.25"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", min_keep=3)


def test_unknown_scope(r20):
    m, v = r20
    with pytest.raises(ValueError, match="unknown scope 'globl'; valid scopes: layer, global"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="globl")


def test_normalize_required_known_and_global_only(r20):
    m, v = r20
    with pytest.raises(ValueError, match="needs an explicit normalize="):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global")
    with pytest.raises(ValueError, match="unknown normalize 'max'"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="max")
    with pytest.raises(ValueError, match="applies to scope='global' only"):
        jp.make_plan(m, v, prune_ratio=0.5, normalize="mean")
    with pytest.raises(ValueError, match="normalize='fan_in' .* not for criterion 'fpgm'"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", criterion="fpgm")
    with pytest.raises(ValueError, match="normalize='fan_in' .* not for precomputed scores"):
        jp.make_plan(
            m, v, prune_ratio=0.5, scope="global", normalize="fan_in", scores=jp.l1_filter_norms(v, m.channel_groups())
        )


@pytest.mark.parametrize("bad", [0.0, 1.2])
def test_target_outside_0_1(r20, bad):
    m, v = r20
    with pytest.raises(ValueError, match=r"target_macs must be in \(0, 1\]"):
        jp.make_plan(m, v, target_macs=bad, scope="global", normalize="fan_in")
    with pytest.raises(ValueError, match=r"target_params must be in \(0, 1\]"):
        jp.make_plan(m, v, target_params=bad)


def test_option_combinations(r20):
    m, v = r20
    with pytest.raises(ValueError, match="either prune_ratio= or a target"):
        jp.make_plan(m, v, prune_ratio=0.5, target_macs=0.5)
    with pytest.raises(ValueError, match="needs prune_ratio= or a target"):
        jp.make_plan(m, v)
    with pytest.raises(ValueError, match="input_shape= is used .* target_macs= only"):
        jp.make_plan(m, v, prune_ratio=0.5, input_shape=(1, 32, 32, 3))
    with pytest.raises(ValueError, match="use strategy='independent'"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="fan_in", strategy="greedy")
    with pytest.raises(ValueError, match="one float prune_ratio"):
        jp.make_plan(m, v, prune_ratio={"stage1": 0.5}, scope="global", normalize="fan_in")
    with pytest.raises(ValueError, match="prune ratios above max_ratio=0.4"):
        jp.make_plan(m, v, prune_ratio={"stage1": 0.5}, max_ratio=0.4)


def test_global_precomputed_scores_must_cover_the_reached_groups(r20):
    m, v = r20
    scores = jp.l1_filter_norms(v, m.channel_groups())
    del scores["stage2_block1_conv1"]
    with pytest.raises(ValueError, match=r"scores has no entry for reached groups \['stage2_block1_conv1'\]"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="mean", scores=scores)
    scores["stage2_block1_conv1"] = np.ones(3)
    with pytest.raises(ValueError, match=r"scores for group 'stage2_block1_conv1' must have shape \(32,\)"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="mean", scores=scores)


def test_global_prune_ratio_checked(r20):
    m, v = r20
    with pytest.raises(ValueError, match=r"prune ratio for scope='global' .* must be in \[0, 1\), got 1.0"):
        jp.make_plan(m, v, prune_ratio=1.0, scope="global", normalize="mean")
    with pytest.raises(TypeError, match=r"prune ratio for scope='global' .* must be a real number"):
        jp.make_plan(m, v, prune_ratio="half", scope="global", normalize="mean")
    every = [g.name for g in m.channel_groups() if g.prunable and g.kind == "conv"]
    with pytest.raises(ValueError, match="scope='global' reaches no group"):
        jp.make_plan(m, v, prune_ratio=0.5, scope="global", normalize="mean", skip=every)
    with pytest.raises(ValueError, match="a target reaches no group"):
        jp.make_plan(m, v, target_macs=0.5, skip=every)


def test_global_ties_keep_the_earlier_group_and_lower_index():
    # Filter-count cost: one term per group whose kept length is the group's kept count.
    terms = [(1, [(2, [(n, 2, 1)])]) for n in ("a", "b")]
    budget = Budget("prune_ratio", CostModel(terms, 4), 0.5, 2, removed=True)
    scores = {"a": np.ones(2), "b": np.ones(2)}
    # All equal: removal runs b1, b0 (held by min_keep), a1.
    kept = global_counts(scores, {"a": 2, "b": 2}, max_ratio=1.0, round_to=1, min_keep=1, budgets=[budget])
    assert kept == {"a": 1, "b": 1}
    assert [jp.select_top(scores[n], kept[n]) for n in "ab"] == [(0,), (0,)]  # and the lower index stays


def test_global_plan_is_bound_to_its_model(r20, zoo):
    """A global plan records its model like a layer-wise one: applying it to another model is refused."""
    m, v = r20
    plan = jp.make_plan(m, v, prune_ratio=0.3, scope="global", normalize="fan_in")
    assert plan.made_for is not None
    assert plan.made_for == jp.make_plan(m, v, prune_ratio=0.3).made_for
    other, other_v = zoo("resnet32")
    with pytest.raises(ValueError, match="made for"):
        jp.prune(other, other_v, plan)
