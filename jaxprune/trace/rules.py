"""The primitive rules: one table from jax primitive name to how its output axes relate to its input axes.

Each rule reads the dimension nodes of an equation's operands from the frame and sets its outputs' nodes, joining
axes that share one channel index space (`t.d.unify`), composing pieces (concatenate, pad, tile), marking spaces
fixed (spatial, window, scanned axes) or tainted (passed through something the trace cannot follow channel by
channel: only the groups whose channels pass there become unprunable, with the primitive and its source line as
the reason). A primitive without a rule is handled by `_Tracer.generic`: every channel space it touches is tainted.
"""

from __future__ import annotations

import math

from jax.extend import core as jcore

from jaxprune.trace._jaxpr import _caller, _Frame, _is_literal, _shape

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

# Followed on other axes; on a channel axis they make the group unprunable (the result depends on positions).
_POSITIONAL = frozenset("sort top_k rev iota argmax argmin".split())


def _elementwise(t, f: _Frame, i: int, eqn) -> None:
    outs = eqn.outvars
    shape = tuple(outs[0].aval.shape)
    rank = len(shape)
    ins = eqn.invars
    in_nodes = [t.nodes(f, v) for v in ins]
    if any(len(n) not in (0, rank) for n in in_nodes) or any(tuple(o.aval.shape) != shape for o in outs):
        t.generic(f, i, eqn, "an elementwise op with unusual shapes")
        return
    addlike = eqn.primitive.name in ("add", "sub", "add_any")
    d = t.d
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
            addlike and len(cands) > 1 and len({d.find(c) for c in cands}) > 1 and all(d.any_produced(c) for c in cands)
        )
        for c in cands[1:]:
            d.unify(first, c)
        if join:
            d.mark(first, "joined")
        out.append(first)
    for o in outs:
        t.set_out(f, o, tuple(out))
    if all(t.is_pd(f, v) for v in ins):
        src = next((f.src[v] for v in ins if not _is_literal(v) and v in f.src and _shape(v) == shape), None)
        for o in outs:
            f.pd.add(o)
            if src is not None:
                f.src[o] = src


# -- calls and control flow -------------------------------------------------------------------------------
def _call(t, f: _Frame, i: int, eqn) -> None:
    sub = None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            sub = eqn.params[key]
            break
    inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
    if inner is None or len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
        t.generic(f, i, eqn, "a call whose sub-program does not match its operands")
        return
    label = eqn.params.get("name")
    ctx = (*f.ctx, (f"{eqn.primitive.name}({label})" if label else eqn.primitive.name, eqn))
    g = t.sub_frame(f, sub, eqn.invars, ctx)
    f.subs[i] = [g]
    for v, w in zip(eqn.outvars, inner.outvars, strict=True):
        t.set_out(f, v, t.nodes(g, w))
        if not _is_literal(w):
            if w in g.pd:
                f.pd.add(v)
            if w in g.src:
                f.src[v] = g.src[w]


def _scan(t, f: _Frame, i: int, eqn) -> None:
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    closed = p["jaxpr"]
    ins = eqn.invars
    d = t.d
    nodes, src, pd = [], [], []
    for k, v in enumerate(ins):
        n = t.nodes(f, v)
        s = None if _is_literal(v) else f.src.get(v)
        if k >= nc + ncarry:  # xs: the body sees one slice; axis 0 is the scan axis
            d.mark_fixed(n[0], "the scanned axis of a scan")
            n = n[1:]
            s = (s[0], s[1][1:]) if s is not None else None
        nodes.append(n)
        src.append(s)
        pd.append(t.is_pd(f, v))
    ctx = (*f.ctx, ("scan", eqn))
    g = t.frame(closed.jaxpr, closed.consts, nodes, src, pd, ctx)
    f.subs[i] = [g]
    body_out = [t.nodes(g, w) for w in closed.jaxpr.outvars]
    for k in range(ncarry):
        for a, b in zip(nodes[nc + k], body_out[k], strict=True):
            d.unify(a, b)
        t.set_out(f, eqn.outvars[k], nodes[nc + k])
    for k, v in enumerate(eqn.outvars[ncarry:]):
        t.set_out(f, v, (d.new(p["length"], fixed="the scanned axis of a scan"), *body_out[ncarry + k]))


