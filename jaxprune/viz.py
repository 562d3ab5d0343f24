"""Figures: the paper's Fig. 2(a)/(b), criteria curves, weight distributions, widths and MACs before/after.

This module owns drawing only. Every function computes nothing new (scores come from `jaxprune.scoring`, curves from
`jaxprune.sensitivity`, counts from `jaxprune.flops`), returns a `matplotlib.figure.Figure` built without pyplot (no
global figure registry, safe headless), and saves it as PNG, SVG or PDF when given ``path=`` (the format follows the
suffix; written to a temporary file and renamed, so a crash never leaves half a file). matplotlib is imported inside
the functions (``pip install "jaxprune[viz]"``), so ``import jaxprune`` does not load it; this module is a submodule
(``from jaxprune import viz``), not re-exported. In a notebook a returned figure shows as the cell's value once the
inline backend is active (``%matplotlib inline``, or after importing pyplot).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxprune._atomic import atomic_write
from jaxprune.groups import ChannelGroup, flatten_variables
from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan
from jaxprune.scoring import filter_norms

__all__ = [
    "FIGURE_FORMATS",
    "plot_criteria",
    "plot_filter_norms",
    "plot_kernel_weights",
    "plot_macs",
    "plot_sensitivity",
    "plot_sorted_filter_norms",
    "plot_widths",
    "save_figure",
]

#: File suffixes `save_figure` writes.
FIGURE_FORMATS = ("png", "svg", "pdf")

_KEPT, _PRUNED = "tab:blue", "tab:red"


def _mpl():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is in the test extra
        raise ImportError('jaxprune.viz needs matplotlib; install it with: pip install "jaxprune[viz]"') from e
    return matplotlib, Figure


def _new_figure(figsize):
    _, Figure = _mpl()
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 150) -> None:
    """Saves a figure as PNG, SVG or PDF (by suffix), atomically (temporary file + `os.replace`).

    Args:
      fig: A matplotlib Figure.
      path: Target file; its suffix picks the format (``.png``, ``.svg``, ``.pdf``).
      dpi: Resolution for PNG.

    Raises:
      ValueError: an unsupported suffix (lists the valid ones).
      FileNotFoundError: the folder does not exist.
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"cannot save figure as {path!r}: the suffix must be one of {', '.join(FIGURE_FORMATS)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save figure: folder {folder} does not exist")
    with atomic_write(path, suffix=f".{fmt}") as f:
        fig.savefig(f, format=fmt, dpi=dpi)


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _axes(ax, figsize):
    if ax is None:
        fig = _new_figure(figsize)
        return fig, fig.add_subplot()
    if not hasattr(ax, "plot") or not hasattr(ax, "figure"):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return ax.figure, ax


def _pick_groups(model, groups, *, scored_only: bool = True) -> list[ChannelGroup]:
    """The model's prunable conv groups (default), or the named ones, in forward order."""
    all_groups = list(model.channel_groups())
    valid = [g for g in all_groups if g.prunable and (g.scored is not None or not scored_only)]
    if groups is None:
        return [g for g in valid if g.kind == "conv"]
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of group names, got {type(groups).__name__} {groups!r}")
    names = list(groups)
    by_name = {g.name: g for g in valid}
    for n in names:
        if n not in by_name:
            raise ValueError(f"unknown or non-prunable group {n!r}; valid groups: {', '.join(by_name)}")
    if not names:
        raise ValueError("groups must name at least one group")
    return [g for g in valid if g.name in names]


