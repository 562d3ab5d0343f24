"""From a traced program to channel groups: tracing a function, turning dimension classes into group specs,
and materialising specs as `ChannelGroup`s at given widths."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxprune.groups import AxisRef, ChannelGroup, flatten_variables
from jaxprune.trace._jaxpr import _Frame, _is_literal, _where
from jaxprune.trace.dims import _MAX_RUNS, _Dims, _TooComplex
from jaxprune.trace.rules import _CUMULATIVE, _REDUCE
from jaxprune.trace.tracer import _Tracer

# -- the result of one trace -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Member:
    path: tuple[str, ...]
    axis: int
    runs: tuple[tuple[int, int], ...]
    role: str  # "producer" or "consumer"
    order: int


@dataclasses.dataclass
class _Spec:
    """A traced group before widths are applied: which atomic class, which axes, and policy fields."""

    root: int
    name: str
    members: list[_Member]
    scored: tuple[tuple[str, ...], int] | None
    kind: str
    prunable: bool
    stage: str | None
    order: int
    blocked: str | None = None  # why the trace cannot follow this group's channels (then never prunable)
    blocked_by: tuple | None = None  # the taint record of the first blocking primitive
    tied: str | None = None  # the blocks this space repeats in, where one index space spans them (e.g. GroupNorm's)
    # Balanced (GroupNorm groups): the group's channels are the `blocks` copies of the root's space side by side, each
    # block keeping its own channels (an equal count); `block_axes`: the nodes of the axes indexing the blocks.
    blocks: int = 1
    block_axes: tuple[int, ...] = ()


@dataclasses.dataclass
class _Trace:
    closed: Any
    dims: _Dims
    top: _Frame
    leaves: list[tuple[tuple[str, ...], tuple[int, ...]]]  # param path -> nodes, in flatten order
    in_tree: Any
    out_tree: Any
    in_avals: list[Any]
    n_var_leaves: int
    specs: list[_Spec]


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _abstract(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        leaf = np.asarray(leaf)
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)


def _check_variables(variables) -> dict:
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"variables must be a mapping of collections (e.g. {{'params': ...}}), got {type(variables).__name__}"
        )
    plain = _plain(variables)
    for path in flatten_variables(plain):
        if not all(isinstance(p, str) for p in path):
            raise TypeError(f"variables keys must be str, got path {path!r}")
    return plain


def _analyze(fn: Callable, variables: dict, example_input, *, fixed_outputs: int | None = None) -> _Trace:
    """Traces `fn(variables, x)` abstractly and builds the dimension classes (no groups yet).

    `fixed_outputs`: only the first this many output leaves are the model's output (their channels fixed); the others
    (a training step's updated batch statistics) follow the channels of what computes them. None: every output leaf.
    """
    abs_vars = jax.tree_util.tree_map(_abstract, variables)
    abs_x = jax.tree_util.tree_map(_abstract, example_input)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(abs_vars, abs_x)
    return _analyze_jaxpr(closed, out_shape, abs_vars, abs_x, fixed_outputs=fixed_outputs)


def _analyze_jaxpr(closed, out_shape, abs_vars, abs_x, *, fixed_outputs: int | None = None) -> _Trace:
    var_leaves, _ = jax.tree_util.tree_flatten_with_path(abs_vars)
    x_leaves = jax.tree_util.tree_leaves(abs_x)
    in_tree = jax.tree_util.tree_structure((abs_vars, abs_x))
    out_tree = jax.tree_util.tree_structure(out_shape)
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != len(var_leaves) + len(x_leaves):  # pragma: no cover - make_jaxpr guarantees it
        raise AssertionError("internal: jaxpr inputs do not match the flattened variables and input")
    t = _Tracer()
    d = t.d
    nodes, src, pd, leaves = [], [], [], []
    for kp, leaf in var_leaves:
        path = tuple(str(k.key) for k in kp)
        n = t.fresh(leaf.shape)
        nodes.append(n)
        src.append((path, tuple(range(len(leaf.shape)))))
        pd.append(True)
        leaves.append((path, n))
    for leaf in x_leaves:
        nodes.append(t.fresh(leaf.shape, fixed="the model's input"))
        src.append(None)
        pd.append(False)
    top = t.frame(jaxpr, closed.consts, nodes, src, pd, ())
    for v in jaxpr.outvars if fixed_outputs is None else jaxpr.outvars[:fixed_outputs]:
        for n in t.nodes(top, v):
            d.mark_fixed(n, "the model's output")
    used = _used_invars(jaxpr)
    specs = _extract(t, leaves, [v in used for v in jaxpr.invars[: len(leaves)]], top)
    return _Trace(
        closed=closed,
        dims=d,
        top=top,
        leaves=leaves,
        in_tree=in_tree,
        out_tree=out_tree,
        in_avals=[*(leaf for _, leaf in var_leaves), *x_leaves],
        n_var_leaves=len(leaves),
        specs=specs,
    )


def _used_invars(jaxpr) -> set:
    used = set()
    for eqn in jaxpr.eqns:
        used.update(v for v in eqn.invars if not _is_literal(v))
    used.update(v for v in jaxpr.outvars if not _is_literal(v))
    return used


def _describe_taint(info: tuple) -> str:
    why, prim, eqn, ctx = info[:4]
    if eqn is None:
        return why
    return f"{why}: '{prim}' at {_where(eqn, ctx)}"


def _extract(t: _Tracer, leaves, used: list[bool], top: _Frame | None = None) -> list[_Spec]:
    """Turns the dimension classes into group specs; raises for anything the trace cannot attribute."""
    d = t.d
    members: dict[int, list[_Member]] = {}
    leaf_roots: dict[tuple[str, ...], list[list[int]]] = {}
    leaf_order = {path: t.first_use.get(path, 1 << 30) for path, _ in leaves}
    scattered: dict[int, str] = {}  # root -> why no AxisRef can express its layout
    for path, nodes in leaves:
        per_axis = []
        for axis, node in enumerate(nodes):
            if d.size[node] <= 1:
                per_axis.append([])
                continue
            try:
                runs = tuple(d.resolve(node))
            except _TooComplex:
                raise ValueError(
                    f"trace_groups: parameter {'/'.join(path)} axis {axis} is split into more than {_MAX_RUNS} pieces; "
                    "its layout is too fragmented to express as channel groups"
                ) from None
            roots = [r for r, _ in runs]
            per_axis.append(roots)
            seen = set()
            for r in roots:
                if r in seen:
                    if d.fixed[r] is None and r not in scattered and _has_kernel(t, d, r, leaves):
                        scattered[r] = (
                            f"parameter {'/'.join(path)} axis {axis} holds its channels in several separate blocks "
                            "(e.g. a flatten after a concatenation); a group owns one contiguous span of an axis "
                            "(AxisRef offset and repeat)"
                        )
                    continue
                seen.add(r)
                role = "producer" if (path, axis) in t.kernels or (path, axis) not in t.contracted else "consumer"
                members.setdefault(r, []).append(_Member(path, axis, runs, role, leaf_order[path]))
        leaf_roots[path] = per_axis

    specs: list[_Spec] = []
    group_roots: set[int] = set()
    for r, mem in members.items():
        if d.size[r] < 2 or d.fixed[r] is not None:
            continue
        kern = [(t.kernels[(m.path, m.axis)], m) for m in mem if (m.path, m.axis) in t.kernels]
        if not kern:
            continue
        blocked, first = None, None
        if d.taint[r] is not None:
            blocked, first = f"its channels pass through {_describe_taint(d.taint[r])}", d.taint[r]
        elif r in scattered:
            blocked = scattered[r]
        (_, _, op), scored = min(kern, key=lambda km: (km[0][1], km[0][0]))
        kind = "stream" if d.joined[r] else ("conv" if op == "conv" else "fc")
        mem.sort(key=lambda m: (m.role != "producer", m.order, m.path, m.axis))
        specs.append(
            _Spec(
                root=r,
                name=_group_name(scored, d, r, sum(1 for k in t.kernels if k[0] == scored.path) > 1),
                members=mem,
                scored=(scored.path, scored.axis),
                kind=kind,
                prunable=blocked is None,
                stage=None,
                order=min(k[0][0] for k in kern),
                blocked=blocked,
                blocked_by=first,
            )
        )
        group_roots.add(r)

    # Every parameter must be accounted for: some axis in a group, read by a kernel (e.g. a learnt attention probe:
    # its channels are its own, never pruned), or tied to the input/output/a window.
    read = {r for r, mem in members.items() if any((m.path, m.axis) in t.contracted for m in mem)}
    for (path, nodes), is_used in zip(leaves, used, strict=True):
        per_axis = leaf_roots[path]
        big = [a for a, n in enumerate(nodes) if d.size[n] > 1]
        if not big:
            continue
        if not is_used:
            raise ValueError(
                f"trace_groups: parameter {'/'.join(path)} (shape {tuple(d.size[n] for n in nodes)}) is not used by "
                "the traced function; trace the function that uses these variables (did apply_fn close over other "
                "variables?) or remove the parameter"
            )
        if any(r in group_roots or r in read or d.fixed[r] is not None for a in big for r in per_axis[a]):
            continue
        if any(d.taint[r] is not None for a in big for r in per_axis[a]):
            continue  # behind a primitive without a rule: left as it is (the groups involved are not prunable)
        raise ValueError(
            f"trace_groups: parameter {'/'.join(path)} (shape {tuple(d.size[n] for n in nodes)}) reaches the output "
            "through no channel-preserving path: none of its axes is written by a conv or dense kernel, tied to the "
            "model's input or output, or a convolution window (e.g. it is only summed away)"
        )
    _describe_ties(specs, t, top)
    specs.sort(key=lambda s: s.order)
    _unique_names(specs)
    _infer_stages(specs, t)
    _check_followable(specs)
    return specs


_GROUPNORM = "GroupNorm groups"


def _describe_ties(specs: list[_Spec], t: _Tracer, top: _Frame | None = None) -> None:
    """Groups whose index space repeats block by block (the channels of each GroupNorm group, conv feature group or
    attention head). GroupNorm groups are balanced: the group spans all the blocks' channels, and each block keeps an
    equal count of its own choosing. Elsewhere one space spans the blocks (tied), so pruning keeps the same channels
    in each: a grouped conv's input kernel holds one block's channels (C_in / groups) for all filters of a feature
    group, so different channels per block would need a kernel sliced differently per group, which no axis slice is."""
    d = t.d
    by_root = {s.root: s for s in specs}
    ties: dict[int, list[tuple]] = {}
    for tie in t.ties:
        try:
            roots = set(d.pieces(tie[0]))
        except _TooComplex:  # pragma: no cover - a tied slot space split that finely is never a group
            continue
        for r in roots & set(by_root):
            ties.setdefault(r, []).append(tie)
    cands = {r: found for r, found in ties.items() if _balanced(by_root[r], found, d)}
    if cands and top is not None:
        blocks = {r: (found[0][1], frozenset(d.find(tie[5]) for tie in found)) for r, found in cands.items()}
        for r in _mixed_without_blocks(top, d, blocks):
            del cands[r]
    for r, found in ties.items():
        spec = by_root[r]
        if r in cands:
            _, blocks, label, eqn, ctx, _ = found[0]
            spec.blocks = blocks
            spec.block_axes = tuple(dict.fromkeys(tie[5] for tie in found))
            spec.tied = (
                f"balanced across {blocks} {label}: each keeps an equal count of channels, chosen by its own scores "
                f"('{eqn.primitive.name}' at {_where(eqn, ctx)})"
            )
            continue
        lines: list[str] = []
        for _node, blocks, label, eqn, ctx, _ in found:
            note = (
                f"tied across {blocks} {label}: the same channels are kept in each, the width counts one block's "
                f"('{eqn.primitive.name}' at {_where(eqn, ctx)})"
            )
            if note not in lines:
                lines.append(note)
        spec.tied = "; ".join(lines)


def _mixed_without_blocks(top: _Frame, d: _Dims, blocks: dict[int, tuple[int, frozenset]]) -> set[int]:
    """The candidate balanced roots whose channels some operation mixes (a contraction, reduction or cumulative op:
    where the masking reference zeroes removed channels) on an axis holding part of the blocks, with no axis beside it
    that indexes the blocks: there the mask would be one block's, which balanced selection does not have, so those
    groups stay tied. `blocks`: root -> (block count, roots of its block axes)."""
    bad: set[int] = set()
    stack = [top]
    while stack:
        f = stack.pop()
        for subs in f.subs.values():
            stack.extend(subs)
        for eqn in f.jaxpr.eqns:
            for v, axes in _mixed_axes(eqn):
                if _is_literal(v) or v not in f.env:
                    continue
                nodes = f.env[v]
                for ax in axes:
                    try:
                        runs = d.resolve(nodes[ax])
                    except _TooComplex:  # pragma: no cover - never a balanced group's axis
                        continue
                    for r, c in runs:
                        if r not in blocks or r in bad or c % blocks[r][0] == 0:
                            continue
                        beside = any(k != ax and d.find(n) in blocks[r][1] for k, n in enumerate(nodes))
                        if runs != [(r, 1)] or not beside:
                            bad.add(r)
    return bad


def _mixed_axes(eqn) -> list[tuple[Any, tuple[int, ...]]]:
    """(operand, axes) an equation mixes channels along, as the masking reference (`runner._Runner.mix`) sees them."""
    name, ins = eqn.primitive.name, eqn.invars
    if name == "conv_general_dilated":
        return [(ins[0], (eqn.params["dimension_numbers"].lhs_spec[1],))]
    if name == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        return [(ins[0], tuple(lc)), (ins[1], tuple(rc))]
    if name in _REDUCE or name == "reduce":
        axes = tuple(eqn.params["axes" if name != "reduce" else "dimensions"])
        n = len(eqn.outvars) if name == "reduce" else 1
        return [(v, axes) for v in ins[:n]]
    if name in _CUMULATIVE:
        return [(ins[0], (eqn.params["axis"],))]
    return []


def _balanced(spec: _Spec, ties: list[tuple], d: _Dims) -> bool:
    """Whether a tied group can be balanced instead: every tie on it is one GroupNorm's split of a channel axis into
    (groups, channels per group), the slot space exactly the group's, with the same number of groups, and every
    parameter axis of the group holds whole sets of the blocks (its repeat a multiple of the block count)."""
    blocks = {tie[1] for tie in ties}
    if len(blocks) != 1 or not spec.prunable:
        return False
    (g,) = blocks
    for node, _, label, _, _, axis in ties:
        if label != _GROUPNORM or axis is None or d.resolve(node) != [(spec.root, 1)]:
            return False
    for m in spec.members:
        counts = [c for root, c in m.runs if root == spec.root]
        if len(counts) != 1 or counts[0] % g:
            return False
    return True


def _infer_stages(specs: list[_Spec], t: _Tracer) -> None:
    """Stages of a traced CNN from spatial resolution: conv-filter groups whose scored kernel writes at the highest
    resolution are ``stage1``, the next lower ``stage2``, and so on (a stage lies between two downsamplings; a
    U-Net's decoder joins the encoder stage at its resolution). A model's declaration or policy may rename them."""
    res = {id(s): t.spatial.get(s.scored) for s in specs if s.kind == "conv" and s.scored is not None}
    levels = sorted({r for r in res.values() if r is not None}, reverse=True)
    rank = {r: k + 1 for k, r in enumerate(levels)}
    for s in specs:
        r = res.get(id(s))
        if r is not None:
            s.stage = f"stage{rank[r]}"


class UntracedChannelsWarning(UserWarning):
    """Some channel groups pass through an operation without a rule (`jaxprune.trace.SUPPORTED_PRIMITIVES`): they
    are traced as not prunable, with the primitive and its source line as the reason (`describe_groups`)."""


def _check_followable(specs: list[_Spec]) -> None:
    """The policy for groups the trace could not follow: they stay unprunable (with a warning), unless no group at all
    can be followed, which is an error naming the first blocking primitive."""
    blocked = [s for s in specs if s.blocked is not None]
    if not blocked:
        return
    if all(s.blocked is not None for s in specs):
        firsts = [s for s in blocked if s.blocked_by is not None]
        s = min(firsts, key=lambda s: s.blocked_by[4]) if firsts else blocked[0]
        axes = ", ".join(f"{'/'.join(m.path)} axis {m.axis}" for m in s.members[:4])
        raise ValueError(
            f"trace_groups: no channel group of this model can be followed; the first ({s.name}: {axes}) is blocked: "
            f"{s.blocked}. Primitives with a rule: jaxprune.trace.SUPPORTED_PRIMITIVES (on a channel axis: "
            "elementwise ops, conv_general_dilated, dot_general, concatenate, contiguous slice/split, pad, tile, "
            "gather/scatter on other axes, channel-last reshape, transpose, reductions)"
        )
    lines = "; ".join(f"{s.name}: {s.blocked}" for s in blocked[:8]) + ("; ..." if len(blocked) > 8 else "")
    warnings.warn(
        f"trace_groups: {len(blocked)} of {len(specs)} channel groups are not prunable because jaxprune cannot follow "
        f"their channels: {lines}",
        UntracedChannelsWarning,
        stacklevel=6,  # trace_model's caller
    )


def _has_kernel(t: _Tracer, d: _Dims, r: int, leaves) -> bool:
    for path, nodes in leaves:
        for axis, node in enumerate(nodes):
            if (path, axis) in t.kernels and d.size[node] > 1 and r in d.pieces(node):
                return True
    return False


def _group_name(m: _Member, d: _Dims, r: int, several_axes: bool) -> str:
    """The scored kernel's module path; ``:axis`` when the kernel writes several groups along different axes (e.g.
    attention heads and head features), ``[start:stop]`` when the group owns only part of the kernel's axis."""
    path = m.path
    core = path[1:-1] if len(path) > 2 else path[-1:] if len(path) == 2 else path
    name = "/".join(core) or "/".join(path)
    if several_axes:
        name += f":{m.axis}"
    total = sum(d.size[root] * count for root, count in m.runs)
    start = 0
    for root, count in m.runs:
        if root == r:
            if d.size[r] * count != total:
                name += f"[{start}:{start + d.size[r] * count}]"
            break
        start += d.size[root] * count
    return name


def _unique_names(specs: list[_Spec]) -> None:
    seen: dict[str, int] = {}
    for s in specs:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}#{seen[s.name]}"
        else:
            seen[s.name] = 1


