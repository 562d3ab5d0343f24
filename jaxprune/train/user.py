"""Users' own NNX and Equinox modules in the training loop: small adapters with the ``model.apply`` signature the steps
use (docs/design.md §6).

`TrainState.create` wraps an `nnx.Module` in an `NNXModel` and an `eqx.Module` (with its `eqx.nn.State`) in an
`EqxModel`; the adapter is held as `TrainState.model` (static), its arrays ride in the state's ``params`` and
``batch_stats`` fields, and the jitted train and evaluation steps (`jaxprune.train.steps`) call
``adapter.apply(variables, x, train=..., mutable=["batch_stats"], rngs=...)`` exactly as they call a zoo model.

**NNX.** ``nnx.split(module, nnx.Param, ...)``: ``params`` are the `nnx.Param` leaves, ``batch_stats`` everything else
the module carries (`nnx.BatchStat`, the RNG keys and counts of its `nnx.Rngs` streams, custom `nnx.Variable` s),
both as nested dicts with string keys (as `jaxprune.nnx_variables` gives them). Each step merges them into a copy of
the module, sets it to training mode (``module.train()``: BatchNorm on batch statistics, Dropout on) or evaluation
mode (``module.eval()``), calls ``module(x)`` on the batch and splits the updated non-parameter state back out: what
``nnx.jit`` of a user's own step does. Dropout draws from the module's own `nnx.Rngs`.

**Equinox.** ``params`` are the module's inexact arrays, ``batch_stats`` its `eqx.nn.State` entries (a BatchNorm's
running statistics), at the paths of `jaxprune.trace.eqx_adapter` (``blocks/0/conv/weight``). A training step calls
the module in training mode (``eqx.nn.inference_mode(model, False)``) as an Equinox user does,
``jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)``, so a
``BatchNorm(axis_name="batch")`` normalises over the batch and its state is updated; evaluation runs
``eqx.nn.inference_mode(model)`` under the same vmap. A module whose ``__call__`` takes ``key=`` gets one key per
example, split from the step's key (``fold_in(state.rng, step)``) in training, and a fixed key in inference mode.

**Data layout.** The batch reaches the model as it is given: ``(N, ...)`` with the examples first, in whatever layout
the model takes (NHWC for `nnx.Conv`; for Equinox each row is one example as the module takes it, ``(C, H, W)`` for
`eqx.nn.Conv2d`, so a batch is ``(N, C, H, W)``; an Equinox module is always called per example, so write it for
one example, as the `eqx.nn` layers are). The ``"cifar"`` / ``"crop"`` augmentations pad and crop NHWC images:
they apply to NNX modules fed 4-D batches and are refused for Equinox modules (pass a callable ``f(key, images)``).

**Getting the model back.** `TrainState.to_model` returns a new NNX module holding the trained values, in the mode the
module had when it was given (the module given to `TrainState.create` is never mutated), or the Equinox ``(model,
state)``. `prune_state` traces and prunes an NNX module in evaluation mode, so a pruned state's module comes back in
evaluation mode (call ``.train()`` on it to train it in your own loop).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxprune._detect import is_eqx_module, is_nnx_module

__all__ = ["EqxModel", "NNXModel", "is_user_model", "wrap"]


def is_user_model(model) -> bool:
    """True for the adapter of a user's NNX or Equinox module (`NNXModel`, `EqxModel`)."""
    return isinstance(model, NNXModel | EqxModel)


def _str_keys(tree):
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _signature(tree) -> tuple:
    return tuple(
        (jax.tree_util.keystr(p), tuple(np.shape(a)), str(a.dtype))
        for p, a in jax.tree_util.tree_leaves_with_path(tree)
    )


def _example_key(example) -> tuple | None:
    return None if example is None else _signature(example)


def _hashable(key, owner):
    """`key`, or the identity of `owner` when a part of it (a module's unhashable static field) cannot be hashed."""
    try:
        hash(key)
    except TypeError:
        return ("id", id(owner))
    return key


class _Keyed:
    """Equality and hash by ``self._key`` (set by the adapter's ``__init__``): adapters of one architecture are equal,
    so `jax.jit`, which keys on the static model, compiles one step for all of them."""

    _key: Any

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)


def _check_no_masks(masks, kind: str) -> None:
    if masks is not None:
        raise TypeError(
            f"masks= (training the masked original) is for zoo models; a {kind} module is pruned and then trained "
            "as its own smaller module (prune_state)"
        )


