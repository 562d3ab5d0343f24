"""Which traced groups are prunable and what they are called: the model's declaration, a user's policy."""

from __future__ import annotations

from collections.abc import Mapping

from jaxprune.groups import ChannelGroup, groups_by_name
from jaxprune.trace.dims import _Dims
from jaxprune.trace.extract import _materialize, _Spec, _unique_names

# -- policy --------------------------------------------------------------------------------------------------------


def _axes_key(g: ChannelGroup):
    return frozenset(g.producers), frozenset(g.consumers)


def _apply_policy(specs: list[_Spec], d: _Dims, policy) -> None:
    """Applies `policy` (see `trace_model`); groups the trace could not follow stay unprunable.

    Raises:
      ValueError: a policy that makes such a group prunable (names the group and why it is blocked), an unknown
        group, a returned group with other axes.
      TypeError: a policy of another kind.
    """
    _policy(specs, d, policy)
    for s in specs:
        if s.blocked is not None and s.prunable:
            raise ValueError(f"policy makes group {s.name!r} prunable, but the trace cannot follow it: {s.blocked}")


def _policy(specs: list[_Spec], d: _Dims, policy) -> None:
    if policy is None:
        return
    if callable(getattr(policy, "channel_groups", None)):
        _apply_declared(specs, d, tuple(policy.channel_groups()))
        return
    if isinstance(policy, Mapping):
        names = {s.name: s for s in specs}
        for name, flag in policy.items():
            if name not in names:
                raise ValueError(f"policy names unknown group {name!r}; traced groups: {', '.join(names)}")
            if not isinstance(flag, bool):
                raise TypeError(f"policy for group {name!r} must be a bool (prunable), got {type(flag).__name__}")
            names[name].prunable = flag
        return
    if callable(policy):
        for s in specs:
            g = _materialize(s, d, {})
            res = policy(g)
            if isinstance(res, bool):
                s.prunable = res
            elif isinstance(res, ChannelGroup):
                if res.width != g.width or _axes_key(res) != _axes_key(g):
                    raise ValueError(
                        f"policy returned a group for {g.name!r} with other axes or width; a policy may rename a "
                        "group and change its kind, stage, scored kernel and prunability, not its axes"
                    )
                s.name, s.kind, s.stage, s.prunable = res.name, res.kind, res.stage, res.prunable
                s.scored = (res.scored.path, res.scored.axis) if res.scored is not None else None
            else:
                raise TypeError(
                    f"policy must return a bool or a ChannelGroup, got {type(res).__name__} for group {g.name!r}"
                )
        groups_by_name(_materialize(s, d, {}) for s in specs)  # names stay unique
        return
    raise TypeError(
        "policy must be None, a model with channel_groups(), a mapping {group name: prunable} or a callable "
        f"group -> bool | ChannelGroup; got {type(policy).__name__}"
    )


def _apply_declared(specs: list[_Spec], d: _Dims, declared: tuple[ChannelGroup, ...]) -> None:
    """The model's policy: a traced group with a declared twin takes its name, kind, stage, scored kernel and
    prunability; a traced group overlapping declared groups only partly (e.g. a CIFAR ResNet stream split by a
    zero-padded shortcut) is not prunable and is named after what it overlaps."""
    by_key = {_axes_key(g): g for g in declared}
    owner: dict[tuple[tuple[str, ...], int], ChannelGroup] = {}
    for g in declared:
        for ref in g.axes:
            owner[(ref.path, ref.axis)] = g
    for s in specs:
        g = _materialize(s, d, {})
        twin = by_key.get(_axes_key(g))
        if twin is not None and twin.width == g.width:
            s.name, s.kind, s.stage = twin.name, twin.kind, twin.stage
            s.prunable = twin.prunable and s.blocked is None
            s.scored = (twin.scored.path, twin.scored.axis) if twin.scored is not None else s.scored
            continue
        parts, kinds = [], set()
        for ref in g.axes:
            dg = owner.get((ref.path, ref.axis))
            if dg is None:
                continue
            start = ref.offset or 0
            part = dg.name if (start == 0 and g.width == dg.width) else f"{dg.name}[{start}:{start + g.width}]"
            if part not in parts:
                parts.append(part)
                kinds.add(dg.kind)
        if parts:
            s.name = "+".join(parts)
            s.prunable = False
            s.kind = kinds.pop() if len(kinds) == 1 else "stream"
            s.stage = None
    _unique_names(specs)