def _grid(n: int, ncols: int | None, panel=(2.6, 2.0)):
    ncols = min(n, 5) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    nrows = math.ceil(n / ncols)
    fig = _new_figure((panel[0] * ncols, panel[1] * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _check_plan(model, plan) -> PruningPlan | None:
    if plan is None:
        return None
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a jaxprune.PruningPlan or None, got {type(plan).__name__}")
    widths = {g.name: g.width for g in model.channel_groups()}
    for name in plan.keep:
        if name not in widths:
            raise ValueError(f"plan names unknown group {name!r}; model groups: {', '.join(widths)}")
        if plan.widths[name] != widths[name]:
            raise ValueError(
                f"plan does not match the model: group {name!r} has width {widths[name]} in the model, the plan "
                f"expects {plan.widths[name]}"
            )
    return plan


def _pruned_mask(plan: PruningPlan | None, g: ChannelGroup) -> np.ndarray:
    pruned = np.zeros((g.width,), bool)
    if plan is not None and g.name in plan.keep:
        pruned[:] = True
        pruned[list(plan.keep[g.name])] = False
    return pruned


# ----------------------------------------------------------------------------------------------------------------------
# Paper Fig. 2(a) and 2(b)
# ----------------------------------------------------------------------------------------------------------------------
def plot_sorted_filter_norms(
    model,
    variables: Mapping[str, Any],
    *,
    groups: Iterable[str] | None = None,
    criterion: str = "l1",
    ax=None,
    path: str | os.PathLike | None = None,
):
    """Paper Fig. 2(a): each layer's filter norms sorted (largest first) over the layer maximum, vs index / #filters.

    Steep curves mark layers with many small filters (robust to pruning); flat curves mark sensitive layers
    (paper §3.2).

    Args:
      model: A zoo model.
      variables: Its variables (only the scored kernels are read).
      groups: Group names; default every prunable conv group.
      criterion: ``l1`` (the paper's) or ``l2``.
      ax: Draw into this Axes instead of a new figure.
      path: Save the figure there (``.png``, ``.svg`` or ``.pdf``).

    Returns:
      The Figure: one line per group, labelled with the group name.

    Raises:
      ValueError: unknown groups, a criterion other than l1/l2, a bad `path` suffix.
      TypeError: a model without the protocol, `ax` not an Axes.
    """
    check_prunable_model(model)
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2' for sorted filter norms, got {criterion!r}")
    chosen = _pick_groups(model, groups)
    scores = filter_norms(variables, chosen, criterion=criterion)
    fig, ax = _axes(ax, (6.4, 4.4))
    cmap = _mpl()[0].colormaps["viridis"]
    for i, g in enumerate(chosen):
        s = np.sort(np.asarray(scores[g.name], np.float64))[::-1]
        top = s[0] if s[0] > 0 else 1.0
        ax.plot(np.arange(g.width) / g.width, s / top, label=g.name, color=cmap(i / max(1, len(chosen) - 1)))
    ax.set_xlabel("filter index / number of filters")
    ax.set_ylabel(f"filter {criterion.upper()} norm / layer maximum")
    ax.set_title(f"Sorted filter {criterion.upper()} norms (paper Fig. 2(a))")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="x-small", ncols=2 if len(chosen) > 12 else 1)
    return _finish(fig, path)


def _check_sens(sens):
    from jaxprune.sensitivity import SensitivityResult

    if not isinstance(sens, SensitivityResult):
        raise TypeError(f"sens must be a SensitivityResult (from jaxprune.sensitivity), got {type(sens).__name__}")
    return sens


def _curve(sens, i: int, drop: bool):
    """One group's points at the keep counts the scan applied: x = % of its filters actually removed.

    The unpruned network is the point at 0 %. Ratios that kept the same number of filters (``round_to`` rounds
    several ratios to one width; a small width floors two close ratios alike) evaluated the same network, so they are
    one point. Returns ``(xs, ys, asked)``: `asked` holds, per point, the ratios that landed on it.
    """
    width = int(sens.widths[sens.groups[i]])
    ys = sens.drop[i] if drop else sens.values[i]
    points: dict[int, tuple[float, list[float]]] = {width: (0.0 if drop else float(sens.baseline), [])}
    for j, p in enumerate(sens.ratios):
        k = int(sens.kept[i, j])
        if k in points:
            points[k][1].append(p)
        else:
            points[k] = (float(ys[j]), [p])
    kept = sorted(points, reverse=True)  # fewer kept = more removed: x increases
    xs = np.asarray([100.0 * (width - k) / width for k in kept])
    return xs, np.asarray([points[k][0] for k in kept], np.float64), [points[k][1] for k in kept]


def _label_merged(ax, xs, ys, asked, color) -> None:
    """Marks the points that stand for several asked ratios (or for a ratio that removed nothing) with those ratios."""
    for x, y, ps in zip(xs, ys, asked, strict=True):
        if len(ps) > 1 or (ps and x == 0.0):
            text = "asked " + ", ".join(f"{100 * p:g}" for p in ps) + " %"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize="xx-small", color=color)


def _pruned_label(sens, what: str = "filters pruned away") -> str:
    if sens.round_to > 1:
        return f"{what} (%, as applied: kept counts rounded to multiples of {sens.round_to})"
    return f"{what} (%)"


