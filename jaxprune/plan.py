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

__all__ = ["PLAN_FORMAT_VERSION", "PruningPlan", "atomic_write_text", "model_fingerprint"]

#: The plan JSON version this jaxprune writes (2 adds ``made_for``); it reads 1 and 2.
PLAN_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_FORMAT = "jaxprune.PruningPlan"


def _network(model):
    """The network a model object stands for: a traced model's Linen module (a plan made on the trace of a zoo model
    applies to the zoo model and back), else the model itself."""
    import flax.linen as nn

    try:
        inner = getattr(model, "module", None)
    except Exception:  # a property that cannot answer: the object itself
        inner = None
    return inner if isinstance(inner, nn.Module) else model


def _network_class(model) -> type:
    """The class a plan binds to: a traced NNX module's own class, else the class of `_network(model)`."""
    cls = getattr(model, "nnx_class", None)
    return cls if isinstance(cls, type) else type(_network(model))


def _model_label(model) -> str:
    if isinstance(getattr(model, "nnx_class", None), type):
        return model.nnx_class.__name__
    model = _network(model)
    cfg = getattr(model, "config", None)
    if callable(cfg):
        try:
            c = cfg()
            family, depth, classes = c.get("family"), c.get("depth"), c.get("num_classes")
            if isinstance(family, str):
                return (f"{family}-{depth}" if depth else family) + (f" with {classes} classes" if classes else "")
        except Exception:  # a label for messages only: fall back to the class name
            pass
    return type(model).__name__


def model_fingerprint(model, variables: Mapping[str, Any]) -> dict[str, Any]:
    """What binds a plan to the model it was made for: class, every group's width, and every leaf's shape.

    Not the whole config: a float64 clone or another ``conv_impl`` of the same architecture has the same
    fingerprint, so a plan made on one applies to the other.

    Args:
      model: The model (anything with `channel_groups()`).
      variables: Its variables (only shapes are read, and only for a model that cannot give its abstract
        variables itself).

    Returns:
      ``{"class": the class's qualified name, "name": a short label, "groups": {group: width}, "leaves": {path: shape}}``.
    """
    from jaxprune._checks import model_leaf_shapes

    cls = _network_class(model)
    return {
        "class": cls.__qualname__,  # not the module: a plan survives the class moving within jaxprune
        "name": _model_label(model),
        "groups": {g.name: int(g.width) for g in model.channel_groups()},
        "leaves": model_leaf_shapes(model, variables),
    }


