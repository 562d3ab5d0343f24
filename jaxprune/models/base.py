"""What every prunable model in the zoo shares: width bookkeeping, input validation, AxisRef helpers.

This module owns the `PrunableModel` protocol (channel_groups / with_widths / config); it does not build layers
(the family files do) and does not score or slice anything.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.models.layers import CONV_IMPLS

__all__ = [
    "PrunableMixin",
    "bn_refs",
    "cached_groups",
    "check_int",
    "check_prunable_model",
    "checked_widths",
    "first_conv_groups",
    "is_prunable_model",
    "stage_map",
]


def check_int(value, what: str, *, minimum: int = 1) -> int:
    """Validates an integer field (numpy ints accepted, bools and floats are not)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def bn_refs(name: str) -> tuple[AxisRef, ...]:
    """The four BN leaves of a BatchNorm named `name`: scale, bias, running mean and var."""
    return (
        AxisRef(("params", name, "scale"), 0),
        AxisRef(("params", name, "bias"), 0),
        AxisRef(("batch_stats", name, "mean"), 0),
        AxisRef(("batch_stats", name, "var"), 0),
    )


def stage_map(groups) -> dict[str, tuple[str, ...]]:
    """Stage name -> the conv-filter groups a stage ratio reaches (prunable, kind 'conv'), in forward order."""
    out: dict[str, list[str]] = {}
    for g in groups:
        if g.stage is not None and g.prunable and g.kind == "conv":
            out.setdefault(g.stage, []).append(g.name)
    return {k: tuple(v) for k, v in out.items()}


def checked_widths(groups, mapping: Mapping[str, int], owner: str) -> dict[str, int]:
    """Validates a `with_widths` mapping against groups; returns ``{name: int width}``.

    Raises:
      TypeError: a mapping that is not a mapping, or a width that is not an int.
      ValueError: an unknown or non-prunable group (lists the prunable ones), a width outside [1, current width],
        or one that is no multiple of the group's `blocks`.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"with_widths takes a mapping from group names to widths, got {type(mapping).__name__}")
    by_name = {g.name: g for g in groups}
    valid = [n for n, g in by_name.items() if g.prunable]
    new: dict[str, int] = {}
    for name, width in mapping.items():
        if name not in by_name:
            raise ValueError(f"unknown group {name!r} for {owner}; valid groups: {', '.join(valid)}")
        g = by_name[name]
        if not g.prunable:
            raise ValueError(f"group {name!r} is not prunable (kind {g.kind!r}); prunable groups: {', '.join(valid)}")
        if isinstance(width, bool) or not isinstance(width, int | np.integer):
            raise TypeError(f"width of group {name!r} must be an int, got {type(width).__name__} {width!r}")
        if not 1 <= width <= g.width:
            raise ValueError(f"width of group {name!r} must be in [1, {g.width}] (its current width), got {width}")
        if width % g.blocks:
            allowed = ", ".join(str(g.blocks * j) for j in range(1, g.width // g.blocks + 1))
            raise ValueError(
                f"width of group {name!r} must keep an equal count in each of its {g.blocks} blocks; got {width}, "
                f"allowed: {allowed}"
            )
        new[name] = int(width)
    return new


def first_conv_groups(blocks, widths) -> list[ChannelGroup]:
    """The ResNets' per-block groups: a block's first conv filters, its BN, and its second conv's inputs."""
    groups = []
    for s, b, i in blocks:
        p = f"stage{s}_block{b}"
        kernel = AxisRef(("params", f"{p}_conv1", "kernel"), 3)
        groups.append(
            ChannelGroup(
                name=f"{p}_conv1",
                width=widths[i],
                producers=(kernel, *bn_refs(f"{p}_bn1")),
                consumers=(AxisRef(("params", f"{p}_conv2", "kernel"), 2),),
                scored=kernel,
                kind="conv",
                stage=f"stage{s}",
            )
        )
    return groups


_GROUP_CACHE: dict[tuple, tuple[ChannelGroup, ...]] = {}


