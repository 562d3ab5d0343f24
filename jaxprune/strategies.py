"""Strategies: the only place that turns ratios into counts and counts into kept index sets.

This module owns the rounding rule (docs/design.md §1), the meaning of ratio mappings (docs/design.md §3 "What a ratio
reaches"), and the independent and greedy strategies (paper §3.2). It reads scores from `jaxprune.scoring` and returns
a `PruningPlan`; it never touches variables beyond reading kernels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune import criteria as _criteria
from jaxprune import global_rank as _global
from jaxprune._checks import check_touched
from jaxprune._models import as_prunable
from jaxprune.groups import ChannelGroup, LeafView, kept_indices
from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan, model_fingerprint
from jaxprune.scoring import CRITERIA, _check_criterion, expand_repeat, score_group, score_groups

__all__ = [
    "CRITERIA",
    "STRATEGIES",
    "balanced_kept_count",
    "kept_count",
    "make_plan",
    "plan_from_scores",
    "resolve_ratios",
    "select_balanced",
    "select_top",
]

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


def _check_skip(skip) -> tuple[str, ...]:
    if isinstance(skip, str):
        return (skip,)
    if not isinstance(skip, Iterable):
        raise TypeError(f"skip must be a group name or a sequence of group names, got {type(skip).__name__} {skip!r}")
    skip = tuple(skip)
    for name in skip:
        if not isinstance(name, str):
            raise TypeError(f"skip must hold group names (str), got {type(name).__name__} {name!r}")
    return skip


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
    """The `k` highest-scoring indices, ascending. Stable: on a tie the lower index wins.

    Raises:
      TypeError: `k` is not an int.
      ValueError: `scores` is not 1-D, or `k` is outside [0, len(scores)].
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"select_top needs 1-D scores, got shape {scores.shape}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"select_top: k must be an int, got {type(k).__name__} {k!r}")
    if not 0 <= k <= scores.shape[0]:
        raise ValueError(f"select_top: k must be in [0, {scores.shape[0]}] (the number of scores), got {k}")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return tuple(np.sort(order[:k]).tolist())


