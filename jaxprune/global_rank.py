"""Global ranking and cost budgets: one threshold over every reached group, and plans sized to a MAC/param target.

This module owns what `make_plan(scope="global")` and the budget options (`target_macs`, `target_params`) mean:
how scores are made comparable across groups (`NORMALIZATIONS`), the per-group cap (`max_ratio`) and floor
(`min_keep`, `round_to`), and the exact cost model that finds the threshold by bisection. Scores come from `jaxprune.scoring` /
`jaxprune.criteria` (or the caller), MAC rows from one `jaxprune.count_macs` call on the original model; it never
slices variables and never counts a pruned model.

Cost model (exact for conv and dense layers). A conv row of the original model costs
``macs = out_elements * kh * kw * c_in_per_group`` and its kernel has shape ``(kh, kw, c_in_per_group, c_out)``; a
dense row costs ``rows * in * out`` with kernel ``(in, out)``. Removing channels shrinks the kernel's last two axes,
so the pruned row costs ``macs * (kept_in / in) * (kept_out / out)`` exactly (spatial sizes do not depend on widths).
Parameters are counted the same way per leaf of the `params` collection (every leaf, BN scale/bias included: the
`MacReport.params` convention). Kept lengths of an axis shared by several groups (a concatenation's consumer) add up
each group's kept channels. All arithmetic is in Python integers, so the predicted figures equal
`count_macs(pruned_model)` exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from jaxprune.groups import ChannelGroup, LeafView

__all__ = [
    "NORMALIZATIONS",
    "SCOPES",
    "Budget",
    "CostModel",
    "budget_meta",
    "global_counts",
    "global_scores",
    "layer_ratio_for_budget",
    "make_budgets",
    "normalize_scores",
]

#: `make_plan(scope=...)`: `layer` ranks within each group (the paper's, the default); `global` over all reached groups.
SCOPES = ("layer", "global")

#: `make_plan(normalize=...)` for `scope="global"` (required there, no default):
#: `fan_in` divides an L1 score by the number of weights it sums (mean |w| per weight) and an L2 score by its square
#: root (RMS weight), for the weight-norm criteria `l1`, `l2`, `largest_l1`; `mean` divides each group's scores by
#: their mean absolute value (scale-free, any criterion; Torch-Pruning's `normalizer='mean'`); `l2` divides them by their
#: Euclidean norm (Molchanov et al. 2017's layer-wise normalisation for Taylor scores); `none` compares raw scores
#: (network slimming's global threshold on |gamma|, Liu et al. 2017).
NORMALIZATIONS = ("fan_in", "mean", "l2", "none")

_FAN_IN_CRITERIA = ("l1", "l2", "largest_l1")


def check_scope_options(
    *,
    scope,
    normalize,
    max_ratio,
    target_macs,
    target_params,
    input_shape,
    prune_ratio,
    strategy: str,
) -> tuple[float, float | None, float | None]:
    """Validates the scope and budget options of `make_plan`; returns (max_ratio, target_macs, target_params).

    Raises:
      ValueError: an unknown scope or normalisation, `normalize` missing for `scope="global"` or given for
        `scope="layer"`, `max_ratio` outside (0, 1], a target outside (0, 1], both or neither of `prune_ratio` and a
        target, a mapping `prune_ratio` with `scope="global"`, `strategy="greedy"` with `scope="global"`, or
        `input_shape` without `target_macs`.
      TypeError: a non-real `max_ratio` or target.
    """
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
    if scope == "global":
        if normalize is None:
            raise ValueError(
                "scope='global' compares scores across groups and needs an explicit normalize=, one of "
                f"{', '.join(map(repr, NORMALIZATIONS))} (see jaxprune.global_rank.NORMALIZATIONS)"
            )
        if not isinstance(normalize, str) or normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(map(repr, NORMALIZATIONS))}")
        if strategy != "independent":
            raise ValueError(
                f"scope='global' ranks every group's unpruned scores at once; strategy {strategy!r} re-scores groups "
                "one after another and cannot share one threshold: use strategy='independent'"
            )
        if isinstance(prune_ratio, Mapping):
            raise ValueError(
                "scope='global' takes one float prune_ratio (the fraction of all reached filters removed) or a "
                "target; per-group ratios are scope='layer'. Use skip= to leave groups out"
            )
    elif normalize is not None:
        raise ValueError(
            f"normalize={normalize!r} applies to scope='global' only: layer-wise ranking compares filters within one "
            "group, where a per-group scale changes nothing"
        )
    max_ratio = _fraction(max_ratio, "max_ratio")
    target_macs = None if target_macs is None else _fraction(target_macs, "target_macs")
    target_params = None if target_params is None else _fraction(target_params, "target_params")
    has_target = target_macs is not None or target_params is not None
    if has_target and prune_ratio is not None:
        raise ValueError("pass either prune_ratio= or a target (target_macs= / target_params=), not both")
    if not has_target and prune_ratio is None:
        raise ValueError("make_plan needs prune_ratio= or a target (target_macs= and/or target_params=)")
    if input_shape is not None and target_macs is None:
        raise ValueError("input_shape= is used to count MACs for target_macs= only; pass target_macs= or drop it")
    return max_ratio, target_macs, target_params


def _fraction(v, what: str) -> float:
    """A real number in (0, 1]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a real number in (0, 1], got {type(v).__name__} {v!r}")
    v = float(v)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {v!r}")
    return v


