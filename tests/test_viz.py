"""Figures, rendered headless (Agg): what is drawn (lines, bars, labels, titles), not pixels."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import jaxprune as jp
from jaxprune import models, viz
from jaxprune.sensitivity import CriteriaComparison, SensitivityResult
from jaxprune.strategies import kept_count

RATIOS = (0.2, 0.5, 0.8)


def fake_scan(model, criterion="l1", shift=0.0, ratios=RATIOS, round_to=1) -> SensitivityResult:
    groups = [g for g in model.channel_groups() if g.prunable and g.kind == "conv"]
    values = np.array([[0.9 - shift - p * (i + 1) / 50 for p in ratios] for i in range(len(groups))])
    return SensitivityResult(
        groups=tuple(g.name for g in groups),
        ratios=ratios,
        values=values,
        baseline=0.9,
        kept=np.array([[kept_count(g.width, p, round_to=round_to) for p in ratios] for g in groups]),
        round_to=round_to,
        widths={g.name: g.width for g in groups},
        stages={g.name: g.stage for g in groups},
        stage_groups=model.stages(),
        metric="accuracy",
        higher_is_better=True,
        criterion=criterion,
        method="masked",
    )


@pytest.fixture(scope="module")
def vgg(zoo):
    m, v = zoo("vgg16")
    return m, v, jp.preset("vgg16-A", m, v)


@pytest.fixture(scope="module")
def r20(zoo):
    return zoo("resnet20")


def visible_axes(fig):
    return [a for a in fig.axes if a.get_visible()]


def test_sorted_filter_norms_fig2a(vgg):
    m, v, _ = vgg
    fig = viz.plot_sorted_filter_norms(m, v)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == [f"conv{i}" for i in range(1, 14)]
    assert ax.get_xlabel() == "filter index / number of filters"
    assert ax.get_ylabel() == "filter L1 norm / layer maximum"
    assert "Fig. 2(a)" in ax.get_title()
    x, y = lines[0].get_data()
    assert len(x) == 64 and x[0] == 0.0 and x[-1] == pytest.approx(63 / 64)
    assert y[0] == 1.0 and np.all(np.diff(y) <= 0)  # sorted, largest first, over the layer maximum
    l1 = np.abs(np.asarray(v["params"]["conv1"]["kernel"])).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(y, np.sort(l1)[::-1] / l1.max(), rtol=1e-6)
    two = viz.plot_sorted_filter_norms(m, v, groups=["conv1", "conv13"], criterion="l2")
    assert [ln.get_label() for ln in two.axes[0].get_lines()] == ["conv1", "conv13"]


def test_sensitivity_curves_fig2b(r20):
    m, _ = r20
    sens = fake_scan(m)
    fig = viz.plot_sensitivity(sens)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 9 + 1  # one per group + the unpruned line
    assert [ln.get_label() for ln in lines[:9]] == list(sens.groups)
    assert lines[-1].get_label() == "unpruned" and lines[-1].get_linestyle() == "--"
    x, y = lines[0].get_data()
    # x is the share actually removed: 16 filters at 20/50/80 % keep 12/8/3 (floor), so 25/50/81.25 %.
    np.testing.assert_allclose(x, [0, 25, 50, 81.25])
    np.testing.assert_allclose(y, [0.9, *sens.values[0]])
    assert ax.get_xlabel() == "filters pruned away (%)"
    assert ax.get_ylabel() == "accuracy (no retraining)"
    staged = viz.plot_sensitivity(sens, by_stage=True, drop=True)
    axes = visible_axes(staged)
    assert [a.get_title() for a in axes] == ["stage1", "stage2", "stage3"]
    assert [len(a.get_lines()) for a in axes] == [4, 4, 4]
    _, y = axes[0].get_lines()[0].get_data()
    np.testing.assert_allclose(y, [0.0, *sens.drop[0]])
    assert axes[0].get_ylabel() == "drop in accuracy (no retraining)"


def _kept_of_points(line, width: int) -> list[int]:
    x, _ = line.get_data()
    kept = np.asarray(width * (1 - np.asarray(x) / 100))
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-9)  # every x is a whole number of kept filters
    return [int(k) for k in np.round(kept)]


def test_sensitivity_points_are_the_keep_counts_applied(r20):
    # round_to=8 on ResNet-20: 16 filters at 20/40/60/80 % keep 16/8/8/8 and 32 filters keep 24/16/16/8, so the
    # scan evaluated the same network several times; the figure shows each kept count once, at the share removed.
    m, _ = r20
    sens = fake_scan(m, ratios=(0.2, 0.4, 0.6, 0.8), round_to=8)
    for fig in (viz.plot_sensitivity(sens), viz.plot_sensitivity(sens, by_stage=True, drop=True)):
        lines = [ln for a in visible_axes(fig) for ln in a.get_lines() if ln.get_label() in sens.groups]
        assert sorted(ln.get_label() for ln in lines) == sorted(sens.groups)
        for ln in lines:
            i = sens.groups.index(ln.get_label())
            width = sens.widths[ln.get_label()]
            kept = _kept_of_points(ln, width)
            assert len(kept) == len(set(kept)), (ln.get_label(), kept)
            assert kept == sorted({width, *map(int, sens.kept[i])}, reverse=True)
    (ax,) = viz.plot_sensitivity(sens, groups=["stage1_block1_conv1", "stage2_block1_conv1"]).axes
    assert _kept_of_points(ax.get_lines()[0], 16) == [16, 8]
    assert _kept_of_points(ax.get_lines()[1], 32) == [32, 24, 16, 8]
    # The merged points name the ratios asked: 20 % of 16 removed nothing, 40-80 % all kept 8; 40 and 60 % of 32 kept 16.
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["asked 20 %", "asked 40, 60 %", "asked 40, 60, 80 %"]
    assert ax.get_xlabel() == "filters pruned away (%, as applied: kept counts rounded to multiples of 8)"
    cmp = CriteriaComparison({"l1": sens, "l2": fake_scan(m, "l2", 0.1, ratios=(0.2, 0.4, 0.6, 0.8), round_to=8)})
    (panel,) = visible_axes(viz.plot_criteria(cmp, groups=["stage1_block1_conv1"]))
    assert [_kept_of_points(ln, 16) for ln in panel.get_lines()] == [[16, 8], [16, 8]]


def test_criteria_panels(r20):
    m, _ = r20
    cmp = CriteriaComparison({"l1": fake_scan(m), "largest_l1": fake_scan(m, "largest_l1", 0.3)})
    fig = viz.plot_criteria(cmp, groups=["stage1_block1_conv1", "stage2_block2_conv1"])
    axes = visible_axes(fig)
    assert [a.get_title() for a in axes] == ["stage1_block1_conv1", "stage2_block2_conv1"]
    assert [ln.get_label() for ln in axes[0].get_lines()] == ["l1", "largest_l1"]
    assert len(viz.plot_criteria(cmp).axes) == 10  # 9 panels in a 5-wide grid, one hidden
    assert len(visible_axes(viz.plot_criteria(cmp))) == 9


def test_filter_norm_distributions_mark_pruned_filters(vgg):
    m, v, plan = vgg
    fig = viz.plot_filter_norms(m, v, plan)
    axes = visible_axes(fig)
    assert len(axes) == 13
    assert axes[0].get_title() == "conv1 (pruned 32/64)"
    assert axes[2].get_title() == "conv3 (pruned 0/128)"
    assert axes[8].get_title() == "conv9 (pruned 256/512)"
    _, labels = axes[0].get_legend_handles_labels()
    assert labels == ["kept", "pruned"]
    # bar heights add up to the filter counts: kept + pruned stacked
    assert sum(p.get_height() for p in axes[0].patches) == 64
    assert len(axes[0].get_lines()[0].get_xdata()) == 32  # one rug tick per pruned filter
    (rug,) = axes[8].get_lines()
    l1 = np.abs(np.asarray(v["params"]["conv9"]["kernel"], np.float64)).sum(axis=(0, 1, 2))
    removed = list(plan.removed("conv9"))
    np.testing.assert_allclose(np.sort(rug.get_xdata()), np.sort(l1[removed]), rtol=1e-5)  # ticks at pruned filters
    assert np.max(l1[removed]) <= np.min(np.delete(l1, removed)) * (1 + 1e-5)  # the smallest are pruned
    assert viz.plot_filter_norms(m, v, groups=["conv3"]).axes[0].get_title() == "conv3 (pruned 0/128)"


def test_kernel_weight_distributions(vgg):
    m, v, plan = vgg
    fig = viz.plot_kernel_weights(m, v, plan, groups=["conv1", "conv2", "conv8"], ncols=2)
    axes = visible_axes(fig)
    assert [a.get_title() for a in axes] == ["conv1 (pruned 32/64)", "conv2 (pruned 0/64)", "conv8 (pruned 256/512)"]
    assert len(fig.axes) == 4
    assert axes[0].get_legend_handles_labels()[1] == ["kept", "pruned"]
    assert axes[1].get_legend() is None
    assert fig.get_suptitle() == "Kernel weights per layer: kept vs pruned filters"


def test_widths_before_after(vgg):
    m, v, plan = vgg
    fig = viz.plot_widths(m, plan)
    (ax,) = fig.axes
    before, after = ax.containers
    assert before.get_label() == "before" and after.get_label() == "after"
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"conv{i}" for i in range(1, 14)] + ["fc1"]
    assert [int(b.get_height()) for b in after] == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256, 512]
    assert [int(b.get_height()) for b in before][:2] == [64, 64]
    new_model, _ = jp.prune(m, v, plan)
    same = viz.plot_widths(m, new_model)
    assert [b.get_height() for b in same.axes[0].containers[1]] == [b.get_height() for b in after]


def test_macs_before_after(vgg):
    m, _, plan = vgg
    fig = viz.plot_macs(m, plan)
    (ax,) = fig.axes
    before, after = ax.containers
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    assert int(sum(b.get_height() for b in before)) == 313_463_808
    assert int(sum(b.get_height() for b in after)) == 206_279_680
    assert int(before[0].get_height()) == 1_769_472 and int(after[0].get_height()) == 884_736
    assert "313,463,808 -> 206,279,680 (34.19 % fewer)" in ax.get_title()


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_save_png_and_svg(r20, tmp_path, suffix):
    m, _ = r20
    target = tmp_path / f"fig.{suffix}"
    fig = viz.plot_sensitivity(fake_scan(m), path=target)
    head = target.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in target.read_bytes()[:2000]
    assert [p.name for p in tmp_path.iterdir()] == [f"fig.{suffix}"]  # no temporary file left
    assert fig.axes


def test_draw_into_given_axes(r20):
    m, v = r20
    from matplotlib.figure import Figure

    fig = Figure()
    a, b = fig.subplots(1, 2)
    assert viz.plot_sorted_filter_norms(m, v, ax=a) is fig
    assert viz.plot_sensitivity(fake_scan(m), ax=b) is fig
    assert len(a.get_lines()) == 9 and len(b.get_lines()) == 10


def test_bad_input(vgg, r20, tmp_path):
    m, v, plan = vgg
    rm, rv = r20
    with pytest.raises(ValueError, match=r"suffix must be one of png, svg, pdf"):
        viz.plot_sorted_filter_norms(m, v, path=tmp_path / "fig.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.save_figure(viz.plot_widths(m, plan), tmp_path / "missing" / "fig.png")
    with pytest.raises(ValueError, match="unknown or non-prunable group 'conv14'"):
        viz.plot_filter_norms(m, v, groups=["conv14"])
    with pytest.raises(ValueError, match="criterion must be 'l1' or 'l2'"):
        viz.plot_sorted_filter_norms(m, v, criterion="random")
    with pytest.raises(TypeError, match="sens must be a SensitivityResult"):
        viz.plot_sensitivity({"conv1": [0.9]})
    with pytest.raises(ValueError, match="group 'conv1' was not scanned"):
        viz.plot_sensitivity(fake_scan(rm), groups=["conv1"])
    with pytest.raises(ValueError, match="by_stage draws its own panels"):
        viz.plot_sensitivity(fake_scan(rm), by_stage=True, ax=object())
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        viz.plot_sensitivity(fake_scan(rm), ax=object())
    with pytest.raises(TypeError, match="plan must be a jaxprune.PruningPlan"):
        viz.plot_filter_norms(m, v, {"conv1": (0,)})
    with pytest.raises(ValueError, match="plan does not match the model: group 'conv1' has width 32"):
        viz.plot_kernel_weights(models.vgg16().with_widths({"conv1": 32}), v, plan)
    with pytest.raises(TypeError, match="after must be a jaxprune.PruningPlan or a pruned model of the same class"):
        viz.plot_widths(m, rm)
    with pytest.raises(TypeError, match="comparison must be a CriteriaComparison"):
        viz.plot_criteria(fake_scan(rm))
    with pytest.raises(ValueError, match="ncols must be an int >= 1"):
        viz.plot_filter_norms(rm, rv, ncols=0)