# ----------------------------------------------------------------------------------------------------------------------
# NNX
# ----------------------------------------------------------------------------------------------------------------------
class NNXModel(_Keyed):
    """An `nnx.Module` as ``apply(variables, x, *, train, mutable, rngs)`` (see the module docstring).

    Hashable and compared by the module's graph (`nnx.GraphDef`), its state's structure and shapes and the example
    input it was traced with, so every state of one architecture shares one compiled step.

    Attributes:
      graphdef: The module's `nnx.GraphDef`.
      example: The abstract example input (`jax.ShapeDtypeStruct` tuple) `prune_state` traces the module with, or
        None when none is known yet.
    """

    kind = "NNX"
    layout = "as the module takes it (NHWC for nnx.Conv)"
    nhwc = True  #: a 4-D batch is NHWC: the named augmentations apply
    train_rngs: tuple[str, ...] = ()  # the module carries its own nnx.Rngs

    def __init__(self, graphdef, params_template, rest_template, example=None, *, name: str = "Module"):
        self.graphdef = graphdef
        self.name = name
        self._params = params_template
        self._rest = rest_template
        self.example = example
        self._key = (
            graphdef,
            jax.tree_util.tree_structure(params_template),
            jax.tree_util.tree_structure(rest_template),
            _signature(params_template),
            _signature(rest_template),
            _example_key(example),
        )
        self._key = _hashable(self._key, self)

    def __repr__(self) -> str:
        return f"NNXModel({self.name})"

    def _merge(self, params, rest):
        from flax import nnx

        from jaxprune.trace.nnx_adapter import _restore_keys

        states = []
        for template, values in ((self._params, params), (self._rest, rest)):
            st = jax.tree_util.tree_map(lambda a: a, template)
            pure = nnx.to_pure_dict(template)
            if pure:
                nnx.replace_by_pure_dict(st, _restore_keys(values, pure))
            states.append(st)
        return nnx.merge(self.graphdef, *states)

    def apply(self, variables, x, *, train: bool = False, mutable=(), rngs=None, masks=None):
        """The module on `x`: logits, or ``(logits, {"batch_stats": updated state})`` when `mutable` is given."""
        from flax import nnx

        _check_no_masks(masks, "NNX")
        module = self._merge(variables["params"], variables.get("batch_stats", {}))
        if train:
            module.train()
        else:
            module.eval()
        out = module(x)
        if not mutable:
            return out
        _, _, rest = nnx.split(module, nnx.Param, ...)
        return out, {"batch_stats": _str_keys(nnx.to_pure_dict(rest))}

    def export(self, params, batch_stats):
        """A new module of the user's classes holding `params` and `batch_stats` (in the mode it was given in)."""
        return self._merge(params, batch_stats)


def _wrap_nnx(module, example):
    from flax import nnx

    from jaxprune._models import _NNX_TRACES

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if example is None:
        traced = _NNX_TRACES.get(module)  # make_plan's trace of this module object, or prune's of a pruned one
        example = None if traced is None else tuple(traced.example_inputs)
        if example is not None and len(example) != 1:
            raise ValueError(
                f"{type(module).__name__} was traced with {len(example)} inputs; jaxprune.train calls a module with one "
                "input, the batch (wrap a module of several inputs in one that takes the batch)"
            )
    adapter = NNXModel(graphdef, _abstract(params), _abstract(rest), example, name=type(module).__name__)
    return adapter, _str_keys(nnx.to_pure_dict(params)), _str_keys(nnx.to_pure_dict(rest))


# ----------------------------------------------------------------------------------------------------------------------
# Equinox
# ----------------------------------------------------------------------------------------------------------------------
def _takes_key(model) -> bool:
    try:
        return "key" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False


def _static_key(static) -> tuple:
    """A hashable key of an Equinox module's static part: its tree structure (the static fields) and its other leaves,
    `StateIndex` es by marker, arrays (constants the module computes with) by identity, the rest by value where they
    hash (functions: by identity) and by identity where they do not."""
    from jaxprune.trace.eqx_adapter import _has_init, _is_index

    leaves, treedef = jax.tree_util.tree_flatten(static, is_leaf=_is_index)
    out = []
    for leaf in leaves:
        if _is_index(leaf):
            marker = leaf.marker
            try:
                hash(marker)
            except TypeError:
                marker = ("id", id(marker))
            out.append(("StateIndex", marker, _has_init(leaf)))
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out.append(("array", id(leaf)))
        else:
            try:
                hash(leaf)
                out.append(("value", leaf))
            except TypeError:
                out.append(("id", id(leaf)))
    return treedef, tuple(out)