def cached_groups(fn):
    """Caches a family's `channel_groups` per configuration: the declaration is pure data of the fields, and plans,
    surgery and masks ask for it several times per call (it is on the prune hot path)."""

    @functools.wraps(fn)
    def wrapper(self):
        key = (type(self), *(getattr(self, f) for f in self._config_fields))
        hit = _GROUP_CACHE.get(key)
        if hit is None:
            if len(_GROUP_CACHE) > 1024:
                _GROUP_CACHE.clear()
            hit = _GROUP_CACHE[key] = tuple(fn(self))
        return hit

    return nn.nowrap(wrapper)


def is_prunable_model(model: Any) -> bool:
    """True if `model` follows the protocol: `channel_groups()` and `with_widths(mapping)`."""
    return callable(getattr(model, "channel_groups", None)) and callable(getattr(model, "with_widths", None))


def check_prunable_model(model: Any) -> None:
    """Raises TypeError naming the protocol when `model` does not follow it."""
    if not is_prunable_model(model):
        raise TypeError(
            f"{type(model).__name__} is not a prunable model: it needs channel_groups() and with_widths(mapping) "
            "(the jaxprune.models protocol); for your own model, trace it first: jaxprune.trace_model(model, "
            "variables, example_input) gives a TracedModel that every verb takes"
        )


class PrunableMixin:
    """Shared methods of the zoo's Linen classes. Subclasses define `family`, `channel_groups` and `_replace_widths`."""

    family: str = ""

    # -- to be provided by the family -------------------------------------------------------------------------
    def channel_groups(self) -> tuple[ChannelGroup, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _replace_widths(self, new: dict[str, int]):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------------
    def group_widths(self) -> dict[str, int]:
        """Current width of every group, by name, in forward order."""
        return {g.name: g.width for g in self.channel_groups()}

    def stages(self) -> dict[str, tuple[str, ...]]:
        """Stage name -> the conv-filter groups a stage ratio reaches (prunable, kind 'conv')."""
        return stage_map(self.channel_groups())

    def with_widths(self, mapping: Mapping[str, int]):
        """Returns a clone of this model with the named groups at new widths.

        Args:
          mapping: Group name -> new width (1 <= width <= current width). Groups not named keep their width.

        Raises:
          TypeError: a width that is not an int, or a mapping that is not a mapping.
          ValueError: an unknown or non-prunable group name, or a width out of range.
        """
        new = checked_widths(self.channel_groups(), mapping, f"{self.family}")
        if not new:
            return self
        return self._replace_widths(new)

    def config(self) -> dict[str, Any]:
        """A JSON-ready description from which `jaxprune.models.from_config` rebuilds this model."""
        cfg: dict[str, Any] = {"family": self.family}
        for field in self._config_fields:
            v = getattr(self, field)
            cfg[field] = list(v) if isinstance(v, tuple) else v
        cfg["dtype"] = jnp.dtype(self.dtype).name
        return cfg

    _config_fields: tuple[str, ...] = ()

    # -- validation helpers -----------------------------------------------------------------------------------------
    def _check_common(self, widths_what: str, widths, expected_len: int):
        if not isinstance(widths, tuple | list):
            raise TypeError(f"{self.family}: {widths_what} must be a tuple of ints, got {type(widths).__name__}")
        if len(widths) != expected_len:
            raise ValueError(
                f"{self.family}-{getattr(self, 'depth', '')}: {widths_what} needs {expected_len} entries, got {len(widths)}"
            )
        for i, w in enumerate(widths):
            check_int(w, f"{self.family}: {widths_what}[{i}]")
        check_int(self.num_classes, f"{self.family}: num_classes")
        check_int(self.in_channels, f"{self.family}: in_channels")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"{self.family}: conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")

    def _check_input(self, x, *, image_size: int | None = None):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"{self.family}: input must be NHWC of rank 4 (N, H, W, {self.in_channels}), got shape {shape}"
            )
        if shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.family}: input must have {self.in_channels} channels (NHWC, last axis), got shape {tuple(shape)}"
            )
        if image_size is not None and (shape[1], shape[2]) != (image_size, image_size):
            raise ValueError(
                f"{self.family}: input must be {image_size}x{image_size} (the model's image_size), got shape {tuple(shape)}"
            )
