"""Filter scores: one vector per channel group, from the group's scored kernel.

This module owns the weight-norm criteria (`l1`, `l2`, `random`, `largest_l1`; paper §3.1, §4.4) and the registry
of every data-free criterion (`CRITERIA`): `fpgm` and `bn_scale` are computed by `jaxprune.criteria`, and every
function here dispatches to it for them. It never selects filters (that is `jaxprune.strategies`) and never slices
variables (that is `jaxprune.surgery`). Criteria that need data live in `jaxprune.criteria` (`taylor_scores`) and
`jaxprune.sensitivity` (activation criteria).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import criteria as _criteria
from jaxprune.groups import ChannelGroup, flatten_variables

__all__ = [
    "CRITERIA",
    "NORM_CRITERIA",
    "expand_repeat",
    "filter_norms",
    "l1_filter_norms",
    "score_group",
    "score_groups",
    "trace_count",
]

#: The weight-norm criteria computed here (paper §3.1, §4.4).
NORM_CRITERIA = ("l1", "l2", "random", "largest_l1")

#: Every data-free criterion, accepted by `filter_norms(criterion=...)`, `make_plan(criterion=...)`,
#: `jaxprune.sensitivity` and the CLI: the norms, then `jaxprune.criteria.DATA_FREE_CRITERIA` (`fpgm`, `bn_scale`).
CRITERIA = NORM_CRITERIA + _criteria.DATA_FREE_CRITERIA

_TRACES = {"norm": 0}


def trace_count() -> int:
    """How many times the per-kernel norm was traced in this process (once per kernel shape, dtype, axis and p)."""
    return _TRACES["norm"]


def _norm_body(kernel, axis: int, p: int):
    # Accumulate low-precision kernels in float32; float64 stays float64.
    k = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    reduce = tuple(i for i in range(k.ndim) if i != axis)
    if p == 1:
        return jnp.sum(jnp.abs(k), axis=reduce)
    return jnp.sqrt(jnp.sum(k * k, axis=reduce))


@functools.partial(jax.jit, static_argnames=("axis", "p"))
def _norm(kernel, axis: int, p: int):
    _TRACES["norm"] += 1  # runs at trace time only
    return _norm_body(kernel, axis, p)


@functools.partial(jax.jit, static_argnames=("axes", "p", "parts"))
def _norms(kernels: tuple, axes: tuple[int, ...], p: int, parts: tuple[tuple[int, ...], ...]):
    # Every kernel of one call in one dispatch: XLA runs the reductions side by side, with no Python between them,
    # and compiles once per mix of kernels instead of once per shape. Each reduction is the per-shape `_norm`, whose
    # trace jax caches per (shape, dtype, axis) across outer traces: a new mix traces only shapes not seen before.
    # The norms come back concatenated, one vector per part (the positions of the kernels with one result dtype,
    # `_parts`): one copy to the host instead of one per kernel (ResNet-56's 55 small kernels: `l1_filter_norms`
    # 0.74 -> 0.56 ms, docs/benchmarks.md). The optimization barrier keeps the reductions apart, so that XLA cannot
    # fuse them with the concatenation into one loop (an earlier concatenation without it was 20 % slower on VGG-16).
    norms = jax.lax.optimization_barrier([_norm(k, a, p) for k, a in zip(kernels, axes, strict=True)])
    return tuple(jnp.concatenate([norms[i] for i in part]) for part in parts)


def _parts(kernels: Sequence) -> tuple[tuple[int, ...], ...]:
    """Positions of `kernels` grouped by the dtype of their norm (`_norm_body`'s promotion of the dtype jax computes
    in: a float64 numpy kernel is float32 unless x64 is on), in order of first appearance."""
    by_dtype: dict = {}
    promoted: dict = {}
    for i, k in enumerate(kernels):
        d = k.dtype
        if d not in promoted:
            promoted[d] = jnp.promote_types(jax.dtypes.canonicalize_dtype(d), jnp.float32)
        by_dtype.setdefault(promoted[d], []).append(i)
    return tuple(tuple(v) for v in by_dtype.values())


def _batched_norms(kernels: list, axes: list[int], p: int) -> list[np.ndarray]:
    """Norms of many kernels: one jitted dispatch per placement, one batched copy back (traced once per shape).

    Kernels are sorted by (dtype, shape, axis) before the dispatch, so the same kernels in another order reuse the
    compiled program; kernels on different devices or shardings go out in separate dispatches (one jitted call
    cannot mix committed placements). `jax.device_get` starts every copy to the host before the first wait; the
    concatenated vectors are split on the host (views, no copy).
    """
    if len(kernels) == 1:
        return [np.asarray(_norm(kernels[0], axes[0], p))]
    sigs = [(k.dtype.char, k.dtype.itemsize, tuple(k.shape), a) for k, a in zip(kernels, axes, strict=True)]
    by_place: dict = {}
    for i, k in enumerate(kernels):
        by_place.setdefault(getattr(k, "sharding", None), []).append(i)
    calls = []
    for idx in by_place.values():
        idx = sorted(idx, key=sigs.__getitem__)
        parts = _parts([kernels[i] for i in idx])
        calls.append((idx, parts, _norms(tuple(kernels[i] for i in idx), tuple(axes[i] for i in idx), p, parts)))
    out: list = [None] * len(kernels)
    for (idx, parts, _), vectors in zip(calls, jax.device_get([c for _, _, c in calls]), strict=True):
        for part, vec in zip(parts, vectors, strict=True):
            members = [idx[j] for j in part]
            sizes = [kernels[i].shape[axes[i]] for i in members]
            for i, piece in zip(members, np.split(np.asarray(vec), np.cumsum(sizes)[:-1]), strict=True):
                out[i] = piece
    return out


def expand_repeat(idx: np.ndarray, width: int, repeat: int) -> np.ndarray:
    """Indices along an axis holding `repeat` blocks of `width` channels (a channel-last flatten)."""
    idx = np.asarray(idx, dtype=np.int64)
    if repeat == 1:
        return idx
    return (np.arange(repeat, dtype=np.int64)[:, None] * width + idx[None, :]).reshape(-1)


def _check_criterion(criterion: str, key) -> None:
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(CRITERIA)}")
    if criterion == "random" and key is None:
        raise ValueError("criterion 'random' needs an explicit PRNG key: key=jax.random.key(seed)")


def score_group(
    flat: Mapping[tuple[str, ...], Any],
    group: ChannelGroup,
    *,
    criterion: str = "l1",
    key=None,
    index: int = 0,
    input_keep: Sequence[tuple[int, np.ndarray]] = (),
) -> np.ndarray:
    """Scores one group's filters (higher = more important = kept first).

    Args:
      flat: Flattened variables (`flatten_variables`).
      group: The group; its `scored` kernel is read.
      criterion: One of `CRITERIA`.
      key: PRNG key for `random`; folded with `index` so each group draws independently.
      index: The group's position, for `random`.
      input_keep: (axis, kept indices) pairs: kernel slices reading removed channels are left out first (the
        greedy strategy, paper §3.2).

    Raises:
      ValueError: the scored kernel holds NaN or inf (names the layer), or the group has no scored kernel; for
        `bn_scale`, a group without exactly one BatchNorm after its filters.
    """
    _check_criterion(criterion, key)
    if criterion in _criteria.DATA_FREE_CRITERIA:
        return _criteria.score_group(flat, group, criterion=criterion, input_keep=input_keep)
    ref = group.scored
    if ref is None:
        raise ValueError(f"group {group.name!r} has no scored kernel (prunable=False)")
    if ref.path not in flat:
        raise ValueError(f"group {group.name!r}: scored kernel {ref.name} not found in variables")
    if criterion == "random":
        return np.asarray(jax.random.uniform(jax.random.fold_in(key, index), (group.width,)), dtype=np.float64)
    kernel = flat[ref.path]
    if input_keep:
        kernel = np.asarray(kernel)
        for axis, idx in input_keep:
            kernel = np.take(kernel, idx, axis=axis)
    scores = np.asarray(_norm(kernel, ref.axis, 2 if criterion == "l2" else 1))
    return _finish(group, scores, criterion)


def _finish(group: ChannelGroup, scores: np.ndarray, criterion: str) -> np.ndarray:
    ref = group.scored
    if ref.offset is not None or ref.repeat > 1:
        # The scored axis holds more than this group (a traced kernel split into groups, or `repeat` blocks per
        # channel): keep the group's span and combine a channel's blocks (L1 adds; L2 adds squares).
        start = ref.offset or 0
        span = scores[start : start + group.width * ref.repeat].reshape(ref.repeat, group.width)
        scores = np.sqrt(np.sum(span * span, axis=0)) if criterion == "l2" else np.sum(span, axis=0)
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"group {group.name!r}: scored kernel {group.scored.name} holds NaN or inf (filters {bad[:8].tolist()}"
            f"{'...' if bad.size > 8 else ''}); refusing to pick filters from non-finite weights"
        )
    return -scores if criterion == "largest_l1" else scores


def score_groups(
    flat: Mapping[tuple[str, ...], Any],
    groups: Sequence[ChannelGroup],
    *,
    criterion: str = "l1",
    key=None,
    index=None,
    batch_with: Sequence[ChannelGroup] = (),
) -> dict[str, np.ndarray]:
    """`score_group` for many groups at once: kernels of one shape share one jitted dispatch.

    Args:
      flat: Flattened variables.
      groups: Groups with a scored kernel.
      criterion: One of `CRITERIA`.
      key: PRNG key for `random`.
      index: Group name -> position (for `random`); default: position in `groups`.
      batch_with: More groups whose kernels ride along in the same dispatch, unscored and unchecked (e.g. every
        scored group of the model): then any subset of them reuses one compiled program instead of compiling a
        new one per subset. Kernels missing from `flat` are left out.
    """
    _check_criterion(criterion, key)
    index = index or {g.name: i for i, g in enumerate(groups)}
    if criterion in _criteria.DATA_FREE_CRITERIA:  # host-side scores of jaxprune.criteria: no dispatch to batch
        return {g.name: _criteria.score_group(flat, g, criterion=criterion) for g in groups}
    if criterion == "random":
        return {g.name: score_group(flat, g, criterion=criterion, key=key, index=index[g.name]) for g in groups}
    for g in groups:
        if g.scored is None:
            raise ValueError(f"group {g.name!r} has no scored kernel (prunable=False)")
        if g.scored.path not in flat:
            raise ValueError(f"group {g.name!r}: scored kernel {g.scored.name} not found in variables")
    names = {g.name for g in groups}
    extra = [h for h in batch_with if h.name not in names and h.scored is not None and h.scored.path in flat]
    every = [*groups, *extra]
    norms = _batched_norms(
        [flat[g.scored.path] for g in every], [g.scored.axis for g in every], 2 if criterion == "l2" else 1
    )
    return {g.name: _finish(g, s, criterion) for g, s in zip(groups, norms[: len(groups)], strict=True)}


def filter_norms(
    variables: Mapping[str, Any],
    groups: Iterable[ChannelGroup],
    *,
    criterion: str = "l1",
    key=None,
) -> dict[str, np.ndarray]:
    """Scores every filter of every group that has a scored kernel.

    `l1` is the paper's criterion (§3.1): per filter, the sum of |w| over (kh, kw, c_in) of the scored kernel, before
    BN, unnormalised. `l2` uses the Euclidean norm; `random` uniform draws from `key`; `largest_l1` is minus the L1
    norm, so selecting the top scores prunes the *largest* filters (the paper's §4.4 control). `fpgm` (He et al.,
    CVPR 2019) and `bn_scale` (Liu et al., ICCV 2017) are computed by `jaxprune.criteria` (`fpgm_scores`,
    `bn_scale_scores`), in float64.

    Args:
      variables: Variables dict (`params` at least).
      groups: Channel groups, e.g. ``model.channel_groups()``.
      criterion: One of `CRITERIA`.
      key: PRNG key, required for `random`.

    Returns:
      ``{group name: np.ndarray of shape (width,)}`` for every group with a scored kernel.

    Raises:
      ValueError: unknown criterion, `random` without key, a missing kernel, or NaN/inf in a kernel; for
        `bn_scale`, a group without exactly one BatchNorm after its filters (names the group).
    """
    _check_criterion(criterion, key)
    flat = flatten_variables(variables)
    groups = list(groups)
    index = {g.name: i for i, g in enumerate(groups)}
    return score_groups(flat, [g for g in groups if g.scored is not None], criterion=criterion, key=key, index=index)


def l1_filter_norms(variables: Mapping[str, Any], groups: Iterable[ChannelGroup]) -> dict[str, np.ndarray]:
    """Per-filter L1 norms of every group's scored kernel (paper §3.1); jitted, traced once per kernel shape.

    Args:
      variables: Variables dict.
      groups: Channel groups, e.g. ``model.channel_groups()``.

    Returns:
      ``{group name: np.ndarray[width]}``.

    Raises:
      ValueError: NaN or inf in a scored kernel (names the layer), or a missing kernel.

    Example:
      >>> import numpy as np
      >>> from jaxprune import AxisRef, ChannelGroup, l1_filter_norms
      >>> k = AxisRef(("params", "conv", "kernel"), 3)
      >>> g = ChannelGroup("conv", 2, producers=(k,), consumers=(), scored=k)
      >>> kernel = np.stack([np.full((3, 3, 1), 1.0), np.full((3, 3, 1), -2.0)], axis=-1)
      >>> l1_filter_norms({"params": {"conv": {"kernel": kernel}}}, [g])["conv"]
      array([ 9., 18.], dtype=float32)
    """
    return filter_norms(variables, groups, criterion="l1")