def plot_sensitivity(
    sens,
    *,
    groups: Iterable[str] | None = None,
    drop: bool = False,
    by_stage: bool = False,
    ax=None,
    path: str | os.PathLike | None = None,
):
    """Paper Fig. 2(b) (and Fig. 6/7 for ResNets): the metric vs the share of one layer's filters pruned, per layer.

    Each curve starts at 0 % with the unpruned metric. The x axis is the share of the layer's filters the scan
    actually removed (its kept counts, `SensitivityResult.kept`), so ratios that kept the same number of filters
    (``round_to`` rounds 40, 60 and 80 % of 16 filters all to 8) are one point, labelled with the ratios asked.
    A dashed horizontal line marks the unpruned value.

    Args:
      sens: A `jaxprune.sensitivity` result.
      groups: Groups to draw; default every scanned group.
      drop: Plot the drop (worse = higher) instead of the metric.
      by_stage: One panel per stage (the paper's ResNet figures) instead of one axes.
      ax: Draw into this Axes (not with `by_stage`).
      path: Save the figure there.

    Returns:
      The Figure: one line per group (labelled with its name) plus the dashed unpruned line in each axes.

    Raises:
      TypeError: `sens` is not a SensitivityResult, `ax` not an Axes.
      ValueError: groups that were not scanned, `ax` with `by_stage`, a bad `path` suffix.
    """
    sens = _check_sens(sens)
    names = list(sens.groups) if groups is None else list(groups)
    for n in names:
        if n not in sens.groups:
            raise ValueError(f"group {n!r} was not scanned; scanned groups: {', '.join(sens.groups)}")
    if not names:
        raise ValueError("groups must name at least one group")
    ylabel = (f"drop in {sens.metric}" if drop else sens.metric) + " (no retraining)"
    if by_stage:
        if ax is not None:
            raise ValueError("by_stage draws its own panels; do not pass ax")
        panels: dict[str, list[str]] = {}
        for n in names:
            panels.setdefault(sens.stages.get(n) or n, []).append(n)
        fig, axes = _grid(len(panels), min(len(panels), 3), panel=(4.2, 3.2))
        items = list(zip(panels.items(), axes, strict=True))
    else:
        fig, one = _axes(ax, (6.4, 4.4))
        items = [(("", names), one)]
    cmap = _mpl()[0].colormaps["viridis"]
    for (title, members), a in items:
        for k, n in enumerate(members):
            xs, ys, asked = _curve(sens, sens.groups.index(n), drop)
            color = cmap(k / max(1, len(members) - 1))
            a.plot(xs, ys, marker="o", markersize=3, label=n, color=color)
            _label_merged(a, xs, ys, asked, color)
        a.axhline(0.0 if drop else sens.baseline, color="gray", linestyle="--", linewidth=1, label="unpruned")
        a.set_xlabel(_pruned_label(sens))
        a.set_ylabel(ylabel)
        if title:
            a.set_title(title)
        a.legend(fontsize="x-small", ncols=2 if len(members) > 12 else 1)
    title = f"Single-layer sensitivity, criterion {sens.criterion} (paper Fig. 2(b))"
    if by_stage:
        fig.suptitle(title)
    else:
        items[0][1].set_title(title)
    return _finish(fig, path)


