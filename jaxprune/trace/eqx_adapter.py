"""The Equinox adapter: an `eqx.Module` (with its `eqx.nn.State`) as a pure function of a variables dict, and back.

The call convention (docs/design.md §6). jaxprune traces the module in inference mode on the example input exactly as
the module takes it: ``eqx.nn.inference_mode(model)(x)``, or ``(x, state)`` for a module holding an
`eqx.nn.StateIndex` (a BatchNorm's running statistics; the output is the first element of the ``(y, state)`` it
returns), with ``key=`` a fixed key when the module's ``__call__`` requires one (dropout is off in inference mode).
For the `eqx.nn` layers the example is one example (``(C, H, W)`` for a ``Conv2d``); a module written for batches
takes a batch. In inference mode a BatchNorm normalises with its running statistics, so no named axis needs binding
and the pruned module equals the masked original; the pruned module keeps its own ``inference`` flags and trains
under the user's ``jax.vmap(model, axis_name="batch", ...)`` as before.

Variables, as jaxprune sees them: ``{"params": ..., "state": ...}`` nested dicts of string keys: every inexact array
of the module at its attribute path (``blocks/0/conv/weight``; list positions are ``'0'``, ``'1'``...), and every
state entry at its `StateIndex`'s path (``blocks/0/bn/batch_state_index/0``: that BatchNorm's running mean).

`equinox` is imported inside the functions only: `import jaxprune` must not import it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune._trees import placement

__all__ = ["is_module", "prunable", "rebuild", "slice_opt_state", "split", "trace_eqx"]


def is_module(obj) -> bool:
    """True for an `eqx.Module`, without importing ``equinox``."""
    from jaxprune._detect import is_eqx_module

    return is_eqx_module(obj)


def _is_index(x) -> bool:
    import equinox as eqx

    return isinstance(x, eqx.nn.StateIndex)


def _key(k) -> str:
    for attr in ("name", "idx", "key"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _names(keypath) -> tuple[str, ...]:
    return tuple(_key(k) for k in keypath)


def _nest(paths, leaves) -> dict:
    out: dict = {}
    for path, leaf in zip(paths, leaves, strict=True):
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def _get(tree, path, what: str):
    node = tree
    for k in path:
        if not isinstance(node, Mapping) or k not in node:
            raise ValueError(f"Equinox variables: {what} {'/'.join(path)} is missing")
        node = node[k]
    return node


class Parts(NamedTuple):
    """How one Equinox module maps to variables: everything needed to run it from them and to rebuild it."""

    static: Any  #: the module without its inexact arrays (`eqx.partition`)
    static_inference: Any  #: the same, in inference mode (what is traced)
    ptree: Any  #: treedef of the module's inexact arrays
    ppaths: tuple  #: their variables paths
    indices: tuple  #: (key path, path names, StateIndex) of every state index, in the module's order
    stree: Any  #: treedef of the `eqx.nn.State` (None: a stateless module)
    spaths: tuple  #: variables paths of the state's leaves, in its order
    call_key: bool  #: the module's ``__call__`` requires ``key=``


def _needs_key(model) -> bool:
    try:
        p = inspect.signature(type(model).__call__).parameters.get("key")
    except (TypeError, ValueError):
        return False
    return p is not None and p.default is inspect.Parameter.empty


def _has_init(index) -> bool:
    return bool(jax.tree_util.tree_leaves(index.init))


def split(model, state=None, *, what: str = "jaxprune") -> tuple[Parts, dict[str, Any]]:
    """``(parts, variables)`` of an Equinox module and its state.

    Raises:
      TypeError: `model` is not an `eqx.Module`, or `state` is not an `eqx.nn.State`.
      ValueError: a module holding state without `state` whose initial state was taken out
        (`eqx.nn.make_with_state`; says to pass ``state=``), `state` given for a module without state, or a state
        that is not this module's (names the entry).
    """
    import equinox as eqx

    if not is_module(model):
        raise TypeError(f"{what}: expected an eqx.Module, got {type(model).__name__}")
    params, static = eqx.partition(model, eqx.is_inexact_array, is_leaf=_is_index)
    _, static_inf = eqx.partition(eqx.nn.inference_mode(model, True), eqx.is_inexact_array, is_leaf=_is_index)
    pflat, ptree = jax.tree_util.tree_flatten_with_path(params)
    ppaths = tuple(_names(p) for p, _ in pflat)
    indices = tuple(
        (p, _names(p), leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_index)[0]
        if _is_index(leaf)
    )
    variables: dict[str, Any] = {"params": _nest(ppaths, [a for _, a in pflat])}
    cls = type(model).__name__
    if state is not None and not isinstance(state, eqx.nn.State):
        raise TypeError(f"{what}: state must be the module's eqx.nn.State, got {type(state).__name__}")
    if not indices:
        if state is not None:
            raise ValueError(f"{what}: the Equinox module {cls} holds no eqx.nn.StateIndex, so it takes no state=")
        return Parts(static, static_inf, ptree, ppaths, (), None, (), _needs_key(model)), variables
    if state is None:
        stripped = [names for _, names, idx in indices if not _has_init(idx)]
        if stripped:
            raise ValueError(
                f"{what}: the Equinox module {cls} holds state ({'/'.join(stripped[0])} is an eqx.nn.StateIndex, e.g. a "
                "BatchNorm's running statistics) and its initial value was taken out (eqx.nn.make_with_state): pass "
                f"{what}(..., state=state), the eqx.nn.State the module is called with"
            )
        state = eqx.nn.State(model)
    leaves, stree = jax.tree_util.tree_flatten(state)
    spaths: list[tuple[str, ...]] = []
    expected: list = []
    for _, names, idx in indices:
        try:
            value = state.get(idx)
        except KeyError:
            raise ValueError(
                f"{what}: the state has no entry for {'/'.join(names)} (an eqx.nn.StateIndex of {cls}): it is not "
                "this module's state"
            ) from None
        for sp, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            spaths.append((*names, *_names(sp)))
            expected.append(leaf)
    if len(expected) != len(leaves) or any(a is not b for a, b in zip(expected, leaves, strict=False)):
        raise ValueError(
            f"{what}: the state's entries are not those of {cls}'s eqx.nn.StateIndex fields in the module's order; "
            "pass the state made with the module (eqx.nn.make_with_state or eqx.nn.State(model)) or updated by it"
        )
    variables["state"] = _nest(spaths, leaves)
    return Parts(static, static_inf, ptree, ppaths, indices, stree, tuple(spaths), _needs_key(model)), variables


def _module(parts: Parts, variables, *, inference: bool):
    import equinox as eqx

    leaves = [_get(variables["params"], p, "parameter") for p in parts.ppaths]
    static = parts.static_inference if inference else parts.static
    return eqx.combine(jax.tree_util.tree_unflatten(parts.ptree, leaves), static, is_leaf=_is_index)


def _state(parts: Parts, variables):
    if parts.stree is None:
        return None
    return jax.tree_util.tree_unflatten(parts.stree, [_get(variables["state"], p, "state entry") for p in parts.spaths])


def _call(parts: Parts, module, state, x):
    kw = {"key": jax.random.key(0)} if parts.call_key else {}
    if state is None:
        return module(x, **kw)
    out = module(x, state, **kw)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(
            f"an Equinox module holding state must return (output, state); {type(module).__name__} returned "
            f"{type(out).__name__}"
        )
    return out[0]


def apply_fn(parts: Parts):
    """``(variables, x) -> output``: the module in inference mode, rebuilt from `variables` and called on `x`."""

    def apply(variables, x):
        return _call(parts, _module(parts, variables, inference=True), _state(parts, variables), x)

    return apply


def _abstract_input(example_input, what: str):
    """`jax.ShapeDtypeStruct`s of an example input (arrays or `jax.ShapeDtypeStruct`s, or a pytree of them).

    Raises:
      TypeError: anything else (names the kind found).
    """
    leaves = jax.tree_util.tree_leaves(example_input)
    bad = [type(a).__name__ for a in leaves if not (hasattr(a, "shape") and hasattr(a, "dtype"))]
    if not leaves or bad:
        raise TypeError(
            f"{what}: example_input must be an array or a jax.ShapeDtypeStruct (or a pytree of them), got "
            f"{bad[0] if bad else 'no leaves'}"
        )
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), example_input)


def _traced(model, parts: Parts, variables, example_input, what: str):
    """`jaxprune.trace_model` of the module's function, after one abstract call that turns the module's own failure
    on the example input (a batch given to a one-example module) into an error saying how it is called."""
    from jaxprune.trace.api import trace_model

    _abstract_input(example_input, what)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (variables, example_input))
    try:
        jax.eval_shape(apply_fn(parts), *abstract)
    except Exception as err:  # the user's module failing on the input: said with how jaxprune called it
        shapes = ", ".join(str(tuple(np.shape(a))) for a in jax.tree_util.tree_leaves(example_input))
        first = str(err).splitlines()[0][:300] if str(err) else ""
        raise ValueError(
            f"{what}: the Equinox module {type(model).__name__} fails on the example input of shape {shapes} "
            f"({type(err).__name__}: {first}). jaxprune calls it as it takes it, eqx.nn.inference_mode(model)(x) or "
            "(x, state): one example for the eqx.nn layers ((C, H, W) for a Conv2d; pass x[0] of a batch)"
        ) from err
    return trace_model(apply_fn(parts), variables, example_input)


def trace_eqx(model, example_input, *, state=None):
    """Traces an Equinox module: ``(TracedModel, variables)``, what `make_plan`, `prune` and `mask_dropped` take.

    `jaxprune.make_plan` / `prune` / `count_macs` do this themselves when given the module; use this for the pruned
    program (``jaxprune.prune(traced, variables, plan)``) or the masking reference
    (``jaxprune.mask_dropped(traced, variables, plan, x)``).

    Args:
      model: An `eqx.Module`.
      example_input: An input the module is called with, as it takes it (one example for the `eqx.nn` layers);
        an array or a `jax.ShapeDtypeStruct`.
      state: The module's `eqx.nn.State` when it holds one (BatchNorm); may be left out when every `StateIndex`
        kept its initial value.

    Raises:
      TypeError / ValueError: see `split`, and everything `jaxprune.trace_model` raises.
    """
    parts, variables = split(model, state, what="trace_eqx")
    return _traced(model, parts, variables, example_input, "trace_eqx"), variables


# ----------------------------------------------------------------------------------------------------------------------
# The verbs' door: one trace per module object (make_plan's, reused by prune), and each module's state shapes
# ----------------------------------------------------------------------------------------------------------------------
class _ById:
    """module object -> value, held as long as the module lives (Equinox modules are unhashable, but weak-referable)."""

    def __init__(self):
        self._d: dict[int, tuple[Any, Any]] = {}

    def get(self, obj):
        hit = self._d.get(id(obj))
        return hit[1] if hit is not None and hit[0]() is obj else None

    def put(self, obj, value) -> None:
        key = id(obj)
        self._d[key] = (weakref.ref(obj, lambda _r, k=key, d=self._d: d.pop(k, None)), value)


_TRACES = _ById()  # module -> (input avals, TracedModel)
_STATES = _ById()  # module -> abstract eqx.nn.State (for count_macs of a module whose state was seen)


def _avals(x):
    return tuple((tuple(np.shape(a)), str(getattr(a, "dtype", type(a)))) for a in jax.tree_util.tree_leaves(x))


def _abstract_state(state):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)


def prunable(model, example_input, state, *, what: str):
    """``(TracedModel, variables, parts, example)`` of an Equinox module for a public verb: traced on `example_input`
    (or the trace `make_plan` made of this module object reused), its variables read from the module and `state`;
    `example` is the traced input's abstract value.

    Raises:
      ValueError: no example input and no earlier trace of this module (says what to pass); see `split`.
    """
    parts, variables = split(model, state, what=what)
    if state is not None:
        _STATES.put(model, _abstract_state(state))
    hit = _TRACES.get(model)
    if example_input is None:
        if hit is None:
            raise ValueError(
                f"{what} on an Equinox module needs an example input to trace it: pass {what}(model, ..., "
                "example_input=x) with an array (or a jax.ShapeDtypeStruct) the module is called with, as it takes "
                "it (one example (C, H, W) for eqx.nn.Conv2d layers)"
            )
        return hit[1], variables, parts, hit[0]
    example = _abstract_input(example_input, what)
    if hit is not None and _avals(hit[0]) == _avals(example):
        return hit[1], variables, parts, hit[0]
    traced = _traced(model, parts, variables, example_input, what)
    _TRACES.put(model, (example, traced))
    return traced, variables, parts, example


def remember_state(model, state) -> None:
    """Records `state`'s shapes for `model` (a pruned module), so that `count_macs` can trace it."""
    _STATES.put(model, _abstract_state(state))