def _snap(x: float, width: int) -> float | int:
    """`x` snapped to the nearest integer when within float error of it (as `kept_count` does)."""
    r = round(x)
    return r if abs(x - r) <= 1e-6 * width else x


def floor_count(width: int, max_ratio: float, *, round_to: int, min_keep: int) -> int:
    """The fewest filters a group may keep: at most ``width * max_ratio`` removed, at least `min_keep` kept,
    rounded up to a multiple of `round_to` (so the cap still holds), never above `width`."""
    lo = max(math.ceil(_snap(width * (1.0 - max_ratio), width)), min_keep)
    if round_to > 1:
        lo = -(-lo // round_to) * round_to
    return min(lo, width)


def normalize_scores(
    scores: Mapping[str, np.ndarray],
    groups: Sequence[ChannelGroup],
    *,
    normalize: str,
    criterion: str | None,
    flat: Mapping[tuple[str, ...], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Scores made comparable across groups (float64), by one of `NORMALIZATIONS`.

    Args:
      scores: ``{group: array[width]}`` (higher = more important).
      groups: The groups to normalise.
      normalize: `fan_in`, `mean`, `l2` or `none` (see `NORMALIZATIONS`).
      criterion: The criterion that made the scores, or None for precomputed ones (`fan_in` needs `l1`, `l2` or
        `largest_l1`).
      flat: Flattened variables (for `fan_in`: the scored kernels' shapes).

    Raises:
      ValueError: an unknown normalisation, `fan_in` for another criterion, or a group whose scores are all zero
        (`mean`, `l2`).

    Example:
      >>> import numpy as np
      >>> from jaxprune import AxisRef, ChannelGroup
      >>> k = AxisRef(("params", "c", "kernel"), 3)
      >>> g = ChannelGroup("c", 2, producers=(k,), consumers=(), scored=k)
      >>> normalize_scores({"c": np.array([1.0, 3.0])}, [g], normalize="mean", criterion="l1")["c"]
      array([0.5, 1.5])
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(map(repr, NORMALIZATIONS))}")
    if normalize == "fan_in" and criterion not in _FAN_IN_CRITERIA:
        what = "precomputed scores" if criterion is None else f"criterion {criterion!r}"
        raise ValueError(
            f"normalize='fan_in' divides a weight norm by its number of weights and is defined for criteria "
            f"{', '.join(_FAN_IN_CRITERIA)}, not for {what}; use normalize='mean', 'l2' or 'none'"
        )
    out: dict[str, np.ndarray] = {}
    for g in groups:
        s = np.asarray(scores[g.name], dtype=np.float64)
        if normalize == "none":
            out[g.name] = s
        elif normalize == "fan_in":
            ref = g.scored
            shape = np.shape(flat[ref.path])
            fan_in = int(np.prod(shape)) // shape[ref.axis] * ref.repeat  # weights one filter's norm runs over
            out[g.name] = s / (math.sqrt(fan_in) if criterion == "l2" else fan_in)
        else:
            d = float(np.mean(np.abs(s))) if normalize == "mean" else float(np.sqrt(np.sum(s * s)))
            if not d > 0:
                raise ValueError(f"normalize={normalize!r}: the scores of group {g.name!r} are all zero")
            out[g.name] = s / d
    return out


class CostModel:
    """Exact kept cost (MACs or params) of a model as a function of the kept count of each group.

    Each term is ``unit * prod(kept length of its grouped axes)``, where the kept length of an axis of original
    length ``n`` is ``n - sum(repeat * (width - kept))`` over the groups on it. Built once from the original model;
    evaluating it costs a few integer operations per term.
    """

    def __init__(self, terms: list[tuple[int | Fraction, list[tuple[int, list[tuple[str, int, int]]]]]], total: int):
        self.terms = terms
        self.total = total

    @staticmethod
    def _axis_forms(groups: Sequence[ChannelGroup]) -> dict[tuple[tuple[str, ...], int], list[tuple[str, int, int]]]:
        forms: dict[tuple[tuple[str, ...], int], list[tuple[str, int, int]]] = {}
        for g in groups:
            for ref in g.axes:
                forms.setdefault((ref.path, ref.axis), []).append((g.name, g.width, ref.repeat))
        return forms

    @classmethod
    def for_macs(cls, model, variables, groups: Sequence[ChannelGroup], *, input_shape=None) -> CostModel:
        """MACs from `count_macs` rows of the original model (conv and dense rows; counted once).

        Raises:
          ValueError: a conv/dense row whose kernel is not in `variables` or whose kernel shape differs from the row.
        """
        from jaxprune.flops import count_macs  # flops imports the model zoo; imported when a MAC target is used

        report = count_macs(model, input_shape)
        flat = LeafView(variables)
        forms = cls._axis_forms(groups)
        terms = []
        for row in report.rows:
            if row.kind not in ("conv", "dense") or row.macs == 0:
                continue
            path = ("params", *row.name.split("/"), "kernel")
            if path not in flat:
                raise ValueError(f"MAC row {row.name!r}: no kernel at {'/'.join(path)} in variables")
            shape = tuple(np.shape(flat[path]))
            if shape[-1] != row.out_width:
                raise ValueError(
                    f"MAC row {row.name!r}: kernel {'/'.join(path)} has shape {shape}, but the model counts "
                    f"{row.out_width} outputs: variables and model widths differ"
                )
            axes = [a for a in (len(shape) - 2, len(shape) - 1) if (path, a) in forms]
            terms.append(cls._term(row.macs, shape, path, axes, forms))
        return cls(terms, report.macs)

    @classmethod
    def for_params(cls, variables, groups: Sequence[ChannelGroup]) -> CostModel:
        """Elements of every `params` leaf (BN scale/bias included: the `MacReport.params` convention)."""
        from jaxprune.groups import flatten_variables

        forms = cls._axis_forms(groups)
        terms, total = [], 0
        for path, leaf in flatten_variables(variables).items():
            if path[0] != "params":
                continue
            shape = tuple(np.shape(leaf))
            size = int(np.prod(shape, dtype=np.int64)) if shape else 1
            total += size
            axes = [a for a in range(len(shape)) if (path, a) in forms]
            terms.append(cls._term(size, shape, path, axes, forms))
        return cls(terms, total)

    @staticmethod
    def _term(amount: int, shape, path, axes, forms):
        denom = 1
        for a in axes:
            denom *= shape[a]
        unit = amount // denom if amount % denom == 0 else Fraction(amount, denom)
        return unit, [(shape[a], forms[(path, a)]) for a in axes]

    def __call__(self, kept: Mapping[str, int]) -> int:
        """Kept cost for ``{group: kept count}`` (groups not named keep every channel)."""
        total = 0
        for unit, axes in self.terms:
            v = unit
            for length, claims in axes:
                for name, width, repeat in claims:
                    k = kept.get(name)
                    if k is not None:
                        length -= repeat * (width - k)
                v *= length
            total += v
        return math.floor(total)  # exact for int terms; a Fraction term (uneven axis split) rounds down


class Budget:
    """One cost limit: ``cost(kept) <= limit``, with the option that set it (for messages and `plan.meta`)."""

    def __init__(self, option: str, cost: CostModel, target: float, limit: int, *, removed: bool = False):
        self.option, self.cost, self.target, self.limit = option, cost, target, int(limit)
        self.removed = removed  # the option states the fraction removed (prune_ratio), not kept

    @classmethod
    def kept_fraction(cls, option: str, cost: CostModel, target: float) -> Budget:
        # floor(target * total) exactly (Fraction of the float as given): an integer cost meets it iff <= target*total.
        return cls(option, cost, target, math.floor(Fraction(target) * cost.total))

    def met(self, kept: Mapping[str, int]) -> bool:
        return self.cost(kept) <= self.limit

    def reachable(self, kept: Mapping[str, int]) -> str:
        c = self.cost(kept)
        value = 1 - c / self.cost.total if self.removed else c / self.cost.total
        return f"{self.option}={value:.6g} ({c:,} of {self.cost.total:,} kept)"


def _unreachable(budgets: Sequence[Budget], kept: Mapping[str, int], how: str) -> ValueError:
    parts = [
        f"{b.option}={b.target!r} cannot be met {how}: the closest reachable is {b.reachable(kept)}"
        for b in budgets
        if not b.met(kept)
    ]
    return ValueError("; ".join(parts))


def make_budgets(
    model,
    variables,
    groups: Sequence[ChannelGroup],
    reached: Sequence[str],
    *,
    target_macs: float | None,
    target_params: float | None,
    input_shape,
    prune_ratio: float | None = None,
    filter_limit: int | None = None,
) -> list[Budget]:
    """The budgets a `make_plan` call asks for: filters (a global `prune_ratio`), MACs and/or params kept.

    Args:
      model, variables, groups: The original model, its variables and its groups.
      reached: Names of the groups the plan may prune.
      target_macs, target_params: Fractions kept, or None.
      input_shape: Where MACs are counted (None: the model's own).
      prune_ratio: A global ratio (the fraction of reached filters removed), for messages and `plan.meta`.
      filter_limit: With `prune_ratio`: the most filters kept over the reached groups (`kept_count` of their total;
        `jaxprune.strategies` owns that rule).

    Raises:
      ValueError: no group is reached.
    """
    if not reached:
        what = "scope='global'" if prune_ratio is not None else "a target"
        raise ValueError(f"{what} reaches no group: the model has no prunable conv-filter group outside skip=")
    out = []
    if prune_ratio is not None:  # scope="global": the fraction of all reached filters removed
        by_name = {g.name: g for g in groups}
        terms = [(1, [(by_name[n].width, [(n, by_name[n].width, 1)])]) for n in reached]
        total = sum(by_name[n].width for n in reached)
        out.append(Budget("prune_ratio", CostModel(terms, total), float(prune_ratio), filter_limit, removed=True))
    if target_macs is not None:
        out.append(
            Budget.kept_fraction(
                "target_macs", CostModel.for_macs(model, variables, groups, input_shape=input_shape), target_macs
            )
        )
    if target_params is not None:
        out.append(Budget.kept_fraction("target_params", CostModel.for_params(variables, groups), target_params))
    return out


def budget_meta(budgets: Sequence[Budget], kept: Mapping[str, int]) -> dict[str, Any]:
    """The `plan.meta` entries of the budgets at these kept counts: targets, kept and total figures."""
    meta: dict[str, Any] = {}
    for b in budgets:
        what = {"prune_ratio": "filters", "target_macs": "macs", "target_params": "params"}[b.option]
        if b.option != "prune_ratio":
            meta[b.option] = b.target
        meta[f"kept_{what}"] = b.cost(kept)
        meta[f"total_{what}"] = b.cost.total
    return meta


def global_counts(
    scores: Mapping[str, np.ndarray],
    widths: Mapping[str, int],
    *,
    max_ratio: float,
    round_to: int,
    min_keep: int,
    budgets: Sequence[Budget],
) -> dict[str, int]:
    """One threshold over every group: the fewest filters removed, by the global ranking, that meet every budget.

    Filters are ranked by their (normalised) score over all groups at once; ties keep the earlier group and the
    lower index. Removing the first ``i`` filters of the ranking gives each group
    ``kept = clip(round_up(width - removed, round_to), floor, width)``, with `floor_count` (the `max_ratio` cap,
    `min_keep`) as the floor: a filter of a group at its floor stays. Every budget's cost only falls as ``i`` grows,
    so bisection finds the smallest ``i`` whose kept costs are all within their targets; then un-removing the
    ``i``-th filter (the next one by the ranking; with `round_to` > 1, the `round_to` filters its group then gets
    back) would exceed a target.

    Args:
      scores: Comparable scores ``{group: array[width]}``, groups in forward order.
      widths: Group widths.
      max_ratio: At most this fraction of a group's filters is removed.
      round_to: Kept counts are multiples of it (or the full width).
      min_keep: Every group keeps at least this many.
      budgets: The `Budget`s to meet.

    Returns:
      The kept count per group. Each group keeps its top filters by the same scores (`strategies.select_top`, lower
      index on a tie), which are the ones the ranking did not remove.

    Raises:
      ValueError: no threshold meets the budgets under the caps (the message names the closest reachable target).
    """
    names = list(scores)
    s = np.concatenate([np.asarray(scores[n], dtype=np.float64) for n in names])
    owner = np.concatenate([np.full(widths[n], i) for i, n in enumerate(names)])
    # Stable descending sort: keep-first order, ties to the earlier group and lower index; removal runs from the end.
    removal = np.argsort(-s, kind="stable")[::-1]
    removal_owner = owner[removal]
    positions = [np.flatnonzero(removal_owner == i) for i in range(len(names))]
    floors = [floor_count(widths[n], max_ratio, round_to=round_to, min_keep=min_keep) for n in names]

    def kept_at(i: int) -> dict[str, int]:
        out = {}
        for j, n in enumerate(names):
            k = widths[n] - int(np.searchsorted(positions[j], i))  # filters of group j among the first i removed
            if round_to > 1:
                k = -(-k // round_to) * round_to
            out[n] = min(max(k, floors[j]), widths[n])
        return out

    def met(i: int) -> bool:
        kept = kept_at(i)
        return all(b.met(kept) for b in budgets)

    n_all = int(s.size)
    if not met(n_all):
        raise _unreachable(
            budgets,
            kept_at(n_all),
            f"under max_ratio={max_ratio!r}, min_keep={min_keep}, round_to={round_to} (raise max_ratio, lower "
            "min_keep or round_to, or ask for less)",
        )
    lo, hi = 0, n_all  # met(hi) holds; find the smallest i with met(i)
    if met(0):
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if met(mid):
            hi = mid
        else:
            lo = mid
    return kept_at(hi)


def layer_ratio_for_budget(
    widths: Mapping[str, int],
    *,
    max_ratio: float,
    count: Callable[[int, float], int],
    budgets: Sequence[Budget],
    how: str = "",
    group_count: Mapping[str, Callable[[float], int]] | None = None,
) -> tuple[float, dict[str, int]]:
    """The smallest uniform prune ratio whose kept costs meet every budget, with kept counts from `count`.

    `count(width, ratio)` is the layer-wise rule (`strategies.kept_count` with the plan's `round_to` and `min_keep`),
    so kept counts change only at ratios ``1 - k / width``; the candidates are those up to `max_ratio`, bisected (costs
    only fall as the ratio grows). At the next smaller candidate some budget would be exceeded. `group_count`: group
    name -> ``count(ratio)`` for groups counted otherwise (a group in blocks keeps the same count in each:
    `strategies.balanced_kept_count`).

    Returns:
      ``(prune_ratio, kept)``: the ratio and the kept count per group.

    Raises:
      ValueError: no ratio up to `max_ratio` meets the budgets (names the closest reachable target; `how` is added).
    """
    cands = sorted({0.0} | {1.0 - k / w for w in widths.values() for k in range(1, w + 1)})
    cands = [p for p in cands if p <= max_ratio + 1e-12 and p < 1.0]

    own = dict(group_count or {})

    def kept_at(p: float) -> dict[str, int]:
        return {n: own[n](p) if n in own else count(w, p) for n, w in widths.items()}

    def met(p: float) -> bool:
        kept = kept_at(p)
        return all(b.met(kept) for b in budgets)

    if not met(cands[-1]):
        raise _unreachable(
            budgets,
            kept_at(cands[-1]),
            f"with one prune ratio <= max_ratio={max_ratio!r} in every group{how} (scope='global' can go further)",
        )
    lo, hi = -1, len(cands) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if met(cands[mid]):
            hi = mid
        else:
            lo = mid
    p = cands[hi]
    return p, kept_at(p)


def global_scores(
    groups: Sequence[ChannelGroup],
    reached: Sequence[str],
    flat: Mapping[tuple[str, ...], Any],
    scores: Mapping[str, np.ndarray] | None,
    *,
    criterion: str | None,
    key,
    normalize: str,
) -> dict[str, np.ndarray]:
    """Comparable scores of the reached groups for `scope="global"`: computed (or checked, when given), normalised.

    Raises:
      ValueError: given scores missing a reached group, of the wrong shape or non-finite; see `normalize_scores`.
    """
    from jaxprune import criteria
    from jaxprune.scoring import score_groups

    by_name = {g.name: g for g in groups}
    reached_groups = [by_name[n] for n in reached]
    if scores is None:
        if criterion in criteria.DATA_FREE_CRITERIA:
            scores = {g.name: criteria.score_group(flat, g, criterion=criterion) for g in reached_groups}
        else:
            index = {g.name: i for i, g in enumerate(groups)}
            scores = score_groups(flat, reached_groups, criterion=criterion, key=key, index=index, batch_with=groups)
    missing = [g.name for g in reached_groups if g.name not in scores]
    if missing:
        raise ValueError(f"scores has no entry for reached groups {missing}")
    for g in reached_groups:
        s = np.asarray(scores[g.name])
        if s.shape != (g.width,):
            raise ValueError(f"scores for group {g.name!r} must have shape ({g.width},), got {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"scores for group {g.name!r} hold NaN or inf")
    return normalize_scores(scores, reached_groups, normalize=normalize, criterion=criterion, flat=flat)