def plot_criteria(
    comparison,
    *,
    groups: Iterable[str] | None = None,
    ncols: int | None = None,
    path: str | os.PathLike | None = None,
):
    """Paper Fig. 8/9: per layer, the metric vs ratio under each criterion (smallest vs largest L1, activations...).

    Args:
      comparison: A `jaxprune.compare_criteria` result.
      groups: Groups to draw (one panel each); default every scanned group.
      ncols: Panels per row (default up to 5).
      path: Save the figure there.

    Returns:
      The Figure: one panel per group titled with its name, one line per criterion labelled with it.

    Raises:
      TypeError: `comparison` is not a CriteriaComparison.
      ValueError: groups that were not scanned, a bad `path` suffix.
    """
    from jaxprune.sensitivity import CriteriaComparison

    if not isinstance(comparison, CriteriaComparison):
        raise TypeError(f"comparison must be a CriteriaComparison, got {type(comparison).__name__}")
    first = next(iter(comparison.results.values()))
    names = list(first.groups) if groups is None else list(groups)
    for n in names:
        if n not in first.groups:
            raise ValueError(f"group {n!r} was not scanned; scanned groups: {', '.join(first.groups)}")
    if not names:
        raise ValueError("groups must name at least one group")
    fig, axes = _grid(len(names), ncols)
    for n, a in zip(names, axes, strict=True):
        for c, r in comparison.results.items():
            xs, ys, asked = _curve(r, r.groups.index(n), False)
            (line,) = a.plot(xs, ys, marker="o", markersize=2, label=c)
            _label_merged(a, xs, ys, asked, line.get_color())
        a.set_title(n, fontsize="small")
        a.set_xlabel(_pruned_label(first, "pruned"), fontsize="small")
        a.set_ylabel(first.metric, fontsize="small")
    axes[0].legend(fontsize="x-small")
    fig.suptitle("Criteria compared, one layer pruned at a time (paper Fig. 8/9)")
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------------------------------------------------------
def plot_filter_norms(
    model,
    variables: Mapping[str, Any],
    plan: PruningPlan | None = None,
    *,
    groups: Iterable[str] | None = None,
    criterion: str = "l1",
    bins: int = 20,
    ncols: int | None = None,
    path: str | os.PathLike | None = None,
):
    """Distribution of filter norms per layer, with the filters a plan prunes marked (stacked red bars + rug).

    Args:
      model: A zoo model.
      variables: Its variables.
      plan: A `PruningPlan` for this model; None draws every filter as kept.
      groups: Groups to draw, one panel each; default every prunable conv group.
      criterion: ``l1`` or ``l2``.
      bins: Histogram bins.
      ncols: Panels per row (default up to 5).
      path: Save the figure there.

    Returns:
      The Figure: one panel per group, titled ``name (pruned k/width)``, with a ``kept`` histogram and, where the
      plan prunes the group, a ``pruned`` histogram stacked on it and one tick per pruned filter.

    Raises:
      TypeError: a model without the protocol, `plan` not a PruningPlan.
      ValueError: unknown groups, a plan for other widths, a bad criterion or `path` suffix.
    """
    check_prunable_model(model)
    plan = _check_plan(model, plan)
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")
    chosen = _pick_groups(model, groups)
    scores = filter_norms(variables, chosen, criterion=criterion)
    fig, axes = _grid(len(chosen), ncols)
    for g, a in zip(chosen, axes, strict=True):
        s = np.asarray(scores[g.name], np.float64)
        pruned = _pruned_mask(plan, g)
        edges = np.histogram_bin_edges(s, bins=bins)
        if pruned.any():
            a.hist([s[~pruned], s[pruned]], bins=edges, stacked=True, color=[_KEPT, _PRUNED], label=["kept", "pruned"])
            a.plot(s[pruned], np.zeros(int(pruned.sum())), "|", color=_PRUNED, markersize=8)
        else:
            a.hist(s, bins=edges, color=_KEPT, label="kept")
        a.set_title(f"{g.name} (pruned {int(pruned.sum())}/{g.width})", fontsize="small")
        a.set_xlabel(f"filter {criterion.upper()} norm", fontsize="small")
    axes[0].set_ylabel("filters")
    axes[0].legend(fontsize="x-small")
    fig.suptitle(f"Filter {criterion.upper()} norms per layer" + (", pruned filters in red" if plan else ""))
    return _finish(fig, path)


def plot_kernel_weights(
    model,
    variables: Mapping[str, Any],
    plan: PruningPlan | None = None,
    *,
    groups: Iterable[str] | None = None,
    bins: int = 50,
    ncols: int | None = None,
    path: str | os.PathLike | None = None,
):
    """Distribution of kernel weights per layer, split into the weights of kept and of pruned filters.

    Both histograms are densities, so a pruned set concentrated near zero (the L1 criterion's choice) shows as a
    narrow red peak inside the wider blue one.

    Args:
      model: A zoo model.
      variables: Its variables.
      plan: A `PruningPlan` for this model; None draws every weight as kept.
      groups: Groups to draw, one panel each; default every prunable conv group.
      bins: Histogram bins.
      ncols: Panels per row (default up to 5).
      path: Save the figure there.

    Returns:
      The Figure: one panel per group, a ``kept`` histogram and, where the plan prunes the group, a ``pruned`` one.

    Raises:
      TypeError: a model without the protocol, `plan` not a PruningPlan.
      ValueError: unknown groups, a plan for other widths, a bad `path` suffix.
    """
    check_prunable_model(model)
    plan = _check_plan(model, plan)
    chosen = _pick_groups(model, groups)
    flat = flatten_variables(variables)
    fig, axes = _grid(len(chosen), ncols)
    for g, a in zip(chosen, axes, strict=True):
        k = np.moveaxis(np.asarray(flat[g.scored.path], np.float64), g.scored.axis, -1).reshape(-1, g.width)
        pruned = _pruned_mask(plan, g)
        edges = np.histogram_bin_edges(k, bins=bins)
        a.hist(k[:, ~pruned].ravel(), bins=edges, density=True, color=_KEPT, alpha=0.6, label="kept")
        if pruned.any():
            a.hist(k[:, pruned].ravel(), bins=edges, density=True, color=_PRUNED, alpha=0.6, label="pruned")
        a.set_title(f"{g.name} (pruned {int(pruned.sum())}/{g.width})", fontsize="small")
        a.set_xlabel("weight", fontsize="small")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="x-small")
    fig.suptitle("Kernel weights per layer" + (": kept vs pruned filters" if plan else ""))
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------------
# Before / after
# ----------------------------------------------------------------------------------------------------------------------
def _after_model(model, after):
    if isinstance(after, PruningPlan):
        _check_plan(model, after)
        return model.with_widths(after.new_widths)
    if getattr(after, "channel_groups", None) is None or type(after) is not type(model):
        raise TypeError(
            f"after must be a jaxprune.PruningPlan or a pruned model of the same class ({type(model).__name__}), "
            f"got {type(after).__name__}"
        )
    return after