def as_function(model, *, what: str):
    """``(fn, abstract variables)``: the module as the pure inference function ``fn(variables, x)`` with its variables'
    `jax.ShapeDtypeStruct`s, for a cost counter (its state's shapes from the module's kept initial values, or from a
    state a verb saw for this module object).

    Raises:
      ValueError: a module holding state whose shapes are unknown (its initial value taken out and no verb has seen
        its state yet): says what to do.
    """
    state = _STATES.get(model)
    try:
        parts, variables = split(model, state, what=what)
    except ValueError as err:
        if state is None and "state=" in str(err):
            raise ValueError(
                f"{what}: the Equinox module {type(model).__name__} holds state whose initial value was taken out "
                "(eqx.nn.make_with_state), so its shapes are unknown: call jaxprune.make_plan(model, ..., "
                f"state=state) first ({what} then knows them; a module returned by prune(..., state=) too), or "
                "trace it with jaxprune.trace.eqx_adapter.trace_eqx(model, x, state=state)"
            ) from None
        raise
    return apply_fn(parts), jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)


# ----------------------------------------------------------------------------------------------------------------------
# Rebuilding: a new module of the same classes, size fields updated
# ----------------------------------------------------------------------------------------------------------------------
def _children(node):
    """(key, child) pairs of a module's fields, a list's / tuple's items, a dict's values."""
    import equinox as eqx

    if isinstance(node, eqx.Module):
        return [(f.name, getattr(node, f.name, None)) for f in dataclasses.fields(node)]
    if isinstance(node, list | tuple):
        return list(enumerate(node))
    if isinstance(node, dict):
        return list(node.items())
    return []


