"""The abstract interpreter: walks a closed jaxpr once, applying the primitive rules (`rules.RULES`) to build the
dimension union-find (`dims._Dims`) and the per-frame records the re-runner reads."""

from __future__ import annotations

import numpy as np
from jax.extend import core as jcore

from jaxprune.trace._jaxpr import _Frame, _is_literal, _shape
from jaxprune.trace.dims import _Dims
from jaxprune.trace.rules import RULES

# Unary primitives that carry a sum's element count unchanged to the division that makes it a mean.
_CARRY_COUNT = frozenset(
    "convert_element_type broadcast_in_dim reshape squeeze expand_dims copy reduce_precision".split()
)


class _Tracer:
    """Walks a closed jaxpr once, building the dimension union-find and per-frame records for the re-run."""

    def __init__(self):
        self.d = _Dims()
        self.kernels: dict[tuple[tuple[str, ...], int], tuple[int, int, str]] = {}  # -> (order, rank, op)
        self.contracted: set[tuple[tuple[str, ...], int]] = set()
        self.first_use: dict[tuple[str, ...], int] = {}
        self.spatial: dict[tuple[tuple[str, ...], int], int] = {}  # conv kernel axis -> output spatial positions
        self.order = 0
        # Channel spaces repeated block by block (GroupNorm groups, conv feature groups, attention heads): (slot node,
        # blocks, label, equation, call context, block axis node or None); the same slots are kept in every block,
        # unless the group is balanced instead (GroupNorm groups: `extract._describe_ties`).
        self.ties: list[tuple[int, int, str, object, tuple, int | None]] = []

    # -- helpers -------------------------------------------------------------------------------------------------
    def nodes(self, f: _Frame, v) -> tuple[int, ...]:
        if _is_literal(v):
            return tuple(self.d.new(s) for s in _shape(v))
        return f.env[v]

    def fresh(self, shape, **kw) -> tuple[int, ...]:
        return tuple(self.d.new(s, **kw) for s in shape)

    def is_pd(self, f: _Frame, v) -> bool:
        return _is_literal(v) or v in f.pd

    def taint_info(self, why: str, eqn, f: _Frame) -> tuple:
        return (why, eqn.primitive.name, eqn, f.ctx, self.order)

    def taint_unless_fixed(self, node: int, info: tuple) -> None:
        if not self.d.all_fixed(node):
            self.d.mark_taint(node, info)

    def tie(self, node: int, blocks: int, label: str, eqn, f: _Frame, *, block_axis: int | None = None) -> None:
        """Records a channel space repeated in `blocks` blocks; `block_axis`: the node of the axis that indexes the
        blocks (a reshape's major part), where one exists."""
        if blocks > 1 and self.d.size[node] > 1:
            self.ties.append((node, int(blocks), label, eqn, f.ctx, block_axis))

    def set_out(self, f: _Frame, v, nodes: tuple[int, ...]) -> None:
        f.env[v] = nodes

    # -- frames -----------------------------------------------------------------------------------------------
    def frame(self, jaxpr, consts, in_nodes, in_src, in_pd, ctx: tuple) -> _Frame:
        f = _Frame(jaxpr, consts, ctx)
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            info = ("a constant array closed over by the traced function", "constant", None, ctx, self.order)
            f.env[v] = self.fresh(np.shape(c), taint=info)
            f.pd.add(v)
        for v, n, s, p in zip(jaxpr.invars, in_nodes, in_src, in_pd, strict=True):
            f.env[v] = n
            if s is not None:
                f.src[v] = s
            if p:
                f.pd.add(v)
        for i, eqn in enumerate(jaxpr.eqns):
            self.order += 1
            for v in eqn.invars:
                if not _is_literal(v) and v in f.src:
                    self.first_use.setdefault(f.src[v][0], self.order)
            self.eqn(f, i, eqn)
        return f

    def sub_frame(self, f: _Frame, closed, invars, ctx: tuple, in_nodes=None) -> _Frame:
        jaxpr, consts = (closed.jaxpr, closed.consts) if isinstance(closed, jcore.ClosedJaxpr) else (closed, ())
        nodes = in_nodes if in_nodes is not None else [self.nodes(f, v) for v in invars]
        src = [None if _is_literal(v) else f.src.get(v) for v in invars]
        pd = [self.is_pd(f, v) for v in invars]
        return self.frame(jaxpr, consts, nodes, src, pd, ctx)

    # -- dispatch ---------------------------------------------------------------------------------------------
    def eqn(self, f: _Frame, i: int, eqn) -> None:
        rule = RULES.get(eqn.primitive.name)
        if rule is None:
            self.generic(f, i, eqn, "a primitive without a rule")
        else:
            rule(self, f, i, eqn)
        self.count_divisor(f, i, eqn)

    def count_divisor(self, f: _Frame, i: int, eqn) -> None:
        """Follows the element count of a sum to the division that makes it a mean (``jnp.mean``, ``jnp.var``'s
        ``sum / (N - ddof)``, the statistics of LayerNorm, GroupNorm, RMSNorm), so the re-run divides by the channels
        kept (docs/design.md §6)."""
        name = eqn.primitive.name
        ins = eqn.invars
        if name == "reduce_sum" and not _is_literal(ins[0]):
            axes = tuple(eqn.params["axes"])
            nodes = tuple(f.env[ins[0]][a] for a in axes)
            f.counts[eqn.outvars[0]] = (int(np.prod([_shape(ins[0])[a] for a in axes])), nodes)
        elif name in _CARRY_COUNT and len(ins) == 1 and not _is_literal(ins[0]) and ins[0] in f.counts:
            f.counts[eqn.outvars[0]] = f.counts[ins[0]]
        elif name == "sub" and len(ins) == 2 and _is_literal(ins[0]) and np.ndim(ins[0].val) == 0:
            f.less[eqn.outvars[0]] = (i, float(ins[0].val))
        elif name == "div" and len(ins) == 2 and not _is_literal(ins[1]) and ins[1] in f.less and ins[0] in f.counts:
            j, value = f.less[ins[1]]  # sum / (N - ddof), jnp.var: the count is the literal of the subtraction
            count, nodes = f.counts[ins[0]]
            if value == count:
                f.divisors[j] = (0, count, nodes, "div")
        elif name in ("div", "mul") and len(ins) == 2:
            a, b = ins
            if _is_literal(b) and not _is_literal(a) and a in f.counts:
                k, tagged = 1, a
            elif name == "mul" and _is_literal(a) and not _is_literal(b) and b in f.counts:
                k, tagged = 0, b
            else:
                return
            lit = ins[k].val
            if np.ndim(lit) != 0:
                return
            count, nodes = f.counts[tagged]
            value = float(lit)
            if (name == "div" and value == count) or (name == "mul" and abs(value * count - 1.0) <= 1e-6):
                f.divisors[i] = (k, count, nodes, name)

    def copy_src(self, f: _Frame, a, b, axis_map) -> None:
        """Param-origin bookkeeping: `b` is computed from `a` alone (axis_map: b axis -> a axis, None = identity)."""
        if _is_literal(a) or a not in f.pd:
            return
        f.pd.add(b)
        if a in f.src:
            path, axes = f.src[a]
            if axis_map is None:
                f.src[b] = (path, axes)
            else:
                f.src[b] = (path, tuple(axes[k] if k is not None else None for k in axis_map))

    def generic(self, f: _Frame, i: int, eqn, why: str) -> None:
        info = self.taint_info(why, eqn, f)
        for v in eqn.invars:
            for n in self.nodes(f, v):
                self.taint_unless_fixed(n, info)
        for v in eqn.outvars:
            self.set_out(f, v, self.fresh(v.aval.shape, taint=info))