class EqxModel(_Keyed):
    """An `eqx.Module` (with its `eqx.nn.State`) as ``apply(variables, x, *, train, mutable, rngs)`` (see the module
    docstring). Hashable and compared by the module's static part (its classes, static fields and non-array leaves),
    the layout of its parameters and state and the example input, so modules of one architecture share one compiled
    step.

    Attributes:
      parts: How the module maps to variables (`jaxprune.trace.eqx_adapter.split`).
      example: The abstract example input (one example, as the module takes it) `prune_state` traces the module
        with, or None when none is known yet.
    """

    kind = "Equinox"
    layout = "one example per row, as the module takes it (N, C, H, W for eqx.nn.Conv2d)"
    nhwc = False  #: CHW examples: the named augmentations do not apply

    def __init__(self, model, parts, example=None):
        import equinox as eqx

        from jaxprune.trace.eqx_adapter import _is_index

        self.parts = parts
        self.example = example
        _, self._static_train = eqx.partition(
            eqx.nn.inference_mode(model, False), eqx.is_inexact_array, is_leaf=_is_index
        )
        self._key_arg = _takes_key(model)
        self.train_rngs = ("dropout",) if self._key_arg else ()
        self._held = (self._static_train, parts.static_inference)  # the arrays an identity in the key refers to
        self._key = (
            _static_key(self._static_train),
            _static_key(parts.static_inference),
            parts.ptree,
            parts.stree,
            parts.ppaths,
            parts.spaths,
            self._key_arg,
            _example_key(example),
        )
        self._key = _hashable(self._key, self)

    def __repr__(self) -> str:
        return f"EqxModel({type(self.parts.static).__name__})"

    def _module(self, params, *, train: bool):
        import equinox as eqx

        from jaxprune.trace.eqx_adapter import _get, _is_index

        leaves = [_get(params, p, "parameter") for p in self.parts.ppaths]
        static = self._static_train if train else self.parts.static_inference
        return eqx.combine(jax.tree_util.tree_unflatten(self.parts.ptree, leaves), static, is_leaf=_is_index)

    def _state(self, batch_stats):
        from jaxprune.trace.eqx_adapter import _state

        return _state(self.parts, {"state": batch_stats})

    def apply(self, variables, x, *, train: bool = False, mutable=(), rngs=None, masks=None):
        """The module on the batch `x` under ``jax.vmap(..., axis_name="batch")``: logits, or ``(logits,
        {"batch_stats": updated state})`` when `mutable` is given."""
        from jaxprune.trace.eqx_adapter import _nest

        _check_no_masks(masks, "Equinox")
        module = self._module(variables["params"], train=train)
        state = self._state(variables.get("batch_stats", {}))
        n = jax.tree_util.tree_leaves(x)[0].shape[0]
        if self._key_arg:
            if train:
                if rngs is None or "dropout" not in rngs:
                    raise ValueError(
                        "this Equinox module takes key=: in training mode apply needs rngs={'dropout': key} (a new key "
                        "per step; jaxprune.train's steps pass one), else every step would draw the same dropout"
                    )
                keys = jax.random.split(rngs["dropout"], n)
            else:  # inference mode: the module draws nothing
                keys = jax.random.split(jax.random.key(0), n)
        else:
            keys = None

        def one(xi, st, k):
            kw = {} if k is None else {"key": k}
            if st is None:
                return module(xi, **kw), None
            out = module(xi, st, **kw)
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"an Equinox module holding state must return (output, state); {type(module).__name__} returned "
                    f"{type(out).__name__}"
                )
            return out

        logits, new_state = jax.vmap(one, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))(x, state, keys)
        if not mutable:
            return logits
        if new_state is None:
            return logits, {"batch_stats": {}}
        return logits, {"batch_stats": _nest(self.parts.spaths, jax.tree_util.tree_leaves(new_state))}

    def export(self, params, batch_stats):
        """``(model, state)``: a new module of the user's classes holding `params` (its own inference flags), and its
        `eqx.nn.State` holding `batch_stats` (None for a module without state)."""
        from jaxprune.trace.eqx_adapter import _module

        model = _module(self.parts, {"params": params}, inference=False)
        return model, self._state(batch_stats)


def _wrap_eqx(model, state, example, what: str):
    from jaxprune.trace import eqx_adapter as _eqx

    parts, variables = _eqx.split(model, state, what=what)
    if example is None:
        hit = _eqx._TRACES.get(model)  # make_plan's trace of this module object
        example = None if hit is None else (hit[0],)
    return EqxModel(model, parts, example), variables["params"], variables.get("state", {})


