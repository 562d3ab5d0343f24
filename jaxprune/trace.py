"""Channel coupling discovered from a jaxpr, for any Flax Linen or NNX model (docs/design.md §6).

This module owns `trace_groups`: it traces a model's forward pass with `jax.make_jaxpr` and follows every parameter's
axes through the primitives, joining the axes that must share one channel index space in a union-find over the
(value, axis) dimensions of the program. Concatenations and splits make a dimension a sequence of pieces (so a
consumer of a concatenation holds several groups side by side, `AxisRef.offset`); channel-last flattens make it
`repeat` blocks of one piece. It also owns `TracedModel`, the small object through which `make_plan`, `prune` and the
masking reference work on a traced model, and the interpreter that re-runs the traced program at pruned widths or
with channel masks. It does not score, select or slice variables (`scoring`, `strategies` and `surgery` do).

What the trace decides and what it leaves to policy: the trace says which axes are coupled and which channel spaces
are tied to the model's input or output (never groups). Which traced groups may be pruned is policy: a traced group
is prunable unless the model's declaration (`channel_groups()` of a zoo model) or the user's `policy` says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxprune.groups import AxisRef, ChannelGroup, check_groups, flatten_variables, groups_by_name
from jaxprune.models.base import checked_widths, stage_map

__all__ = [
    "SUPPORTED_PRIMITIVES",
    "TracedModel",
    "describe_groups",
    "format_groups",
    "nnx_variables",
    "trace_groups",
    "trace_model",
]

# -- which primitives the trace follows --------------------------------------------------------------------------

_ELEMENTWISE = frozenset(
    """add sub mul div rem pow max min atan2 nextafter and or xor not eq ne lt le gt ge neg sign floor ceil round
    is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan sinh cosh asinh acosh atanh sqrt rsqrt
    cbrt abs square integer_pow erf erfc erf_inv lgamma digamma igamma igammac igamma_grad_a random_gamma_grad
    polygamma zeta bessel_i0e bessel_i1e regularized_incomplete_beta convert_element_type reduce_precision copy copy_p
    real imag conj complex select_n clamp add_any population_count clz shift_left shift_right_logical
    shift_right_arithmetic threefry2x32 bitcast_convert_type stop_gradient""".split()
)
_IDENTITY = frozenset("optimization_barrier device_put sharding_constraint mesh_cast reshard pvary".split())
_CALLS = frozenset(
    "jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr checkpoint remat remat2".split()
)
_REDUCE = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min".split())
_RANDOM = frozenset(
    "random_bits random_seed random_wrap random_unwrap random_fold_in random_split iota_2x32_shape".split()
)
_STRUCTURAL = frozenset(
    """broadcast_in_dim reshape squeeze transpose rev concatenate pad slice split dynamic_slice dynamic_update_slice
    conv_general_dilated dot_general iota sort top_k reduce reduce_window scan while cond""".split()
)

# Followed on other axes, refused on a channel axis (the result depends on channel positions).
_POSITIONAL = frozenset("sort top_k rev iota argmax argmin".split())

#: Primitives `trace_groups` follows channel by channel; any other primitive on a channel path is an error.
SUPPORTED_PRIMITIVES = tuple(
    sorted((_ELEMENTWISE | _IDENTITY | _CALLS | _REDUCE | _CUMULATIVE | _WINDOW | _RANDOM | _STRUCTURAL) - _POSITIONAL)
)

_MAX_RUNS = 200_000


class _TooComplex(Exception):
    pass


# -- the union-find over dimensions ----------------------------------------------------------------------------


class _Dims:
    """A union-find over dimensions (one node per axis of a jaxpr value or parameter).

    A class is *atomic* (one channel index space) or *composite*: a sequence of pieces ``(node, count)``, each
    repeated `count` times (a concatenation, a pad, a flatten). Unifying two dimensions aligns their pieces and splits
    atomic classes where boundaries differ. Flags live on atomic classes: `fixed` (tied to the model's input or
    output, or a spatial / window axis: never a group), `taint` (passed through something the trace cannot follow
    channel by channel: an error if the class turns out to be a group), `produced` (written by a conv or dense
    kernel), `joined` (two produced spaces added: a residual stream).
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.struct: list[tuple[tuple[int, int], ...] | None] = []
        self.fixed: list[str | None] = []
        self.taint: list[tuple | None] = []
        self.produced: list[bool] = []
        self.joined: list[bool] = []

    def new(self, size: int, *, fixed: str | None = None, taint: tuple | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(int(size))
        self.struct.append(None)
        self.fixed.append(fixed)
        self.taint.append(taint if size > 1 else None)
        self.produced.append(False)
        self.joined.append(False)
        return i

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def resolve(self, x: int) -> list[tuple[int, int]]:
        """The atomic pieces of a dimension: ``[(atomic root, count), ...]``, adjacent equal roots merged."""
        r = self.find(x)
        st = self.struct[r]
        if st is None:
            return [(r, 1)]
        out: list[list[int]] = []
        for child, count in st:
            sub = self.resolve(child)
            if len(sub) == 1:
                _push(out, sub[0][0], sub[0][1] * count)
            else:
                if len(sub) * count > _MAX_RUNS:
                    raise _TooComplex
                for _ in range(count):
                    for root, c in sub:
                        _push(out, root, c)
        return [(a, b) for a, b in out]

    def compose(self, parts: Sequence[tuple[int, int]]) -> int:
        """A dimension made of pieces ``(node, count)``; a single piece of count 1 is that node itself."""
        parts = [(n, c) for n, c in parts if c > 0 and self.size[n] > 0]
        if len(parts) == 1 and parts[0][1] == 1:
            return parts[0][0]
        node = self.new(sum(self.size[n] * c for n, c in parts))
        self.struct[node] = tuple(parts)
        return node

    def _link(self, a: int, b: int) -> int:
        """Joins two atomic roots; flags merge."""
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.taint[a] = self.taint[a] or self.taint[b]
        self.produced[a] = self.produced[a] or self.produced[b]
        self.joined[a] = self.joined[a] or self.joined[b]
        return a

    def _split(self, r: int, k: int) -> None:
        """Refines atomic root `r` into pieces of sizes k and size - k (flags copied)."""
        n1, n2 = self.new(k), self.new(self.size[r] - k)
        for n in (n1, n2):
            self.fixed[n], self.produced[n], self.joined[n] = self.fixed[r], self.produced[r], self.joined[r]
            self.taint[n] = self.taint[r] if self.size[n] > 1 else None
        self.struct[r] = ((n1, 1), (n2, 1))

    def unify(self, a: int, b: int) -> None:
        """Makes two dimensions of equal size one index space (piece by piece)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise AssertionError(f"internal: unifying dimensions of sizes {self.size[ra]} and {self.size[rb]}")
        if self.struct[ra] is None and self.struct[rb] is None:
            self._link(ra, rb)
            return
        while True:
            la, lb = self.resolve(ra), self.resolve(rb)
            i = j = 0
            ca, cb = la[0][1], lb[0][1]
            refined = False
            while i < len(la):
                pa, pb = self.find(la[i][0]), self.find(lb[j][0])
                sa, sb = self.size[pa], self.size[pb]
                if sa == sb:
                    if pa != pb:
                        self._link(pa, pb)
                    n = min(ca, cb)
                    ca, cb = ca - n, cb - n
                elif sa < sb:
                    self._split(pb, sa)
                    refined = True
                    break
                else:
                    self._split(pa, sb)
                    refined = True
                    break
                if ca == 0:
                    i += 1
                    ca = la[i][1] if i < len(la) else 0
                if cb == 0:
                    j += 1
                    cb = lb[j][1] if j < len(lb) else 0
            if not refined:
                break
        ra, rb = self.find(ra), self.find(rb)
        if ra != rb:
            self.parent[rb] = ra
            if self.struct[ra] is None:
                self.struct[ra] = self.struct[rb]

    # -- flags over all pieces of a dimension ------------------------------------------------------------------
    def pieces(self, node: int) -> list[int]:
        return [r for r, _ in self.resolve(node)]

    def all_fixed(self, node: int) -> bool:
        return all(self.fixed[r] is not None for r in self.pieces(node))

    def any_produced(self, node: int) -> bool:
        return any(self.produced[r] for r in self.pieces(node))

    def mark_fixed(self, node: int, reason: str) -> None:
        for r in self.pieces(node):
            if self.fixed[r] is None:
                self.fixed[r] = reason

    def mark_taint(self, node: int, info: tuple) -> None:
        for r in self.pieces(node):
            if self.taint[r] is None and self.size[r] > 1:
                self.taint[r] = info

    def mark(self, node: int, flag: str) -> None:
        arr = getattr(self, flag)
        for r in self.pieces(node):
            arr[r] = True


def _push(out: list[list[int]], root: int, count: int) -> None:
    if out and out[-1][0] == root:
        out[-1][1] += count
    else:
        out.append([root, count])


# -- the abstract interpretation ----------------------------------------------------------------------------------


class _Frame:
    """One evaluation of one jaxpr (the top level, or a sub-jaxpr at one call site): nodes per variable."""

    __slots__ = ("consts", "ctx", "env", "jaxpr", "meta", "pd", "src", "subs")

    def __init__(self, jaxpr, consts, ctx: tuple):
        self.jaxpr = jaxpr
        self.consts = list(consts)
        self.ctx = ctx
        self.env: dict[Any, tuple[int, ...]] = {}
        self.src: dict[Any, tuple[tuple[str, ...], tuple[int | None, ...]]] = {}  # var -> (param path, axis map)
        self.pd: set = set()  # param-derived vars (computed from parameters and constants only)
        self.subs: dict[int, list[_Frame]] = {}
        self.meta: dict[int, Any] = {}


def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _shape(v) -> tuple[int, ...]:
    return tuple(np.shape(v.val)) if _is_literal(v) else tuple(v.aval.shape)


def _loc(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - private API moved
        return ""


def _where(eqn, ctx: tuple) -> str:
    """Where an equation comes from: its source line (or its nearest call site's), and the calls it sits in."""
    loc = _loc(eqn) if eqn is not None else ""
    for _, call in reversed(ctx):
        if loc:
            break
        loc = _loc(call)
    inside = " > ".join(label for label, _ in ctx)
    return (loc or "an unknown location") + (f", inside {inside}" if inside else "")


class _Tracer:
    """Walks a closed jaxpr once, building the dimension union-find and per-frame records for the re-run."""

    def __init__(self):
        self.d = _Dims()
        self.kernels: dict[tuple[tuple[str, ...], int], tuple[int, int, str]] = {}  # -> (order, rank, op)
        self.contracted: set[tuple[tuple[str, ...], int]] = set()
        self.first_use: dict[tuple[str, ...], int] = {}
        self.order = 0

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
        return (why, eqn.primitive.name, eqn, f.ctx)

    def taint_unless_fixed(self, node: int, info: tuple) -> None:
        if not self.d.all_fixed(node):
            self.d.mark_taint(node, info)

    def set_out(self, f: _Frame, v, nodes: tuple[int, ...]) -> None:
        f.env[v] = nodes

    # -- frames -----------------------------------------------------------------------------------------------
    def frame(self, jaxpr, consts, in_nodes, in_src, in_pd, ctx: tuple) -> _Frame:
        f = _Frame(jaxpr, consts, ctx)
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            info = ("a constant array closed over by the traced function", "constant", None, ctx)
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
        name = eqn.primitive.name
        if name in _ELEMENTWISE:
            self.elementwise(f, i, eqn)
        elif name in _IDENTITY:
            for a, b in zip(eqn.invars, eqn.outvars, strict=False):
                self.set_out(f, b, self.nodes(f, a))
                self.copy_src(f, a, b, None)
        elif name in _CALLS:
            self.call(f, i, eqn)
        elif name in _REDUCE:
            self.reduce(f, i, eqn, eqn.params["axes"], eqn.invars[:1], eqn.outvars)
        elif name == "reduce":
            n = len(eqn.outvars)
            self.reduce(f, i, eqn, eqn.params["dimensions"], eqn.invars[:n], eqn.outvars)
        elif name in _CUMULATIVE:
            self.set_out(f, eqn.outvars[0], self.nodes(f, eqn.invars[0]))
            self.copy_src(f, eqn.invars[0], eqn.outvars[0], None)
        elif name in _WINDOW or name == "reduce_window":
            self.window(f, i, eqn)
        elif name in _RANDOM:
            for v in eqn.outvars:
                self.set_out(f, v, self.fresh(v.aval.shape))
        else:
            handler = getattr(self, "p_" + name, None)
            if handler is None:
                self.generic(f, i, eqn, "an unsupported primitive")
            else:
                handler(f, i, eqn)

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

    # -- elementwise ------------------------------------------------------------------------------------------
    def elementwise(self, f: _Frame, i: int, eqn) -> None:
        outs = eqn.outvars
        shape = tuple(outs[0].aval.shape)
        rank = len(shape)
        ins = eqn.invars
        in_nodes = [self.nodes(f, v) for v in ins]
        if any(len(n) not in (0, rank) for n in in_nodes) or any(tuple(o.aval.shape) != shape for o in outs):
            self.generic(f, i, eqn, "an elementwise op with unusual shapes")
            return
        addlike = eqn.primitive.name in ("add", "sub", "add_any")
        d = self.d
        out = []
        for ax in range(rank):
            if shape[ax] == 1:
                out.append(d.new(1))
                continue
            cands = [n[ax] for n, v in zip(in_nodes, ins, strict=True) if n and _shape(v)[ax] == shape[ax]]
            if not cands:
                out.append(d.new(shape[ax]))
                continue
            first = cands[0]
            join = (
                addlike
                and len(cands) > 1
                and len({d.find(c) for c in cands}) > 1
                and all(d.any_produced(c) for c in cands)
            )
            for c in cands[1:]:
                d.unify(first, c)
            if join:
                d.mark(first, "joined")
            out.append(first)
        for o in outs:
            self.set_out(f, o, tuple(out))
        if all(self.is_pd(f, v) for v in ins):
            src = next((f.src[v] for v in ins if not _is_literal(v) and v in f.src and _shape(v) == shape), None)
            for o in outs:
                f.pd.add(o)
                if src is not None:
                    f.src[o] = src

    # -- calls and control flow -------------------------------------------------------------------------------
    def call(self, f: _Frame, i: int, eqn) -> None:
        sub = None
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            if key in eqn.params:
                sub = eqn.params[key]
                break
        inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        if inner is None or len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
            self.generic(f, i, eqn, "a call whose sub-program does not match its operands")
            return
        label = eqn.params.get("name")
        ctx = (*f.ctx, (f"{eqn.primitive.name}({label})" if label else eqn.primitive.name, eqn))
        g = self.sub_frame(f, sub, eqn.invars, ctx)
        f.subs[i] = [g]
        for v, w in zip(eqn.outvars, inner.outvars, strict=True):
            self.set_out(f, v, self.nodes(g, w))
            if not _is_literal(w):
                if w in g.pd:
                    f.pd.add(v)
                if w in g.src:
                    f.src[v] = g.src[w]

    def p_scan(self, f: _Frame, i: int, eqn) -> None:
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        closed = p["jaxpr"]
        ins = eqn.invars
        d = self.d
        nodes, src, pd = [], [], []
        for k, v in enumerate(ins):
            n = self.nodes(f, v)
            s = None if _is_literal(v) else f.src.get(v)
            if k >= nc + ncarry:  # xs: the body sees one slice; axis 0 is the scan axis
                d.mark_fixed(n[0], "the scanned axis of a scan")
                n = n[1:]
                s = (s[0], s[1][1:]) if s is not None else None
            nodes.append(n)
            src.append(s)
            pd.append(self.is_pd(f, v))
        ctx = (*f.ctx, ("scan", eqn))
        g = self.frame(closed.jaxpr, closed.consts, nodes, src, pd, ctx)
        f.subs[i] = [g]
        body_out = [self.nodes(g, w) for w in closed.jaxpr.outvars]
        for k in range(ncarry):
            for a, b in zip(nodes[nc + k], body_out[k], strict=True):
                d.unify(a, b)
            self.set_out(f, eqn.outvars[k], nodes[nc + k])
        for k, v in enumerate(eqn.outvars[ncarry:]):
            self.set_out(f, v, (d.new(p["length"], fixed="the scanned axis of a scan"), *body_out[ncarry + k]))

    def p_while(self, f: _Frame, i: int, eqn) -> None:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        ins = eqn.invars
        carry = ins[cn + bn :]
        ctx = (*f.ctx, ("while", eqn))
        carry_nodes = [self.nodes(f, v) for v in carry]
        cf = self.sub_frame(
            f, p["cond_jaxpr"], [*ins[:cn], *carry], ctx, [*(self.nodes(f, v) for v in ins[:cn]), *carry_nodes]
        )
        bf = self.sub_frame(
            f,
            p["body_jaxpr"],
            [*ins[cn : cn + bn], *carry],
            ctx,
            [*(self.nodes(f, v) for v in ins[cn : cn + bn]), *carry_nodes],
        )
        f.subs[i] = [cf, bf]
        for n, w in zip(carry_nodes, p["body_jaxpr"].jaxpr.outvars, strict=True):
            for a, b in zip(n, self.nodes(bf, w), strict=True):
                self.d.unify(a, b)
        for v, n in zip(eqn.outvars, carry_nodes, strict=True):
            self.set_out(f, v, n)

    def p_cond(self, f: _Frame, i: int, eqn) -> None:
        ops = eqn.invars[1:]
        ctx = (*f.ctx, ("cond", eqn))
        op_nodes = [self.nodes(f, v) for v in ops]
        frames = []
        outs = None
        for br in eqn.params["branches"]:
            g = self.sub_frame(f, br, ops, ctx, op_nodes)
            frames.append(g)
            these = [self.nodes(g, w) for w in br.jaxpr.outvars]
            if outs is None:
                outs = these
            else:
                for a, b in zip(outs, these, strict=True):
                    for x, y in zip(a, b, strict=True):
                        self.d.unify(x, y)
        f.subs[i] = frames
        for v, n in zip(eqn.outvars, outs, strict=True):
            self.set_out(f, v, n)

    # -- reductions and windows -------------------------------------------------------------------------------
    def reduce(self, f: _Frame, i: int, eqn, axes, operands, outvars) -> None:
        nodes = [self.nodes(f, v) for v in operands]
        for other in nodes[1:]:
            for a, b in zip(nodes[0], other, strict=True):
                self.d.unify(a, b)
        n = nodes[0]
        if eqn.primitive.name in ("argmax", "argmin"):
            info = self.taint_info("an arg-reduction returning channel positions", eqn, f)
            for a in axes:
                self.taint_unless_fixed(n[a], info)
        out = tuple(n[k] for k in range(len(n)) if k not in axes)
        for v in outvars:
            self.set_out(f, v, out)
        if len(operands) == 1 and len(outvars) == 1:
            keep = [k for k in range(len(n)) if k not in axes]
            self.copy_src(f, operands[0], outvars[0], keep)

    def window(self, f: _Frame, i: int, eqn) -> None:
        p = eqn.params
        n_out = len(eqn.outvars)
        operands = eqn.invars[:n_out]
        nodes = [self.nodes(f, v) for v in operands]
        for other in nodes[1:]:
            for a, b in zip(nodes[0], other, strict=True):
                self.d.unify(a, b)
        n = nodes[0]
        shape_out = tuple(eqn.outvars[0].aval.shape)
        info = self.taint_info("a pooling window over a channel axis", eqn, f)
        out = []
        for ax, node in enumerate(n):
            ident = (
                p["window_dimensions"][ax] == 1
                and p["window_strides"][ax] == 1
                and tuple(p["padding"][ax]) == (0, 0)
                and p["base_dilation"][ax] == 1
                and p["window_dilation"][ax] == 1
            )
            if ident:
                out.append(node)
            elif self.d.all_fixed(node):
                out.append(self.d.new(shape_out[ax], fixed="a pooled axis"))
            else:
                self.d.mark_taint(node, info)
                out.append(self.d.new(shape_out[ax], taint=info))
        for v in eqn.outvars:
            self.set_out(f, v, tuple(out))

    # -- shape primitives -------------------------------------------------------------------------------------
    def p_broadcast_in_dim(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        shape, bd = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
        n = self.nodes(f, v)
        ishape = _shape(v)
        nodes, amap = [], []
        for j, s in enumerate(shape):
            if j in bd and ishape[bd.index(j)] == s and s > 1:
                nodes.append(n[bd.index(j)])
                amap.append(bd.index(j))
            else:
                nodes.append(self.d.new(s))
                amap.append(None)
        self.set_out(f, out, tuple(nodes))
        self.copy_src(f, v, out, amap)

    def p_squeeze(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        dims = {d % len(_shape(v)) for d in eqn.params["dimensions"]}
        keep = [k for k in range(len(_shape(v))) if k not in dims]
        n = self.nodes(f, v)
        self.set_out(f, out, tuple(n[k] for k in keep))
        self.copy_src(f, v, out, keep)

    def p_transpose(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        perm = tuple(eqn.params["permutation"])
        n = self.nodes(f, v)
        self.set_out(f, out, tuple(n[k] for k in perm))
        self.copy_src(f, v, out, list(perm))

    def p_reshape(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        if eqn.params.get("dimensions") is not None:
            self.generic(f, i, eqn, "a reshape with a dimension permutation")
            return
        d = self.d
        ishape, oshape = _shape(v), tuple(out.aval.shape)
        n = self.nodes(f, v)
        ii = [k for k, s in enumerate(ishape) if s != 1]
        oo = [k for k, s in enumerate(oshape) if s != 1]
        nodes: list[int | None] = [None] * len(oshape)
        amap: list[int | None] = [None] * len(oshape)
        info = self.taint_info("a reshape that does not keep the channel axis minor-most", eqn, f)
        a = b = 0
        while a < len(ii) and b < len(oo):
            bi, bo = [ii[a]], [oo[b]]
            pi, po = ishape[ii[a]], oshape[oo[b]]
            a, b = a + 1, b + 1
            while pi != po:
                if pi < po:
                    bi.append(ii[a])
                    pi *= ishape[ii[a]]
                    a += 1
                else:
                    bo.append(oo[b])
                    po *= oshape[oo[b]]
                    b += 1
            if len(bi) == 1 and len(bo) == 1:
                nodes[bo[0]] = n[bi[0]]
                amap[bo[0]] = bi[0]
                continue
            # Merge then split: the block holds `prod(major)` blocks of its minor-most dimension. Channel-last flattens
            # keep a channel space whole (minor-most); a channel axis in a major position cannot be expressed.
            for k in bi[:-1]:
                self.taint_unless_fixed(n[k], info)
            minor_out = d.new(oshape[bo[-1]])
            for k in bo[:-1]:
                nodes[k] = d.new(oshape[k], taint=info)
            nodes[bo[-1]] = minor_out
            amap[bo[-1]] = bi[-1]
            left = d.compose([(n[bi[-1]], math.prod(ishape[k] for k in bi[:-1]))])
            right = d.compose([(minor_out, math.prod(oshape[k] for k in bo[:-1]))])
            d.unify(left, right)
        for k, s in enumerate(oshape):
            if nodes[k] is None:
                nodes[k] = d.new(s)
        self.set_out(f, out, tuple(nodes))
        self.copy_src(f, v, out, amap)

    def p_rev(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        n = list(self.nodes(f, v))
        info = self.taint_info("a reversal of a channel axis", eqn, f)
        for k in eqn.params["dimensions"]:
            if self.d.all_fixed(n[k]):
                n[k] = self.d.new(self.d.size[n[k]], fixed="a reversed axis")
            else:
                self.d.mark_taint(n[k], info)
                n[k] = self.d.new(self.d.size[n[k]], taint=info)
        self.set_out(f, out, tuple(n))

    def p_concatenate(self, f: _Frame, i: int, eqn) -> None:
        dim = eqn.params["dimension"]
        nodes = [self.nodes(f, v) for v in eqn.invars]
        out = list(nodes[0])
        for other in nodes[1:]:
            for k, (a, b) in enumerate(zip(nodes[0], other, strict=True)):
                if k != dim:
                    self.d.unify(a, b)
        out[dim] = self.d.compose([(n[dim], 1) for n in nodes])
        self.set_out(f, eqn.outvars[0], tuple(out))

    def p_pad(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        n = list(self.nodes(f, v))
        d = self.d
        oshape = tuple(out.aval.shape)
        meta = []
        info = self.taint_info("an interior or mixed pad of a channel axis", eqn, f)
        for ax, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
            lo, hi, interior = int(lo), int(hi), int(interior)
            if lo == 0 and hi == 0 and interior == 0:
                meta.append(None)
                continue
            if d.all_fixed(n[ax]):
                n[ax] = d.new(oshape[ax], fixed="a padded spatial axis")
                meta.append(None)
            elif interior == 0 and lo >= 0 and hi >= 0:
                lo_n = d.new(lo) if lo else None
                hi_n = d.new(hi) if hi else None
                parts = [(x, 1) for x in (lo_n, n[ax], hi_n) if x is not None]
                n[ax] = d.compose(parts)
                meta.append(("grow", lo_n, hi_n))
            elif interior == 0 and lo <= 0 and hi <= 0:
                mid = d.new(oshape[ax])
                lo_n = d.new(-lo) if lo else None
                hi_n = d.new(-hi) if hi else None
                d.unify(n[ax], d.compose([(x, 1) for x in (lo_n, mid, hi_n) if x is not None]))
                n[ax] = mid
                meta.append(("crop", lo_n, hi_n))
            else:
                d.mark_taint(n[ax], info)
                n[ax] = d.new(oshape[ax], taint=info)
                meta.append(None)
        f.meta[i] = meta
        self.set_out(f, out, tuple(n))

    def p_slice(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        p = eqn.params
        n = list(self.nodes(f, v))
        d = self.d
        ishape, oshape = _shape(v), tuple(out.aval.shape)
        strides = p["strides"] or (1,) * len(ishape)
        meta = []
        info = self.taint_info("a strided slice of a channel axis", eqn, f)
        for ax in range(len(ishape)):
            s0, s1, st = int(p["start_indices"][ax]), int(p["limit_indices"][ax]), int(strides[ax])
            if s0 == 0 and s1 == ishape[ax] and st == 1:
                meta.append(("same", None))
            elif d.all_fixed(n[ax]):
                n[ax] = d.new(oshape[ax], fixed="a sliced spatial axis")
                meta.append(("fixed", None))
            elif st == 1:
                pre = d.new(s0) if s0 else None
                mid = d.new(s1 - s0)
                post = d.new(ishape[ax] - s1) if s1 < ishape[ax] else None
                d.unify(n[ax], d.compose([(x, 1) for x in (pre, mid, post) if x is not None]))
                n[ax] = mid
                meta.append(("range", pre))
            else:
                d.mark_taint(n[ax], info)
                n[ax] = d.new(oshape[ax], taint=info)
                meta.append(("fixed", None))
        f.meta[i] = meta
        self.set_out(f, out, tuple(n))

    def p_split(self, f: _Frame, i: int, eqn) -> None:
        v = eqn.invars[0]
        axis = eqn.params["axis"]
        n = list(self.nodes(f, v))
        d = self.d
        if d.all_fixed(n[axis]):
            pieces = [d.new(int(s), fixed="a split spatial axis") for s in eqn.params["sizes"]]
        else:
            pieces = [d.new(int(s)) for s in eqn.params["sizes"]]
            d.unify(n[axis], d.compose([(x, 1) for x in pieces]))
        for o, piece in zip(eqn.outvars, pieces, strict=True):
            m = list(n)
            m[axis] = piece
            self.set_out(f, o, tuple(m))

    def p_dynamic_slice(self, f: _Frame, i: int, eqn) -> None:
        v, out = eqn.invars[0], eqn.outvars[0]
        n = list(self.nodes(f, v))
        ishape, oshape = _shape(v), tuple(out.aval.shape)
        info = self.taint_info("a dynamic slice of a channel axis", eqn, f)
        amap = []
        for ax in range(len(ishape)):
            amap.append(ax)
            if ishape[ax] == oshape[ax]:
                continue
            amap[-1] = None
            if self.d.all_fixed(n[ax]):
                n[ax] = self.d.new(oshape[ax], fixed="a sliced axis")
            else:
                self.d.mark_taint(n[ax], info)
                n[ax] = self.d.new(oshape[ax], taint=info)
        self.set_out(f, out, tuple(n))
        self.copy_src(f, v, out, amap)

    def p_dynamic_update_slice(self, f: _Frame, i: int, eqn) -> None:
        v, upd, out = eqn.invars[0], eqn.invars[1], eqn.outvars[0]
        n, u = self.nodes(f, v), self.nodes(f, upd)
        info = self.taint_info("a dynamic update of part of a channel axis", eqn, f)
        for ax, (a, b) in enumerate(zip(n, u, strict=True)):
            if _shape(v)[ax] == _shape(upd)[ax]:
                self.d.unify(a, b)
            elif not self.d.all_fixed(a):
                self.d.mark_taint(a, info)
                self.d.mark_taint(b, info)
        self.set_out(f, out, n)

    def p_iota(self, f: _Frame, i: int, eqn) -> None:
        out = eqn.outvars[0]
        shape = tuple(out.aval.shape)
        info = self.taint_info("an iota (values that depend on the channel position)", eqn, f)
        nodes = list(self.fresh(shape))
        dim = eqn.params["dimension"]
        nodes[dim] = self.d.new(shape[dim], taint=info)
        self.set_out(f, out, tuple(nodes))

    def p_sort(self, f: _Frame, i: int, eqn) -> None:
        dim = eqn.params["dimension"]
        nodes = [self.nodes(f, v) for v in eqn.invars]
        for other in nodes[1:]:
            for a, b in zip(nodes[0], other, strict=True):
                self.d.unify(a, b)
        self.taint_unless_fixed(nodes[0][dim], self.taint_info("a sort along a channel axis", eqn, f))
        for v in eqn.outvars:
            self.set_out(f, v, nodes[0])

    def p_top_k(self, f: _Frame, i: int, eqn) -> None:
        v = eqn.invars[0]
        n = list(self.nodes(f, v))
        axis = eqn.params.get("axis", len(n) - 1) % len(n)
        k = eqn.outvars[0].aval.shape[axis]
        if self.d.all_fixed(n[axis]):
            n[axis] = self.d.new(k, fixed="a top-k axis")
        else:
            info = self.taint_info("a top-k along a channel axis", eqn, f)
            self.d.mark_taint(n[axis], info)
            n[axis] = self.d.new(k, taint=info)
        for o in eqn.outvars:
            self.set_out(f, o, tuple(n))

    # -- the layers: convolutions and contractions ------------------------------------------------------------
    def p_conv_general_dilated(self, f: _Frame, i: int, eqn) -> None:
        p = eqn.params
        lhs, rhs = eqn.invars
        out = eqn.outvars[0]
        if p["batch_group_count"] != 1:
            self.generic(f, i, eqn, "a convolution with batch_group_count > 1")
            return
        dn = p["dimension_numbers"]
        ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        d = self.d
        ln, rn = self.nodes(f, lhs), self.nodes(f, rhs)
        oshape = tuple(out.aval.shape)
        on: list[int | None] = [None] * len(oshape)
        on[os_[0]] = ln[ls[0]]
        for k in range(2, len(ls)):
            d.mark_fixed(ln[ls[k]], "a spatial axis of a convolution")
            d.mark_fixed(rn[rs[k]], "a window axis of a convolution kernel")
            on[os_[k]] = d.new(oshape[os_[k]], fixed="a spatial axis of a convolution")
        groups = p["feature_group_count"]
        cin, cout = _shape(lhs)[ls[1]], oshape[os_[1]]
        lf, rif, rof = ln[ls[1]], rn[rs[1]], rn[rs[0]]
        depthwise = False
        if groups == 1:
            d.unify(lf, rif)
        elif cin == groups and cout == groups:
            # Depthwise: input channel c feeds output channel c only, so input and output are one index space.
            d.unify(lf, rof)
            depthwise = True
        else:
            # Grouped: channel j of every group shares the kernel's input slot j; filter m of every group shares
            # output slot m. Pruning keeps the groups uniform (the same slot in every group).
            if cin == groups:
                d.mark_taint(lf, self.taint_info("a depthwise convolution with a channel multiplier", eqn, f))
            else:
                jn = d.new(cin // groups)
                d.unify(lf, d.compose([(jn, groups)]))
                d.unify(rif, jn)
            mn = d.new(cout // groups)
            d.unify(rof, d.compose([(mn, groups)]))
        on[os_[1]] = rof
        self.set_out(f, out, tuple(on))
        if depthwise:
            f.meta[i] = "depthwise"
        if self.is_pd(f, rhs) and not self.is_pd(f, lhs):
            d.mark(rof, "produced")
            if rhs in f.src:
                path, axes = f.src[rhs]
                if axes[rs[0]] is not None:
                    self.kernels.setdefault((path, axes[rs[0]]), (self.order, 1 if depthwise else 0, "conv"))
                if axes[rs[1]] is not None and not depthwise:
                    self.contracted.add((path, axes[rs[1]]))

    def p_dot_general(self, f: _Frame, i: int, eqn) -> None:
        lhs, rhs = eqn.invars
        out = eqn.outvars[0]
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lc, rc, lb, rb = tuple(lc), tuple(rc), tuple(lb), tuple(rb)
        d = self.d
        ln, rn = self.nodes(f, lhs), self.nodes(f, rhs)
        for a, b in zip(lc, rc, strict=True):
            d.unify(ln[a], rn[b])
        for a, b in zip(lb, rb, strict=True):
            d.unify(ln[a], rn[b])
        lfree = [k for k in range(len(ln)) if k not in lc and k not in lb]
        rfree = [k for k in range(len(rn)) if k not in rc and k not in rb]
        self.set_out(f, out, tuple([ln[a] for a in lb] + [ln[a] for a in lfree] + [rn[b] for b in rfree]))
        lpd, rpd = self.is_pd(f, lhs), self.is_pd(f, rhs)
        if lpd and rpd:
            f.pd.add(out)
            return
        for v, free, contr, nodes, pd in ((lhs, lfree, lc, ln, lpd), (rhs, rfree, rc, rn, rpd)):
            if not pd:
                continue
            for k in free:
                d.mark(nodes[k], "produced")
            if not _is_literal(v) and v in f.src:
                path, axes = f.src[v]
                for k in free:
                    if axes[k] is not None:
                        self.kernels.setdefault((path, axes[k]), (self.order, 0, "dense"))
                for k in contr:
                    if axes[k] is not None:
                        self.contracted.add((path, axes[k]))


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


def _analyze(fn: Callable, variables: dict, example_input) -> _Trace:
    """Traces `fn(variables, x)` abstractly and builds the dimension classes (no groups yet)."""
    abs_vars = jax.tree_util.tree_map(_abstract, variables)
    abs_x = jax.tree_util.tree_map(_abstract, example_input)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(abs_vars, abs_x)
    return _analyze_jaxpr(closed, out_shape, abs_vars, abs_x)


def _analyze_jaxpr(closed, out_shape, abs_vars, abs_x) -> _Trace:
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
    for v in jaxpr.outvars:
        for n in t.nodes(top, v):
            d.mark_fixed(n, "the model's output")
    used = _used_invars(jaxpr)
    specs = _extract(t, leaves, [v in used for v in jaxpr.invars[: len(leaves)]])
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
    why, prim, eqn, ctx = info
    if eqn is None:
        return why
    return f"{why}: '{prim}' at {_where(eqn, ctx)}"


def _extract(t: _Tracer, leaves, used: list[bool]) -> list[_Spec]:
    """Turns the dimension classes into group specs; raises for anything the trace cannot attribute."""
    d = t.d
    members: dict[int, list[_Member]] = {}
    leaf_roots: dict[tuple[str, ...], list[list[int]]] = {}
    leaf_order = {path: t.first_use.get(path, 1 << 30) for path, _ in leaves}
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
                    if d.fixed[r] is None and _has_kernel(t, d, r, leaves):
                        raise ValueError(
                            f"trace_groups: parameter {'/'.join(path)} axis {axis} holds the channels of one group in "
                            "several separate blocks (e.g. a flatten after a concatenation); a group can own one "
                            "contiguous span of an axis (AxisRef offset and repeat)"
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
        if d.taint[r] is not None:
            axes = ", ".join(f"{'/'.join(m.path)} axis {m.axis}" for m in mem[:6]) + (", ..." if len(mem) > 6 else "")
            raise ValueError(
                f"trace_groups: a channel group ({axes}) passes through {_describe_taint(d.taint[r])}; jaxprune cannot "
                "follow channels through it, so it cannot prune them safely. Supported primitives: "
                "jaxprune.trace.SUPPORTED_PRIMITIVES (on a channel axis: elementwise ops, conv_general_dilated, "
                "dot_general, concatenate, contiguous slice/split, pad, channel-last reshape, transpose, reductions)"
            )
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
                prunable=True,
                stage=None,
                order=min(k[0][0] for k in kern),
            )
        )
        group_roots.add(r)

    # Every parameter must be accounted for: some axis in a group, or tied to the input/output/a window.
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
        if any(r in group_roots or d.fixed[r] is not None for a in big for r in per_axis[a]):
            continue
        taints = [d.taint[r] for a in big for r in per_axis[a] if d.taint[r] is not None]
        if taints:
            raise ValueError(
                f"trace_groups: parameter {'/'.join(path)} reaches {_describe_taint(taints[0])}; jaxprune cannot "
                "attribute its channels to any group"
            )
        raise ValueError(
            f"trace_groups: parameter {'/'.join(path)} (shape {tuple(d.size[n] for n in nodes)}) reaches the output "
            "through no channel-preserving path: none of its axes is written by a conv or dense kernel, tied to the "
            "model's input or output, or a convolution window (e.g. it is only summed away)"
        )
    specs.sort(key=lambda s: s.order)
    _unique_names(specs)
    return specs


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
    width = sizes.get(spec.root, d.size[spec.root])
    producers, consumers = [], []
    scored_ref = None
    for m in spec.members:
        pos, start, count = 0, 0, 1
        for root, c in m.runs:
            w = sizes.get(root, d.size[root])
            if root == spec.root:
                start, count = pos, c
            pos += w * c
        offset = None if (start == 0 and width * count == pos) else start
        ref = AxisRef(m.path, m.axis, repeat=count, offset=offset)
        (producers if m.role == "producer" else consumers).append(ref)
        if spec.scored == (m.path, m.axis):
            scored_ref = ref
    return ChannelGroup(
        name=spec.name,
        width=width,
        producers=tuple(producers),
        consumers=tuple(consumers),
        scored=scored_ref,
        prunable=spec.prunable and scored_ref is not None,
        kind=spec.kind,
        stage=spec.stage,
    )


# -- policy --------------------------------------------------------------------------------------------------------


def _axes_key(g: ChannelGroup):
    return frozenset(g.producers), frozenset(g.consumers)


def _apply_policy(specs: list[_Spec], d: _Dims, policy) -> None:
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
            s.name, s.kind, s.stage, s.prunable = twin.name, twin.kind, twin.stage, twin.prunable
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


# -- re-running the traced program (pruned widths, channel masks) -------------------------------------------------


class _Runner:
    """Evaluates a traced program eqn by eqn at new widths (shape parameters rewritten from the dimension classes)
    and/or with 0/1 channel masks applied wherever a masked group's channels are mixed."""

    def __init__(self, trace: _Trace, sizes: Mapping[int, int], masks: Mapping[int, Any] | None):
        self.t = trace
        self.d = trace.dims
        self.sizes = dict(sizes)
        self.masks = dict(masks or {})
        self._ns: dict[int, int] = {}
        self._vec: dict[int, Any] = {}

    def ns(self, node: int) -> int:
        if node not in self._ns:
            d = self.d
            self._ns[node] = sum(c * self.sizes.get(r, d.size[r]) for r, c in d.resolve(node))
        return self._ns[node]

    def shape(self, nodes) -> tuple[int, ...]:
        return tuple(self.ns(n) for n in nodes)

    def run(self, flat_args: list) -> list:
        return self.frame(self.t.top, list(flat_args))

    def mask(self, nodes, value, axes):
        """Zeroes masked channels of `value` along `axes` (only where channels are mixed: see `mix`)."""
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            return value
        for ax in axes:
            vec = self.vector(nodes[ax])
            if vec is not None:
                shape = [1] * len(nodes)
                shape[ax] = -1
                value = value * jnp.reshape(vec, shape).astype(jnp.result_type(value))
        return value

    def mix(self, f: _Frame, eqn, invals: list) -> list:
        """Masking reference: a removed channel's values stay in the original-shape program but are zeroed wherever
        channels are mixed (contractions, reductions, cumulative ops), so they contribute nothing, as if removed.
        Zeroing every value instead would break non-linear per-channel ops (rsqrt of a zeroed BN variance)."""
        name = eqn.primitive.name
        ins = eqn.invars
        if name == "conv_general_dilated":
            ax = eqn.params["dimension_numbers"].lhs_spec[1]
            return [self.mask(f.env[ins[0]], invals[0], (ax,)), *invals[1:]]
        if name == "dot_general":
            (lc, rc), _ = eqn.params["dimension_numbers"]
            out = list(invals)
            for k, axes in ((0, lc), (1, rc)):
                if not _is_literal(ins[k]):
                    out[k] = self.mask(f.env[ins[k]], out[k], tuple(axes))
            return out
        if name in _REDUCE or name == "reduce":
            axes = tuple(eqn.params["axes" if name != "reduce" else "dimensions"])
            n = len(eqn.outvars) if name == "reduce" else 1
            return [
                self.mask(f.env[v], a, axes) if k < n and not _is_literal(v) else a
                for k, (v, a) in enumerate(zip(ins, invals, strict=True))
            ]
        if name in _CUMULATIVE:
            return [self.mask(f.env[ins[0]], invals[0], (eqn.params["axis"],))]
        return invals

    def vector(self, node: int):
        if node in self._vec:
            return self._vec[node]
        runs = self.d.resolve(node)
        vec = None
        if any(r in self.masks for r, _ in runs):
            parts = []
            for r, c in runs:
                m = self.masks[r] if r in self.masks else jnp.ones((self.sizes.get(r, self.d.size[r]),), jnp.float32)
                parts.extend([jnp.asarray(m, jnp.float32)] * c)
            vec = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
        self._vec[node] = vec
        return vec

    def frame(self, f: _Frame, args: list) -> list:
        env: dict[Any, Any] = {}
        for v, c in zip(f.jaxpr.constvars, f.consts, strict=True):
            env[v] = c
        for v, a in zip(f.jaxpr.invars, args, strict=True):
            env[v] = a

        def read(v):
            return v.val if _is_literal(v) else env[v]

        for i, eqn in enumerate(f.jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            if self.masks:
                invals = self.mix(f, eqn, invals)
            outs = self.eqn(f, i, eqn, invals)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in f.jaxpr.outvars]

    def changed(self, f: _Frame, eqn) -> bool:
        if not self.sizes:
            return False
        for v in (*eqn.invars, *eqn.outvars):
            if not _is_literal(v) and self.shape(f.env[v]) != tuple(v.aval.shape):
                return True
        return False

    def eqn(self, f: _Frame, i: int, eqn, invals: list) -> list:
        name = eqn.primitive.name
        if i in f.subs:
            subs = f.subs[i]
            if name not in ("scan", "while", "cond"):
                return self.frame(subs[0], invals)
            # Bodies are traced by lax: mask vectors built inside them must not be cached outside.
            saved, self._vec = self._vec, {}
            try:
                if name == "scan":
                    return self.scan(eqn, subs[0], invals)
                if name == "while":
                    return self.while_(eqn, subs, invals)
                branches = [lambda *a, g=g: self.frame(g, list(a)) for g in subs]
                return list(lax.switch(invals[0], branches, *invals[1:]))
            finally:
                self._vec = saved
        params = self.rewrite(f, i, eqn) if self.changed(f, eqn) else eqn.params
        out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def scan(self, eqn, body: _Frame, invals: list) -> list:
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

        def step(carry, x):
            outs = self.frame(body, [*consts, *carry, *x])
            return outs[:ncarry], outs[ncarry:]

        carry, ys = lax.scan(step, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
        return [*carry, *ys]

    def while_(self, eqn, subs: list[_Frame], invals: list) -> list:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cc, bc, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        cf, bf = subs
        out = lax.while_loop(
            lambda c: self.frame(cf, [*cc, *c])[0], lambda c: tuple(self.frame(bf, [*bc, *c])), tuple(init)
        )
        return list(out)

    def rewrite(self, f: _Frame, i: int, eqn) -> dict:
        name = eqn.primitive.name
        p = dict(eqn.params)
        out_shape = self.shape(f.env[eqn.outvars[0]])
        if name == "broadcast_in_dim":
            p["shape"] = out_shape
        elif name == "reshape":
            p["new_sizes"] = out_shape
        elif name == "slice":
            start, limit = list(p["start_indices"]), list(p["limit_indices"])
            for ax, (kind, pre) in enumerate(f.meta[i]):
                if kind == "same":
                    start[ax], limit[ax] = 0, out_shape[ax]
                elif kind == "range":
                    start[ax] = self.ns(pre) if pre is not None else 0
                    limit[ax] = start[ax] + out_shape[ax]
            p["start_indices"], p["limit_indices"] = tuple(start), tuple(limit)
        elif name == "split":
            axis = p["axis"]
            p["sizes"] = tuple(self.shape(f.env[v])[axis] for v in eqn.outvars)
        elif name == "pad":
            config = [tuple(int(c) for c in cfg) for cfg in p["padding_config"]]
            for ax, m in enumerate(f.meta[i]):
                if m is None:
                    continue
                kind, lo_n, hi_n = m
                sign = 1 if kind == "grow" else -1
                lo = sign * self.ns(lo_n) if lo_n is not None else 0
                hi = sign * self.ns(hi_n) if hi_n is not None else 0
                config[ax] = (lo, hi, 0)
            p["padding_config"] = tuple(config)
        elif name == "conv_general_dilated":
            if f.meta.get(i) == "depthwise":
                lhs = eqn.invars[0]
                p["feature_group_count"] = self.shape(f.env[lhs])[p["dimension_numbers"].lhs_spec[1]]
        elif name == "dynamic_slice":
            p["slice_sizes"] = out_shape
        elif "shape" in p:
            p["shape"] = out_shape
        return p


# -- the traced model --------------------------------------------------------------------------------------------


class TracedModel:
    """A model seen through its traced channel groups: what `make_plan`, `prune` and `mask_dropped` need.

    It implements the model protocol (`channel_groups()`, `with_widths(mapping)`, `stages()`), and `apply(variables,
    x, *, masks=None)`, which re-runs the traced program at the model's current widths (the jaxpr's shape parameters
    rewritten from the traced channel spaces; one jitted program per width configuration) and, with `masks`, zeroes
    the masked channels wherever channels are mixed (contractions, reductions): the masking reference for a traced
    model (docs/design.md §4). `prune(traced, variables, plan)` returns a new `TracedModel` and the sliced variables;
    `module` (Linen) or `nnx_module(variables)` (NNX) give a real model at the new widths. Build one with
    `trace_model`.

    The re-run keeps the traced program's constants: a mean over a pruned channel axis (LayerNorm over features)
    still divides by the traced width, so the re-run equals the masked original, whereas a rebuilt module
    normalises over the channels that remain.

    Attributes:
      kind: ``"linen"`` (a Flax Linen module), ``"nnx"`` (a Flax NNX module) or ``"function"`` (an apply function).
    """

    def __init__(self, *, trace, specs, sizes, fn, variables_abstract, kind, module, fields, nnx_parts, zoo):
        self._trace: _Trace = trace
        self._specs: list[_Spec] = specs
        self._sizes: dict[int, int] = dict(sizes)
        self._fn = fn
        self._abstract = variables_abstract
        self.kind = kind
        self._module = module
        self._fields = dict(fields or {})
        self._nnx = nnx_parts
        self._zoo = zoo
        self._groups: tuple[ChannelGroup, ...] | None = None
        self._retraced: dict[Any, tuple[_Trace, dict[int, int]]] = {}
        self._policy = None
        self._compiled: dict[Any, Any] = {}

    # -- the model protocol ----------------------------------------------------------------------------------
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """The traced groups at the current widths, in forward order."""
        if self._groups is None:
            d = self._trace.dims
            self._groups = tuple(_materialize(s, d, self._sizes) for s in self._specs)
        return self._groups

    def group_widths(self) -> dict[str, int]:
        """Current width of every group, by name."""
        return {g.name: g.width for g in self.channel_groups()}

    def stages(self) -> dict[str, tuple[str, ...]]:
        """Stage name -> the prunable conv-filter groups a stage ratio reaches (from the policy; empty if none)."""
        return stage_map(self.channel_groups())

    def with_widths(self, mapping: Mapping[str, int]) -> TracedModel:
        """The same traced model with the named groups at new widths (the module is rebuilt when it can be).

        Raises:
          TypeError: a mapping that is not a mapping, or a width that is not an int.
          ValueError: an unknown or non-prunable group, or a width outside [1, current width].
        """
        groups = {g.name: g for g in self.channel_groups()}
        specs = {s.name: s for s in self._specs}
        sizes = dict(self._sizes)
        changed: dict[str, int] = {}
        for name, width in checked_widths(groups.values(), mapping, "this traced model").items():
            if width != groups[name].width:
                sizes[specs[name].root] = width
                changed[name] = width
        if not changed:
            return self
        module = self._module
        if self._zoo is not None:
            module = module.with_widths(changed)
        elif self.kind == "linen" and module is not None:
            module = self._rebuild_linen(module, changed)
        new = TracedModel(
            trace=self._trace,
            specs=self._specs,
            sizes=sizes,
            fn=self._fn,
            variables_abstract=self._abstract,
            kind=self.kind,
            module=module,
            fields=self._fields,
            nnx_parts=self._nnx,
            zoo=self._zoo,
        )
        new._policy = self._policy
        return new

    def _rebuild_linen(self, module, changed: Mapping[str, int]):
        missing = [n for n in changed if n not in self._fields]
        if missing:
            return None
        updates: dict[str, Any] = {}
        for name, width in changed.items():
            field, idx, scale = self._fields[name]
            if idx is None:
                updates[field] = width * scale
            else:
                cur = list(updates.get(field, getattr(module, field)))
                cur[idx] = width * scale
                updates[field] = type(getattr(module, field))(cur)
        return module.clone(**updates)

    @property
    def module(self):
        """The model at the current widths: the Linen module (a zoo model, or one rebuilt through `fields`).

        Raises:
          ValueError: when no module can be rebuilt (an apply function, an NNX model: use `nnx_module(variables)`,
            or a Linen model with a pruned group that `fields` does not map); `apply` always works.
        """
        if self.kind == "nnx":
            raise ValueError("an NNX traced model rebuilds its module from variables: use nnx_module(variables)")
        if self._module is None:
            if self.kind == "function":
                raise ValueError("this model was traced from an apply function; run it with TracedModel.apply")
            unmapped = [s.name for s in self._specs if s.root in self._sizes and s.name not in self._fields]
            raise ValueError(
                f"pruned groups {unmapped} have no constructor field (trace_model(..., fields={{group: field}})); "
                "run the pruned model with TracedModel.apply"
            )
        return self._module

    def abstract_variables(self) -> dict[str, Any]:
        """`jax.ShapeDtypeStruct` leaves of the variables at the current widths."""
        runner = _Runner(self._trace, self._sizes, None)
        flat = {}
        for (path, nodes), aval in zip(self._trace.leaves, self._trace.in_avals, strict=False):
            flat[path] = jax.ShapeDtypeStruct(runner.shape(nodes), aval.dtype)
        return _unflatten(flat)

    # -- running ----------------------------------------------------------------------------------------------
    def apply(self, variables: Mapping[str, Any], x, *, train: bool = False, masks: Mapping[str, Any] | None = None):
        """Runs the traced program at the current widths (inference only).

        Args:
          variables: Variables at the current widths (e.g. from `jaxprune.prune`).
          x: Input; another shape than the traced example re-traces the original model at that shape (cached).
          train: Must be False: the traced program is the inference forward pass.
          masks: Optional group name -> 0/1 vector: the 0-channels are zeroed wherever channels are mixed
            (contractions, reductions), so they contribute nothing, as if removed (the masking reference, docs/design.md
            §4); groups not named are not masked.

        Raises:
          ValueError: `train=True`, variables that do not match the current widths, a mask for an unknown group or
            of the wrong length.
        """
        if train:
            raise ValueError(
                "a TracedModel runs the traced inference program only (train=False); train the rebuilt module instead"
            )
        variables = _check_variables(variables)
        trace, sizes = self._trace_for(x)
        root_of = {s.name: s.root for s in trace.specs}
        mroot: dict[int, Any] = {}
        if masks:
            if not isinstance(masks, Mapping):
                raise TypeError(f"masks must be a mapping from group names to 0/1 vectors, got {type(masks).__name__}")
            widths = self.group_widths()
            for name, m in masks.items():
                if name not in root_of:
                    raise ValueError(f"mask for unknown group {name!r}; groups: {', '.join(root_of)}")
                if tuple(jnp.shape(m)) != (widths[name],):
                    raise ValueError(f"mask for group {name!r} must have shape ({widths[name]},), got {jnp.shape(m)}")
                mroot[root_of[name]] = m
        leaves, tree = jax.tree_util.tree_flatten((variables, x))
        if tree != trace.in_tree:
            raise ValueError(
                f"variables and input do not match the traced structure: expected {trace.in_tree}, got {tree}"
            )
        runner = _Runner(trace, sizes, None)
        for (path, nodes), leaf in zip(trace.leaves, leaves, strict=False):
            want = runner.shape(nodes)
            if tuple(np.shape(leaf)) != want:
                raise ValueError(
                    f"variables do not match the traced model's current widths: {'/'.join(path)} has shape "
                    f"{tuple(np.shape(leaf))}, expected {want}"
                )
        # One jitted program per (trace, masked groups): masks are traced inputs, so any mask reuses the compile.
        mkeys = tuple(sorted(mroot))
        key = (id(trace), mkeys)
        fn = self._compiled.get(key)
        if fn is None:

            def run(flat, mvals, trace=trace, sizes=sizes, mkeys=mkeys):
                return _Runner(trace, sizes, dict(zip(mkeys, mvals, strict=True))).run(flat)

            fn = self._compiled[key] = jax.jit(run)
        out = fn(leaves, [mroot[k] for k in mkeys])
        return jax.tree_util.tree_unflatten(trace.out_tree, out)

    def __call__(self, variables, x, **kw):
        return self.apply(variables, x, **kw)

    def _trace_for(self, x) -> tuple[_Trace, dict[int, int]]:
        avals = [_abstract(a) for a in jax.tree_util.tree_leaves(x)]
        mine = self._trace.in_avals[self._trace.n_var_leaves :]
        if [(a.shape, a.dtype) for a in avals] == [(a.shape, a.dtype) for a in mine]:
            return self._trace, self._sizes
        key = tuple((a.shape, str(a.dtype)) for a in avals)
        if key not in self._retraced:
            abs_x = jax.tree_util.tree_map(_abstract, x)
            trace = _analyze(self._fn, self._abstract, abs_x)
            _apply_policy(trace.specs, trace.dims, self._policy)
            old = {s.root: s.name for s in self._specs}
            new_root = {s.name: s.root for s in trace.specs}
            sizes = {}
            for root, w in self._sizes.items():
                name = old[root]
                if name not in new_root:
                    raise ValueError(f"re-tracing at input shapes {key} lost group {name!r}; trace at that shape")
                sizes[new_root[name]] = w
            if len(self._retraced) > 8:
                self._retraced.clear()
            self._retraced[key] = (trace, sizes)
        return self._retraced[key]

    # -- NNX --------------------------------------------------------------------------------------------------
    def nnx_module(self, variables: Mapping[str, Any]):
        """A new NNX module holding `variables` (e.g. pruned ones), with feature attributes updated to the new shapes.

        `nnx.Linear`, `nnx.Conv` (including depthwise `feature_group_count`), `nnx.BatchNorm`, `nnx.LayerNorm`,
        `nnx.GroupNorm`, `nnx.RMSNorm` and `nnx.Embed` get their size attributes updated; other modules read their
        parameters' shapes at call time.

        Raises:
          ValueError: the model was not traced from an NNX module.
        """
        if self.kind != "nnx":
            raise ValueError(f"nnx_module needs a model traced from an NNX module; this one is a {self.kind} model")
        from flax import nnx

        graphdef, states = self._nnx
        variables = _check_variables(variables)
        module = nnx.merge(graphdef, *_nnx_fill(states, variables))
        _nnx_update_sizes(module)
        return module

    def __repr__(self) -> str:
        gs = self.channel_groups()
        return f"TracedModel(kind={self.kind!r}, {len(gs)} groups, {sum(g.prunable for g in gs)} prunable)"


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


# -- NNX plumbing -------------------------------------------------------------------------------------------------

_NNX_COLLECTIONS = (("params", "Param"), ("batch_stats", "BatchStat"))


def _is_nnx_module(obj) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, nnx.Module)


def _str_keys(tree):
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _restore_keys(tree, template):
    if isinstance(template, Mapping):
        if not isinstance(tree, Mapping):
            raise ValueError(f"NNX variables: expected a mapping with keys {list(template)}, got {type(tree).__name__}")
        out = {}
        for k, sub in template.items():
            if str(k) not in tree:
                raise ValueError(f"NNX variables: key {str(k)!r} is missing")
            out[k] = _restore_keys(tree[str(k)], sub)
        return out
    return tree


def _nnx_split(module):
    from flax import nnx

    graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    return graphdef, (params, stats, rest)


def nnx_variables(module) -> dict[str, Any]:
    """The variables of an NNX module as jaxprune sees them: ``{'params': ..., 'batch_stats': ...}`` nested dicts.

    `nnx.Param` leaves go to ``params`` and `nnx.BatchStat` leaves to ``batch_stats`` (omitted when empty); keys are
    strings (list indices become ``'0'``, ``'1'``...), so paths work as `AxisRef` paths and with `prune`.

    Raises:
      TypeError: `module` is not an NNX module.
    """
    if not _is_nnx_module(module):
        raise TypeError(f"nnx_variables takes a flax.nnx.Module, got {type(module).__name__}")
    _, (params, stats, _) = _nnx_split(module)
    out = {"params": _str_keys(params.to_pure_dict())}
    sd = stats.to_pure_dict()
    if sd:
        out["batch_stats"] = _str_keys(sd)
    return out


def _nnx_fill(states, variables: Mapping[str, Any]):
    params, stats, rest = states
    out = []
    for (coll, _), template in zip(_NNX_COLLECTIONS, (params, stats), strict=True):
        pure = template.to_pure_dict()
        st = jax.tree_util.tree_map(lambda a: a, template)
        if pure:
            if coll not in variables:
                raise ValueError(f"NNX variables need a {coll!r} collection")
            st.replace_by_pure_dict(_restore_keys(variables[coll], pure))
        out.append(st)
    out.append(rest)
    return out


def _nnx_apply(graphdef, states):
    from flax import nnx

    def apply(variables, x):
        return nnx.merge(graphdef, *_nnx_fill(states, variables))(x)

    return apply


def _nnx_value(var):
    get = getattr(var, "get_value", None)
    return get() if callable(get) else var.value


def _nnx_update_sizes(module) -> None:
    from flax import nnx

    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.Linear):
            m.in_features, m.out_features = (int(s) for s in _nnx_value(m.kernel).shape)
        elif isinstance(m, nnx.Conv):
            kshape = tuple(int(s) for s in _nnx_value(m.kernel).shape)
            groups = m.feature_group_count
            if groups > 1 and kshape[-2] == 1:  # depthwise: one input channel per group, the groups shrink
                groups = kshape[-1] // max(1, m.out_features // m.feature_group_count)
            m.feature_group_count = groups
            m.in_features, m.out_features, m.kernel_shape = kshape[-2] * groups, kshape[-1], kshape
        elif isinstance(m, nnx.BatchNorm | nnx.LayerNorm | nnx.RMSNorm | nnx.GroupNorm):
            for attr in ("scale", "bias", "mean", "var"):
                v = getattr(m, attr, None)
                if isinstance(v, nnx.Variable):
                    m.num_features = int(_nnx_value(v).shape[-1])
                    break
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = (int(s) for s in _nnx_value(m.embedding).shape)


# -- public entry points -----------------------------------------------------------------------------------------


def _resolve_target(model_or_fn, variables):
    """(kind, apply fn, variables, module, zoo model, nnx parts) for a Linen module, an NNX module or a function."""
    import flax.linen as nn

    if _is_nnx_module(model_or_fn):
        graphdef, states = _nnx_split(model_or_fn)
        if variables is None:
            variables = nnx_variables(model_or_fn)
        variables = _check_variables(variables)
        return "nnx", _nnx_apply(graphdef, states), variables, None, None, (graphdef, states)
    if variables is None:
        raise TypeError("variables are required (only an NNX module carries its own)")
    variables = _check_variables(variables)
    if isinstance(model_or_fn, nn.Module):
        module = model_or_fn
        zoo = module if callable(getattr(module, "channel_groups", None)) else None
        return "linen", (lambda v, x: module.apply(v, x)), variables, module, zoo, None
    if callable(model_or_fn):
        owner = getattr(model_or_fn, "__self__", None) or getattr(getattr(model_or_fn, "func", None), "__self__", None)
        zoo = owner if callable(getattr(owner, "channel_groups", None)) else None
        return "function", model_or_fn, variables, None, zoo, None
    raise TypeError(
        f"expected a flax Linen module, an NNX module or an apply function (variables, x) -> output, got "
        f"{type(model_or_fn).__name__}"
    )


def _check_input(example_input) -> None:
    leaves = jax.tree_util.tree_leaves(example_input)
    if not leaves:
        raise TypeError("example_input must be an array (or a pytree of arrays / jax.ShapeDtypeStruct), got no leaves")
    for leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct | jax.Array | np.ndarray | np.generic | float | int):
            raise TypeError(f"example_input leaves must be arrays or jax.ShapeDtypeStruct, got {type(leaf).__name__}")


def trace_model(
    model_or_fn,
    variables: Mapping[str, Any] | None,
    example_input,
    *,
    policy=None,
    fields: Mapping[str, str | tuple[str, int]] | None = None,
) -> TracedModel:
    """Traces a model and returns a `TracedModel` that `make_plan`, `prune` and `mask_dropped` accept.

    Args:
      model_or_fn: A Flax Linen module (run as ``module.apply(variables, x)``), a Flax NNX module (split into state and
        graph; run as ``module(x)``, so put it in eval mode first), or an apply function ``(variables, x) -> output``.
      variables: The variables (arrays or `jax.ShapeDtypeStruct`; only shapes are read). None for an NNX module:
        its own (`nnx_variables`).
      example_input: An example input (array or `jax.ShapeDtypeStruct`, or a pytree of them); its shape is traced.
      policy: Which traced groups are prunable: None (the model's declaration when it has `channel_groups()`,
        else every traced group), a model with `channel_groups()`, a mapping ``{group name: prunable}``, or a
        callable ``group -> bool | ChannelGroup`` (rename, re-kind, re-score, or set prunability).
      fields: For a Linen module whose widths are constructor fields: group name -> field name, or
        ``(field name, index)`` for a tuple field. `with_widths` (hence `prune`) then rebuilds the module.

    Returns:
      A `TracedModel`.

    Raises:
      TypeError: arguments of the wrong kind.
      ValueError: everything `trace_groups` raises; `fields` naming an unknown group or field, or a field whose
        value is not the group's width.
    """
    kind, fn, variables, module, zoo, nnx_parts = _resolve_target(model_or_fn, variables)
    _check_input(example_input)
    trace = _analyze(fn, variables, example_input)
    if policy is None and zoo is not None:
        policy = zoo
    if policy is not zoo:
        zoo = None  # the zoo rebuilds itself by its declared group names only
    _apply_policy(trace.specs, trace.dims, policy)
    abstract = jax.tree_util.tree_map(_abstract, variables)
    if kind == "function" and zoo is not None:
        zoo = None  # a bare function is re-run from its jaxpr; a zoo policy still names its groups
    fields = dict(fields or {})
    norm_fields: dict[str, tuple[str, int | None, int]] = {}
    if fields:
        if kind != "linen" or zoo is not None:
            raise ValueError("fields= is for Linen modules outside the zoo (zoo models rebuild themselves)")
        names = {s.name: s for s in trace.specs}
        for name, spec in fields.items():
            if name not in names:
                raise ValueError(f"fields names unknown group {name!r}; traced groups: {', '.join(names)}")
            if isinstance(spec, str):
                field, idx = spec, None
            elif isinstance(spec, tuple) and len(spec) == 2:
                field, idx = spec
            else:
                field, idx = None, None
            if not isinstance(field, str):
                raise TypeError(f"fields[{name!r}] must be a field name or (field name, index), got {spec!r}")
            if not hasattr(module, field) or field not in {f.name for f in dataclasses.fields(module)}:
                raise ValueError(f"fields[{name!r}]: {type(module).__name__} has no constructor field {field!r}")
            value = getattr(module, field)
            if idx is not None:
                if (
                    not isinstance(value, tuple | list)
                    or not isinstance(idx, int)
                    or not -len(value) <= idx < len(value)
                ):
                    raise ValueError(f"fields[{name!r}]: {field}[{idx!r}] is not an index of {value!r}")
                value = value[idx]
            g = _materialize(names[name], trace.dims, {})
            if g.scored is None or g.scored.offset is not None:
                raise ValueError(
                    f"fields[{name!r}]: group {name!r} owns only part of its kernel's filters; a constructor field "
                    "cannot follow it (run the pruned model with TracedModel.apply)"
                )
            # A field counts the kernel's filters: width x repeat (e.g. GroupNorm splits a conv's filters into
            # `repeat` blocks of one group).
            scale = g.scored.repeat
            if value != g.width * scale:
                extra = f" x {scale} blocks" if scale > 1 else ""
                raise ValueError(
                    f"fields[{name!r}]: {type(module).__name__}.{field}{'' if idx is None else f'[{idx}]'} is "
                    f"{value!r}, but group {name!r} has width {g.width}{extra}"
                )
            norm_fields[name] = (field, idx, scale)
    tm = TracedModel(
        trace=trace,
        specs=trace.specs,
        sizes={},
        fn=fn,
        variables_abstract=abstract,
        kind=kind,
        module=module,
        fields=norm_fields,
        nnx_parts=nnx_parts,
        zoo=zoo,
    )
    tm._policy = policy
    check_groups(tm.channel_groups(), abstract)
    return tm


def trace_groups(
    apply_fn, variables: Mapping[str, Any] | None, example_input, *, policy=None
) -> tuple[ChannelGroup, ...]:
    """Discovers a model's channel groups from its jaxpr (docs/design.md §6; paper §3.2-3.3 coupling, found by tracing).

    The forward pass is traced with `jax.make_jaxpr` (abstract shapes: nothing is compiled) and every parameter axis
    is followed through the program: conv_general_dilated (grouped and depthwise: a depthwise conv ties its input
    and output channels), dot_general, broadcasting elementwise ops (BN statistics and affine terms, biases, gates,
    residual additions), concatenate (the consumer holds each input group at its offset), contiguous slice and
    split, pad, channel-last reshape / flatten (`AxisRef.repeat`), transpose, pooling windows, reductions, select,
    activations, and the sub-programs of jit, custom_jvp / custom_vjp, remat, cond, while and scan. Axes that must
    share one channel index space are joined; spaces tied to the model's input or output are not groups. A residual
    stream is one group (its kind is ``stream``).

    Args:
      apply_fn: A Flax Linen module, an NNX module, or a function ``(variables, x) -> output``.
      variables: Variables (arrays or `jax.ShapeDtypeStruct`); None for an NNX module.
      example_input: An example input (array or `jax.ShapeDtypeStruct`).
      policy: See `trace_model`: None uses the model's own declaration (zoo models), else every group is prunable.

    Returns:
      The groups in forward order. A group is named after its scored kernel's module (``conv1``,
      ``Block_0/Conv_0``; a kernel split between groups gets ``[start:stop]``), or after the declared group it
      matches.

    Raises:
      TypeError: arguments of the wrong kind.
      ValueError: a channel group passing through a primitive jaxprune cannot follow (names the primitive and where
        it occurs), a parameter whose channels reach the output through no channel-preserving path or which is not
        used, a layout no group can express; errors of the model itself (e.g. an input of the wrong rank).

    Example:
      >>> import jax, jax.numpy as jnp, jaxprune as jp
      >>> m = jp.models.vgg11()
      >>> groups = jp.trace_groups(m, jp.abstract_variables(m), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
      >>> [g.name for g in groups][:3], groups[0].producers[0]
      (['conv1', 'conv2', 'conv3'], AxisRef(path=('params', 'conv1', 'kernel'), axis=3, repeat=1, offset=None))
    """
    return trace_model(apply_fn, variables, example_input, policy=policy).channel_groups()


def _fmt_ref(ref: AxisRef) -> str:
    s = f"{ref.name}[{ref.axis}]"
    if ref.offset is not None:
        s += f"@{ref.offset}"
    if ref.repeat > 1:
        s += f"x{ref.repeat}"
    return s


def format_groups(groups: Sequence[ChannelGroup], *, verbose: bool = False) -> str:
    """Channel groups as a text table: name, kind, width, prunable, scored kernel, producer and consumer counts.

    Args:
      groups: Groups, e.g. from `trace_groups` or ``model.channel_groups()``.
      verbose: Also list every axis under its group (``path[axis]``, ``@offset``, ``xrepeat``).

    Raises:
      TypeError: an element that is not a ChannelGroup.
    """
    groups = list(groups)
    for g in groups:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"format_groups takes ChannelGroups, got {type(g).__name__}")
    head = ("group", "kind", "width", "prunable", "scored kernel", "producers", "consumers")
    rows = [
        (
            g.name,
            g.kind,
            str(g.width),
            "yes" if g.prunable else "no",
            _fmt_ref(g.scored) if g.scored is not None else "-",
            str(len(g.producers)),
            str(len(g.consumers)),
        )
        for g in groups
    ]
    size = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {2, 5, 6}

    def line(r):
        return "  ".join(c.rjust(size[i]) if i in right else c.ljust(size[i]) for i, c in enumerate(r)).rstrip()

    lines = [line(head), "  ".join("-" * s for s in size)]
    for g, r in zip(groups, rows, strict=True):
        lines.append(line(r))
        if verbose:
            lines.extend(f"    producer {_fmt_ref(ref)}" for ref in g.producers)
            lines.extend(f"    consumer {_fmt_ref(ref)}" for ref in g.consumers)
    n_prunable = sum(g.prunable for g in groups)
    lines.append(f"{len(groups)} groups, {n_prunable} prunable, {sum(g.width for g in groups)} channels")
    return "\n".join(lines)


def describe_groups(groups: Sequence[ChannelGroup], *, verbose: bool = False, file=None) -> None:
    """Prints channel groups as a table (`format_groups`) to `file` (default: standard output).

    Example:
      >>> import jaxprune as jp
      >>> jp.describe_groups(jp.models.vgg11().channel_groups()[:2])
      group  kind  width  prunable  scored kernel           producers  consumers
      -----  ----  -----  --------  ----------------------  ---------  ---------
      conv1  conv     64  yes       params/conv1/kernel[3]          5          1
      conv2  conv    128  yes       params/conv2/kernel[3]          5          1
      2 groups, 2 prunable, 192 channels
    """
    print(format_groups(groups, verbose=verbose), file=file if file is not None else sys.stdout)