def _modules(node, path=()):
    """Every `eqx.Module` under `node` with its path (field names, list positions, dict keys), parents first."""
    import equinox as eqx

    if isinstance(node, eqx.Module):
        yield path, node
    for k, child in _children(node):
        if isinstance(child, eqx.Module | list | tuple | dict):
            yield from _modules(child, (*path, k))


def _at(root, path):
    node = root
    for k in path:
        node = node[k] if isinstance(k, int) or isinstance(node, dict) else getattr(node, k)
    return node


def _where(path) -> str:
    return "/".join(str(k) for k in path) or "(the module itself)"


def _with_fields(module, fields: Mapping[str, Any]):
    """A shallow copy of `module` with `fields` replaced (static ones too, which `eqx.tree_at` cannot reach)."""
    new = copy.copy(module)
    for name, value in fields.items():
        object.__setattr__(new, name, value)
    return new


def _shape(a):
    return None if a is None else tuple(int(d) for d in np.shape(a))


def _sizes(path, m, state_shapes) -> dict[str, Any]:
    """The size fields of an `eqx.nn` layer read from its (sliced) arrays.

    Raises:
      ValueError: channels a layer's `groups` no longer divides (names the module path and the field).
    """
    import equinox as eqx

    nn = eqx.nn
    if isinstance(m, nn.Conv | nn.ConvTranspose):
        w = _shape(m.weight)
        groups = m.groups
        if groups > 1 and w[1] == 1 and m.in_channels == groups:  # depthwise: one input channel per group
            groups = w[0] // max(1, m.out_channels // m.groups)
        if w[0] % groups:
            raise ValueError(
                f"cannot rebuild {type(m).__name__} at {_where(path)}: field groups={groups} does not divide its "
                f"{w[0]} kept output channels; round the kept count (make_plan(..., round_to={groups})) or skip it"
            )
        return {"in_channels": w[1] * groups, "out_channels": w[0], "groups": groups}
    if isinstance(m, nn.Linear):
        w = _shape(m.weight)
        return {
            "out_features": m.out_features if m.out_features == "scalar" else w[0],
            "in_features": m.in_features if m.in_features == "scalar" else w[1],
        }
    if isinstance(m, nn.MultiheadAttention):
        h = m.num_heads
        q, k, v, o = (_shape(p.weight) for p in (m.query_proj, m.key_proj, m.value_proj, m.output_proj))
        if q[0] // h != m.qk_size:
            raise ValueError(
                f"cannot rebuild MultiheadAttention at {_where(path)}: field qk_size would change from {m.qk_size} to "
                f"{q[0] // h}, and eqx.nn.MultiheadAttention scales its scores by 1/sqrt(qk_size) read at call time, "
                "so the pruned module would not equal the masked original; keep the query/key head-feature group out "
                "(make_plan(..., skip=[...]))"
            )
        return {
            "query_size": q[1],
            "key_size": k[1],
            "value_size": v[1],
            "output_size": o[0],
            "qk_size": q[0] // h,
            "vo_size": v[0] // h,
        }
    if isinstance(m, nn.MLP):
        hidden = {_shape(layer.weight)[0] for layer in m.layers[:-1]}
        if len(hidden) > 1:
            raise ValueError(
                f"cannot rebuild MLP at {_where(path)}: field width_size is one size for every hidden layer, but the "
                f"plan keeps {sorted(hidden)}; give the hidden layers' groups the same ratio"
            )
        out = {} if not hidden else {"width_size": hidden.pop()}
        if m.in_size != "scalar":
            out["in_size"] = _shape(m.layers[0].weight)[1]
        if m.out_size != "scalar":
            out["out_size"] = _shape(m.layers[-1].weight)[0]
        return out
    if isinstance(m, nn.Embedding):
        n, d = _shape(m.weight)
        return {"num_embeddings": n, "embedding_size": d}
    if isinstance(m, nn.BatchNorm):
        shapes = [_shape(a) for a in (m.weight, m.bias) if a is not None]
        shapes += [s for p, s in state_shapes.items() if p[: len(path)] == path and len(s) == 1]
        return {"input_size": shapes[0][0]} if shapes else {}
    if isinstance(m, nn.LayerNorm | nn.RMSNorm):
        shapes = [_shape(a) for a in (m.weight, m.bias) if a is not None]
        if not shapes:
            return {}
        return {"shape": shapes[0] if isinstance(m.shape, tuple) else shapes[0][0]}
    if isinstance(m, nn.GroupNorm):
        shapes = [_shape(a) for a in (m.weight, m.bias) if a is not None]
        if not shapes:
            return {}
        c = shapes[0][0]
        if m.groups == m.channels:  # one channel per group (an instance norm): the channels are the groups
            return {"channels": c, "groups": c}
        if c % m.groups:
            raise ValueError(
                f"cannot rebuild GroupNorm at {_where(path)}: field groups={m.groups} does not divide its {c} kept "
                f"channels; round the kept count (make_plan(..., round_to={m.groups})) or skip the group"
            )
        return {"channels": c}
    return {}


