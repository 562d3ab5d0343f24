"""Choosing prune ratios from a scan (`suggest_ratios`): the paper's manual step as a function."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune.sensitivity.result import SensitivityResult, _ratio_index


# ----------------------------------------------------------------------------------------------------------------------
# Suggesting ratios
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class RatioSuggestion:
    """Ratios chosen from a sensitivity scan, ready for `make_plan`.

    Attributes:
      prune_ratio: ``{stage or group name: ratio}`` for ``make_plan(prune_ratio=...)``; a group entry overrides its
        stage, zero ratios are left out.
      skip: Groups left unpruned (sensitive layers), for ``make_plan(skip=...)``.
      group_ratios: The effective ratio of every scanned group (0 for skipped ones).
      predicted_drop: Every pruned group's measured single-layer drop at its ratio.
      explanation: A text account of how every ratio was chosen.
      macs_fraction: Pruned / original MACs (conv + FC, `jaxprune.flops.count_macs`), or None without a model.
      params_fraction: Pruned / original parameters (`MacReport.params`), or None without a model.
      by: ``stage`` or ``group``.
    """

    prune_ratio: Mapping[str, float]
    skip: tuple[str, ...]
    group_ratios: Mapping[str, float]
    predicted_drop: Mapping[str, float]
    explanation: str
    macs_fraction: float | None = None
    params_fraction: float | None = None
    by: str = "stage"

    def plan_kwargs(self) -> dict[str, Any]:
        """``{"prune_ratio": ..., "skip": [...]}`` to splat into `jaxprune.make_plan`."""
        return {"prune_ratio": dict(self.prune_ratio), "skip": list(self.skip)}

    def __str__(self) -> str:
        return self.explanation


def _check_tolerance(tolerance) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"tolerance must be a real number >= 0 (a metric drop), got {type(tolerance).__name__}")
    t = float(tolerance)
    if not t >= 0.0 or math.isinf(t):
        raise ValueError(f"tolerance must be a finite number >= 0 (the allowed metric drop per layer), got {t!r}")
    return t


def _check_fraction(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a fraction of the original in (0, 1], got {type(v).__name__} {v!r}")
    v = float(v)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{what} must be a fraction of the original in (0, 1], got {v!r}")
    return v


def _safe_ratio(drops: np.ndarray, ratios: tuple[float, ...], tol: float) -> float:
    """Largest scanned ratio whose drop, and every smaller ratio's drop, is within `tol` (0 if none)."""
    best = 0.0
    for j, p in enumerate(ratios):
        d = drops[j]
        if not np.isfinite(d) or d > tol:
            break
        best = p
    return best


def _units(sens: SensitivityResult, by: str) -> list[tuple[str, list[str]]]:
    """(name, groups) decision units: a stage the scan fully covers, else single groups, in forward order."""
    if by == "group":
        return [(g, [g]) for g in sens.groups]
    units: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    scanned = set(sens.groups)
    for g in sens.groups:
        s = sens.stages.get(g)
        if s is not None and s in sens.stage_groups and set(sens.stage_groups[s]) <= scanned:
            if s not in seen:
                seen.add(s)
                units.append((s, [h for h in sens.groups if sens.stages.get(h) == s]))
        else:
            units.append((g, [g]))
    return units


