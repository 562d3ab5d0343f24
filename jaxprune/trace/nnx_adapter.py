"""The Flax NNX adapter: an NNX module as a pure function of a variables dict, and back (`nnx.split`/`nnx.merge`).

`flax.nnx` is imported inside the functions only: `import jaxprune` must not import it (it pulls optax).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

_NNX_COLLECTIONS = (("params", "Param"), ("batch_stats", "BatchStat"))


def is_module(obj) -> bool:
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
    from flax import nnx

    def apply(variables, x):
        return nnx.merge(graphdef, *fill(states, variables))(x)

    return apply


def _value(var):
    get = getattr(var, "get_value", None)
    return get() if callable(get) else var.value


def update_sizes(module) -> None:
    from flax import nnx

    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.Linear):
            m.in_features, m.out_features = (int(s) for s in _value(m.kernel).shape)
        elif isinstance(m, nnx.Conv):
            kshape = tuple(int(s) for s in _value(m.kernel).shape)
            groups = m.feature_group_count
            if groups > 1 and kshape[-2] == 1:  # depthwise: one input channel per group, the groups shrink
                groups = kshape[-1] // max(1, m.out_features // m.feature_group_count)
            m.feature_group_count = groups
            m.in_features, m.out_features, m.kernel_shape = kshape[-2] * groups, kshape[-1], kshape
        elif isinstance(m, nnx.BatchNorm | nnx.LayerNorm | nnx.RMSNorm | nnx.GroupNorm):
            for attr in ("scale", "bias", "mean", "var"):
                v = getattr(m, attr, None)
                if isinstance(v, nnx.Variable):
                    m.num_features = int(_value(v).shape[-1])
                    break
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = (int(s) for s in _value(m.embedding).shape)
        elif isinstance(m, nnx.LinearGeneral):
            kshape = tuple(int(s) for s in _value(m.kernel).shape)
            nb, ni = len(m.batch_axis), len(m.in_features)
            m.in_features, m.out_features = kshape[nb : nb + ni], kshape[nb + ni :]
    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.MultiHeadAttention):  # after its projections: heads and head features from their kernels
            q = tuple(int(s) for s in _value(m.query.kernel).shape)
            m.in_features, m.num_heads, m.head_dim = q[0], q[-2], q[-1]
            m.qkv_features = m.num_heads * m.head_dim
            if getattr(m, "num_kv_heads", None) is not None:
                m.num_kv_heads = int(_value(m.key.kernel).shape[-2])
            m.out_features = int(_value(m.out.kernel).shape[-1])
