"""MACs per layer read from a jaxpr: the one counter behind `jaxprune.count_macs` for every model that is not a zoo model.

`jaxpr_rows` walks the jaxpr of a pure function ``f(variables, *inputs)`` (traced abstractly with `jax.make_jaxpr`:
nothing is compiled) and follows which values are computed from parameters only (a kernel, possibly cast, reshaped or
sliced) and which from the inputs (activations). Every ``conv_general_dilated`` and ``dot_general`` is then one of:

* a weight call: an activation times a parameter: a ``conv`` or ``dense`` row named after the parameter's module
  (the kernel's path less its collection and leaf name); these are the paper's MACs (docs/paper.md §3);
* an activation-by-activation product (attention scores q·k, attention weights times values): an ``act`` row, named
  after the modules whose outputs it multiplies (their common path, e.g. ``attn`` for ``attn/query`` and
  ``attn/key``) and the primitive, ``attn/dot_general_0``; counted apart (`MacReport.activation_macs`);
* a product of parameters or constants only (a kernel computed from two factors, a constant transform of an
  activation): no row.

A conv costs output elements x kernel taps x input channels per group (zero-padded taps included, the paper's
convention); a transposed conv (input dilation) input pixels x taps x input channels per group x output channels (the
dilation's zeros are not multiplied); a contraction output elements x contracted size.
Sub-programs (jit, custom_jvp / custom_vjp, remat) are walked in place; a ``scan`` body counts ``length`` times; a
``cond`` counts its first branch; a ``while`` body counts once (its trip count is not known from the program).
Modules owning parameters but no weight call get a ``bn`` row (every leaf a 1-D ``scale`` / ``bias`` / ``weight``: the
norms) or an ``other`` row, with their parameter count and 0 MACs.

This module knows no framework: the adapters (`jaxprune.flops`) hand it a jaxpr and the variables' leaf paths.
"""

from __future__ import annotations

from typing import Any

from jax.extend import core as jcore

__all__ = ["jaxpr_rows"]

#: Leaf names of a normalisation layer's parameters (a module owning only 1-D leaves of these names is a ``bn`` row).
_NORM_LEAVES = frozenset({"scale", "bias", "weight"})


