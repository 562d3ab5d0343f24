"""Re-running a traced program eqn by eqn at pruned widths and/or with channel masks (the masking reference)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxprune.trace._jaxpr import _Frame, _is_literal
from jaxprune.trace.extract import _Trace
from jaxprune.trace.rules import _CUMULATIVE, _REDUCE

# -- re-running the traced program (pruned widths, channel masks) -------------------------------------------------

# `_Runner.vector` of an axis whose mask depends on another axis (a balanced group's slots beside its block axis).
_PER_BLOCK = object()


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
        # Balanced groups (GroupNorm groups): root -> (blocks, roots of the axes indexing the blocks). Their mask is
        # one 0/1 entry per channel of every block (block-major), so an axis holding one block's slots is masked
        # together with the block axis beside it.
        self.balanced = {
            s.root: (s.blocks, frozenset(self.d.find(n) for n in s.block_axes)) for s in trace.specs if s.blocks > 1
        }

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
            if vec is _PER_BLOCK:
                value = value * self.block_mask(nodes, ax).astype(jnp.result_type(value))
            elif vec is not None:
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
        """The 0/1 mask along one axis, None if no masked group is on it, or `_PER_BLOCK` for an axis holding one
        block's slots of a balanced group (its mask depends on the block axis too: `block_mask`)."""
        if node in self._vec:
            return self._vec[node]
        runs = self.d.resolve(node)
        vec = None
        if any(r in self.masks for r, _ in runs):
            parts = []
            for r, c in runs:
                m = self.masks[r] if r in self.masks else jnp.ones((self.sizes.get(r, self.d.size[r]),), jnp.float32)
                m = jnp.asarray(m, jnp.float32)
                if r in self.balanced and r in self.masks:
                    blocks = self.balanced[r][0]
                    if c % blocks:  # one block's slots (or a part of the blocks): not a vector on this axis alone
                        vec = _PER_BLOCK
                        break
                    parts.extend([m] * (c // blocks))  # the mask covers the blocks side by side already
                else:
                    parts.extend([m] * c)
            else:
                vec = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
        self._vec[node] = vec
        return vec

    def block_mask(self, nodes, ax: int):
        """The mask of a balanced group's slots on axis `ax`, broadcast against the axis indexing its blocks (a
        GroupNorm's (groups, channels per group) view): block b masks its own channels."""
        runs = self.d.resolve(nodes[ax])
        (r, _), *rest = runs
        blocks, block_roots = self.balanced.get(r, (0, frozenset()))
        axis = next((k for k, n in enumerate(nodes) if k != ax and self.d.find(n) in block_roots), None)
        if rest or runs[0][1] != 1 or axis is None:  # pragma: no cover - extract._mixed_without_blocks ties these
            raise AssertionError("internal: a balanced group's slots are mixed with no block axis beside them")
        m = jnp.reshape(jnp.asarray(self.masks[r], jnp.float32), (blocks, -1))
        if axis > ax:
            m = m.T
        shape = [1] * len(nodes)
        shape[ax], shape[axis] = -1, blocks
        return jnp.reshape(m, shape)

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
        if i in f.divisors:
            invals = self.divisor(f.divisors[i], invals)
        out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def divisor(self, rec, invals: list) -> list:
        """A mean's divisor over the channels kept: the pruned count, or the sum of the masks (docs/design.md §6)."""
        k, _, nodes, op = rec
        n: Any = 1
        changed = False
        for node in nodes:
            vec = self.vector(node) if self.masks else None
            if vec is _PER_BLOCK:  # one block's slots of a balanced group: every block keeps the same count
                ((r, _),) = self.d.resolve(node)
                n = n * jnp.sum(jnp.asarray(self.masks[r], jnp.float32)) / self.balanced[r][0]
                changed = True
            elif vec is not None:
                n = n * jnp.sum(vec)
                changed = True
            else:
                size = self.ns(node)
                changed = changed or size != self.d.size[node]
                n = n * size
        if not changed:
            return invals
        dtype = jnp.result_type(invals[k])
        out = list(invals)
        out[k] = jnp.asarray(n if op == "div" else 1.0 / n, dtype)
        return out

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
        elif name == "gather":
            shape = self.shape(f.env[eqn.invars[0]])
            sizes = list(p["slice_sizes"])
            for k in f.meta[i]:
                sizes[k] = shape[k]
            p["slice_sizes"] = tuple(sizes)
        elif "shape" in p:
            p["shape"] = out_shape
        return p