# ----------------------------------------------------------------------------------------------------------------------
# The door
# ----------------------------------------------------------------------------------------------------------------------
def _examples(example_input, what: str):
    if example_input is None:
        return None
    if not (hasattr(example_input, "shape") and hasattr(example_input, "dtype")):
        raise TypeError(
            f"{what}: example_input must be one array or a jax.ShapeDtypeStruct (jaxprune.train calls the module with "
            f"one input, the batch), got {type(example_input).__name__}"
        )
    return (jax.ShapeDtypeStruct(np.shape(example_input), example_input.dtype),)


def wrap(model, *, state=None, example_input=None, what: str) -> tuple[Any, Any, Any]:
    """``(adapter, params, batch_stats)`` of a user's NNX or Equinox module.

    Raises:
      TypeError: `model` is neither; `state` for an NNX module; an `example_input` that is not an array.
      ValueError: an Equinox module holding state without `state`, or a state of another module (names the entry).
    """
    example = _examples(example_input, what)
    if is_nnx_module(model):
        if state is not None:
            raise TypeError(
                f"{what}: state= is for an Equinox module's eqx.nn.State; an NNX module carries its own state"
            )
        return _wrap_nnx(model, example)
    if is_eqx_module(model):
        return _wrap_eqx(model, state, example, what)
    raise TypeError(f"{what}: expected an nnx.Module or an eqx.Module, got {type(model).__name__}")


def example_from(adapter, x_train) -> jax.ShapeDtypeStruct:
    """The example input of a training set for `adapter`: one batch row for NNX (``x[:1]``), one example for
    Equinox (``x[0]``)."""
    x = np.asarray(x_train)
    shape = x.shape[1:] if isinstance(adapter, EqxModel) else (1, *x.shape[1:])
    return jax.ShapeDtypeStruct(shape, x.dtype)


def example_of(adapter, example_input, *, what: str):
    """The example input to trace `adapter`'s module with: `example_input`, or the one the adapter knows.

    Raises:
      ValueError: neither (says what to pass).
    """
    ex = _examples(example_input, what)
    if ex is None:
        ex = adapter.example
    if ex is None:
        one = (
            "one example as the module takes it, (C, H, W) for eqx.nn.Conv2d"
            if adapter.kind == "Equinox"
            else "a batch"
        )
        raise ValueError(
            f"{what}: no example input is known for this {adapter.kind} module (it was not traced by "
            f"jaxprune.make_plan before TrainState.create): pass {what}(state, plan, example_input=x) with an array "
            f"or jax.ShapeDtypeStruct the module is called with ({one})"
        )
    return ex[0]


def prunable(adapter, params, batch_stats, example):
    """``(exported model, eqx state or None, TracedModel, traced variables)`` of a user state: what `make_plan`
    takes (``make_plan(traced, variables, ...)``) and what `prune_user` prunes without tracing again."""
    from jaxprune._models import as_prunable

    if isinstance(adapter, NNXModel):
        module, eqx_state = adapter.export(params, batch_stats), None
        module.eval()  # a copy: traced deterministically (a Dropout in training mode would draw inside the trace)
    else:
        module, eqx_state = adapter.export(params, batch_stats)
    traced, variables = as_prunable(module, None, example, what="prune_state", state=eqx_state)
    return module, eqx_state, traced, variables


def prune_user(adapter, params, batch_stats, opt_state, plan, example, exported=None):
    """``(new adapter, params, batch_stats, opt_state)``: the user's module pruned with `jaxprune.prune` (its own
    classes at the pruned widths) and the optimizer state sliced like the parameters (`prune_like_params`).

    Raises:
      ValueError: a plan made for another module (names the mismatch), and everything `jaxprune.prune` raises.
    """
    from jaxprune.surgery import prune, prune_like_params

    module, eqx_state, traced, _ = exported or prunable(adapter, params, batch_stats, example)
    if isinstance(adapter, NNXModel):
        new_module = prune(module, plan, example_input=example)
        new_state = None
    else:
        out = prune(module, plan, example_input=example, state=eqx_state)
        new_module, new_state = out if eqx_state is not None else (out, None)
    new_opt = prune_like_params(opt_state, traced, plan, params=params)
    new_adapter, new_params, new_stats = (
        _wrap_nnx(new_module, (example,))
        if isinstance(adapter, NNXModel)
        else _wrap_eqx(new_module, new_state, (example,), "prune_state")
    )
    return new_adapter, new_params, new_stats, new_opt