def plot_widths(
    model,
    after,
    *,
    groups: Iterable[str] | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
):
    """Widths per group before and after pruning, as paired bars (paper Table 2's #Maps columns).

    Args:
      model: The unpruned model.
      after: A `PruningPlan` for it, or the pruned model (`jaxprune.prune`'s first result).
      groups: Groups to draw; default every prunable group (conv groups, `fc1`, prunable streams).
      ax: Draw into this Axes.
      path: Save the figure there.

    Returns:
      The Figure: two bar series labelled ``before`` and ``after``, one tick per group.

    Raises:
      TypeError: a model without the protocol, `after` of the wrong kind, `ax` not an Axes.
      ValueError: unknown groups, a plan for other widths, a bad `path` suffix.
    """
    check_prunable_model(model)
    new = _after_model(model, after)
    all_prunable = [g for g in model.channel_groups() if g.prunable]
    chosen = all_prunable if groups is None else _pick_groups(model, groups)
    new_w = new.group_widths()
    before = [g.width for g in chosen]
    after_w = [new_w[g.name] for g in chosen]
    fig, ax = _axes(ax, (max(6.4, 0.35 * len(chosen) + 2), 4.2))
    xs = np.arange(len(chosen))
    ax.bar(xs - 0.2, before, 0.4, label="before", color="lightgray", edgecolor="gray")
    ax.bar(xs + 0.2, after_w, 0.4, label="after", color=_KEPT)
    ax.set_xticks(xs, [g.name for g in chosen], rotation=90, fontsize="x-small")
    ax.set_ylabel("width (filters)")
    ax.set_title(f"Widths before/after pruning: {sum(before):,} -> {sum(after_w):,} filters")
    ax.legend(fontsize="small")
    return _finish(fig, path)


def plot_macs(
    model,
    after,
    *,
    input_shape: tuple[int, ...] | None = None,
    ax=None,
    path: str | os.PathLike | None = None,
):
    """MACs per conv/dense layer before and after pruning, from the analytic counter `jaxprune.flops.count_macs`.

    The title gives the totals and the reduction; MACs are conv + FC multiply-accumulates (the paper's FLOP).

    Args:
      model: The unpruned model.
      after: A `PruningPlan` for it, or the pruned model.
      input_shape: NHWC input shape; default the model's own, batch 1.
      ax: Draw into this Axes.
      path: Save the figure there.

    Returns:
      The Figure: two bar series labelled ``before`` and ``after``, one tick per conv/dense layer.

    Raises:
      TypeError: a model without the protocol, `after` of the wrong kind, `ax` not an Axes.
      ValueError: a plan for other widths, a bad input shape or `path` suffix.
    """
    from jaxprune.flops import count_macs

    check_prunable_model(model)
    new = _after_model(model, after)
    r0, r1 = count_macs(model, input_shape), count_macs(new, input_shape)
    rows0 = [r for r in r0.rows if r.kind in ("conv", "dense")]
    macs1 = {r.name: r.macs for r in r1.rows}
    before = [r.macs for r in rows0]
    after_m = [macs1.get(r.name, 0) for r in rows0]
    fig, ax = _axes(ax, (max(6.4, 0.3 * len(rows0) + 2), 4.2))
    xs = np.arange(len(rows0))
    ax.bar(xs - 0.2, before, 0.4, label="before", color="lightgray", edgecolor="gray")
    ax.bar(xs + 0.2, after_m, 0.4, label="after", color=_KEPT)
    ax.set_xticks(xs, [r.name for r in rows0], rotation=90, fontsize="x-small")
    ax.set_ylabel("MACs (conv + FC multiply-accumulates)")
    pct = 100.0 * (r0.macs - r1.macs) / r0.macs if r0.macs else 0.0
    ax.set_title(f"MACs per layer: {r0.macs:,} -> {r1.macs:,} ({pct:.2f} % fewer), input {tuple(r0.input_shape)}")
    ax.legend(fontsize="small")
    return _finish(fig, path)
