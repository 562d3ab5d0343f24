"""The decision record: which filters each group keeps.

This module owns `PruningPlan`, its invariants and its exact JSON round trip. It does not decide anything (that is
`jaxprune.strategies`) and does not touch variables (that is `jaxprune.surgery`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from jaxprune._atomic import atomic_write
from jaxprune._table import text_table
from jaxprune.groups import ChannelGroup

__all__ = ["PLAN_FORMAT_VERSION", "PruningPlan", "atomic_write_text"]

PLAN_FORMAT_VERSION = 1


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8, newlines as given) to `path` through a temporary file in the same folder and
    `os.replace` (never half-written); the file ends with the mode `open(path, "w")` would leave."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _checked_indices(name: str, idx, width: int) -> tuple[int, ...]:
    """`idx` as a tuple of plain ints, after checking it is non-empty, strictly ascending and within [0, width)."""
    if type(idx) in (tuple, list) and idx and all(type(i) is int for i in idx):
        # Plain Python ints (every plan `make_plan` builds): checked without numpy, whose per-call overhead is most of
        # the cost on small groups. Any failure falls through to the numpy path below for its precise message. The
        # snapshot is taken first, so what is checked is what is stored.
        snap = tuple(idx)
        if snap[0] >= 0 and snap[-1] < min(width, 2**63) and all(a < b for a, b in itertools.pairwise(snap)):
            return snap
    arr = np.asarray(idx)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"PruningPlan: group {name!r} must keep at least one filter (1-D indices), got {idx!r}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"PruningPlan: indices of group {name!r} must be ints, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= width:
        raise ValueError(
            f"PruningPlan: group {name!r} has indices out of range [0, {width}): "
            f"{arr[(arr < 0) | (arr >= width)].tolist()}"
        )
    if np.any(np.diff(arr) <= 0):
        what = "duplicated" if np.any(np.diff(arr) == 0) else "unsorted"
        raise ValueError(f"PruningPlan: indices of group {name!r} are {what}; they must be strictly ascending")
    return tuple(arr.tolist())  # plain Python ints


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """Kept filter indices per group.

    Attributes:
      keep: Group name -> kept indices (ascending, unique, non-empty, each in [0, width)).
      widths: Group name -> the group's width when the plan was made (same names as `keep`).
      meta: Free-form JSON-ready description (strategy, criterion, ratios, preset...). Not used by surgery.

    Groups the plan does not name stay untouched when it is applied; a name the model does not have is an error
    then (`jaxprune.prune`).
    """

    keep: Mapping[str, tuple[int, ...]]
    widths: Mapping[str, int]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.keep, Mapping) or not isinstance(self.widths, Mapping):
            raise TypeError("PruningPlan.keep and .widths must be mappings from group names")
        if set(self.keep) != set(self.widths):
            raise ValueError(
                f"PruningPlan: keep and widths must name the same groups; only in keep: "
                f"{sorted(set(self.keep) - set(self.widths))}, only in widths: {sorted(set(self.widths) - set(self.keep))}"
            )
        keep: dict[str, tuple[int, ...]] = {}
        widths: dict[str, int] = {}
        for name, idx in self.keep.items():
            width = self.widths[name]
            if isinstance(width, bool) or not isinstance(width, int | np.integer):
                raise TypeError(f"PruningPlan: width of group {name!r} must be an int, got {type(width).__name__}")
            if width < 1:
                raise ValueError(f"PruningPlan: width of group {name!r} must be an int >= 1, got {width!r}")
            keep[name] = _checked_indices(name, idx, width)
            widths[name] = int(width)
        # Read-only views: a plan's invariants are checked once, here, so its mappings cannot change afterwards.
        object.__setattr__(self, "keep", MappingProxyType(keep))
        object.__setattr__(self, "widths", MappingProxyType(widths))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, PruningPlan):
            return NotImplemented
        return (
            dict(self.keep) == dict(other.keep)
            and dict(self.widths) == dict(other.widths)
            and dict(self.meta) == dict(other.meta)
        )

    __hash__ = None  # mutable-looking contents (meta); plans are compared, not hashed

    def validate(self, groups: Iterable[ChannelGroup]) -> dict[str, ChannelGroup]:
        """Checks the plan against a model's groups; returns them by name.

        Raises:
          ValueError: a name the groups do not have, a non-prunable group, or a width that differs (expected vs
            found).
        """
        by_name = {g.name: g for g in groups}
        for name in self.keep:
            g = by_name.get(name)
            if g is None:
                valid = [n for n, h in by_name.items() if h.prunable]
                raise ValueError(f"plan names unknown group {name!r}; this model's prunable groups: {', '.join(valid)}")
            if not g.prunable:
                raise ValueError(f"plan prunes group {name!r}, which the model declares not prunable (kind {g.kind!r})")
            if self.widths[name] != g.width:
                raise ValueError(
                    f"plan does not match the model: group {name!r} has width {g.width} in the model, the plan "
                    f"expects {self.widths[name]}"
                )
        return by_name

    # -- views --------------------------------------------------------------------------------------------------
    @property
    def new_widths(self) -> dict[str, int]:
        """Group name -> number of kept filters."""
        return {n: len(k) for n, k in self.keep.items()}

    def removed(self, name: str) -> tuple[int, ...]:
        """The indices a group drops."""
        kept = set(self.keep[name])
        return tuple(i for i in range(self.widths[name]) if i not in kept)

    @property
    def is_identity(self) -> bool:
        """True when no group loses a filter."""
        return all(len(k) == self.widths[n] for n, k in self.keep.items())

    def summary(self) -> str:
        """A human table: group, width -> kept, ratio removed."""
        rows = [("group", "width", "kept", "removed %")]
        for name, idx in self.keep.items():
            w = self.widths[name]
            rows.append((name, str(w), str(len(idx)), f"{100 * (w - len(idx)) / w:.1f}"))
        lines = [text_table(rows)]
        total_w = sum(self.widths.values())
        total_k = sum(len(k) for k in self.keep.values())
        lines.append(f"{len(self.keep)} groups: {total_w} -> {total_k} filters")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jaxprune.PruningPlan",
            "version": PLAN_FORMAT_VERSION,
            "widths": dict(self.widths),
            "keep": {n: list(k) for n, k in self.keep.items()},
            "meta": dict(self.meta),
        }

    def to_json(self, **kwargs) -> str:
        """JSON text; `from_json` gives back an equal plan."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(data, Mapping) or data.get("format") != "jaxprune.PruningPlan":
            raise ValueError("not a jaxprune plan (missing 'format': 'jaxprune.PruningPlan')")
        if data.get("version") != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"unsupported plan version {data.get('version')!r}; this jaxprune reads {PLAN_FORMAT_VERSION}"
            )
        missing = [k for k in ("keep", "widths") if not isinstance(data.get(k), Mapping)]
        if missing:
            raise ValueError(f"plan data lacks {' and '.join(repr(k) for k in missing)} (mappings by group name)")
        return cls(
            keep={n: tuple(k) for n, k in data["keep"].items()}, widths=dict(data["widths"]), meta=data.get("meta", {})
        )

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Inverse of `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"plan JSON is malformed: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON atomically (temporary file + rename)."""
        atomic_write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