def _checked_fingerprint(fp) -> dict[str, Any]:
    if not isinstance(fp, Mapping) or set(fp) != {"class", "name", "groups", "leaves"}:
        raise ValueError("PruningPlan.made_for must be a mapping with exactly 'class', 'name', 'groups', 'leaves'")
    if not isinstance(fp["class"], str) or not isinstance(fp["name"], str):
        raise ValueError("PruningPlan.made_for: 'class' and 'name' must be str")
    groups, leaves = fp["groups"], fp["leaves"]
    if not isinstance(groups, Mapping) or not all(
        isinstance(k, str) and type(w) is int and w >= 1 for k, w in groups.items()
    ):
        raise ValueError("PruningPlan.made_for: 'groups' must map group names to int widths >= 1")
    if not isinstance(leaves, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list | tuple) and all(type(d) is int and d >= 0 for d in v)
        for k, v in leaves.items()
    ):
        raise ValueError("PruningPlan.made_for: 'leaves' must map leaf paths to shapes (lists of ints >= 0)")
    return {
        "class": fp["class"],
        "name": fp["name"],
        "groups": MappingProxyType(dict(groups)),
        "leaves": MappingProxyType({k: tuple(v) for k, v in leaves.items()}),
    }


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
      made_for: The model the plan was made for (`model_fingerprint`: class, every group's width, every leaf's
        shape), or None for a plan built by hand. `jaxprune.prune` refuses to apply a plan to a model with another
        fingerprint.

    Groups the plan does not name stay untouched when it is applied; a name the model does not have is an error
    then (`jaxprune.prune`).
    """

    keep: Mapping[str, tuple[int, ...]]
    widths: Mapping[str, int]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    made_for: Mapping[str, Any] | None = None

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
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"PruningPlan.meta must be a mapping, got {type(self.meta).__name__}")
        if self.made_for is not None:
            fp = _checked_fingerprint(self.made_for)
            for name, width in widths.items():
                if fp["groups"].get(name) != width:
                    raise ValueError(
                        f"PruningPlan: group {name!r} has width {width}, but made_for says the model's is "
                        f"{fp['groups'].get(name, '<absent>')}"
                    )
            object.__setattr__(self, "made_for", MappingProxyType(fp))
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
        )  # `made_for` binds a plan, it is not part of the decision: a traced model's plan equals its zoo twin's

    __hash__ = None  # mutable-looking contents (meta); plans are compared, not hashed

    def check_model(self, model, variables: Mapping[str, Any] | None = None, *, flat=None) -> None:
        """Checks that `model` (and `variables`, if given) is the model this plan was made for (`made_for`).

        A plan without `made_for` (built by hand, or read from a version-1 file) is not checked here.

        Raises:
          ValueError: another model class, another set of groups or widths, or other leaf shapes; names both models
            and the first difference.
        """
        fp = self.made_for
        if fp is None:
            return
        here = _network_class(model).__qualname__
        head = (
            f"plan does not match the model: it was made for {fp['name']} ({fp['class']}), not for the given "
            f"{_model_label(model)} ({here})"
        )
        if here != fp["class"]:
            raise ValueError(f"{head}: the model classes differ")
        groups = {g.name: int(g.width) for g in model.channel_groups()}
        if groups != dict(fp["groups"]):
            only_plan = sorted(set(fp["groups"]) - set(groups))
            only_model = sorted(set(groups) - set(fp["groups"]))
            widths = [
                f"{n}: {fp['groups'][n]} in the plan's, {groups[n]} in the given"
                for n in groups
                if n in fp["groups"] and groups[n] != fp["groups"][n]
            ]
            raise ValueError(
                f"{head}: groups only in the plan's model {only_plan[:4]}, only in the given model {only_model[:4]}, "
                f"widths that differ {widths[:4]}"
            )
        if flat is None and variables is not None:
            from jaxprune.groups import flatten_variables

            flat = flatten_variables(variables)
        if flat is not None:
            # Leaves present in both are compared; a missing leaf is the variables' fault (`jaxprune.check_groups`).
            paths = self.__dict__.get("_leaf_paths")
            if paths is None:  # tuple paths, computed once per plan
                paths = [(leaf, tuple(leaf.split("/")), shape) for leaf, shape in fp["leaves"].items()]
                object.__setattr__(self, "_leaf_paths", paths)
            for leaf, key, shape in paths:
                v = flat.get(key)
                if v is not None and tuple(getattr(v, "shape", None) or np.shape(v)) != shape:
                    raise ValueError(
                        f"{head}: leaf {leaf} had shape {shape}, the given variables have {tuple(np.shape(v))}"
                    )

    def validate(self, groups: Iterable[ChannelGroup]) -> dict[str, ChannelGroup]:
        """Checks the plan against a model's groups; returns them by name.

        Raises:
          ValueError: a name the groups do not have, a non-prunable group, a width that differs (expected vs
            found), or unequal counts kept in the blocks of a group in blocks (`ChannelGroup.blocks`).
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
            if g.blocks > 1:
                counts = g.block_counts(self.keep[name])
                if len(set(counts)) > 1:
                    raise ValueError(
                        f"plan keeps {list(counts)} channels in the {g.blocks} blocks of group {name!r}; a group in "
                        "blocks (e.g. GroupNorm groups) keeps the same count in each"
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
            "format": _FORMAT,
            "version": PLAN_FORMAT_VERSION,
            "widths": dict(self.widths),
            "keep": {n: list(k) for n, k in self.keep.items()},
            "meta": dict(self.meta),
            "made_for": _plain_fingerprint(self.made_for),
        }

    def to_json(self, **kwargs) -> str:
        """JSON text; `from_json` gives back an equal plan.

        Raises:
          ValueError: `meta` holds NaN or infinity (JSON has no such numbers).
        """
        try:
            return json.dumps(self.to_dict(), allow_nan=False, **kwargs)
        except ValueError as e:
            raise ValueError(f"PruningPlan.meta must not hold NaN or infinity: {e}") from e

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Inverse of `to_dict`, with strict types: every malformed field is a ValueError naming it.

        Reads versions 1 (no ``made_for``) and 2. Ints must be JSON ints (not bools or floats).
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"not a jaxprune plan (missing 'format': {_FORMAT!r})")
        version = data.get("version")
        if type(version) is not int or version not in _READABLE_VERSIONS:
            raise ValueError(
                f"unsupported plan version {version!r}; this jaxprune reads versions "
                f"{', '.join(map(str, _READABLE_VERSIONS))} (integers)"
            )
        allowed = {"format", "version", "widths", "keep", "meta"} | ({"made_for"} if version >= 2 else set())
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"plan field(s) {unknown} are unknown in a version-{version} plan")
        missing = [k for k in ("keep", "widths") if not isinstance(data.get(k), Mapping)]
        if missing:
            raise ValueError(f"plan data lacks {' and '.join(repr(k) for k in missing)} (mappings by group name)")
        for name, w in data["widths"].items():
            if type(w) is not int:
                raise ValueError(f"plan field 'widths[{name!r}]' must be an int, got {w!r}")
        for name, idx in data["keep"].items():
            if not isinstance(idx, list | tuple) or not all(type(i) is int for i in idx):
                raise ValueError(f"plan field 'keep[{name!r}]' must be a list of ints, got {idx!r}")
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise ValueError(f"plan field 'meta' must be an object, got {type(meta).__name__}")
        made_for = data.get("made_for")
        try:
            return cls(
                keep={n: tuple(k) for n, k in data["keep"].items()},
                widths=dict(data["widths"]),
                meta=meta,
                made_for=made_for,
            )
        except (TypeError, ValueError) as e:
            field = "made_for" if "made_for" in str(e) else "keep/widths"
            raise ValueError(f"plan field {field!r} is malformed: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Inverse of `to_json` (strict JSON: no NaN, no duplicate keys)."""
        if not isinstance(text, str):
            raise TypeError(f"plan JSON must be a str, got {type(text).__name__}")
        try:
            data = strict_json_loads(text)
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"plan JSON is malformed: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON atomically (temporary file + rename)."""
        atomic_write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Reads a file written by `save`.

        Raises:
          FileNotFoundError: no file at `path`.
          ValueError: not UTF-8 text, malformed JSON or a malformed plan (names the file and the field).
        """
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return cls.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"plan file {os.fspath(path)} is not UTF-8 JSON text ({e})") from e
        except ValueError as e:
            raise ValueError(f"plan file {os.fspath(path)}: {e}") from e


def strict_json_loads(text: str):
    """`json.loads` without NaN/Infinity and without duplicate keys (each a ValueError; plans and checkpoints)."""
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _plain_fingerprint(fp) -> dict[str, Any] | None:
    if fp is None:
        return None
    return {
        "class": fp["class"],
        "name": fp["name"],
        "groups": dict(fp["groups"]),
        "leaves": {k: list(v) for k, v in fp["leaves"].items()},
    }