def update_sizes(model, state_shapes: Mapping[tuple[str, ...], tuple[int, ...]]):
    """`model` with the size fields of its `eqx.nn` layers (Conv / ConvTranspose channels and groups, Linear
    features, BatchNorm ``input_size``, LayerNorm / RMSNorm ``shape``, GroupNorm ``channels``, Embedding sizes,
    MultiheadAttention sizes, MLP ``width_size``) read from their arrays, every other field kept; and the (module
    path, field) pairs it manages."""
    import equinox as eqx

    managed = set()
    # Deepest first, one level at a time: a parent (an MLP) is copied after its children (its Linears) were, so it
    # holds them; `eqx.tree_at` replaces modules of one depth at once (never nested ones).
    by_depth: dict[int, list] = {}
    for path, _ in _modules(model):
        by_depth.setdefault(len(path), []).append(path)
    for depth in sorted(by_depth, reverse=True):
        paths, news = [], []
        for path in by_depth[depth]:
            m = _at(model, path)
            want = _sizes(tuple(str(k) for k in path), m, state_shapes)
            managed.update((path, k) for k in want)
            changed = {k: v for k, v in want.items() if getattr(m, k) != v}
            if changed:
                paths.append(path)
                news.append(_with_fields(m, changed))
        if paths == [()]:
            model = news[0]
        elif paths:
            model = eqx.tree_at(lambda r, ps=tuple(paths): [_at(r, p) for p in ps], model, news)
    return model, managed