def _size(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _open(j):
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _subs(eqn) -> list[tuple[Any, list, int]]:
    """(sub-jaxpr, the eqn invars it reads, times) of an equation's sub-programs, as the counter walks them."""
    name = eqn.primitive.name
    p = eqn.params
    if name == "scan":
        return [(_open(p["jaxpr"]), list(eqn.invars), int(p["length"]))]
    if name == "cond":
        return [(_open(p["branches"][0]), list(eqn.invars[1:]), 1)]
    if name == "while":
        return [(_open(p["body_jaxpr"]), list(eqn.invars[p["cond_nconsts"] :]), 1)]
    out = []
    for v in p.values():
        j = _open(v) if isinstance(v, jcore.ClosedJaxpr | jcore.Jaxpr) else None
        if j is not None and len(j.invars) == len(eqn.invars):
            out.append((j, list(eqn.invars), 1))
    return out[:1]


class _Walk:
    def __init__(self, sizes: dict[tuple[str, ...], tuple[int, ...]]):
        self.sizes = sizes  # leaf path (collection first) -> shape, the `params` collection only
        self.rows: list[dict] = []
        self.seen: set[tuple[str, ...]] = set()
        self.act_count: dict[str, int] = {}

    def owner_params(self, owner: tuple[str, ...]) -> int:
        return sum(_size(s) for p, s in self.sizes.items() if p[1:-1] == owner)

    def walk(self, jaxpr, pd: dict, src: dict, prov: dict, times: int) -> None:
        """`pd`: vars computed from parameters and constants only; `src`: such a var -> the parameter paths it reads;
        `prov`: an activation -> the modules whose weight calls last produced it."""

        def is_pd(v):
            return _is_literal(v) or v in pd

        def src_of(v):
            return frozenset() if _is_literal(v) else src.get(v, frozenset())

        def prov_of(v):
            return frozenset() if _is_literal(v) else prov.get(v, frozenset())

        for v in jaxpr.constvars:
            pd[v] = True
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            subs = _subs(eqn)
            if subs:
                sub, ins, k = subs[0]
                s_pd, s_src, s_prov = {}, {}, {}
                for sv, v in zip(sub.invars, ins, strict=True):
                    if is_pd(v):
                        s_pd[sv] = True
                        s_src[sv] = src_of(v)
                    else:
                        s_prov[sv] = prov_of(v)
                self.walk(sub, s_pd, s_src, s_prov, times * k)
                if len(sub.outvars) == len(eqn.outvars):
                    for ov, sv in zip(eqn.outvars, sub.outvars, strict=True):
                        if _is_literal(sv) or sv in s_pd:
                            pd[ov] = True
                            src[ov] = frozenset() if _is_literal(sv) else s_src.get(sv, frozenset())
                        else:
                            prov[ov] = s_prov.get(sv, frozenset())
                    continue
            elif name in ("conv_general_dilated", "dot_general") and len(eqn.invars) == 2:
                out_prov = self.contraction(eqn, [is_pd(v) for v in eqn.invars], src_of, prov_of, times)
                if out_prov is not None:
                    for ov in eqn.outvars:
                        prov[ov] = out_prov
                    continue
            ins = [v for v in eqn.invars]
            if all(is_pd(v) for v in ins):
                union = frozenset().union(*(src_of(v) for v in ins)) if ins else frozenset()
                for ov in eqn.outvars:
                    pd[ov] = True
                    src[ov] = union
            else:
                union = frozenset().union(*(prov_of(v) for v in ins if not is_pd(v)))
                for ov in eqn.outvars:
                    prov[ov] = union

    def contraction(self, eqn, pds, src_of, prov_of, times: int):
        """Adds the row of a conv / dot_general; returns the provenance of its output, or None (no row: an operation
        on parameters and constants only, or a constant transform of an activation)."""
        lhs, rhs = eqn.invars
        out = eqn.outvars[0].aval
        if all(pds):
            return None
        kernel = next((v for v, p in ((rhs, pds[1]), (lhs, pds[0])) if p and src_of(v)), None)
        if kernel is None and any(pds):
            return None  # an activation times a constant (no parameter): neither a weight nor an activation MAC
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lspec, rspec, ospec = eqn.params["dimension_numbers"]
            kshape = rhs.aval.shape
            taps = tuple(int(kshape[d]) for d in rspec[2:])
            if any(int(d) > 1 for d in eqn.params.get("lhs_dilation") or ()):
                # A transposed conv: every input pixel meets every tap once (the dilation's zeros are not MACs).
                pixels = _size(lhs.aval.shape) // int(lhs.aval.shape[lspec[1]])
                macs = pixels * _size(taps) * int(kshape[rspec[1]]) * int(kshape[rspec[0]])
            else:
                macs = _size(out.shape) * _size(taps) * int(kshape[rspec[1]])
            in_w, out_w = int(lhs.aval.shape[lspec[1]]), int(out.shape[ospec[1]])
            hw = tuple(int(out.shape[d]) for d in ospec[2:4]) if len(ospec) == 4 else None
            ksz = taps if len(taps) == 2 else None
            kind = "conv"
        else:
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            contracted = _size([lhs.aval.shape[d] for d in lc])
            macs = _size(out.shape) * contracted
            kv, kc, kb = (rhs, rc, rb) if kernel is not lhs else (lhs, lc, lb)
            free = _size([s for d, s in enumerate(kv.aval.shape) if d not in kc and d not in kb])
            in_w, out_w, hw, ksz = contracted, free, None, None
            kind = "dense"
        if kernel is None:  # two activations
            owners = sorted(prov_of(lhs) | prov_of(rhs))
            prefix = _common_prefix(owners)
            label = "/".join(prefix) or "<root>"
            k = self.act_count.get(label, 0)
            self.act_count[label] = k + 1
            self.rows.append(
                dict(
                    name=f"{label}/{name}_{k}",
                    kind="act",
                    in_width=in_w,
                    out_width=int(out.shape[-1]) if out.shape else 1,
                    out_hw=hw,
                    macs=macs * times,
                    params=0,
                    weights=0,
                    kernel_size=ksz,
                )
            )
            return frozenset(owners)
        path = min(src_of(kernel))  # a kernel computed from several parameters is named after the first
        owner = tuple(path[1:-1])
        first = owner not in self.seen
        self.seen.add(owner)
        self.rows.append(
            dict(
                name="/".join(owner) or "<root>",
                kind=kind,
                in_width=in_w,
                out_width=out_w,
                out_hw=hw,
                macs=macs * times,
                params=self.owner_params(owner) if first else 0,
                weights=_size(self.sizes.get(tuple(path), ())) if first else 0,
                kernel_size=ksz,
            )
        )
        return frozenset([owner])


def _common_prefix(owners: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The modules' common path; one module's own path less its last name (a fused qkv projection: its parent)."""
    if not owners:
        return ()
    first = owners[0]
    n = 0
    while n < len(first) and all(len(o) > n and o[n] == first[n] for o in owners):
        n += 1
    prefix = first[:n]
    return prefix[:-1] if prefix in owners else prefix


def jaxpr_rows(closed, in_paths, param_shapes) -> tuple[dict, ...]:
    """The `jaxprune.flops.MacRow` fields (dicts) of the program ``closed`` (a `jax.make_jaxpr` result).

    Args:
      closed: The closed jaxpr of ``f(variables, *inputs)``.
      in_paths: One entry per jaxpr input: the variables leaf's path (collection first, e.g. ``("params", "conv1",
        "kernel")``) or None for an input.
      param_shapes: ``{path: shape}`` of the ``params`` collection's leaves, in order (owners' parameter counts).

    Returns:
      Rows in call order, then one 0-MAC row per module owning parameters but no weight call (see the module
      docstring for the row kinds).
    """
    jaxpr = closed.jaxpr
    sizes = {tuple(p): tuple(s) for p, s in param_shapes.items()}
    w = _Walk(sizes)
    pd, src = {}, {}
    for v, path in zip(jaxpr.invars, in_paths, strict=True):
        if path is not None:
            pd[v] = True
            src[v] = frozenset([tuple(path)])
    w.walk(jaxpr, pd, src, {}, 1)
    rows = list(w.rows)
    others: dict[tuple[str, ...], list[tuple[str, tuple[int, ...]]]] = {}
    for p, s in sizes.items():
        if p[1:-1] not in w.seen:
            others.setdefault(p[1:-1], []).append((p[-1], s))
    for owner, leaves in others.items():
        norm = all(leaf in _NORM_LEAVES and len(s) == 1 for leaf, s in leaves)
        width = int(leaves[0][1][0]) if norm else 0
        rows.append(
            dict(
                name="/".join(owner) or "<root>",
                kind="bn" if norm else "other",
                in_width=width,
                out_width=width,
                out_hw=None,
                macs=0,
                params=sum(_size(s) for _, s in leaves),
                weights=0,
            )
        )
    return tuple(rows)
