"""The Flax NNX adapter: an NNX module as a pure function of a variables dict, and back (`nnx.split`/`nnx.merge`).

`flax.nnx` is imported inside the functions only: `import jaxprune` must not import it (it pulls optax).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

_NNX_COLLECTIONS = (("params", "Param"), ("batch_stats", "BatchStat"))


def is_module(obj) -> bool:
    """True for an NNX module, without importing ``flax.nnx`` (tracing a Linen model must not load it and optax)."""
    from jaxprune._detect import is_nnx_module

    return is_nnx_module(obj)


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


def split(module):
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
    if not is_module(module):
        raise TypeError(f"nnx_variables takes a flax.nnx.Module, got {type(module).__name__}")
    _, (params, stats, _) = split(module)
    out = {"params": _str_keys(params.to_pure_dict())}
    sd = stats.to_pure_dict()
    if sd:
        out["batch_stats"] = _str_keys(sd)
    return out


def fill(states, variables: Mapping[str, Any]):
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


def apply_fn(graphdef, states):
    """The module as a pure function of jaxprune's variables dict, with every dropout deterministic (`nnx.Dropout`
    and `nnx.MultiHeadAttention`'s attention dropout).

    Dropout draws from the module's own `nnx.Rngs`, which cannot be advanced inside a trace of a copy; it couples no
    channels, so the trace, the masked reference and the pruned re-run all see it as the identity. The module a user
    gets back from `prune` keeps its own dropout settings (they come from the user's module, not from this function).
    """
    from flax import nnx

    def apply(variables, *xs):
        module = nnx.merge(graphdef, *fill(states, variables))
        for _, sub in nnx.iter_graph(module):
            if isinstance(sub, nnx.Dropout | nnx.MultiHeadAttention):
                sub.deterministic = True  # MultiHeadAttention: its attention-weight dropout
        return module(*xs)

    return apply


def _value(var):
    get = getattr(var, "get_value", None)
    return get() if callable(get) else var.value


class KeptScale:
    """An `nnx.MultiHeadAttention` ``attention_fn`` whose query is scaled by `factor` first.

    A pruned attention with fewer query/key head features ``n`` would divide its scores by ``sqrt(n)`` instead of the
    original ``sqrt(n0)``; scaling the query by ``sqrt(n / n0)`` keeps the original temperature, so the pruned module
    equals the masked original (docs/design.md §4). Pruned twice, the factors multiply.
    """

    def __init__(self, fn, factor: float):
        if isinstance(fn, KeptScale):
            fn, factor = fn.fn, fn.factor * factor
        self.fn, self.factor = fn, float(factor)

    def __call__(self, query, key, value, *args, **kwargs):
        return self.fn(query * jax.numpy.asarray(self.factor, query.dtype), key, value, *args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, KeptScale) and (self.fn, self.factor) == (other.fn, other.factor)

    def __hash__(self) -> int:
        return hash((KeptScale, self.fn, self.factor))

    def __repr__(self) -> str:
        return f"KeptScale({getattr(self.fn, '__name__', self.fn)!r}, {self.factor:.6g})"


def update_sizes(module) -> None:
    from flax import nnx

    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.Linear):
            m.in_features, m.out_features = (int(s) for s in _value(m.kernel).shape)
        elif isinstance(m, nnx.Conv):
            kshape = tuple(int(s) for s in _value(m.kernel).shape)
            groups = m.feature_group_count
            if groups > 1 and m.in_features == groups == m.out_features:
                groups = kshape[-1]  # depthwise: one channel per group, input and output one space; the groups shrink
            # Otherwise (grouped, or depthwise with a channel multiplier) the trace keeps the number of groups and
            # prunes the same slots in each, even down to one input channel per group.
            m.feature_group_count = groups
            m.in_features, m.out_features, m.kernel_shape = kshape[-2] * groups, kshape[-1], kshape
        elif isinstance(m, nnx.ConvTranspose):
            kshape = tuple(int(s) for s in _value(m.kernel).shape)
            cin, cout = (kshape[-1], kshape[-2]) if m.transpose_kernel else (kshape[-2], kshape[-1])
            m.in_features, m.out_features, m.kernel_shape = cin, cout, kshape
        elif isinstance(m, nnx.BatchNorm | nnx.LayerNorm | nnx.RMSNorm | nnx.GroupNorm):
            for attr in ("scale", "bias", "mean", "var"):
                v = getattr(m, attr, None)
                if isinstance(v, nnx.Variable):
                    m.num_features = int(_value(v).shape[-1])
                    break
            if isinstance(m, nnx.GroupNorm) and m.group_size == 1:
                m.num_groups = m.num_features  # one channel per group (an instance norm): the channels are the groups
            elif isinstance(m, nnx.GroupNorm):
                # The trace keeps the number of groups (the same channels are kept in each): the groups shrink.
                m.group_size = m.num_features // m.num_groups
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = (int(s) for s in _value(m.embedding).shape)
        elif isinstance(m, nnx.LinearGeneral):
            kshape = tuple(int(s) for s in _value(m.kernel).shape)
            nb, ni = len(m.batch_axis), len(m.in_features)
            m.in_features, m.out_features = kshape[nb : nb + ni], kshape[nb + ni :]
    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.MultiHeadAttention):  # after its projections: heads and head features from their kernels
            q = tuple(int(s) for s in _value(m.query.kernel).shape)
            if q[-1] != m.head_dim:  # fewer head features: keep the traced softmax temperature (pruned = masked)
                m.attention_fn = KeptScale(m.attention_fn, (q[-1] / m.head_dim) ** 0.5)
            m.in_features, m.num_heads, m.head_dim = q[0], q[-2], q[-1]
            m.qkv_features = m.num_heads * m.head_dim
            if getattr(m, "num_kv_heads", None) is not None:
                m.num_kv_heads = int(_value(m.key.kernel).shape[-2])
            m.out_features = int(_value(m.out.kernel).shape[-1])


# ----------------------------------------------------------------------------------------------------------------------
# Surgery on an NNX module (and its optimizer): `jaxprune.prune(module, plan)`
# ----------------------------------------------------------------------------------------------------------------------
def _flat(tree, prefix=()):
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, str(k))))
    else:
        out[prefix] = tree
    return out


def _sliced_rest(rest, variables, ops, changed_widths):
    """The non-parameter, non-batch-stat state (`rest`) with every custom `nnx.Variable` of channel-shaped state
    sliced: a leaf takes the slicing of the parameters of its module (and the modules below) that have its shape.

    Raises:
      ValueError: a leaf whose shape matches several such parameters sliced differently, or none while one of its
        dimensions is the (unpruned) width of a pruned group: it names the variable, its type and shape.
    """
    import numpy as np
    from flax import nnx

    params = {("params", *p): a for p, a in _flat(variables.get("params", {})).items()}
    params.update({("batch_stats", *p): a for p, a in _flat(variables.get("batch_stats", {})).items()})
    pure = rest.to_pure_dict()
    types = {tuple(str(k) for k in path): type(v).__name__ for path, v in nnx.to_flat_state(rest)}
    out = _flat(_str_keys(pure))
    for path, leaf in list(out.items()):
        shape = tuple(np.shape(leaf))
        if not shape or not hasattr(leaf, "dtype") or jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue
        owner = path[:-1]
        takes = {
            tuple((ax, tuple(int(i) for i in idx)) for ax, idx in ops.get(p, ()))
            for p, a in params.items()
            if p[1 : 1 + len(owner)] == owner and tuple(np.shape(a)) == shape
        }
        where = f"{types.get(path, 'Variable')} {'/'.join(path)} (shape {shape})"
        if len(takes) > 1:
            raise ValueError(
                f"cannot prune the NNX module: {where} has the shape of several parameters of its module that are "
                "pruned differently; it is not known which channels it holds"
            )
        if takes:
            (take,) = takes
            if take:
                arr = np.asarray(leaf)
                for ax, idx in take:
                    arr = arr.take(np.asarray(idx, np.int64), axis=ax)
                out[path] = jax.numpy.asarray(arr)
            continue
        hit = [n for n, w in changed_widths.items() if w in shape]
        if hit:
            raise ValueError(
                f"cannot prune the NNX module: {where} has a dimension of the width of pruned group {hit[0]!r} but "
                "the shape of no parameter of its module, so it cannot be sliced with them; keep it out of the "
                "pruned groups (make_plan(..., skip=...)) or give it a parameter's shape"
            )
    new = jax.tree_util.tree_map(lambda a: a, rest)
    if pure:
        nested: dict = {}
        for path, leaf in out.items():
            node = nested
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = leaf
        new.replace_by_pure_dict(_restore_keys(nested, pure))
    return new


def check_head_sizes(module, traced, plan) -> None:
    """An `nnx.MultiHeadAttention` holds one head size for query/key and value: their head-feature groups must keep
    the same count (each its own channels).

    Raises:
      ValueError: a plan keeping different counts; names the module, both groups and their counts.
    """
    from flax import nnx

    kept = {g.name: len(plan.keep[g.name]) if g.name in plan.keep else g.width for g in traced.channel_groups()}
    for path, m in nnx.iter_graph(module):
        if not isinstance(m, nnx.MultiHeadAttention):
            continue
        at = ("params", *(str(k) for k in path))
        owners = {}
        for g in traced.channel_groups():
            for ref in g.axes:
                if (
                    ref.path[:-2] == at
                    and ref.path[-2:] in (("query", "kernel"), ("value", "kernel"))
                    and ref.axis == 2
                ):
                    owners.setdefault(ref.path[-2], g.name)
        q, v = owners.get("query"), owners.get("value")
        if q is not None and v is not None and q != v and kept[q] != kept[v]:
            raise ValueError(
                f"cannot prune the NNX module: nnx.MultiHeadAttention {'/'.join(at[1:])} holds one head size, but the "
                f"plan keeps {kept[q]} query/key head features (group {q!r}) and {kept[v]} value head features (group "
                f"{v!r}); give both groups the same ratio"
            )


def rebuild(module, variables, new_variables, ops, changed_widths):
    """A new module of `module`'s classes holding `new_variables` (its pruned params and batch stats), its other
    state sliced (`_sliced_rest`) and every size attribute updated; `module` is untouched.

    Args:
      module: The unpruned NNX module.
      variables: Its `nnx_variables`.
      new_variables: The pruned ones.
      ops: The slicing (`jaxprune.surgery.slicing_ops`): leaf path -> [(axis, kept indices)].
      changed_widths: Pruned group -> unpruned width.
    """
    from flax import nnx

    graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    new_rest = _sliced_rest(rest, variables, ops, changed_widths)
    new_module = nnx.merge(graphdef, *fill((params, stats, new_rest), new_variables))
    update_sizes(new_module)
    return new_module


def check_optimizer(optimizer) -> None:
    """Raises TypeError unless `optimizer` is an `nnx.Optimizer`."""
    from flax import nnx

    if not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"optimizer must be an nnx.Optimizer, got {type(optimizer).__name__}")


def optimizer_state(optimizer):
    """The optax state of an `nnx.Optimizer` as plain arrays (`nnx.as_pure`)."""
    from flax import nnx

    return nnx.as_pure(optimizer.opt_state)


def with_optimizer_state(optimizer, state):
    """A copy of `optimizer` (step, tx, wrt kept) holding the optax `state` (same structure, e.g. sliced)."""
    from flax import nnx

    new = nnx.clone(optimizer)
    targets = jax.tree_util.tree_leaves(new.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    values = jax.tree_util.tree_leaves(state)
    if len(targets) != len(values):  # pragma: no cover - as_pure keeps one array per variable
        raise ValueError("the optimizer state changed structure while it was sliced")
    for var, value in zip(targets, values, strict=True):
        if isinstance(var, nnx.Variable):
            var.set_value(value)
    return new
