"""Constants, the trace counter and argument checks shared by the sensitivity modules."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from jaxprune.groups import ChannelGroup
from jaxprune.scoring import CRITERIA

#: The paper's scan: 10 % to 90 % of a layer's filters (Fig. 2(b)).
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Activation-based criteria of paper §4.5, computed from the conv outputs before BN on a batch of data.
ACTIVATION_CRITERIA = ("mean_mean", "mean_std", "mean_l1", "mean_l2", "var_l2")

#: Every criterion `sensitivity` and `compare_criteria` accept: the data-free ones of `jaxprune.scoring`, then these.
ALL_CRITERIA = CRITERIA + ACTIVATION_CRITERIA

#: Built-in metrics of the fast path: name -> higher is better.
METRICS = {"accuracy": True, "loss": False}

_TRACES = {"scan": 0, "activations": 0}


def scan_trace_count() -> int:
    """How many times the fast scan's masked forward has been traced in this process (tests pin one per shape)."""
    return _TRACES["scan"]


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------
def _check_ratios(ratios) -> tuple[float, ...]:
    if isinstance(ratios, str | bytes) or not isinstance(ratios, Iterable):
        raise TypeError(f"ratios must be a sequence of floats in [0, 1), got {type(ratios).__name__} {ratios!r}")
    out = []
    for p in ratios:
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"ratios must be real numbers in [0, 1), got {type(p).__name__} {p!r}")
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"every ratio must be in [0, 1), got {p!r} in ratios {list(ratios)!r}")
        out.append(p)
    if not out:
        raise ValueError("ratios must hold at least one ratio in [0, 1)")
    for a, b in itertools.pairwise(out):
        if not b > a:
            raise ValueError(f"ratios must be strictly increasing, got {a!r} then {b!r} in {out!r}")
    return tuple(out)


def _check_criterion_any(criterion) -> None:
    if not isinstance(criterion, str) or criterion not in ALL_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(ALL_CRITERIA)}")


def _scan_groups(model, groups) -> list[ChannelGroup]:
    """The groups a scan covers: those a float ratio reaches (docs/design.md §3), or the named prunable ones."""
    all_groups = list(model.channel_groups())
    by_name = {g.name: g for g in all_groups}
    prunable = [g.name for g in all_groups if g.prunable and g.scored is not None]
    if groups is None:
        return [g for g in all_groups if g.prunable and g.kind == "conv"]
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of group names, got {type(groups).__name__} {groups!r}")
    names = []
    for g in groups:
        name = g.name if isinstance(g, ChannelGroup) else g
        if not isinstance(name, str):
            raise TypeError(f"groups must hold group names (str), got {type(name).__name__} {name!r}")
        if name not in by_name:
            raise ValueError(f"unknown group {name!r}; prunable groups: {', '.join(prunable)}")
        if name not in prunable:
            raise ValueError(
                f"group {name!r} is not prunable (kind {by_name[name].kind!r}); prunable groups: {', '.join(prunable)}"
            )
        if name in names:
            raise ValueError(f"group {name!r} is named twice in groups")
        names.append(name)
    if not names:
        raise ValueError("groups must name at least one group")
    return [g for g in all_groups if g.name in names]  # forward order


def _check_images(x, what: str) -> np.ndarray | jax.Array:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{what} must be an array of NHWC images, got {type(x).__name__}")
    if len(shape) < 2:
        raise ValueError(f"{what} must be a batch of images (N, H, W, C), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{what} is empty (0 examples); the scan needs at least one example")
    return x


def _check_data(data) -> tuple[Any, Any]:
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(f"data must be a pair (x, y) of images and labels, got {type(data).__name__}")
    x, y = data
    x = _check_images(x, "data x")
    if getattr(y, "shape", None) is None:
        y = np.asarray(y)
    if len(y.shape) == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"data x and y must hold the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    return x, y