def _materialize(spec: _Spec, d: _Dims, sizes: Mapping[int, int]) -> ChannelGroup:
    slots = sizes.get(spec.root, d.size[spec.root])
    width = slots * spec.blocks  # balanced: the root's space repeated once per block, side by side
    producers, consumers = [], []
    scored_ref = None
    for m in spec.members:
        pos, start, count = 0, 0, 1
        for root, c in m.runs:
            w = sizes.get(root, d.size[root])
            if root == spec.root:
                start, count = pos, c
            pos += w * c
        offset = None if (start == 0 and slots * count == pos) else start
        ref = AxisRef(m.path, m.axis, repeat=count // spec.blocks, offset=offset)
        (producers if m.role == "producer" else consumers).append(ref)
        if spec.scored == (m.path, m.axis):
            scored_ref = ref
    g = ChannelGroup(
        name=spec.name,
        width=width,
        producers=tuple(producers),
        consumers=tuple(consumers),
        scored=scored_ref,
        prunable=spec.prunable and scored_ref is not None,
        kind=spec.kind,
        stage=spec.stage,
        blocks=spec.blocks,
    )
    if spec.blocked is not None:
        if len(_BLOCKED) > 4096:
            _BLOCKED.clear()
        _BLOCKED[g] = spec.blocked
    if spec.tied is not None:
        if len(_TIED) > 4096:
            _TIED.clear()
        _TIED[g] = spec.tied
    return g


# Why a traced group is not prunable when the trace could not follow it; keyed by the (frozen, hashable) group, so
# `describe_groups` shows the reason for groups from `trace_groups` as well as from a `TracedModel`.
_BLOCKED: dict[ChannelGroup, str] = {}


def blocked_reason(group: ChannelGroup) -> str | None:
    """Why the trace could not follow a traced group's channels (the primitive and its source line), or None."""
    return _BLOCKED.get(group)


# Which blocks a traced group's index space repeats in (GroupNorm groups: balanced; conv feature groups: tied), as
# `_BLOCKED`.
_TIED: dict[ChannelGroup, str] = {}


def tied_note(group: ChannelGroup) -> str | None:
    """Which blocks a traced group's channels are tied across (same channels kept in each) or balanced across (an
    equal count kept in each, each choosing its own), or None."""
    return _TIED.get(group)