def _index_path(keypath) -> tuple:
    return tuple(k.idx if hasattr(k, "idx") else k.key if hasattr(k, "key") else k.name for k in keypath)


def _sliced_inits(model, parts: Parts, ops):
    """`model` with the initial values its `StateIndex` fields kept sliced like the state entries they start."""
    import equinox as eqx

    where, new = [], []
    for keypath, names, idx in parts.indices:
        if not _has_init(idx):
            continue
        for sp, leaf in jax.tree_util.tree_flatten_with_path(idx.init)[0]:
            takes = ops.get(("state", *names, *_names(sp)))
            if not takes:
                continue
            arr = np.asarray(leaf)
            for axis, keep in takes:
                arr = arr.take(np.asarray(keep, np.int64), axis=axis)
            where.append((*_index_path(keypath), "init", *_index_path(sp)))
            new.append(jax.numpy.asarray(arr, leaf.dtype))
    if not where:
        return model
    return eqx.tree_at(lambda r: [_at(r, p) for p in where], model, new)


#: Fields of the `eqx.nn` layers that hold a width (the others, kernel sizes and strides, never do).
_SIZE_FIELDS = frozenset(
    "shape channels input_size in_features out_features in_channels out_channels num_heads width_size in_size "
    "out_size query_size key_size value_size output_size qk_size vo_size num_embeddings embedding_size".split()
)


