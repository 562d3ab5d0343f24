"""Sensitivity scan (masked vs physical), activation criteria, criteria comparison and ratio suggestions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import jaxprune as jp
from jaxprune import models
from jaxprune.sensitivity import (
    ACTIVATION_CRITERIA,
    ALL_CRITERIA,
    SensitivityResult,
    activation_scores,
    compare_criteria,
    scan_trace_count,
    sensitivity,
    suggest_ratios,
)
from jaxprune.sensitivity.scan import _loss
from jaxprune.strategies import kept_count

RATIOS = (0.3, 0.6, 0.9)


@pytest.fixture(scope="module")
def r20():
    """ResNet-20, random variables scaled down so that logits are O(1), and a fixed batch of 12 images."""
    m = models.resnet20()
    v = jp.random_variables(m, seed=1)
    v = {
        "params": {
            **v["params"],
            "fc": {"kernel": v["params"]["fc"]["kernel"] * 0.05, "bias": v["params"]["fc"]["bias"]},
        },
        "batch_stats": v["batch_stats"],
    }
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=12).astype(np.int32)
    return m, v, x, y


@pytest.fixture(scope="module")
def scan(r20):
    m, v, x, y = r20
    return sensitivity(m, v, data=(x, y), metric="loss", ratios=RATIOS)


def _pruned_loss(m, v, x, y, group, ratio, **plan_kw):
    plan = jp.make_plan(m, v, prune_ratio={group: ratio}, **plan_kw)
    nm, nv = jp.prune(m, v, plan)
    logits = jax.jit(lambda vv, xx: nm.apply(vv, xx, train=False))(nv, x)  # jitted: faster than eager here
    return float(_loss(logits, jnp.asarray(y))), nm


# ----------------------------------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------------------------------
def test_scan_table_shape_groups_and_kept_counts(r20, scan):
    m, _, _, _ = r20
    assert scan.groups == tuple(f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3))
    assert scan.ratios == RATIOS
    assert scan.values.shape == (9, 3)
    assert scan.method == "masked" and scan.metric == "loss" and scan.higher_is_better is False
    for i, g in enumerate(scan.groups):
        for j, p in enumerate(RATIOS):
            assert scan.kept[i, j] == kept_count(scan.widths[g], p)
    assert scan.kept[0].tolist() == [11, 6, 1]  # 16 filters at 30/60/90 %
    assert scan.kept[-1].tolist() == [44, 25, 6]  # 64 filters
    assert scan.input_shape == (1, 32, 32, 3)
    assert scan.stage_groups == m.stages()
    assert len(scan.rows()) == 27
    assert scan.to_markdown().count("\n| stage") == 9


def test_masked_scan_equals_physical_pruning_at_sampled_points(r20, scan):
    m, v, x, y = r20
    base = float(_loss(jp.masked_forward(m)(v, x, None), jnp.asarray(y)))
    assert_close(scan.baseline, base)
    for g, p in [("stage1_block1_conv1", 0.9), ("stage3_block2_conv1", 0.6)]:
        expected, nm = _pruned_loss(m, v, x, y, g, p)
        assert nm.group_widths()[g] == kept_count(scan.widths[g], p)
        assert_close(scan.value(g, p), expected)
    # drop: loss is lower-is-better, so drop = value - baseline
    np.testing.assert_allclose(scan.drop, scan.values - scan.baseline)


def test_physical_path_equals_masked_path(r20, scan):
    m, v, x, y = r20

    def evaluate(model, variables):
        logits = jax.jit(lambda vv, xx: model.apply(vv, xx, train=False))(variables, x)
        return _loss(logits, jnp.asarray(y))  # a 0-d jax array is accepted

    groups = ["stage1_block2_conv1", "stage3_block3_conv1"]
    phys = sensitivity(m, v, evaluate, ratios=(0.9,), groups=groups, higher_is_better=False)
    assert phys.method == "physical" and phys.metric == "evaluate"
    assert phys.input_shape == (1, 32, 32, 3)
    assert_close(phys.baseline, scan.baseline)
    for i, g in enumerate(groups):
        assert_close(phys.values[i, 0], scan.value(g, 0.9))


def test_one_compile_serves_every_group_ratio_and_criterion(r20, scan):
    m, v, x, y = r20
    before = scan_trace_count()
    other = sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.1, 0.5), groups=["stage2_block1_conv1"])
    again = sensitivity(m, v, data=(x, y), metric="loss", ratios=RATIOS, criterion="l2")
    assert scan_trace_count() == before  # same model object, metric, chunk and batch shape: no retrace
    assert other.values.shape == (1, 2) and again.values.shape == (9, 3)


def test_batching_and_chunking_do_not_change_the_numbers(r20, scan):
    m, v, x, y = r20
    groups = ["stage1_block3_conv1", "stage3_block1_conv1"]
    s = sensitivity(m, v, data=(x, y), metric="loss", ratios=RATIOS, groups=groups, batch_size=8, chunk=3)
    assert_close(s.baseline, scan.baseline)
    for i, g in enumerate(groups):
        assert_close(s.values[i], scan.values[scan.groups.index(g)])


def test_accuracy_metric_and_custom_metric(r20):
    m, v, x, y = r20
    acc = sensitivity(m, v, data=(x, y), ratios=(0.5,), groups=["stage3_block3_conv1"])
    logits = jp.masked_forward(m)(v, x, None)
    assert acc.metric == "accuracy" and acc.higher_is_better
    assert acc.baseline == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)), abs=1e-7)
    assert acc.baseline * 12 == pytest.approx(round(acc.baseline * 12), abs=1e-5)  # a count over 12 images

    def top_logit(logits, labels):
        return jnp.mean(jnp.max(logits, axis=-1))

    custom = sensitivity(m, v, data=(x, y), metric=top_logit, ratios=(0.5,), groups=["stage3_block3_conv1"])
    assert custom.metric == "top_logit" and custom.higher_is_better
    assert_close(custom.baseline, float(jnp.mean(jnp.max(logits, -1))))


def test_precomputed_scores_and_largest_l1(r20, scan):
    m, v, x, y = r20
    neg = {g: -s for g, s in jp.filter_norms(v, m.channel_groups()).items()}
    a = sensitivity(m, v, data=(x, y), metric="loss", ratios=RATIOS, scores=neg)
    b = sensitivity(m, v, data=(x, y), metric="loss", ratios=RATIOS, criterion="largest_l1")
    assert a.criterion == "precomputed" and b.criterion == "largest_l1"
    np.testing.assert_array_equal(a.values, b.values)
    expected, _ = _pruned_loss(m, v, x, y, "stage2_block2_conv1", 0.6, criterion="largest_l1")
    assert_close(b.value("stage2_block2_conv1", 0.6), expected)


def test_round_to_reaches_the_plan(r20):
    m, v, x, y = r20
    s = sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.6,), groups=["stage1_block1_conv1"], round_to=8)
    assert s.kept.tolist() == [[8]]  # 16 * 0.4 = 6.4 -> 6 -> nearest multiple of 8
    expected, _ = _pruned_loss(m, v, x, y, "stage1_block1_conv1", 0.6, round_to=8)
    assert_close(s.values[0, 0], expected)


def test_markdown_shows_the_kept_counts_of_a_rounded_scan(r20):
    m, v, x, y = r20
    s = sensitivity(
        m, v, data=(x, y), metric="loss", ratios=(0.2, 0.4, 0.6), groups=["stage1_block1_conv1"], round_to=8
    )
    assert s.kept.tolist() == [[16, 8, 8]]  # 12 -> 16 (ties up), 9 -> 8, 6 -> 8
    # Each distinct network is evaluated once: keeping all 16 is the unpruned network, 40 and 60 % the same one.
    assert s.values[0, 0] == s.baseline and s.values[0, 1] == s.values[0, 2]
    md = s.to_markdown()
    assert "cells give the filters kept, rounded to multiples of 8" in md
    row = next(line for line in md.splitlines() if line.startswith("| stage1_block1_conv1"))
    assert [c.strip().split(" ")[1] for c in row.strip("|").split("|")[2:]] == ["(16)", "(8)", "(8)"]
    plain = sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.2,), groups=["stage1_block1_conv1"])
    assert "(" not in plain.to_markdown().splitlines()[-1]


# ----------------------------------------------------------------------------------------------------------------------
# Activation criteria (paper §4.5)
# ----------------------------------------------------------------------------------------------------------------------
def _conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_activation_scores_match_a_hand_computed_pre_bn_output(r20):
    m, v, x, _ = r20
    p, bs = v["params"], v["batch_stats"]
    h = _conv(jnp.asarray(x), p["stem"]["kernel"])
    h = (h - bs["stem_bn"]["mean"]) / jnp.sqrt(bs["stem_bn"]["var"] + 1e-5) * p["stem_bn"]["scale"] + p["stem_bn"][
        "bias"
    ]
    a = np.asarray(_conv(jax.nn.relu(h), p["stage1_block1_conv1"]["kernel"]), np.float64)  # (N, 32, 32, 16)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    l2 = np.sqrt((a**2).sum(1))
    expected = {
        "mean_mean": a.mean(1).mean(0),
        "mean_std": a.std(1).mean(0),
        "mean_l1": np.abs(a).sum(1).mean(0),
        "mean_l2": l2.mean(0),
        "var_l2": l2.var(0),
    }
    for crit in ACTIVATION_CRITERIA:
        got = activation_scores(m, v, (x, None), criterion=crit, batch_size=5)["stage1_block1_conv1"]
        assert got.shape == (16,)
        np.testing.assert_allclose(got, expected[crit], rtol=2e-4, atol=1e-5 * float(np.max(np.abs(expected[crit]))))


def test_activation_scores_chunking_and_make_plan(r20):
    m, v, x, _ = r20
    whole = activation_scores(m, v, x, criterion="mean_std", batch_size=12)
    chunked = activation_scores(m, v, x, criterion="mean_std", batch_size=5)
    assert set(whole) == {g.name for g in m.channel_groups() if g.prunable}
    for g in whole:
        np.testing.assert_allclose(chunked[g], whole[g], rtol=1e-5)
    plan = jp.make_plan(m, v, prune_ratio=0.5, scores=whole)
    s = whole["stage2_block1_conv1"]
    assert plan.keep["stage2_block1_conv1"] == tuple(sorted(np.argsort(-s, kind="stable")[:16].tolist()))


def test_activation_criterion_in_the_scan_and_the_comparison(r20):
    m, v, x, y = r20
    groups = ["stage1_block1_conv1", "stage3_block3_conv1"]
    cmp = compare_criteria(
        m, v, (x, y), criteria=("l1", "largest_l1", "mean_l2"), metric="loss", ratios=(0.5,), groups=groups
    )
    assert cmp.criteria == ("l1", "largest_l1", "mean_l2")
    assert {r.baseline for r in cmp.results.values()} == {cmp.results["l1"].baseline}
    scores = activation_scores(m, v, x, criterion="mean_l2", groups=groups)
    direct = sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.5,), groups=groups, scores=scores)
    np.testing.assert_array_equal(cmp.results["mean_l2"].values, direct.values)
    via_crit = sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.5,), groups=groups, criterion="mean_l2")
    assert via_crit.criterion == "mean_l2"
    np.testing.assert_array_equal(via_crit.values, direct.values)
    a, b, ties = cmp.wins("l1", "largest_l1", ratio=0.5)
    assert a + b + ties == 2
    l1_drop, big_drop = cmp.results["l1"].drop[:, 0], cmp.results["largest_l1"].drop[:, 0]
    assert a == int(np.sum(l1_drop < big_drop)) and b == int(np.sum(big_drop < l1_drop))
    at = cmp.at(0.5)
    assert set(at) == {"l1", "largest_l1", "mean_l2"} and set(at["l1"]) == set(groups)
    md = cmp.to_markdown(ratio=0.5)
    assert md.splitlines()[0] == "| group | kept | l1 | largest_l1 | mean_l2 |"
    assert "| stage1_block1_conv1 | 8/16 |" in md


# ----------------------------------------------------------------------------------------------------------------------
# suggest_ratios (synthetic tables: exact expectations, no compile)
# ----------------------------------------------------------------------------------------------------------------------
def synthetic(model, drop_fn, ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), *, with_model=True):
    """A SensitivityResult whose drop of group g at ratio p is drop_fn(g, p) (accuracy, baseline 0.9)."""
    groups = [g for g in model.channel_groups() if g.prunable and g.kind == "conv"]
    drops = np.array([[drop_fn(g.name, p) for p in ratios] for g in groups], np.float64)
    return SensitivityResult(
        groups=tuple(g.name for g in groups),
        ratios=tuple(ratios),
        values=0.9 - drops,
        baseline=0.9,
        kept=np.array([[kept_count(g.width, p) for p in ratios] for g in groups]),
        widths={g.name: g.width for g in groups},
        stages={g.name: g.stage for g in groups},
        stage_groups=model.stages(),
        metric="accuracy",
        higher_is_better=True,
        criterion="l1",
        method="masked",
        input_shape=models.default_input_shape(model),
        model=model if with_model else None,
    )


# Paper §4.2 / §5: ResNet-56-B skips layers 16, 18, 20, 34, 38, 54 and prunes 60 / 30 / 10 % per stage.
R56_SENSITIVE = {16, 18, 20, 34, 38, 54}
R56_LIMIT = {1: 0.6, 2: 0.3, 3: 0.1}


def r56_drop(group: str, p: float) -> float:
    s, b = int(group[5]), int(group.split("_block")[1].split("_")[0])
    layer = 2 + 2 * ((s - 1) * 9 + b - 1)
    if layer in R56_SENSITIVE:
        return 0.05
    return 0.001 if p <= R56_LIMIT[s] + 1e-9 else 0.02 + p / 10


def test_stage_mode_reproduces_the_resnet56_b_preset(zoo):
    m, v = zoo("resnet56")
    sens = synthetic(m, r56_drop)
    s = suggest_ratios(sens, tolerance=0.01)
    assert s.prune_ratio == {"stage1": 0.6, "stage2": 0.3, "stage3": 0.1}
    assert set(s.skip) == {jp.presets.paper_layer(m, layer) for layer in R56_SENSITIVE}
    assert all(d <= 0.01 for d in s.predicted_drop.values())
    plan = jp.make_plan(m, v, **s.plan_kwargs())
    assert plan.new_widths == jp.preset("resnet56-B", m, v).new_widths
    # Exact counts from count_macs: the paper's ResNet-56-B (docs/paper.md §10).
    assert jp.count_macs(m.with_widths(plan.new_widths)).macs == 90_907_264
    assert s.macs_fraction == pytest.approx(90_907_264 / 125_485_696)
    assert "stage1: ratio 0.6 for 7 of 9 groups" in s.explanation
    assert str(s) == s.explanation


def test_sensitive_less_and_group_mode(zoo):
    m, _ = zoo("resnet56")

    def drop(g, p):  # like r56_drop, but the sensitive layers take 10 %
        base = r56_drop(g, p)
        return 0.001 if base == 0.05 and p <= 0.1 + 1e-9 else base

    less = suggest_ratios(synthetic(m, drop, with_model=False), tolerance=0.01, sensitive="less")
    assert less.skip == ()
    assert less.prune_ratio["stage1"] == 0.6 and less.prune_ratio["stage1_block8_conv1"] == 0.1
    assert less.macs_fraction is None  # no model, no counts
    per_group = suggest_ratios(synthetic(m, drop, with_model=False), tolerance=0.01, by="group")
    assert per_group.by == "group"
    assert per_group.prune_ratio["stage1_block1_conv1"] == 0.6
    assert per_group.prune_ratio["stage3_block9_conv1"] == 0.1
    assert per_group.skip == ()
    assert len(per_group.prune_ratio) == 27


def test_stage_named_only_when_the_scan_covers_it(zoo):
    m, _ = zoo("resnet20")
    full = synthetic(m, lambda g, p: 0.0, with_model=False)
    keep = [0, 1, 3, 4, 5, 6, 7, 8]  # stage1_block3_conv1 was not scanned
    part = SensitivityResult(
        **{
            **{f: getattr(full, f) for f in ("ratios", "baseline", "stage_groups", "metric", "higher_is_better")},
            **{f: getattr(full, f) for f in ("criterion", "method", "widths", "stages", "input_shape")},
            "groups": tuple(full.groups[i] for i in keep),
            "values": full.values[keep],
            "kept": full.kept[keep],
        }
    )
    s = suggest_ratios(part, tolerance=0.0)
    assert "stage1" not in s.prune_ratio
    assert s.prune_ratio["stage1_block1_conv1"] == 0.9 and s.prune_ratio["stage2"] == 0.9


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    drops=st.lists(st.floats(-0.02, 0.1, allow_nan=False), min_size=27, max_size=27),
    tol=st.floats(0.0, 0.08),
    by=st.sampled_from(["stage", "group"]),
    sensitive=st.sampled_from(["skip", "less"]),
)
def test_every_pruned_group_stays_within_tolerance(zoo, drops, tol, by, sensitive):
    m, _ = zoo("resnet20")
    table = np.array(drops).reshape(9, 3)
    names = [g.name for g in m.channel_groups() if g.prunable]
    sens = synthetic(m, lambda g, p: table[names.index(g), round(p * 10) - 3], (0.3, 0.4, 0.5), with_model=False)
    s = suggest_ratios(sens, tolerance=tol, by=by, sensitive=sensitive)
    plan_ratios = jp.resolve_ratios(m, s.prune_ratio, skip=s.skip)
    assert plan_ratios == {g: p for g, p in s.group_ratios.items() if p > 0}
    for g, p in plan_ratios.items():
        i = names.index(g)
        assert np.all(sens.drop[i, : round(p * 10) - 2] <= tol)  # within tolerance at p and every smaller ratio
    assert set(s.skip) <= set(names)


def test_budget_mode_on_vgg16_is_exact_and_cheapest(zoo):
    m, v = zoo("vgg16")
    # conv8-13 (the 512-wide layers) are free to prune, the rest costly: the paper's VGG-16 observation.
    sens = synthetic(m, lambda g, p: 0.0 if int(g[4:]) >= 8 else 0.05 + p)
    s = suggest_ratios(sens, target_macs=0.8)
    assert set(s.prune_ratio) <= {"stage4", "stage5"}
    plan = jp.make_plan(m, v, **s.plan_kwargs())
    macs = jp.count_macs(m.with_widths(plan.new_widths)).macs
    assert macs <= 0.8 * 313_463_808
    assert s.macs_fraction == pytest.approx(macs / 313_463_808)
    assert sum(s.predicted_drop.values()) == 0.0
    by_group = suggest_ratios(sens, target_params=0.5, by="group")
    pg = jp.make_plan(m, v, **by_group.plan_kwargs())
    params = jp.count_macs(m.with_widths(pg.new_widths)).params
    assert params <= 0.5 * 14_987_722
    assert by_group.params_fraction == pytest.approx(params / 14_987_722)
    assert all(int(g[4:]) >= 8 for g in by_group.prune_ratio)


def test_budget_mode_on_resnet56_with_tolerance(zoo):
    m, v = zoo("resnet56")
    sens = synthetic(m, r56_drop)
    s = suggest_ratios(sens, target_macs=0.85, tolerance=0.01)
    assert all(d <= 0.01 for d in s.predicted_drop.values())
    plan = jp.make_plan(m, v, **s.plan_kwargs())
    assert jp.count_macs(m.with_widths(plan.new_widths)).macs <= 0.85 * 125_485_696
    assert jp.resolve_ratios(m, s.prune_ratio, skip=s.skip) == {g: p for g, p in s.group_ratios.items() if p > 0}
    assert s.macs_fraction <= 0.85


def test_budget_out_of_reach_says_what_is_reachable(zoo):
    m, _ = zoo("resnet20")
    sens = synthetic(m, lambda g, p: 0.0, (0.1,))
    with pytest.raises(ValueError, match=r"macs budget 0.5 cannot be reached .* gives 0\.\d+ of the original"):
        suggest_ratios(sens, target_macs=0.5)
    with pytest.raises(ValueError, match="within the tolerance"):
        suggest_ratios(synthetic(m, lambda g, p: 1.0, (0.1,)), target_macs=0.99, tolerance=0.5)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ratios", "exc", "match"),
    [
        ((0.5, 0.3), ValueError, r"strictly increasing, got 0.5 then 0.3"),
        ((0.2, 0.2), ValueError, "strictly increasing"),
        ((0.5, 1.0), ValueError, r"must be in \[0, 1\), got 1.0"),
        ((-0.1,), ValueError, r"must be in \[0, 1\), got -0.1"),
        ((), ValueError, "at least one ratio"),
        ("0.5", TypeError, "sequence of floats"),
        ((0.1, "0.2"), TypeError, "real numbers"),
    ],
)
def test_bad_ratios(r20, ratios, exc, match):
    m, v, x, y = r20
    with pytest.raises(exc, match=match):
        sensitivity(m, v, data=(x, y), ratios=ratios)


def test_bad_evaluate_and_metric(r20):
    m, v, x, y = r20
    with pytest.raises(ValueError, match=r"evaluate must return a scalar, got an array of shape \(3,\)"):
        sensitivity(m, v, lambda mm, vv: np.zeros(3), ratios=(0.5,))
    with pytest.raises(TypeError, match="evaluate must return a real scalar"):
        sensitivity(m, v, lambda mm, vv: "good", ratios=(0.5,))
    with pytest.raises(TypeError, match="evaluate must be a callable"):
        sensitivity(m, v, 0.5)
    with pytest.raises(ValueError, match="metric must return a scalar per evaluation, got shape"):
        sensitivity(
            m, v, data=(x, y), metric=lambda logits, labels: logits[:, 0], ratios=(0.5,), groups=["stage1_block1_conv1"]
        )
    with pytest.raises(ValueError, match="unknown metric 'f1'; valid metrics: accuracy, loss"):
        sensitivity(m, v, data=(x, y), metric="f1")
    with pytest.raises(ValueError, match="metric applies to the fast path"):
        sensitivity(m, v, lambda mm, vv: 0.0, metric="loss")
    with pytest.raises(ValueError, match="has higher_is_better=False"):
        sensitivity(m, v, data=(x, y), metric="loss", higher_is_better=True)
    with pytest.raises(ValueError, match="integer class labels"):
        sensitivity(m, v, data=(x, y.astype(np.float32)), metric="accuracy")


def test_bad_data(r20):
    m, v, x, y = r20
    with pytest.raises(ValueError, match=r"data x is empty \(0 examples\)"):
        sensitivity(m, v, data=(x[:0], y[:0]))
    with pytest.raises(ValueError, match="same number of examples"):
        sensitivity(m, v, data=(x, y[:3]))
    with pytest.raises(TypeError, match=r"data must be a pair \(x, y\)"):
        sensitivity(m, v, data=x)
    with pytest.raises(ValueError, match="needs data=.* or evaluate"):
        sensitivity(m, v)
    with pytest.raises(ValueError, match=r"batch is empty"):
        activation_scores(m, v, x[:0], criterion="mean_l1")


def test_bad_criteria_and_groups(r20):
    m, v, x, y = r20
    valid = ", ".join(ALL_CRITERIA)
    with pytest.raises(ValueError, match=f"unknown criterion 'l3'; valid criteria: {valid}"):
        sensitivity(m, v, data=(x, y), criterion="l3")
    with pytest.raises(ValueError, match="'random' needs an explicit PRNG key"):
        sensitivity(m, v, data=(x, y), criterion="random")
    with pytest.raises(ValueError, match="'mean_std' is computed from activations and needs data"):
        sensitivity(m, v, lambda mm, vv: 0.0, criterion="mean_std")
    with pytest.raises(ValueError, match="valid activation criteria: mean_mean, mean_std, mean_l1, mean_l2, var_l2"):
        activation_scores(m, v, x, criterion="l1")
    with pytest.raises(ValueError, match="needs at least 2 images, got 1"):
        activation_scores(m, v, x[:1], criterion="var_l2")
    with pytest.raises(ValueError, match="unknown group 'conv9'; prunable groups: stage1_block1_conv1"):
        sensitivity(m, v, data=(x, y), groups=["conv9"])
    with pytest.raises(ValueError, match="group 'stage2_stream' is not prunable"):
        sensitivity(m, v, data=(x, y), groups=["stage2_stream"])
    with pytest.raises(ValueError, match="scores has no entry for scanned groups"):
        sensitivity(m, v, data=(x, y), scores={"stage1_block1_conv1": np.ones(16)})
    with pytest.raises(ValueError, match=f"unknown criterion 'l0'; valid criteria: {valid}"):
        compare_criteria(m, v, (x, y), criteria=("l1", "l0"))
    with pytest.raises(ValueError, match="must not repeat"):
        compare_criteria(m, v, (x, y), criteria=("l1", "l1"))
    with pytest.raises(ValueError, match="at least one criterion"):
        compare_criteria(m, v, (x, y), criteria=())
    with pytest.raises(ValueError, match="'random' needs an explicit PRNG key"):
        compare_criteria(m, v, (x, y), criteria=("random",))
    with pytest.raises(TypeError, match=r"unexpected keywords \['evaluate'\]"):
        compare_criteria(m, v, (x, y), evaluate=None)
    with pytest.raises(TypeError, match="not a prunable model"):
        sensitivity(object(), v, data=(x, y))


def test_bad_suggest_ratios_input(zoo, scan):
    m, _ = zoo("resnet20")
    sens = synthetic(m, lambda g, p: 0.0, with_model=False)
    with pytest.raises(ValueError, match=r"tolerance must be a finite number >= 0 .* got -0.01"):
        suggest_ratios(sens, tolerance=-0.01)
    with pytest.raises(TypeError, match="tolerance must be a real number"):
        suggest_ratios(sens, tolerance="1%")
    with pytest.raises(ValueError, match="needs tolerance= .* or a budget"):
        suggest_ratios(sens)
    with pytest.raises(ValueError, match="not both"):
        suggest_ratios(sens, target_macs=0.5, target_params=0.5)
    with pytest.raises(ValueError, match=r"target_macs must be a fraction of the original in \(0, 1\], got 1.5"):
        suggest_ratios(sens, target_macs=1.5)
    with pytest.raises(ValueError, match=r"target_params must be .* got 0.0"):
        suggest_ratios(sens, target_params=0.0)
    with pytest.raises(ValueError, match="needs the model: pass model="):
        suggest_ratios(sens, target_macs=0.5)
    with pytest.raises(ValueError, match="unknown by='layer'"):
        suggest_ratios(sens, tolerance=0.1, by="layer")
    with pytest.raises(ValueError, match="unknown sensitive='drop'"):
        suggest_ratios(sens, tolerance=0.1, sensitive="drop")
    with pytest.raises(ValueError, match=r"max_skip must be a fraction in \[0, 1\)"):
        suggest_ratios(sens, tolerance=0.1, max_skip=1.0)
    with pytest.raises(TypeError, match="sens must be a SensitivityResult"):
        suggest_ratios({"conv1": 0.5}, tolerance=0.1)
    with pytest.raises(KeyError, match="ratio 0.25 was not scanned"):
        scan.value("stage1_block1_conv1", 0.25)
    with pytest.raises(KeyError, match="group 'conv1' was not scanned"):
        scan.value("conv1", 0.3)


@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_interpolated_counts_equal_count_macs(zoo, name):
    from jaxprune.sensitivity.suggest import _Counter

    m, _ = zoo(name)
    groups = [g for g in m.channel_groups() if g.prunable]  # VGG: conv1-13 and fc1 (fc1 read through a flatten)
    counter = _Counter(m, models.default_input_shape(m), [g.name for g in groups])
    rng = np.random.default_rng(0)
    for _ in range(3):
        widths = {g.name: int(rng.integers(1, g.width + 1)) for g in groups}
        r = jp.count_macs(m.with_widths(widths))
        assert counter(widths) == (r.macs, r.params)