def balanced_kept_count(group: ChannelGroup, prune_ratio: float, *, round_to: int = 1, min_keep: int = 1) -> int:
    """Number of channels a group in blocks (`ChannelGroup.blocks`, e.g. GroupNorm groups) keeps at `prune_ratio`:
    the same count in every block.

    The ratio applies within each block: every block keeps ``kept_count(block width, prune_ratio)`` (the paper's floor,
    as for any group), at least ``ceil(min_keep / blocks)``. With `round_to` > 1 the total is `kept_count`'s
    (``kept_count(width, prune_ratio, round_to=..., min_keep=...)``), which must then split equally over the blocks.
    So the count moves in steps of `blocks`, and with few channels per block the floor removes more than the ratio
    says: 64 channels in 32 GroupNorm groups at 0.05 keep 32 (each group of 2 keeps ``floor(2 x 0.95) = 1``).

    Raises:
      ValueError: `round_to` gives a total that is no multiple of the block count (the message names the group,
        its blocks and the keep counts allowed).

    Example:
      >>> from jaxprune.groups import AxisRef, ChannelGroup
      >>> k = AxisRef(("params", "conv", "kernel"), 3)
      >>> g = ChannelGroup("conv", 16, (k,), (), k, blocks=4)
      >>> [balanced_kept_count(g, 0.5), balanced_kept_count(g, 0.3), balanced_kept_count(g, 0.3, round_to=8)]
      [8, 8, 8]
    """
    blocks = group.blocks
    size = group.width // blocks
    if round_to == 1:
        per = max(kept_count(size, prune_ratio), -(-_check_positive_int(min_keep, "min_keep") // blocks))
        return min(per, size) * blocks
    k = kept_count(group.width, prune_ratio, round_to=round_to, min_keep=min_keep)
    if k % blocks:
        allowed = ", ".join(str(blocks * j) for j in range(1, size + 1))
        raise ValueError(
            f"group {group.name!r} keeps an equal count in each of its {blocks} blocks ({blocks} x {size} channels), "
            f"but round_to={round_to} makes it keep {k} of {group.width}; allowed keep counts: {allowed} (use a "
            f"round_to that divides them, e.g. round_to={blocks}, or skip the group)"
        )
    return k


def select_balanced(group: ChannelGroup, scores: np.ndarray, k: int) -> tuple[int, ...]:
    """Balanced selection for a group in blocks (`ChannelGroup.blocks`, e.g. the groups of a GroupNorm): every block
    keeps ``k // blocks`` channels, its own top by its own scores (`select_top` within the block), ascending.

    Raises:
      ValueError: `k` is not a multiple of the block count (the message names the group, its blocks and the keep
        counts allowed).
    """
    blocks = group.blocks
    size = group.width // blocks
    if k % blocks:
        allowed = ", ".join(str(blocks * j) for j in range(1, size + 1))
        raise ValueError(
            f"group {group.name!r} keeps an equal count in each of its {blocks} blocks ({blocks} x {size} channels), "
            f"so it cannot keep {k} of {group.width}; allowed keep counts: {allowed}"
        )
    scores = np.asarray(scores)
    out: list[int] = []
    for b in range(blocks):
        out.extend(b * size + j for j in select_top(scores[b * size : (b + 1) * size], k // blocks))
    return tuple(out)


def resolve_ratios(model, prune_ratio, *, skip: Iterable[str] = ()) -> dict[str, float]:
    """Maps a float or a {group or stage name: ratio} mapping to a ratio per group (docs/design.md §3).

    A float, and a stage name, reach the prunable conv-filter groups only (never a stream, never `fc1`); streams and
    `fc1` are reached only when named. On a traced model outside the zoo a float also reaches the hidden dense
    groups (its `float_ratio_kinds`: MLP units, attention heads and head features). A group name overrides its stage. Groups not reached, and groups in `skip`,
    are absent from the result (not pruned).

    Raises:
      ValueError: unknown group or stage name (lists valid ones), a ratio for a non-prunable group, a ratio outside
        [0, 1).
      TypeError: a ratio that is not a real number, or `prune_ratio` of another kind.
    """
    groups = {g.name: g for g in model.channel_groups()}
    stages = model.stages()
    prunable = [n for n, g in groups.items() if g.prunable]
    skip = _check_skip(skip)
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
        kinds = tuple(getattr(model, "float_ratio_kinds", ("conv",)))  # a traced model adds its hidden dense groups
        out = {n: p for n, g in groups.items() if g.prunable and g.kind in kinds}
        if not out:
            raise ValueError(
                f"a float prune_ratio reaches the prunable {'/'.join(kinds)} groups and this model has none; name "
                f"groups in a mapping instead; groups: {', '.join(f'{n} ({g.kind})' for n, g in groups.items())}"
            )
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
    made_for: Mapping[str, Any] | None = None,
) -> PruningPlan:
    """Keeps the top `kept_count` filters of each group in `ratios`, by the given scores.

    `made_for` (`jaxprune.plan.model_fingerprint`) binds the plan to its model, as `make_plan` does.
    """
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
        if g.blocks == 1:
            keep[name] = select_top(s, kept_count(g.width, p, round_to=round_to, min_keep=min_keep))
        else:
            keep[name] = select_balanced(g, s, balanced_kept_count(g, p, round_to=round_to, min_keep=min_keep))
        widths[name] = g.width
    return PruningPlan(keep=keep, widths=widths, meta=dict(meta or {}), made_for=made_for)


def make_plan(
    model,
    variables: Mapping[str, Any] | None = None,
    *,
    prune_ratio=None,
    strategy: str = "independent",
    criterion: str = "l1",
    key=None,
    scores: Mapping[str, np.ndarray] | None = None,
    skip: Iterable[str] = (),
    round_to: int = 1,
    min_keep: int = 1,
    meta: Mapping[str, Any] | None = None,
    scope: str = "layer",
    normalize: str | None = None,
    max_ratio: float = 1.0,
    target_macs: float | None = None,
    target_params: float | None = None,
    input_shape: Sequence[int] | None = None,
    example_input=None,
    state=None,
) -> PruningPlan:
    """Decides which filters every reached group keeps (paper §3.1-3.2, docs/design.md §1, §3).

    Args:
      model: A zoo model (or any object with `channel_groups()` and `with_widths()`, e.g. a `TracedModel`), or a Flax
        NNX module: ``make_plan(module, prune_ratio=..., example_input=x)`` traces it (`trace_model`) and scores its
        own variables; ``prune(module, plan)`` then reuses that trace. A plain Linen module is traced on the spot
        the same way, ``make_plan(module, variables, prune_ratio=..., example_input=x)``. An Equinox module likewise
        (``make_plan(model, prune_ratio=..., example_input=x, state=state)``; docs/design.md §6).
      variables: Its variables (`params` at least; only the scored kernels are read). None for an NNX or Equinox
        module.
      prune_ratio: Fraction of filters removed: a float for every conv-filter group, or a mapping from group or stage
        names (`stage1`...) to ratios; a group name overrides its stage. Streams and `fc1` only when named. With
        `scope="global"` one float: the fraction of all reached filters removed (at most
        `kept_count(total, prune_ratio)` kept in all). Give it or a target, not both.
      strategy: `independent` (every group scored on the unpruned weights) or `greedy` (a group's score leaves out
        the kernel slices that read channels already removed upstream; paper §3.2, Fig. 3).
      criterion: One of `jaxprune.scoring.CRITERIA` (`l1` is the paper's) or `jaxprune.criteria.DATA_FREE_CRITERIA`
        (`fpgm`, `bn_scale`). `taylor` needs data: pass ``scores=jaxprune.taylor_scores(model, variables, x, y)``.
      key: PRNG key for `criterion="random"`.
      scores: Precomputed scores `{group: array[width]}` (e.g. `jaxprune.activation_scores`) instead of a criterion.
      skip: Group names left unpruned (the paper's sensitive layers).
      round_to: Round kept counts to the nearest multiple (e.g. 8, for XLA:CPU speed).
      min_keep: Never keep fewer filters.
      meta: Extra JSON-ready entries recorded in `plan.meta` (e.g. a preset name).
      scope: `layer` (the default, the paper's): each group keeps its own top `kept_count`. `global`: one ranking
        over every reached conv-filter group (those a float ratio reaches, less `skip`), one threshold, each group
        capped at `max_ratio` removed and at least `min_keep` (rounded up to `round_to`) kept; ties keep the earlier
        group and the lower index (`jaxprune.global_rank.global_counts`).
      normalize: Required for `scope="global"` (no default: the choice decides which layers lose filters, and
        papers differ): `fan_in` (L1 / weights per filter, L2 / its square root; for `l1`, `l2`, `largest_l1`),
        `mean` (each group divided by its mean |score|), `l2` (by its Euclidean norm, Molchanov et al. 2017) or
        `none` (raw). Not allowed with `scope="layer"`, where it would change nothing.
      max_ratio: In (0, 1]: the most of a group's filters removed. Global scope: at most ``width * max_ratio``.
        Layer scope: every ratio must be <= `max_ratio` (a target searches ratios up to it).
      target_macs: Fraction of the original model's MACs kept, in (0, 1] (`count_macs` convention, counted once at
        `input_shape`, then scaled exactly per layer). Global scope: the fewest filters removed by the ranking that
        keep at most this fraction, so that putting back the next filter by the ranking would exceed it. Layer
        scope: the smallest uniform ratio over the conv-filter groups that meets it (`plan.meta["prune_ratio"]`).
      target_params: The same for the fraction of parameters kept (every `params` leaf); with `target_macs`, both
        must hold.
      input_shape: NHWC shape at which MACs are counted for `target_macs` (default: the model's own).
      example_input: For an NNX module, an Equinox module (as it takes it: one example for
        the `eqx.nn` layers) or a plain Linen module (one without the prunable-model protocol): an example
        input (array or `jax.ShapeDtypeStruct`) to trace it with (`jaxprune.trace_model`). A model called with
        several inputs is traced first, ``jaxprune.trace_model(module, variables, x, t)``, and the `TracedModel`
        passed.
      state: For an Equinox module holding state (BatchNorm): its `eqx.nn.State`.

    Returns:
      A `PruningPlan` naming every reached group with a ratio > 0 (global scope: every reached group). With a
      target, `plan.meta` records the kept MACs/params reached (`kept_macs`, `total_macs`, ...).

    Raises:
      ValueError: an NNX or plain Linen module without `example_input` (the message says what to pass), bad ratio, unknown group/stage/strategy/criterion/scope/normalize, `round_to` or `min_keep` < 1,
        NaN/inf weights, `max_ratio` or a target outside (0, 1], a target that cannot be met under the caps (names
        the closest reachable one), `criterion="taylor"` without `scores=`, a group without BN for `bn_scale`.
      TypeError: a model without the protocol, or mistyped options.

    Example:
      >>> import jax, jax.numpy as jnp, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> plan = jp.make_plan(m, v, prune_ratio={"stage1": 0.5})
      >>> plan.new_widths["stage1_block1_conv1"]
      8
      >>> plan = jp.make_plan(m, v, target_macs=0.5, scope="global", normalize="fan_in", max_ratio=0.9)
      >>> plan.meta["kept_macs"] == jp.count_macs(m.with_widths(plan.new_widths)).macs <= 0.5 * jp.count_macs(m).macs
      True
    """
    # An NNX or Equinox module: traced (its trace kept for `prune`).
    model, variables = as_prunable(model, variables, example_input, what="make_plan", state=state)
    check_prunable_model(model)
    check_touched(model, variables, [g.scored.path for g in model.channel_groups() if g.scored], what="make_plan")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    round_to = _check_positive_int(round_to, "round_to")
    min_keep = _check_positive_int(min_keep, "min_keep")
    skip = _check_skip(skip)
    max_ratio, target_macs, target_params = _global.check_scope_options(
        scope=scope,
        normalize=normalize,
        max_ratio=max_ratio,
        target_macs=target_macs,
        target_params=target_params,
        input_shape=input_shape,
        prune_ratio=prune_ratio,
        strategy=strategy,
    )
    extra = scores is None and criterion in _criteria.DATA_FREE_CRITERIA  # fpgm, bn_scale
    if scores is None and criterion in _criteria.DATA_CRITERIA:
        raise ValueError(
            f"criterion {criterion!r} needs data: compute scores = jaxprune.taylor_scores(model, variables, x, labels)"
            " and pass make_plan(..., scores=scores)"
        )
    if scores is None and not extra and criterion not in CRITERIA:
        valid = CRITERIA  # every data-free criterion, fpgm and bn_scale included
        raise ValueError(
            f"unknown criterion {criterion!r}; valid criteria: {', '.join(valid)} (data-driven: pass scores=)"
        )
    if scores is None:
        if not extra:
            _check_criterion(criterion, key)
    elif not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping from group names to arrays, got {type(scores).__name__}")
    elif criterion != "l1" or key is not None:
        raise ValueError(
            f"scores= replaces the criterion: pass either scores= or criterion={criterion!r}/key=, not both"
        )
    groups = list(model.channel_groups())
    budget_meta: dict[str, Any] = {}
    if scope == "global" or prune_ratio is None:
        reached = {g.name: g.width for g in groups if g.name in resolve_ratios(model, 0.5, skip=skip)}  # conv groups
        in_blocks = [g for g in groups if g.name in reached and g.blocks > 1] if scope == "global" else []
        if in_blocks:
            g = in_blocks[0]
            raise ValueError(
                f"scope='global' ranks filters across groups, but group {g.name!r} keeps an equal count in each of "
                f"its {g.blocks} blocks (e.g. GroupNorm groups), which one ranking cannot promise; pass "
                f"skip=[{g.name!r}] or use scope='layer'"
            )
        limit = None
        if prune_ratio is not None:  # global: at most kept_count(all reached filters, p) kept
            prune_ratio = _check_ratio(prune_ratio, "scope='global' (the fraction of all reached filters removed)")
            limit = kept_count(sum(reached.values()), prune_ratio) if reached else None
        budgets = _global.make_budgets(
            model,
            variables,
            groups,
            list(reached),
            target_macs=target_macs,
            target_params=target_params,
            input_shape=input_shape,
            prune_ratio=prune_ratio,
            filter_limit=limit,
        )
        if scope == "layer":  # the smallest uniform ratio meeting the targets, then the usual layer-wise plan
            prune_ratio, kept = _global.layer_ratio_for_budget(
                reached,
                max_ratio=max_ratio,
                count=lambda w, p: kept_count(w, p, round_to=round_to, min_keep=min_keep),
                group_count={
                    g.name: lambda p, g=g: balanced_kept_count(g, p, round_to=round_to, min_keep=min_keep)
                    for g in groups
                    if g.name in reached and g.blocks > 1
                },
                budgets=budgets,
                how=f" (min_keep={min_keep}, round_to={round_to})",
            )
            budget_meta = _global.budget_meta(budgets, kept)
    ratios = resolve_ratios(model, prune_ratio, skip=skip) if scope == "layer" else {}
    over = {n: p for n, p in ratios.items() if p > max_ratio}
    if over:
        raise ValueError(f"prune ratios above max_ratio={max_ratio!r}: {over}")
    ratios = {n: p for n, p in ratios.items() if p > 0}  # a ratio of 0 keeps every filter: nothing to record
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping of extra entries, got {type(meta).__name__}")
    recorded = {
        "strategy": strategy,
        "criterion": "precomputed" if scores is not None else criterion,
        "prune_ratio": {str(k): float(r) for k, r in prune_ratio.items()}
        if isinstance(prune_ratio, Mapping)
        else (None if prune_ratio is None else float(prune_ratio)),
        "skip": list(skip),
        "round_to": round_to,
        "min_keep": min_keep,
        **({"scope": scope, "max_ratio": max_ratio} if scope != "layer" or max_ratio != 1.0 else {}),
        **budget_meta,
    }
    clash = sorted(set(meta or {}) & set(recorded))
    if clash:
        raise ValueError(
            f"meta cannot override what make_plan records: {clash}; pass those as arguments, or other keys in meta"
        )
    meta = {**recorded, **dict(meta or {})}
    made_for = model_fingerprint(model, variables)
    if scores is not None:
        unknown = set(scores) - {g.name for g in groups}
        if unknown:
            raise ValueError(f"scores name unknown groups {sorted(unknown)}")
        missing = [n for n in ratios if n not in scores]
        if missing:
            raise ValueError(f"scores has no entry for reached groups {missing}")
    flat = LeafView(variables)
    if scope == "global":  # one ranking over the reached groups; each keeps its top `kept` by the same scores
        normed = _global.global_scores(
            groups,
            list(reached),
            flat,
            scores,
            criterion=None if scores is not None else criterion,
            key=key,
            normalize=normalize,
        )
        kept = _global.global_counts(
            normed, reached, max_ratio=max_ratio, round_to=round_to, min_keep=min_keep, budgets=budgets
        )
        meta = {**meta, "normalize": normalize, **_global.budget_meta(budgets, kept)}
        return PruningPlan(
            keep={n: select_top(normed[n], k) for n, k in kept.items()}, widths=reached, meta=meta, made_for=made_for
        )
    if strategy == "independent":
        if extra:
            scores = {g.name: _criteria.score_group(flat, g, criterion=criterion) for g in groups if g.name in ratios}
        if scores is None:
            index = {g.name: i for i, g in enumerate(groups)}
            reached = [g for g in groups if g.name in ratios]
            # The model's other scored kernels ride along, so every ratio mapping reuses the model's one compiled
            # scorer (a new subset would compile anew, ~20-45 ms on CPU); scoring them costs far less than that.
            scores = score_groups(flat, reached, criterion=criterion, key=key, index=index, batch_with=groups)
        return plan_from_scores(
            groups, ratios, scores, round_to=round_to, min_keep=min_keep, meta=meta, made_for=made_for
        )
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
        if extra:
            s = _criteria.score_group(flat, g, criterion=criterion, input_keep=input_keep)
        elif scores is not None:
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
    return PruningPlan(
        keep={n: keep[n] for n in ordered}, widths={n: widths[n] for n in ordered}, meta=meta, made_for=made_for
    )