def _while(t, f: _Frame, i: int, eqn) -> None:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    ins = eqn.invars
    carry = ins[cn + bn :]
    ctx = (*f.ctx, ("while", eqn))
    carry_nodes = [t.nodes(f, v) for v in carry]
    cf = t.sub_frame(f, p["cond_jaxpr"], [*ins[:cn], *carry], ctx, [*(t.nodes(f, v) for v in ins[:cn]), *carry_nodes])
    bf = t.sub_frame(
        f,
        p["body_jaxpr"],
        [*ins[cn : cn + bn], *carry],
        ctx,
        [*(t.nodes(f, v) for v in ins[cn : cn + bn]), *carry_nodes],
    )
    f.subs[i] = [cf, bf]
    for n, w in zip(carry_nodes, p["body_jaxpr"].jaxpr.outvars, strict=True):
        for a, b in zip(n, t.nodes(bf, w), strict=True):
            t.d.unify(a, b)
    for v, n in zip(eqn.outvars, carry_nodes, strict=True):
        t.set_out(f, v, n)


def _cond(t, f: _Frame, i: int, eqn) -> None:
    ops = eqn.invars[1:]
    ctx = (*f.ctx, ("cond", eqn))
    op_nodes = [t.nodes(f, v) for v in ops]
    frames = []
    outs = None
    for br in eqn.params["branches"]:
        g = t.sub_frame(f, br, ops, ctx, op_nodes)
        frames.append(g)
        these = [t.nodes(g, w) for w in br.jaxpr.outvars]
        if outs is None:
            outs = these
        else:
            for a, b in zip(outs, these, strict=True):
                for x, y in zip(a, b, strict=True):
                    t.d.unify(x, y)
    f.subs[i] = frames
    for v, n in zip(eqn.outvars, outs, strict=True):
        t.set_out(f, v, n)


# -- reductions and windows -------------------------------------------------------------------------------
def _reduce(t, f: _Frame, i: int, eqn, axes, operands, outvars) -> None:
    nodes = [t.nodes(f, v) for v in operands]
    for other in nodes[1:]:
        for a, b in zip(nodes[0], other, strict=True):
            t.d.unify(a, b)
    n = nodes[0]
    if eqn.primitive.name in ("argmax", "argmin"):
        info = t.taint_info("an arg-reduction returning channel positions", eqn, f)
        for a in axes:
            t.taint_unless_fixed(n[a], info)
    out = tuple(n[k] for k in range(len(n)) if k not in axes)
    for v in outvars:
        t.set_out(f, v, out)
    if len(operands) == 1 and len(outvars) == 1:
        keep = [k for k in range(len(n)) if k not in axes]
        t.copy_src(f, operands[0], outvars[0], keep)


def _window(t, f: _Frame, i: int, eqn) -> None:
    p = eqn.params
    n_out = len(eqn.outvars)
    operands = eqn.invars[:n_out]
    nodes = [t.nodes(f, v) for v in operands]
    for other in nodes[1:]:
        for a, b in zip(nodes[0], other, strict=True):
            t.d.unify(a, b)
    n = nodes[0]
    shape_out = tuple(eqn.outvars[0].aval.shape)
    info = t.taint_info("a pooling window over a channel axis", eqn, f)
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
        elif t.d.all_fixed(node):
            out.append(t.d.new(shape_out[ax], fixed="a pooled axis"))
        else:
            t.d.mark_taint(node, info)
            out.append(t.d.new(shape_out[ax], taint=info))
    for v in eqn.outvars:
        t.set_out(f, v, tuple(out))


