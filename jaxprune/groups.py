"""Channel groups: which parameter axes share one channel index space.

This module owns the coupling data types (`AxisRef`, `ChannelGroup`) and their validation against real variables
(`check_groups`). It knows nothing about scores, ratios or slicing: a group only says *which* axes move together when
a channel is removed. Models declare their groups next to their layers; `check_groups` proves a declaration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "AxisRef",
    "ChannelGroup",
    "GROUP_KINDS",
    "check_groups",
    "flatten_variables",
    "groups_by_name",
    "kept_indices",
]

#: What a group is: the filters of a conv (`conv`), the hidden units of a dense layer (`fc`), or a residual
#: stream tied by shortcuts (`stream`). A float `prune_ratio` reaches `conv` groups only (docs/design.md §3).
GROUP_KINDS = ("conv", "fc", "stream")


@dataclasses.dataclass(frozen=True)
class AxisRef:
    """One axis of one leaf of a variables pytree.

    Attributes:
      path: Key path with the collection first, as `flax.traverse_util.flatten_dict` gives it,
        e.g. ``("params", "conv1", "kernel")``.
      axis: The axis of that leaf that indexes the group's channels (negative values are not allowed).
      repeat: For a consumer after a channel-last flatten: the axis holds `repeat` consecutive blocks of the group's
        width (flat index = block * width + channel).
      offset: None (the default) when the group owns the whole axis, whose length is then exactly
        ``width * repeat``. An int when the axis holds several groups side by side (a consumer of a concatenation,
        or a BN after one): the group's channels sit at ``[offset, offset + width * repeat)`` of the axis.
    """

    path: tuple[str, ...]
    axis: int
    repeat: int = 1
    offset: int | None = None

    def __post_init__(self):
        if not isinstance(self.path, tuple) or not self.path or not all(isinstance(p, str) for p in self.path):
            raise TypeError(f"AxisRef.path must be a non-empty tuple of str, got {self.path!r}")
        if not isinstance(self.axis, int) or isinstance(self.axis, bool) or self.axis < 0:
            raise ValueError(f"AxisRef.axis must be an int >= 0, got {self.axis!r} for path {self.path}")
        if not isinstance(self.repeat, int) or isinstance(self.repeat, bool) or self.repeat < 1:
            raise ValueError(f"AxisRef.repeat must be an int >= 1, got {self.repeat!r} for path {self.path}")
        if self.offset is not None and (
            not isinstance(self.offset, int) or isinstance(self.offset, bool) or self.offset < 0
        ):
            raise ValueError(f"AxisRef.offset must be None or an int >= 0, got {self.offset!r} for path {self.path}")

    @property
    def name(self) -> str:
        """The path joined with '/', for messages and tables."""
        return "/".join(self.path)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """One channel index space shared by several parameter axes.

    Attributes:
      name: Group name (docs/design.md §3 "Names"), e.g. ``conv3`` or ``stage2_block4_conv1`` or ``stage3_stream``.
      width: Number of channels.
      producers: Axes that *create* the channels (conv kernel output axis, BN scale/bias/mean/var, a dense bias).
      consumers: Axes that *read* the channels (the next layer's input axis).
      scored: The producer axis whose kernel is scored (the filters' output axis), or None for a non-prunable group.
      prunable: Whether the group may be pruned. CIFAR ResNet streams (parameter-free, zero-padded shortcuts) are not.
      kind: One of `GROUP_KINDS`.
      stage: Stage name used by ratio mappings (``stage1`` ...), or None.
      blocks: The number of equal blocks the channels fall into, each of ``width // blocks`` consecutive channels
        (the groups of a GroupNorm over them). A plan keeps the same count in every block, each block choosing its
        own channels by its own scores (balanced selection); 1 (the default) for no blocks.
    """

    name: str
    width: int
    producers: tuple[AxisRef, ...]
    consumers: tuple[AxisRef, ...]
    scored: AxisRef | None
    prunable: bool = True
    kind: str = "conv"
    stage: str | None = None
    blocks: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"ChannelGroup.name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise ValueError(f"group {self.name!r}: width must be an int >= 1, got {self.width!r}")
        if self.kind not in GROUP_KINDS:
            raise ValueError(f"group {self.name!r}: kind must be one of {GROUP_KINDS}, got {self.kind!r}")
        if not isinstance(self.blocks, int) or isinstance(self.blocks, bool) or self.blocks < 1:
            raise ValueError(f"group {self.name!r}: blocks must be an int >= 1, got {self.blocks!r}")
        if self.width % self.blocks:
            raise ValueError(
                f"group {self.name!r}: width {self.width} does not split into {self.blocks} equal blocks; a group in "
                "blocks keeps the same count in each"
            )
        object.__setattr__(self, "producers", tuple(self.producers))
        object.__setattr__(self, "consumers", tuple(self.consumers))
        if self.prunable and self.scored is None:
            raise ValueError(f"group {self.name!r}: a prunable group needs a scored kernel")
        if self.scored is not None and self.scored not in self.producers:
            raise ValueError(
                f"group {self.name!r}: scored kernel {self.scored.name} (axis {self.scored.axis}) is not among "
                f"its producers"
            )

    @property
    def axes(self) -> tuple[AxisRef, ...]:
        """Producers then consumers."""
        return self.producers + self.consumers

    def with_width(self, width: int) -> ChannelGroup:
        """The same group at another width (a multiple of `blocks`)."""
        return dataclasses.replace(self, width=width)

    def block_counts(self, kept: Sequence[int]) -> tuple[int, ...]:
        """How many of the `kept` channel indices fall in each block (one entry per block)."""
        size = self.width // self.blocks
        counts = np.bincount(np.asarray(kept, dtype=np.int64) // size, minlength=self.blocks)
        return tuple(int(c) for c in counts[: self.blocks])


def flatten_variables(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """Flattens a (possibly Frozen) variables dict to ``{path tuple: leaf}``."""
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a mapping of collections (e.g. {{'params': ...}}), got {type(variables)}")
    out: dict[tuple[str, ...], Any] = {}
    _flatten_into(variables, (), out)
    return out


class LeafView(Mapping):
    """Read-only ``{path tuple: leaf}`` view of a nested variables dict, without flattening it first.

    Plans read only the scored kernels; looking them up by path is cheaper than flattening every leaf (hot path).
    """

    def __init__(self, variables: Mapping[str, Any]):
        if not isinstance(variables, Mapping):
            raise TypeError(
                f"variables must be a mapping of collections (e.g. {{'params': ...}}), got {type(variables)}"
            )
        self._tree = variables

    def __getitem__(self, path):
        node = self._tree
        for k in path:
            if not isinstance(node, Mapping) or k not in node:
                raise KeyError(path)
            node = node[k]
        if isinstance(node, Mapping):
            raise KeyError(path)
        return node

    def __contains__(self, path) -> bool:
        try:
            self[path]
        except KeyError:
            return False
        return True

    def __iter__(self):
        return iter(flatten_variables(self._tree))

    def __len__(self) -> int:
        return len(flatten_variables(self._tree))


# Array types already seen not to be mappings: `isinstance(x, Mapping)` is an ABC check, slow next to a set lookup, and
# flattening meets the same few array types hundreds of times per call (hot path).
_LEAF_TYPES: set[type] = set()


def _flatten_into(tree: Mapping, prefix: tuple[str, ...], out: dict) -> None:
    # Plain recursion over dicts and FrozenDicts; cheaper than unfreezing then `traverse_util.flatten_dict` (hot path).
    for k, v in tree.items():
        t = type(v)
        if t is not dict and (t in _LEAF_TYPES or not isinstance(v, Mapping)):
            if len(_LEAF_TYPES) < 256 and t.__module__.split(".", 1)[0] in ("jax", "jaxlib", "numpy"):
                _LEAF_TYPES.add(t)  # array types only: another type could be registered as a Mapping later
            out[(*prefix, k)] = v
        else:
            _flatten_into(v, (*prefix, k), out)


def groups_by_name(groups: Iterable[ChannelGroup]) -> dict[str, ChannelGroup]:
    """Indexes groups by name; duplicate names are an error."""
    out: dict[str, ChannelGroup] = {}
    for g in groups:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"expected ChannelGroup, got {type(g).__name__}")
        if g.name in out:
            raise ValueError(f"duplicate group name {g.name!r}")
        out[g.name] = g
    return out


def check_groups(
    groups: Sequence[ChannelGroup], variables: Mapping[str, Any], *, flat: Mapping[tuple[str, ...], Any] | None = None
) -> None:
    """Proves a coupling declaration against real variables.

    Checks that every path exists, every axis exists and has length ``width * repeat`` (for a ref with an `offset`:
    holds ``[offset, offset + width * repeat)``), no channel of a leaf axis belongs to two groups (or twice to one),
    and every prunable group's scored kernel is among its producers.

    Args:
      groups: The declaration, e.g. ``model.channel_groups()``.
      variables: A variables dict (``{'params': ..., 'batch_stats': ...}``); shapes are all that is read, so the
        result of ``jax.eval_shape(model.init, ...)`` works too.
      flat: `flatten_variables(variables)`, when the caller has it already (saves flattening twice on a hot path).

    Raises:
      ValueError: naming the group and path that fail.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import models, check_groups
      >>> m = models.resnet20()
      >>> v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
      >>> check_groups(m.channel_groups(), v)
    """
    if flat is None:
        flat = flatten_variables(variables)
    # (path, axis) -> [(start, stop, group name)]: an axis may hold several groups side by side (offsets), never
    # two claims on the same channel.
    claimed: dict[tuple[tuple[str, ...], int], list[tuple[int, int, str]]] = {}
    for g in groups_by_name(groups).values():
        for ref in g.axes:
            leaf = flat.get(ref.path, _MISSING)
            if leaf is _MISSING:
                collections = sorted(variables)
                if ref.path[0] not in collections:
                    raise ValueError(
                        f"group {g.name!r}: variables have no {ref.path[0]!r} collection, needed for {ref.name} "
                        f"(collections present: {', '.join(collections) or 'none'})"
                    )
                raise ValueError(f"group {g.name!r}: path {ref.name} not found in variables")
            shape = getattr(leaf, "shape", ())
            axis = ref.axis
            if axis >= len(shape):
                raise ValueError(f"group {g.name!r}: path {ref.name} has shape {tuple(shape)}, no axis {axis}")
            length = shape[axis]
            expected = g.width * ref.repeat
            if ref.offset is None:
                if length != expected:
                    raise ValueError(
                        f"group {g.name!r}: path {ref.name} axis {axis} has length {length}, expected "
                        f"{expected} (width {g.width} x repeat {ref.repeat})"
                    )
                start, stop = 0, length
            else:
                start, stop = ref.offset, ref.offset + expected
                if stop > length:
                    raise ValueError(
                        f"group {g.name!r}: path {ref.name} axis {axis} has length {length}, too short "
                        f"for channels [{start}, {stop}) (offset {ref.offset} + width {g.width} x repeat {ref.repeat})"
                    )
            key = (ref.path, axis)
            spans = claimed.get(key)
            if spans is None:
                claimed[key] = [(start, stop, g.name)]
                continue
            for s0, s1, other in spans:
                if start < s1 and s0 < stop:
                    raise ValueError(
                        f"group {g.name!r}: path {ref.name} axis {axis} is already claimed by group {other!r} "
                        f"(channels [{s0}, {s1}) overlap [{start}, {stop}))"
                    )
            spans.append((start, stop, g.name))


_MISSING = object()


def kept_indices(length: int, claims: Iterable[tuple[AxisRef, int, Sequence[int]]]) -> np.ndarray:
    """The indices an axis keeps when one or more groups drop channels on it, computed on the original layout.

    Several groups may share one axis side by side (`AxisRef.offset`); slicing them one after another would shift
    the later offsets, so every drop is located on the original axis first and one index set is returned.

    Args:
      length: The axis length before pruning.
      claims: ``(ref, group width, kept channel indices)`` for every group that prunes channels on this axis.

    Returns:
      Ascending int64 indices into the original axis.

    Example:
      >>> ref_a = AxisRef(("params", "fc", "kernel"), 0, offset=0)
      >>> ref_b = AxisRef(("params", "fc", "kernel"), 0, offset=4)
      >>> kept_indices(10, [(ref_a, 4, (0, 3)), (ref_b, 6, (1, 2, 5))]).tolist()
      [0, 3, 5, 6, 9]
    """
    keep = np.ones(int(length), dtype=bool)
    for ref, width, kept in claims:
        dropped = np.ones(width, dtype=bool)
        dropped[np.asarray(kept, dtype=np.int64)] = False
        start = ref.offset or 0
        span = np.tile(dropped, ref.repeat)
        keep[start : start + span.size] &= ~span
    return np.flatnonzero(keep).astype(np.int64)
