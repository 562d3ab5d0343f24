"""Filter scores: one vector per channel group, from the group's scored kernel.

This module owns the data-free criteria (`l1`, `l2`, `random`, `largest_l1`; paper §3.1, §4.4). It never selects
filters (that is `jaxprune.strategies`) and never slices variables (that is `jaxprune.surgery`). Activation-based
criteria need data and live in `jaxprune.sensitivity`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import ChannelGroup, flatten_variables

__all__ = ["CRITERIA", "expand_repeat", "filter_norms", "l1_filter_norms", "score_group", "trace_count"]

#: Data-free criteria accepted by `l1_filter_norms(criterion=...)` and `make_plan(criterion=...)`.
CRITERIA = ("l1", "l2", "random", "largest_l1")

_TRACES = {"norm": 0}


def trace_count() -> int:
    """How many times the jitted norm has been traced in this process (one per kernel shape, dtype and axis)."""
    return _TRACES["norm"]


@functools.partial(jax.jit, static_argnames=("axis", "p"))
def _norm(kernel, axis: int, p: int):
    _TRACES["norm"] += 1  # runs at trace time only
    # Accumulate low-precision kernels in float32; float64 stays float64.
    k = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    reduce = tuple(i for i in range(k.ndim) if i != axis)
    if p == 1:
        return jnp.sum(jnp.abs(k), axis=reduce)
    return jnp.sqrt(jnp.sum(k * k, axis=reduce))


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
      ValueError: the scored kernel holds NaN or inf (names the layer), or the group has no scored kernel.
    """
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
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"group {group.name!r}: scored kernel {ref.name} holds NaN or inf (filters {bad[:8].tolist()}"
            f"{'...' if bad.size > 8 else ''}); refusing to pick filters from non-finite weights"
        )
    return -scores if criterion == "largest_l1" else scores


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
    norm, so selecting the top scores prunes the *largest* filters (the paper's §4.4 control).

    Args:
      variables: Variables dict (`params` at least).
      groups: Channel groups, e.g. ``model.channel_groups()``.
      criterion: One of `CRITERIA`.
      key: PRNG key, required for `random`.

    Returns:
      ``{group name: np.ndarray of shape (width,)}`` for every group with a scored kernel.

    Raises:
      ValueError: unknown criterion, `random` without key, a missing kernel, or NaN/inf in a kernel.
    """
    _check_criterion(criterion, key)
    flat = flatten_variables(variables)
    return {
        g.name: score_group(flat, g, criterion=criterion, key=key, index=i)
        for i, g in enumerate(groups)
        if g.scored is not None
    }


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