# -- shape primitives -------------------------------------------------------------------------------------
def _broadcast_in_dim(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    shape, bd = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
    n = t.nodes(f, v)
    ishape = _shape(v)
    nodes, amap = [], []
    for j, s in enumerate(shape):
        if j in bd and ishape[bd.index(j)] == s and s > 1:
            nodes.append(n[bd.index(j)])
            amap.append(bd.index(j))
        else:
            nodes.append(t.d.new(s))
            amap.append(None)
    t.set_out(f, out, tuple(nodes))
    t.copy_src(f, v, out, amap)


def _squeeze(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    dims = {d % len(_shape(v)) for d in eqn.params["dimensions"]}
    keep = [k for k in range(len(_shape(v))) if k not in dims]
    n = t.nodes(f, v)
    t.set_out(f, out, tuple(n[k] for k in keep))
    t.copy_src(f, v, out, keep)


def _stack(t, f: _Frame, i: int, eqn) -> None:
    """``stack`` (jax's own primitive): the inputs share every axis; the new axis is not a channel axis."""
    n = list(t.nodes(f, eqn.invars[0]))
    for v in eqn.invars[1:]:
        for a, b in zip(n, t.nodes(f, v), strict=True):
            t.d.unify(a, b)
    n.insert(eqn.params["axis"] % (len(n) + 1), t.d.new(len(eqn.invars), fixed="a stacked axis"))
    t.set_out(f, eqn.outvars[0], tuple(n))


def _transpose(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    perm = tuple(eqn.params["permutation"])
    n = t.nodes(f, v)
    t.set_out(f, out, tuple(n[k] for k in perm))
    t.copy_src(f, v, out, list(perm))


def _reshape(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    if eqn.params.get("dimensions") is not None:
        t.generic(f, i, eqn, "a reshape with a dimension permutation")
        return
    d = t.d
    ishape, oshape = _shape(v), tuple(out.aval.shape)
    n = t.nodes(f, v)
    ii = [k for k, s in enumerate(ishape) if s != 1]
    oo = [k for k, s in enumerate(oshape) if s != 1]
    nodes: list[int | None] = [None] * len(oshape)
    amap: list[int | None] = [None] * len(oshape)
    info = t.taint_info("a reshape that does not keep the channel axis minor-most", eqn, f)
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
            t.taint_unless_fixed(n[k], info)
        minor_out = d.new(oshape[bo[-1]])
        for k in bo[:-1]:
            # One axis split in two or more: the minor-most part is the channel space (repeated), the major parts
            # index blocks of it (e.g. the key/value heads of grouped-query attention): they stay whole.
            nodes[k] = (
                d.new(oshape[k], fixed="the major part of a split axis")
                if len(bi) == 1
                else d.new(oshape[k], taint=info)
            )
        nodes[bo[-1]] = minor_out
        amap[bo[-1]] = bi[-1]
        if len(bi) == 1 and not d.all_fixed(n[bi[0]]):
            # One axis split into blocks of one index space (GroupNorm's groups, attention heads): pruning keeps
            # the same channels in every block; `describe_groups` says so.
            major = nodes[bo[0]] if len(bo) == 2 else None
            t.tie(minor_out, math.prod(oshape[k] for k in bo[:-1]), _tie_label(eqn), eqn, f, block_axis=major)
        left = d.compose([(n[bi[-1]], math.prod(ishape[k] for k in bi[:-1]))])
        right = d.compose([(minor_out, math.prod(oshape[k] for k in bo[:-1]))])
        d.unify(left, right)
    for k, s in enumerate(oshape):
        if nodes[k] is None:
            nodes[k] = d.new(s)
    t.set_out(f, out, tuple(nodes))
    t.copy_src(f, v, out, amap)


def _tie_label(eqn) -> str:
    """What the blocks of a split channel axis are, for `describe_groups`: GroupNorm's groups when the reshape sits in
    a GroupNorm's method (Flax Linen, NNX and Equinox all name the class so), else blocks of a reshape. The caller is
    read from the equation's frames, not from jax's location summary, which skips installed packages where they sit
    under the standard library's folder."""
    owner = _caller(eqn).rsplit(".", 1)[0].split(".")[-1]  # the class of the method: "A.<locals>.GroupNorm.__call__"
    return "GroupNorm groups" if "GroupNorm" in owner else "blocks of a reshape"


def _rev(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    n = list(t.nodes(f, v))
    info = t.taint_info("a reversal of a channel axis", eqn, f)
    for k in eqn.params["dimensions"]:
        if t.d.all_fixed(n[k]):
            n[k] = t.d.new(t.d.size[n[k]], fixed="a reversed axis")
        else:
            t.d.mark_taint(n[k], info)
            n[k] = t.d.new(t.d.size[n[k]], taint=info)
    t.set_out(f, out, tuple(n))


def _concatenate(t, f: _Frame, i: int, eqn) -> None:
    dim = eqn.params["dimension"]
    nodes = [t.nodes(f, v) for v in eqn.invars]
    out = list(nodes[0])
    for other in nodes[1:]:
        for k, (a, b) in enumerate(zip(nodes[0], other, strict=True)):
            if k != dim:
                t.d.unify(a, b)
    out[dim] = t.d.compose([(n[dim], 1) for n in nodes])
    t.set_out(f, eqn.outvars[0], tuple(out))


def _pad(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    n = list(t.nodes(f, v))
    d = t.d
    oshape = tuple(out.aval.shape)
    meta = []
    info = t.taint_info("an interior or mixed pad of a channel axis", eqn, f)
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
    t.set_out(f, out, tuple(n))


def _slice(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    p = eqn.params
    n = list(t.nodes(f, v))
    d = t.d
    ishape, oshape = _shape(v), tuple(out.aval.shape)
    strides = p["strides"] or (1,) * len(ishape)
    meta = []
    info = t.taint_info("a strided slice of a channel axis", eqn, f)
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
    t.set_out(f, out, tuple(n))


def _split(t, f: _Frame, i: int, eqn) -> None:
    v = eqn.invars[0]
    axis = eqn.params["axis"]
    n = list(t.nodes(f, v))
    d = t.d
    if d.all_fixed(n[axis]):
        pieces = [d.new(int(s), fixed="a split spatial axis") for s in eqn.params["sizes"]]
    else:
        pieces = [d.new(int(s)) for s in eqn.params["sizes"]]
        d.unify(n[axis], d.compose([(x, 1) for x in pieces]))
    for o, piece in zip(eqn.outvars, pieces, strict=True):
        m = list(n)
        m[axis] = piece
        t.set_out(f, o, tuple(m))


def _dynamic_slice(t, f: _Frame, i: int, eqn) -> None:
    v, out = eqn.invars[0], eqn.outvars[0]
    n = list(t.nodes(f, v))
    ishape, oshape = _shape(v), tuple(out.aval.shape)
    info = t.taint_info("a dynamic slice of a channel axis", eqn, f)
    amap = []
    for ax in range(len(ishape)):
        amap.append(ax)
        if ishape[ax] == oshape[ax]:
            continue
        amap[-1] = None
        if t.d.all_fixed(n[ax]):
            n[ax] = t.d.new(oshape[ax], fixed="a sliced axis")
        else:
            t.d.mark_taint(n[ax], info)
            n[ax] = t.d.new(oshape[ax], taint=info)
    t.set_out(f, out, tuple(n))
    t.copy_src(f, v, out, amap)


def _dynamic_update_slice(t, f: _Frame, i: int, eqn) -> None:
    v, upd, out = eqn.invars[0], eqn.invars[1], eqn.outvars[0]
    n, u = t.nodes(f, v), t.nodes(f, upd)
    info = t.taint_info("a dynamic update of part of a channel axis", eqn, f)
    for ax, (a, b) in enumerate(zip(n, u, strict=True)):
        if _shape(v)[ax] == _shape(upd)[ax]:
            t.d.unify(a, b)
        elif not t.d.all_fixed(a):
            t.d.mark_taint(a, info)
            t.d.mark_taint(b, info)
    t.set_out(f, out, n)


def _iota(t, f: _Frame, i: int, eqn) -> None:
    out = eqn.outvars[0]
    shape = tuple(out.aval.shape)
    info = t.taint_info("an iota (values that depend on the channel position)", eqn, f)
    nodes = list(t.fresh(shape))
    dim = eqn.params["dimension"]
    nodes[dim] = t.d.new(shape[dim], taint=info)
    t.set_out(f, out, tuple(nodes))


def _sort(t, f: _Frame, i: int, eqn) -> None:
    dim = eqn.params["dimension"]
    nodes = [t.nodes(f, v) for v in eqn.invars]
    for other in nodes[1:]:
        for a, b in zip(nodes[0], other, strict=True):
            t.d.unify(a, b)
    t.taint_unless_fixed(nodes[0][dim], t.taint_info("a sort along a channel axis", eqn, f))
    for v in eqn.outvars:
        t.set_out(f, v, nodes[0])


def _top_k(t, f: _Frame, i: int, eqn) -> None:
    v = eqn.invars[0]
    n = list(t.nodes(f, v))
    axis = eqn.params.get("axis", len(n) - 1) % len(n)
    k = eqn.outvars[0].aval.shape[axis]
    if t.d.all_fixed(n[axis]):
        n[axis] = t.d.new(k, fixed="a top-k axis")
    else:
        info = t.taint_info("a top-k along a channel axis", eqn, f)
        t.d.mark_taint(n[axis], info)
        n[axis] = t.d.new(k, taint=info)
    for o in eqn.outvars:
        t.set_out(f, o, tuple(n))


# -- tile, gather, scatter -------------------------------------------------------------------------------------------
def _tile(t, f: _Frame, i: int, eqn) -> None:
    """``jnp.tile``: a tiled axis holds `reps` blocks of its input (a channel axis tiled is `repeat` blocks of it)."""
    v, out = eqn.invars[0], eqn.outvars[0]
    d = t.d
    n = list(t.nodes(f, v))
    oshape = tuple(out.aval.shape)
    amap: list[int | None] = list(range(len(n)))
    for ax, r in enumerate(eqn.params["reps"]):
        if r == 1:
            continue
        amap[ax] = None
        if d.size[n[ax]] <= 1:
            n[ax] = d.new(oshape[ax])
        elif d.all_fixed(n[ax]):
            n[ax] = d.new(oshape[ax], fixed="a tiled axis")
        else:
            n[ax] = d.compose([(n[ax], int(r))])
    t.set_out(f, out, tuple(n))
    t.copy_src(f, v, out, amap)


def _gather(t, f: _Frame, i: int, eqn) -> None:
    """`gather` (``jnp.take``, fancy indexing, nearest-neighbour ``jax.image.resize``): whole operand axes that are
    not indexed pass through; an indexed channel axis makes its group unprunable; the output's index positions are
    the indices' axes."""
    operand, indices = eqn.invars[:2]
    out = eqn.outvars[0]
    p = eqn.params
    dn = p["dimension_numbers"]
    d = t.d
    on, inn = t.nodes(f, operand), t.nodes(f, indices)
    ishape, oshape = _shape(operand), tuple(out.aval.shape)
    sizes = tuple(p["slice_sizes"])
    info = t.taint_info("a gather that selects along a channel axis", eqn, f)
    batching = tuple(dn.operand_batching_dims)
    window = [k for k in range(len(ishape)) if k not in dn.collapsed_slice_dims and k not in batching]
    nodes: list[int | None] = [None] * len(oshape)
    through = []

    def touched(k):
        if ishape[k] > 1 and not d.all_fixed(on[k]):
            d.mark_taint(on[k], info)

    for pos, k in zip(dn.offset_dims, window, strict=True):
        if k not in dn.start_index_map and sizes[k] == ishape[k]:
            nodes[pos] = on[k]
            through.append(k)
        else:
            touched(k)
            nodes[pos] = d.new(oshape[pos], fixed="an axis indexed by a gather")
    for k in (*dn.start_index_map, *dn.collapsed_slice_dims):
        touched(k)
    # Output axes that are not window axes follow the indices' axes (the index vector is the last axis).
    batch_pos = [j for j in range(len(oshape)) if j not in dn.offset_dims]
    for pos, j in zip(batch_pos, range(len(inn) - 1), strict=True):
        nodes[pos] = inn[j]
        if j in dn.start_indices_batching_dims:
            d.unify(on[batching[tuple(dn.start_indices_batching_dims).index(j)]], inn[j])
    f.meta[i] = tuple(through)
    t.set_out(f, out, tuple(nodes))


def _scatter(t, f: _Frame, i: int, eqn) -> None:
    """`scatter` and `scatter-add` etc. (``x.at[idx].set/add``): the output is the operand's index space; whole
    update window axes share the operand's; writing into part of a channel axis makes its group unprunable."""
    operand, indices, updates = eqn.invars[:3]
    dn = eqn.params["dimension_numbers"]
    d = t.d
    on, inn, un = t.nodes(f, operand), t.nodes(f, indices), t.nodes(f, updates)
    oshape, ushape = _shape(operand), _shape(updates)
    info = t.taint_info("a scatter into part of a channel axis", eqn, f)
    batching = tuple(dn.operand_batching_dims)
    window = [k for k in range(len(oshape)) if k not in dn.inserted_window_dims and k not in batching]
    for pos, k in zip(dn.update_window_dims, window, strict=True):
        if k not in dn.scatter_dims_to_operand_dims and ushape[pos] == oshape[k]:
            d.unify(on[k], un[pos])
        elif oshape[k] > 1 and not d.all_fixed(on[k]):
            d.mark_taint(on[k], info)
            d.mark_taint(un[pos], info)
    for k in (*dn.scatter_dims_to_operand_dims, *dn.inserted_window_dims):
        if oshape[k] > 1 and not d.all_fixed(on[k]):
            d.mark_taint(on[k], info)
    scatter_pos = [j for j in range(len(ushape)) if j not in dn.update_window_dims]
    sib = tuple(dn.scatter_indices_batching_dims)
    for pos, j in zip(scatter_pos, range(len(inn) - 1), strict=True):
        d.unify(un[pos], inn[j])
        if j in sib:
            d.unify(on[batching[sib.index(j)]], un[pos])
    for v in eqn.outvars:
        t.set_out(f, v, on)


# -- the layers: convolutions and contractions ------------------------------------------------------------
def _conv_general_dilated(t, f: _Frame, i: int, eqn) -> None:
    p = eqn.params
    lhs, rhs = eqn.invars
    out = eqn.outvars[0]
    if p["batch_group_count"] != 1:
        t.generic(f, i, eqn, "a convolution with batch_group_count > 1")
        return
    dn = p["dimension_numbers"]
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    d = t.d
    ln, rn = t.nodes(f, lhs), t.nodes(f, rhs)
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
            d.mark_taint(lf, t.taint_info("a depthwise convolution with a channel multiplier", eqn, f))
        else:
            jn = d.new(cin // groups)
            d.unify(lf, d.compose([(jn, groups)]))
            d.unify(rif, jn)
        mn = d.new(cout // groups)
        d.unify(rof, d.compose([(mn, groups)]))
        label = f"conv feature groups (feature_group_count={groups})"
        t.tie(mn, groups, label, eqn, f)
        if cin != groups:
            t.tie(jn, groups, label, eqn, f)
    on[os_[1]] = rof
    t.set_out(f, out, tuple(on))
    if depthwise:
        f.meta[i] = "depthwise"
    if t.is_pd(f, rhs) and not t.is_pd(f, lhs):
        d.mark(rof, "produced")
        if rhs in f.src:
            path, axes = f.src[rhs]
            if axes[rs[0]] is not None:
                t.kernels.setdefault((path, axes[rs[0]]), (t.order, 1 if depthwise else 0, "conv"))
                t.spatial.setdefault((path, axes[rs[0]]), math.prod(oshape[os_[k]] for k in range(2, len(ls))))
            if axes[rs[1]] is not None and not depthwise:
                t.contracted.add((path, axes[rs[1]]))


def _dot_general(t, f: _Frame, i: int, eqn) -> None:
    lhs, rhs = eqn.invars
    out = eqn.outvars[0]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = tuple(lc), tuple(rc), tuple(lb), tuple(rb)
    d = t.d
    ln, rn = t.nodes(f, lhs), t.nodes(f, rhs)
    for a, b in zip(lc, rc, strict=True):
        d.unify(ln[a], rn[b])
    for a, b in zip(lb, rb, strict=True):
        d.unify(ln[a], rn[b])
    lfree = [k for k in range(len(ln)) if k not in lc and k not in lb]
    rfree = [k for k in range(len(rn)) if k not in rc and k not in rb]
    t.set_out(f, out, tuple([ln[a] for a in lb] + [ln[a] for a in lfree] + [rn[b] for b in rfree]))
    lpd, rpd = t.is_pd(f, lhs), t.is_pd(f, rhs)
    if lpd and rpd:  # e.g. a learnt probe times a kernel: both sides' contracted axes are read, neither produces
        f.pd.add(out)
        for v, contr in ((lhs, lc), (rhs, rc)):
            if not _is_literal(v) and v in f.src:
                path, axes = f.src[v]
                t.contracted.update((path, axes[k]) for k in contr if axes[k] is not None)
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
                    t.kernels.setdefault((path, axes[k]), (t.order, 0, "dense"))
            for k in contr:
                if axes[k] is not None:
                    t.contracted.add((path, axes[k]))


def _identity(t, f: _Frame, i: int, eqn) -> None:
    for a, b in zip(eqn.invars, eqn.outvars, strict=False):
        t.set_out(f, b, t.nodes(f, a))
        t.copy_src(f, a, b, None)


def _reduce_axes(t, f: _Frame, i: int, eqn) -> None:
    _reduce(t, f, i, eqn, eqn.params["axes"], eqn.invars[:1], eqn.outvars)


def _psum(t, f: _Frame, i: int, eqn) -> None:
    """``psum`` over positional axes (what a named axis bound by `jax.vmap` becomes): a sum over those axes."""
    axes = eqn.params["axes"]
    if any(isinstance(a, str) for a in axes) or eqn.params.get("axis_index_groups") is not None:
        t.generic(f, i, eqn, "a collective over a named axis")
        return
    for v, o in zip(eqn.invars, eqn.outvars, strict=True):
        _reduce(t, f, i, eqn, tuple(int(a) for a in axes), [v], [o])


def _reduce_general(t, f: _Frame, i: int, eqn) -> None:
    n = len(eqn.outvars)
    _reduce(t, f, i, eqn, eqn.params["dimensions"], eqn.invars[:n], eqn.outvars)


def _cumulative(t, f: _Frame, i: int, eqn) -> None:
    t.set_out(f, eqn.outvars[0], t.nodes(f, eqn.invars[0]))
    t.copy_src(f, eqn.invars[0], eqn.outvars[0], None)


def _random(t, f: _Frame, i: int, eqn) -> None:
    for v in eqn.outvars:
        t.set_out(f, v, t.fresh(v.aval.shape))


#: The rule table: primitive name -> rule ``(tracer, frame, equation index, equation) -> None``.
RULES: dict = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **dict.fromkeys(_IDENTITY, _identity),
    **dict.fromkeys(_CALLS, _call),
    **dict.fromkeys(_REDUCE, _reduce_axes),
    "reduce": _reduce_general,
    "psum": _psum,
    **dict.fromkeys(_CUMULATIVE, _cumulative),
    **dict.fromkeys(_WINDOW, _window),
    "reduce_window": _window,
    **dict.fromkeys(_RANDOM, _random),
    "scan": _scan,
    "while": _while,
    "cond": _cond,
    "broadcast_in_dim": _broadcast_in_dim,
    "squeeze": _squeeze,
    "stack": _stack,
    "transpose": _transpose,
    "reshape": _reshape,
    "rev": _rev,
    "concatenate": _concatenate,
    "pad": _pad,
    "slice": _slice,
    "split": _split,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "iota": _iota,
    "sort": _sort,
    "top_k": _top_k,
    "conv_general_dilated": _conv_general_dilated,
    "dot_general": _dot_general,
    "tile": _tile,
    "gather": _gather,
    **dict.fromkeys(("scatter", "scatter-add", "scatter-sub", "scatter-mul", "scatter-min", "scatter-max"), _scatter),
}

#: Primitives `trace_groups` follows channel by channel. Elsewhere (a primitive without a rule, or one that depends
#: on channel positions) the channel spaces involved become unprunable, with the primitive as the reason.
SUPPORTED_PRIMITIVES = tuple(sorted(set(RULES) - _POSITIONAL))
