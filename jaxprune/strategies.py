"""Strategies: the only place that turns ratios into counts and counts into kept index sets.

This module owns the rounding rule (docs/design.md §1), the meaning of ratio mappings (docs/design.md §3 "What a ratio
reaches"), and the independent and greedy strategies (paper §3.2). It reads scores from `jaxprune.scoring` and returns
a `PruningPlan`; it never touches variables beyond reading kernels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxprune.groups import ChannelGroup, LeafView, kept_indices
from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan
from jaxprune.scoring import CRITERIA, _check_criterion, expand_repeat, score_group, score_groups

__all__ = ["CRITERIA", "STRATEGIES", "kept_count", "make_plan", "plan_from_scores", "resolve_ratios", "select_top"]

STRATEGIES = ("independent", "greedy")


def _check_ratio(p, what: str) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"prune ratio for {what} must be a real number in [0, 1), got {type(p).__name__} {p!r}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"prune ratio for {what} must be in [0, 1), got {p!r}")
    return p


def _check_positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{what} must be an int >= 1, got {type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"{what} must be >= 1, got {v}")
    return int(v)


def kept_count(width: int, prune_ratio: float, *, round_to: int = 1, min_keep: int = 1) -> int:
    """Number of filters a group of `width` keeps at `prune_ratio` (docs/design.md §1).

    keep = floor(width * (1 - p)) (`int(n*(1-p))` as the paper's code does, without its float error: 10 filters at
    p = 0.8 keep 2, not 1, also for float32 or computed ratios such as 1 - 0.7); then, if `round_to` > 1, the nearest
    multiple of `round_to` (ties up, at least `round_to`); then at least `min_keep`; last, never above `width`.
    A ratio of 0 keeps every filter.

    Example:
      >>> [kept_count(16, 0.1), kept_count(64, 0.1), kept_count(32, 0.3), kept_count(10, 0.8)]
      [14, 57, 22, 2]
      >>> [kept_count(16, 0.6, round_to=8), kept_count(32, 0.3, round_to=8), kept_count(64, 0.1, round_to=8)]
      [8, 24, 56]
    """
    width = _check_positive_int(width, "width")
    p = _check_ratio(prune_ratio, "kept_count")
    round_to = _check_positive_int(round_to, "round_to")
    min_keep = _check_positive_int(min_keep, "min_keep")
    if p == 0.0:
        return width
    # Floor of width * (1 - p), snapping results within float error of an integer (10 * (1 - 0.8) is
    # 1.9999999999999996 in float64; float32 ratios are off by ~1e-8): the paper's int() without its float error.
    x = width * (1.0 - p)
    k = round(x) if abs(x - round(x)) <= 1e-6 * width else math.floor(x)
    if round_to > 1:
        k = max(((2 * k + round_to) // (2 * round_to)) * round_to, round_to)
    return min(max(k, min_keep), width)


def select_top(scores: np.ndarray, k: int) -> tuple[int, ...]:
    """The `k` highest-scoring indices, ascending. Stable: on a tie the lower index wins."""
    scores = np.asarray(scores)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return tuple(np.sort(order[:k]).tolist())


def resolve_ratios(model, prune_ratio, *, skip: Iterable[str] = ()) -> dict[str, float]:
    """Maps a float or a {group or stage name: ratio} mapping to a ratio per group (docs/design.md §3).

    A float, and a stage name, reach the prunable conv-filter groups only (never a stream, never `fc1`); streams and
    `fc1` are reached only when named. A group name overrides its stage. Groups not reached, and groups in `skip`,
    are absent from the result (not pruned).

    Raises:
      ValueError: unknown group or stage name (lists valid ones), a ratio for a non-prunable group, a ratio outside
        [0, 1).
      TypeError: a ratio that is not a real number, or `prune_ratio` of another kind.
    """
    groups = {g.name: g for g in model.channel_groups()}
    stages = model.stages()
    prunable = [n for n, g in groups.items() if g.prunable]
    skip = tuple(skip) if not isinstance(skip, str) else (skip,)
    for name in skip:
        if name not in groups:
            raise ValueError(f"skip names unknown group {name!r}; valid groups: {', '.join(prunable)}")
    out: dict[str, float] = {}
    if isinstance(prune_ratio, Mapping):
        by_group: dict[str, float] = {}
        for name, p in prune_ratio.items():
            if name in groups:
                if not groups[name].prunable:
                    raise ValueError(
                        f"group {name!r} is not prunable (kind {groups[name].kind!r}); prunable groups: {', '.join(prunable)}"
                    )
                by_group[name] = _check_ratio(p, f"group {name!r}")
            elif name in stages:
                p = _check_ratio(p, f"stage {name!r}")
                for g in stages[name]:
                    out[g] = p
            else:
                raise ValueError(
                    f"unknown group or stage {name!r}; valid stages: {', '.join(stages)}; valid groups: {', '.join(prunable)}"
                )
        out.update(by_group)  # a group name overrides its stage
    elif isinstance(prune_ratio, numbers.Real) and not isinstance(prune_ratio, bool):
        p = _check_ratio(prune_ratio, "every conv group")
        out = {n: p for n, g in groups.items() if g.prunable and g.kind == "conv"}
    else:
        raise TypeError(
            f"prune_ratio must be a float or a mapping from group or stage names to floats, got {type(prune_ratio).__name__}"
        )
    # Forward order, skips removed.
    return {n: out[n] for n in groups if n in out and n not in skip}


def _dependency_order(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Groups ordered so that a group whose channels a scored kernel reads comes before it (stable otherwise)."""
    readers: dict[tuple[str, ...], list[str]] = {}
    for g in groups:
        for ref in g.consumers:
            readers.setdefault(ref.path, []).append(g.name)
    deps = {g.name: {h for h in readers.get(g.scored.path, ()) if h != g.name} if g.scored else set() for g in groups}
    done: list[ChannelGroup] = []
    placed: set[str] = set()
    pending = list(groups)
    while pending:
        for g in pending:
            if deps[g.name] <= placed:
                done.append(g)
                placed.add(g.name)
                pending.remove(g)
                break
        else:  # a cycle: keep declaration order for the rest
            done.extend(pending)
            break
    return done