class _Counter:
    """Exact MACs and params of any width configuration of the scanned groups, from one `count_macs` report.

    A conv or dense row costs in_dim x out_dim x a constant (MACs and kernel weights), its bias and a BN row scale
    with out_dim, and an axis's length is its unscanned channels plus ``width x repeat`` of every scanned group on it
    (several groups may sit side by side, `AxisRef.offset`). No layer reads and writes the same group, so rescaling
    each row is exact; `suggest_ratios` still checks its final answer against a direct `count_macs` call.
    """

    def __init__(self, model, input_shape, groups: Sequence[str]):
        from jaxprune.flops import count_macs

        self._count_macs = count_macs
        self.model, self.input_shape = model, input_shape
        by_name = {g.name: g for g in model.channel_groups()}
        self.width = {g: by_name[g].width for g in groups}
        report = count_macs(model, input_shape)
        self.base = (int(report.macs), int(report.params))
        # (module path..., leaf) -> {axis: [(group, repeat)]} for the scanned groups.
        where: dict[tuple[str, ...], dict[int, list[tuple[str, int]]]] = {}
        for g in groups:
            for ref in by_name[g].axes:
                if ref.path[0] == "params":
                    where.setdefault(ref.path[1:], {}).setdefault(ref.axis, []).append((g, ref.repeat))
        # Each term: (macs, params, input-axis spec, output-axis spec); a spec is (length, [(group, repeat)]) or None.
        self.terms: list[tuple[int, int, Any, Any]] = []
        for r in report.rows:
            module = tuple(r.name.split("/"))
            if r.kind in ("conv", "dense"):
                out_axis = 3 if r.kind == "conv" else 1
                axes = where.get((*module, "kernel"), {})
                spec_in = (int(r.in_width), axes[out_axis - 1]) if out_axis - 1 in axes else None
                spec_out = (int(r.out_width), axes[out_axis]) if out_axis in axes else None
                self.terms.append((int(r.macs), int(r.weights), spec_in, spec_out))
                self.terms.append((0, int(r.params - r.weights), None, spec_out))  # bias
            elif r.kind == "bn":
                axes = where.get((*module, "scale"), {})
                self.terms.append((0, int(r.params), None, (int(r.out_width), axes[0]) if 0 in axes else None))
            else:
                self.terms.append((0, int(r.params), None, None))

    def _dim(self, spec, widths: Mapping[str, int]) -> tuple[int, int]:
        if spec is None:
            return 1, 1
        length, members = spec
        new = length + sum((widths.get(g, self.width[g]) - self.width[g]) * rep for g, rep in members)
        return new, length

    def __call__(self, widths: Mapping[str, int]) -> tuple[int, int]:
        macs = params = 0
        for m, p, spec_in, spec_out in self.terms:
            n_in, d_in = self._dim(spec_in, widths)
            n_out, d_out = self._dim(spec_out, widths)
            num, den = n_in * n_out, d_in * d_out
            macs += m * num // den
            params += p * num // den
        return macs, params