def _width_fields(model, widths: Mapping[str, int], managed: set) -> list[str]:
    """``Class path: field=value`` for every int (or int tuple) field, other than the size fields `update_sizes`
    manages, equal to the unpruned width of a pruned group."""
    out = []
    for path, m in _modules(model):
        ours = type(m).__module__.split(".")[0] == "equinox"  # an eqx.nn layer: only its size fields, not its strides
        for f in dataclasses.fields(m):
            v = getattr(m, f.name, None)
            vals = v if isinstance(v, tuple) else (v,)
            if (path, f.name) in managed or not vals or (ours and f.name not in _SIZE_FIELDS):
                continue
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in vals):
                continue
            hit = [g for g, w in widths.items() if w in vals]
            if hit:
                out.append(
                    f"{type(m).__name__} {_where(path)}: field {f.name}={v!r} (the unpruned width of pruned group "
                    f"{hit[0]!r})"
                )
    return out


def rebuild(model, parts: Parts, variables, new_variables, ops, changed_widths: Mapping[str, int], example_input):
    """A new module of `model`'s classes holding `new_variables` (sliced params), its `StateIndex` initial values
    sliced and every size field updated, and the new `eqx.nn.State` (None for a stateless module). The rebuilt module
    is run abstractly on `example_input` and must give the original's output shapes.

    Args:
      model: The unpruned module.
      parts: Its `split`.
      variables: Its variables (`split`).
      new_variables: The pruned ones.
      ops: The slicing (`jaxprune.surgery.slicing_ops`): leaf path -> [(axis, kept indices)].
      changed_widths: Pruned group -> unpruned width.
      example_input: The traced input (array or `jax.ShapeDtypeStruct` pytree).

    Raises:
      ValueError: a field that cannot be rebuilt: a `groups` that no longer divides the kept channels, or a rebuilt
        module that fails on the example input (names the module path and the fields holding a pruned width).
    """
    import equinox as eqx

    new_model = _sliced_inits(_module(parts, new_variables, inference=False), parts, ops)
    state_shapes = {p: tuple(np.shape(_get(new_variables["state"], p, "state entry"))) for p in parts.spaths}
    new_model, managed = update_sizes(new_model, state_shapes)
    new_state = _state(parts, new_variables)
    x = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), example_input)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables)
    ref = _avals(jax.eval_shape(apply_fn(parts), abstract, x))
    try:
        got = eqx.filter_eval_shape(
            lambda m, s, xx: _call(parts, eqx.nn.inference_mode(m, True), s, xx), new_model, new_state, x
        )
        err = None if _avals(got) == ref else f"output {_avals(got)} instead of {ref}"
    except Exception as e:  # any failure of the user's module is reported, with the fields to blame
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    if err is not None:
        fields = _width_fields(new_model, changed_widths, managed)
        blame = "; ".join(fields) if fields else "no int field holds a pruned group's unpruned width"
        raise ValueError(
            f"cannot rebuild the Equinox module {type(model).__name__}: the pruned module fails on the example input "
            f"({err}). Fields that may set a pruned width: {blame}. The eqx.nn layers' size fields are updated from "
            "their arrays; a module's own int fields are not (what they mean is unknown): read the width from an "
            "array's shape in __call__, or keep the group out (make_plan(..., skip=[...]))"
        )
    return new_model, new_state


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer state: an optax state over ``eqx.filter(model, eqx.is_array)``
# ----------------------------------------------------------------------------------------------------------------------
def slice_opt_state(opt_state, model, new_model, parts: Parts, ops):
    """`opt_state` with every copy of the module's parameters in it (optax's ``mu``, ``nu``, momentum traces: nodes of
    the module's class, as ``optimizer.init(eqx.filter(model, eqx.is_array))`` or ``eqx.is_inexact_array`` makes
    them) sliced like the parameters and given `new_model`'s structure (its size fields); scalars (step counts) kept.

    Raises:
      ValueError: a leaf that is no parameter of the module, or one whose shape is not its parameter's; names it.
    """
    import equinox as eqx

    cls = type(model)
    shapes = {
        _names(p): tuple(np.shape(a))
        for p, a in jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
    }
    structures = {
        jax.tree_util.tree_structure(eqx.filter(model, f)): jax.tree_util.tree_structure(eqx.filter(new_model, f))
        for f in (eqx.is_array, eqx.is_inexact_array)
    }
    inits = {(*names, "init"): names for _, names, _ in parts.indices}

    def op_for(path):
        for n in range(len(path)):
            if path[:n] in inits:  # a StateIndex's kept initial value: sliced like its state entry
                return ops.get(("state", *inits[path[:n]], *path[n:]))
        return ops.get(("params", *path))

    def take(leaf, takes):
        arr = np.asarray(leaf)
        for axis, keep in takes:
            arr = arr.take(np.asarray(keep, np.int64), axis=axis)
        if not isinstance(leaf, jax.Array):
            return arr
        return jax.device_put(arr, placement(leaf))

    flat, tree = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=lambda n: isinstance(n, cls))
    out = []
    for path, leaf in flat:
        where = jax.tree_util.keystr(path)
        if not isinstance(leaf, cls):
            if np.ndim(leaf) != 0:
                raise ValueError(
                    f"optimizer-state leaf {where} with shape {tuple(np.shape(leaf))} matches no parameter: it is not "
                    f"inside a copy of the {cls.__name__} parameters (an optax state of eqx.filter(model, "
                    "eqx.is_array)), so it cannot be sliced"
                )
            out.append(leaf)
            continue
        sub, subtree = jax.tree_util.tree_flatten_with_path(leaf)
        new = []
        for sp, a in sub:
            p = _names(sp)
            here = where + jax.tree_util.keystr(sp)
            if p not in shapes:
                raise ValueError(
                    f"optimizer-state leaf {here} with shape {tuple(np.shape(a))} matches no parameter of "
                    f"{cls.__name__}"
                )
            if tuple(np.shape(a)) != shapes[p]:
                raise ValueError(
                    f"optimizer-state leaf {here} has shape {tuple(np.shape(a))} but parameter {'/'.join(p)} has "
                    f"shape {shapes[p]}"
                )
            takes = op_for(p)
            new.append(take(a, takes) if takes else a)
        if subtree not in structures:
            raise ValueError(
                f"optimizer-state node {where} is a {cls.__name__} but not a copy of the module's parameters "
                "(eqx.filter(model, eqx.is_array) or eqx.is_inexact_array): it cannot be given the pruned structure"
            )
        out.append(jax.tree_util.tree_unflatten(structures[subtree], new))
    return jax.tree_util.tree_unflatten(tree, out)