def plan_from_scores(
    groups: Iterable[ChannelGroup],
    ratios: Mapping[str, float],
    scores: Mapping[str, np.ndarray],
    *,
    round_to: int = 1,
    min_keep: int = 1,
    meta: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keeps the top `kept_count` filters of each group in `ratios`, by the given scores."""
    by_name = {g.name: g for g in groups}
    keep, widths = {}, {}
    for name, p in ratios.items():
        g = by_name.get(name)
        if g is None or not g.prunable:
            valid = ", ".join(n for n, h in by_name.items() if h.prunable)
            what = "unknown group" if g is None else "non-prunable group"
            raise ValueError(f"ratios name {what} {name!r}; prunable groups: {valid}")
        p = _check_ratio(p, f"group {name!r}")
        if name not in scores:
            raise ValueError(f"scores has no entry for group {name!r}")
        s = np.asarray(scores[name])
        if s.shape != (g.width,):
            raise ValueError(f"scores for group {name!r} must have shape ({g.width},), got {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"scores for group {name!r} hold NaN or inf")
        keep[name] = select_top(s, kept_count(g.width, p, round_to=round_to, min_keep=min_keep))
        widths[name] = g.width
    return PruningPlan(keep=keep, widths=widths, meta=dict(meta or {}))


def make_plan(
    model,
    variables: Mapping[str, Any],
    *,
    prune_ratio,
    strategy: str = "independent",
    criterion: str = "l1",
    key=None,
    scores: Mapping[str, np.ndarray] | None = None,
    skip: Iterable[str] = (),
    round_to: int = 1,
    min_keep: int = 1,
    meta: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Decides which filters every reached group keeps (paper §3.1-3.2, docs/design.md §1, §3).

    Args:
      model: A zoo model (or any object with `channel_groups()` and `with_widths()`).
      variables: Its variables (`params` at least; only the scored kernels are read).
      prune_ratio: Fraction of filters removed: a float for every conv-filter group, or a mapping from group or stage
        names (`stage1`...) to ratios; a group name overrides its stage. Streams and `fc1` only when named.
      strategy: `independent` (every group scored on the unpruned weights) or `greedy` (a group's score leaves out
        the kernel slices that read channels already removed upstream; paper §3.2, Fig. 3).
      criterion: One of `jaxprune.scoring.CRITERIA` (`l1` is the paper's).
      key: PRNG key for `criterion="random"`.
      scores: Precomputed scores `{group: array[width]}` (e.g. `jaxprune.activation_scores`) instead of a criterion.
      skip: Group names left unpruned (the paper's sensitive layers).
      round_to: Round kept counts to the nearest multiple (e.g. 8, for XLA:CPU speed).
      min_keep: Never keep fewer filters.
      meta: Extra JSON-ready entries recorded in `plan.meta` (e.g. a preset name).

    Returns:
      A `PruningPlan` naming every reached group with a ratio > 0.

    Raises:
      ValueError: bad ratio, unknown group/stage/strategy/criterion, `round_to` or `min_keep` < 1, NaN/inf weights.
      TypeError: a model without the protocol, or mistyped options.

    Example:
      >>> import jax, jax.numpy as jnp, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5})
      >>> plan.new_widths["stage1_block1_conv1"]
      8
    """
    check_prunable_model(model)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    round_to = _check_positive_int(round_to, "round_to")
    min_keep = _check_positive_int(min_keep, "min_keep")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    if scores is None:
        _check_criterion(criterion, key)
    elif not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping from group names to arrays, got {type(scores).__name__}")
    elif criterion != "l1" or key is not None:
        raise ValueError(
            f"scores= replaces the criterion: pass either scores= or criterion={criterion!r}/key=, not both"
        )
    groups = list(model.channel_groups())
    ratios = resolve_ratios(model, prune_ratio, skip=skip)
    ratios = {n: p for n, p in ratios.items() if p > 0}  # a ratio of 0 keeps every filter: nothing to record
    meta = {
        "strategy": strategy,
        "criterion": "precomputed" if scores is not None else criterion,
        "prune_ratio": {str(k): float(r) for k, r in prune_ratio.items()}
        if isinstance(prune_ratio, Mapping)
        else float(prune_ratio),
        "skip": list(skip),
        "round_to": round_to,
        "min_keep": min_keep,
        **dict(meta or {}),
    }
    if scores is not None:
        unknown = set(scores) - {g.name for g in groups}
        if unknown:
            raise ValueError(f"scores name unknown groups {sorted(unknown)}")
        missing = [n for n in ratios if n not in scores]
        if missing:
            raise ValueError(f"scores has no entry for reached groups {missing}")
    flat = LeafView(variables)
    if strategy == "independent":
        if scores is None:
            index = {g.name: i for i, g in enumerate(groups)}
            reached = [g for g in groups if g.name in ratios]
            # The model's other scored kernels ride along, so every ratio mapping reuses the model's one compiled
            # scorer (a new subset would compile anew, ~20-45 ms on CPU); scoring them costs far less than that.
            scores = score_groups(flat, reached, criterion=criterion, key=key, index=index, batch_with=groups)
        return plan_from_scores(groups, ratios, scores, round_to=round_to, min_keep=min_keep, meta=meta)
    # Greedy: decide groups in dependency order; each score leaves out inputs already removed (paper Fig. 3).
    decided: dict[str, tuple[int, ...]] = {}
    keep, widths = {}, {}
    by_name = {g.name: g for g in groups}
    index = {g.name: i for i, g in enumerate(groups)}
    for g in _dependency_order(groups):
        if g.name not in ratios:
            continue
        claims: dict[int, list] = {}
        for h_name, h_keep in decided.items():
            h = by_name[h_name]
            for ref in h.consumers:
                if ref.path == g.scored.path and len(h_keep) < h.width:
                    claims.setdefault(ref.axis, []).append((ref, h.width, h_keep))
        input_keep = []
        for axis, cl in claims.items():
            if len(cl) == 1 and cl[0][0].offset is None:
                input_keep.append((axis, expand_repeat(np.asarray(cl[0][2]), cl[0][1], cl[0][0].repeat)))
            else:  # several groups side by side on one input axis: one index set on the original layout
                input_keep.append((axis, kept_indices(np.shape(flat[g.scored.path])[axis], cl)))
        if scores is not None:
            s = np.asarray(scores[g.name])
            if input_keep:
                raise ValueError(
                    f"strategy 'greedy' re-scores group {g.name!r} on its remaining inputs, which precomputed scores "
                    "cannot do; use strategy='independent' with scores="
                )
        else:
            s = score_group(flat, g, criterion=criterion, key=key, index=index[g.name], input_keep=input_keep)
        sub = plan_from_scores([g], {g.name: ratios[g.name]}, {g.name: s}, round_to=round_to, min_keep=min_keep)
        keep[g.name], widths[g.name] = sub.keep[g.name], g.width
        decided[g.name] = sub.keep[g.name]
    ordered = [n for n in ratios if n in keep]  # report in forward order
    return PruningPlan(keep={n: keep[n] for n in ordered}, widths={n: widths[n] for n in ordered}, meta=meta)