def suggest_ratios(
    sens: SensitivityResult,
    *,
    tolerance: float | None = None,
    by: str = "stage",
    target_macs: float | None = None,
    target_params: float | None = None,
    max_skip: float = 0.25,
    sensitive: str = "skip",
    model=None,
    input_shape: tuple[int, ...] | None = None,
) -> RatioSuggestion:
    """Chooses prune ratios from a sensitivity scan: the paper's manual step (§3.2, §4.2) as a function.

    **Tolerance mode** (`tolerance` alone). A group's *safe ratio* is the largest scanned ratio at which its
    single-layer drop, and the drop at every smaller scanned ratio, is within `tolerance` (in the metric's units:
    0.01 = one point of accuracy). With ``by="stage"`` one ratio is chosen per stage (layers of one feature-map size
    behave alike, paper §3.2): the largest scanned ratio that at most ``floor(max_skip x stage size)`` of the stage's
    groups cannot take. Those sensitive groups are skipped (``sensitive="skip"``, the paper's presets) or pruned at
    their own safe ratio (``sensitive="less"``). A stage is named only when the scan covered all its groups; other
    groups are decided one by one. With ``by="group"`` every group gets its own safe ratio. Either way every pruned
    group's measured single-layer drop stays within `tolerance`.

    **Budget mode** (`target_macs` or `target_params`: what may remain, as a fraction of the original). Starting from
    nothing pruned, the step (raising one stage's or group's ratio to any larger scanned ratio) with the least
    increase of summed single-layer drop per MAC (or parameter) saved is taken until the budget is met, then steps
    that can be undone while staying within budget without raising the summed drop are undone (greedy, not a global
    optimum). A negative drop (pruning that happened to help) counts as zero: single-layer gains are within noise
    and do not add up. Counts are exact: the
    analytic counter `jaxprune.flops.count_macs` (conv + FC MACs; `MacReport.params`) at the widths that
    `make_plan` would produce. With `tolerance` as well, a group is only ever given ratios whose drop is within it
    (in stage mode, groups that cannot take the stage's ratio are skipped).

    Single-layer drops add up only approximately when several layers are pruned together; fine-tune afterwards, as
    the paper does.

    Args:
      sens: A `sensitivity` result.
      tolerance: Allowed single-layer metric drop, >= 0. Required unless a budget is given.
      by: ``stage`` (one ratio per stage, the paper's way) or ``group``.
      target_macs: MACs budget as a fraction of the original, in (0, 1].
      target_params: Parameter budget as a fraction of the original, in (0, 1].
      max_skip: Tolerance mode, ``by="stage"``: fraction of a stage's groups that may be left out, in [0, 1).
      sensitive: ``skip`` or ``less`` (see above).
      model: Model for the counts; default the scanned one.
      input_shape: NHWC input shape for MACs; default the scan's.

    Returns:
      A `RatioSuggestion`: ``make_plan(model, variables, **s.plan_kwargs())`` applies it.

    Raises:
      ValueError: tolerance < 0 or missing without a budget; both budgets; a budget outside (0, 1] or one no scanned
        ratio reaches (says the smallest reachable); unknown `by` or `sensitive`; `max_skip` outside [0, 1).
      TypeError: `sens` not a `SensitivityResult`, mistyped numbers.

    Example:
      >>> import numpy as np, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(8, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 8)
      >>> sens = jp.sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.25, 0.5))
      >>> s = jp.suggest_ratios(sens, tolerance=0.05)
      >>> plan = jp.make_plan(m, v, **s.plan_kwargs())
    """
    if not isinstance(sens, SensitivityResult):
        raise TypeError(f"sens must be a SensitivityResult (from jaxprune.sensitivity), got {type(sens).__name__}")
    if by not in ("stage", "group"):
        raise ValueError(f"unknown by={by!r}; valid: 'stage', 'group'")
    if sensitive not in ("skip", "less"):
        raise ValueError(f"unknown sensitive={sensitive!r}; valid: 'skip', 'less'")
    if isinstance(max_skip, bool) or not isinstance(max_skip, numbers.Real):
        raise TypeError(f"max_skip must be a fraction in [0, 1), got {type(max_skip).__name__}")
    if not 0.0 <= float(max_skip) < 1.0:
        raise ValueError(f"max_skip must be a fraction in [0, 1), got {max_skip!r}")
    tol = None if tolerance is None else _check_tolerance(tolerance)
    if target_macs is not None and target_params is not None:
        raise ValueError("give one budget: target_macs= or target_params=, not both")
    budget = None
    if target_macs is not None:
        budget = ("macs", _check_fraction(target_macs, "target_macs"))
    elif target_params is not None:
        budget = ("params", _check_fraction(target_params, "target_params"))
    if tol is None and budget is None:
        raise ValueError(
            "suggest_ratios needs tolerance= (allowed single-layer metric drop) or a budget (target_macs= / "
            "target_params=)"
        )
    model = model if model is not None else sens.model
    input_shape = tuple(input_shape) if input_shape is not None else sens.input_shape
    if budget is not None and model is None:
        raise ValueError("budget mode counts MACs and params and needs the model: pass model=")

    drops = sens.drop
    gi = {g: i for i, g in enumerate(sens.groups)}
    units = _units(sens, by)
    word = "higher" if sens.higher_is_better else "lower"
    lines = [
        f"Sensitivity of {sens.metric} ({word} is better; unpruned {sens.baseline:.4g}) to pruning one group at a time "
        f"by criterion {sens.criterion}: {len(sens.groups)} groups x {len(sens.ratios)} ratios "
        f"({', '.join(f'{p:g}' for p in sens.ratios)})."
    ]
    group_ratio: dict[str, float] = dict.fromkeys(sens.groups, 0.0)
    mapping: dict[str, float] = {}
    skip: list[str] = []

    if budget is None:
        lines.append(f"Tolerance: every pruned group's single-layer drop <= {tol:g}.")
        safe = {g: _safe_ratio(drops[gi[g]], sens.ratios, tol) for g in sens.groups}
        for name, members in units:
            if len(members) == 1 and name == members[0]:
                g = name
                if safe[g] > 0:
                    group_ratio[g] = mapping[g] = safe[g]
                    lines.append(
                        f"- {g}: ratio {safe[g]:g} (drop {drops[gi[g], _ratio_index(sens.ratios, safe[g])]:.4g})"
                    )
                else:
                    skip.append(g)
                    lines.append(f"- {g}: skipped (drop {drops[gi[g], 0]:.4g} > {tol:g} already at {sens.ratios[0]:g})")
                continue
            allowed = math.floor(max_skip * len(members))
            p_stage = 0.0
            for p in sens.ratios:
                if sum(safe[g] < p for g in members) <= allowed:
                    p_stage = p
            weak = [g for g in members if safe[g] < p_stage]
            if p_stage == 0.0:
                skip.extend(members)
                lines.append(
                    f"- {name}: not pruned: more than {allowed} of its {len(members)} groups exceed the tolerance "
                    f"at {sens.ratios[0]:g}"
                )
                continue
            mapping[name] = p_stage
            for g in members:
                group_ratio[g] = p_stage
            text = f"- {name}: ratio {p_stage:g} for {len(members) - len(weak)} of {len(members)} groups"
            if weak:
                parts = []
                for g in weak:
                    if sensitive == "less" and safe[g] > 0:
                        mapping[g] = group_ratio[g] = safe[g]
                        parts.append(f"{g} pruned less, at {safe[g]:g}")
                    else:
                        skip.append(g)
                        group_ratio[g] = 0.0
                        parts.append(f"{g} skipped (safe ratio {safe[g]:g})")
                text += "; sensitive: " + ", ".join(parts)
            lines.append(text)
    else:
        kind, frac = budget
        counter = _Counter(model, input_shape, list(sens.groups))
        idx = 0 if kind == "macs" else 1
        total0 = counter.base[idx]
        target = frac * total0
        lines.append(
            f"Budget: {kind} <= {frac:g} x original ({total0:,} -> at most {math.floor(target):,}), least summed "
            f"single-layer drop (greedy)" + (f", every pruned group's drop <= {tol:g}." if tol is not None else ".")
        )
        levels = (0.0, *sens.ratios)
        kept_at = {g: {0.0: sens.widths[g], **{p: int(sens.kept[gi[g], j]) for j, p in enumerate(sens.ratios)}}
                   for g in sens.groups}  # fmt: skip

        def drop_at(g: str, p: float) -> float:
            return 0.0 if p == 0.0 else float(drops[gi[g], _ratio_index(sens.ratios, p)])

        def unit_groups_at(members, p):  # {group: ratio} for a unit at level p (tolerance may exclude some)
            out = {}
            for g in members:
                q = p
                if tol is not None and p > 0 and not drop_at(g, p) <= tol:
                    q = 0.0
                out[g] = q
            return out

        unit_level = {name: 0.0 for name, _ in units}
        members_of = dict(units)

        def config():
            r = {}
            for name, lvl in unit_level.items():
                r.update(unit_groups_at(members_of[name], lvl))
            return r

        def total(ratios_by_group):
            return counter({g: kept_at[g][p] for g, p in ratios_by_group.items()})[idx]

        def cost(ratios_by_group):
            # A single-layer gain is within noise and does not add up: it counts as no drop.
            return sum(max(drop_at(g, p), 0.0) for g, p in ratios_by_group.items())

        def usable(name, lvl):
            if by == "group" and tol is not None and lvl > 0:
                return drop_at(name, lvl) <= tol
            return True

        current = config()
        cur_total, cur_cost = total(current), cost(current)
        while cur_total > target:
            best = None
            for name, _ in units:
                for lvl in levels:
                    if lvl <= unit_level[name] or not usable(name, lvl):
                        continue
                    old = unit_level[name]
                    unit_level[name] = lvl
                    cand = config()
                    unit_level[name] = old
                    t = total(cand)
                    saved = cur_total - t
                    if saved <= 0:
                        continue
                    dc = cost(cand) - cur_cost
                    score = (dc / saved, -saved)
                    if best is None or score < best[0]:
                        best = (score, name, lvl, t, cost(cand))
            if best is None:
                smallest = {name: max([lv for lv in levels if usable(name, lv)]) for name, _ in units}
                for name, lv in smallest.items():
                    unit_level[name] = lv
                reach = total(config()) / total0
                raise ValueError(
                    f"{kind} budget {frac:g} cannot be reached with the scanned ratios"
                    + (" within the tolerance" if tol is not None else "")
                    + f": the most pruning gives {reach:.4f} of the original"
                )
            _, name, lvl, cur_total, cur_cost = best
            unit_level[name] = lvl
        # Undo what the budget does not need (any step back that keeps the budget and does not raise the summed
        # drop), costliest units first; each accepted step lowers a level, so this ends.
        improved = True
        while improved:
            improved = False
            for name, _ in sorted(units, key=lambda u: -cost(unit_groups_at(u[1], unit_level[u[0]]))):
                for lvl in levels:
                    if lvl >= unit_level[name] or not usable(name, lvl):
                        continue
                    old = unit_level[name]
                    unit_level[name] = lvl
                    cand = config()
                    if total(cand) <= target and cost(cand) <= cur_cost:
                        cur_total, cur_cost = total(cand), cost(cand)
                        improved = True
                        break
                    unit_level[name] = old
        for name, members in units:
            lvl = unit_level[name]
            per = unit_groups_at(members, lvl)
            for g, q in per.items():
                group_ratio[g] = q
            if lvl == 0.0:
                lines.append(f"- {name}: not pruned")
                continue
            out = [g for g, q in per.items() if q == 0.0]
            if len(members) == 1 and name == members[0]:
                mapping[name] = lvl
                lines.append(f"- {name}: ratio {lvl:g} (drop {drop_at(name, lvl):.4g})")
            else:
                mapping[name] = lvl
                skip.extend(out)
                text = f"- {name}: ratio {lvl:g} (summed drop {sum(drop_at(g, q) for g, q in per.items()):.4g})"
                if out:
                    text += f"; skipped (drop above tolerance): {', '.join(out)}"
                lines.append(text)

    predicted = {g: float(drops[gi[g], _ratio_index(sens.ratios, p)]) for g, p in group_ratio.items() if p > 0}
    macs_frac = params_frac = None
    if model is not None and input_shape is not None:
        from jaxprune.flops import count_macs

        widths = {g: int(sens.kept[gi[g], _ratio_index(sens.ratios, p)]) for g, p in group_ratio.items() if p > 0}
        r0 = count_macs(model, input_shape)
        r1 = count_macs(model.with_widths(widths) if widths else model, input_shape)
        if budget is not None and counter(widths) != (r1.macs, r1.params):
            raise RuntimeError(  # pragma: no cover - the counts are multilinear in the widths
                f"internal error: interpolated counts {counter(widths)} differ from count_macs "
                f"{(r1.macs, r1.params)}; please report"
            )
        macs_frac = r1.macs / r0.macs
        params_frac = r1.params / r0.params
        lines.append(
            f"Result: MACs {r0.macs:,} -> {r1.macs:,} ({macs_frac:.4f} of the original; conv + FC "
            f"multiply-accumulates), params {r0.params:,} -> {r1.params:,} ({params_frac:.4f}; every params leaf)."
        )
    lines.append(f"Summed single-layer drop of the pruned groups: {sum(predicted.values()):.4g}.")
    return RatioSuggestion(
        prune_ratio=mapping,
        skip=tuple(skip),
        group_ratios=group_ratio,
        predicted_drop=predicted,
        explanation="\n".join(lines),
        macs_fraction=macs_frac,
        params_fraction=params_frac,
        by=by,
    )
