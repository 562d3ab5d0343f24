"""Any model as a pure program: what the cost counters (`jaxprune.count_macs`, `jaxprune.xla_flops`) need.

`as_program` is the one place that turns a model into ``Program(fn, variables, inputs, label, cache_key)``: a pure
function ``fn(variables, *inputs)``, its variables (arrays or `jax.ShapeDtypeStruct`; only shapes and dtypes are read)
and abstract inputs. It takes a `TracedModel` (its traced program at its current widths), a Flax NNX module (its own
variables, `nnx.split` / `nnx.merge`) and a plain Flax Linen module (``module.apply(variables, *inputs,
train=False)``, variables from an abstract ``init`` when not given) and an Equinox module (in inference mode, its
state's shapes from `jaxprune.trace.eqx_adapter.as_function`). Zoo models and other models with the
prunable-model protocol keep their own route in `jaxprune.flops` (named layers, cached per configuration). Another
framework adds one branch to `as_program`.

Framework objects are recognised without importing the framework (`jaxprune._detect`): `import jaxprune` stays light.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._detect import is_eqx_module, is_nnx_module

__all__ = ["Program", "as_program", "input_specs", "is_linen_module", "is_traced"]


@dataclasses.dataclass(frozen=True)
class Program:
    """A model as ``fn(variables, *inputs)``.

    Attributes:
      fn: The pure function.
      variables: Its variables (nested dicts, collection first; arrays or `jax.ShapeDtypeStruct`).
      inputs: One `jax.ShapeDtypeStruct` (or a pytree of them) per input.
      label: A short description of the model, for reports and messages.
      cache_key: A hashable key identifying the program's computation apart from shapes (None: not cached).
    """

    fn: Callable
    variables: Mapping[str, Any]
    inputs: tuple[Any, ...]
    label: str
    cache_key: Any = None


def is_traced(model) -> bool:
    """True for a `jaxprune.TracedModel`."""
    from jaxprune.trace.model import TracedModel

    return isinstance(model, TracedModel)


def is_linen_module(model) -> bool:
    """True for a Flax Linen module (a zoo model too)."""
    import flax.linen as nn

    return isinstance(model, nn.Module)


def _abstract(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    return jax.ShapeDtypeStruct(tuple(np.shape(leaf)), jnp.result_type(leaf))


def _is_shape(s) -> bool:
    return (
        isinstance(s, Sequence)
        and not isinstance(s, str)
        and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in s)
    )


def _is_one(s) -> bool:
    return isinstance(s, jax.ShapeDtypeStruct) or (hasattr(s, "shape") and hasattr(s, "dtype")) or _is_shape(s)


def input_specs(spec, *, what: str, like=None) -> tuple[jax.ShapeDtypeStruct, ...] | None:
    """The inputs a cost counter is asked about, one `jax.ShapeDtypeStruct` each (None stays None).

    `spec` is one input (a shape: a tuple of ints, float32; a `jax.ShapeDtypeStruct`; an array: its shape and dtype)
    or a tuple of them, one per input (``((2, 16, 16, 3), jax.ShapeDtypeStruct((2,), jnp.int32))`` for a U-Net's
    ``(x, t)``). `like`: example inputs (a `TracedModel`'s) whose dtypes a bare shape takes, input by input.

    Raises:
      TypeError: anything else (says what is allowed).
      ValueError: a shape with a size < 1.
    """
    if spec is None:
        return None
    if _is_one(spec):
        items = [spec]
    elif isinstance(spec, Sequence) and not isinstance(spec, str) and spec and all(_is_one(s) for s in spec):
        items = list(spec)
    else:
        raise TypeError(
            f"{what}: input_shape must be a shape (a tuple of ints), a jax.ShapeDtypeStruct or an array, or a tuple "
            f"of those (one per input), got {spec!r}"
        )
    out = []
    for i, s in enumerate(items):
        if _is_shape(s):
            shape = tuple(int(d) for d in s)
            if any(d < 1 for d in shape):
                raise ValueError(f"{what}: input_shape must hold positive ints, got {shape}")
            ref = like[i] if like is not None and i < len(like) else None
            dtype = ref.dtype if isinstance(ref, jax.ShapeDtypeStruct) else jnp.float32
            out.append(jax.ShapeDtypeStruct(shape, dtype))
        else:
            out.append(_abstract(s))
    return tuple(out)


def shape_list(xs) -> str:
    return ", ".join(f"{tuple(a.shape)} {a.dtype}" for a in jax.tree_util.tree_leaves(xs))


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(_key_name(k) for k in path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)  # pragma: no cover - every jax key type has one of the above


def as_program(model, inputs, variables=None, *, what: str) -> Program:
    """``Program`` of a `TracedModel`, an NNX module or a plain Linen module (see the module docstring).

    Args:
      model: The model.
      inputs: From `input_specs` (None: a `TracedModel`'s traced example inputs; required otherwise).
      variables: A `TracedModel`'s variables at its current widths (default: its abstract ones); an NNX module's must
        be its own (`jaxprune.nnx_variables`; default); a Linen module's (default: an abstract ``init``).
      what: The caller's name, for messages.

    Raises:
      ValueError: another number of inputs than a `TracedModel` was traced with; no inputs for a model that has no
        example; NNX variables that differ from the module's own (names the leaf).
      TypeError: a model of another kind; variables that are not a mapping.
    """
    if variables is not None and not isinstance(variables, Mapping):
        raise TypeError(
            f"{what}: variables must be a mapping of collections (e.g. {{'params': ...}}), got {variables!r}"
        )
    if is_traced(model):
        if inputs is None:
            inputs = model.example_inputs
        elif len(inputs) != model.n_inputs:
            raise ValueError(
                f"{what}: this TracedModel takes {model.n_inputs} input(s) (traced at {shape_list(model.example_inputs)})"
                f"; got {len(inputs)}: {shape_list(inputs)}"
            )

        def traced(v, *xs):
            return model.apply(v, *xs)

        v = model.abstract_variables() if variables is None else variables
        return Program(traced, v, tuple(inputs), f"TracedModel({model.kind})", ("traced", model))
    if is_nnx_module(model):
        from jaxprune.trace import nnx_adapter as _nnx

        name = type(model).__name__
        if inputs is None:
            raise ValueError(
                f"input_shape is required for the NNX module {name} (e.g. (1, H, W, C), or a tuple of shapes / "
                "jax.ShapeDtypeStruct for several inputs)"
            )
        own = _nnx.nnx_variables(model)
        if variables is not None:
            mine, given = _flat_shapes(own), _flat_shapes(dict(variables))
            for path in sorted(set(mine) | set(given)):
                if mine.get(path) != given.get(path):
                    raise ValueError(
                        f"{what}: variables differ from the NNX module {name}'s own at {path}: given "
                        f"{given.get(path, 'no such leaf')}, the module holds {mine.get(path, 'no such leaf')}; "
                        "leave variables out (an NNX module carries its own)"
                    )
        graphdef, states = _nnx.split(model)
        return Program(_nnx.apply_fn(graphdef, states), own, tuple(inputs), name, ("nnx", graphdef))
    if is_eqx_module(model):
        from jaxprune.trace import eqx_adapter as _eqx

        name = type(model).__name__
        if inputs is None:
            raise ValueError(
                f"input_shape is required for the Equinox module {name} (the shape it takes: (C, H, W) for one "
                "example through the eqx.nn layers)"
            )
        if len(inputs) != 1:
            raise ValueError(f"{what}: the Equinox module {name} is called on one input; got {len(inputs)}")
        if variables is not None:
            raise TypeError(f"{what}: an Equinox module carries its own parameters; leave variables out")
        fn, abstract = _eqx.as_function(model, what=what)
        return Program(fn, abstract, tuple(inputs), name, None)
    if is_linen_module(model):
        from jaxprune.trace import linen as _linen

        name = type(model).__name__
        if inputs is None:
            raise ValueError(
                f"input_shape is required for {name} (e.g. (1, H, W, C), or a tuple of shapes / "
                "jax.ShapeDtypeStruct for several inputs)"
            )
        kw = {"train": False} if _linen.takes_train(model) else {}

        def linen(v, *xs):
            return model.apply(v, *xs, **kw)

        if variables is None:
            variables = jax.eval_shape(lambda k, xs: model.init(k, *xs, **kw), jax.random.key(0), tuple(inputs))
        try:
            key = ("linen", model, hash(model))
        except TypeError:  # a field that cannot be hashed: not cached
            key = None
        return Program(linen, _plain(variables), tuple(inputs), name, key)
    raise TypeError(
        f"{what}: {type(model).__name__} is not a model jaxprune can count: pass a zoo model, a model with "
        "channel_groups() and with_widths(mapping), a jaxprune.TracedModel (jaxprune.trace_model), a Flax NNX module, "
        "an Equinox module or a Flax Linen module"
    )


def _plain(tree):
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def signature(program: Program) -> tuple:
    """Shapes and dtypes of a program's variables and inputs (with `cache_key`, what identifies a compile)."""
    leaves = jax.tree_util.tree_leaves_with_path(program.variables)
    vs = tuple((jax.tree_util.keystr(p), tuple(np.shape(a)), str(jnp.result_type(a))) for p, a in leaves)
    xs = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(program.inputs))
    return vs, xs


def traced_jaxpr(program: Program, *, what: str):
    """``(closed jaxpr, variables leaf paths)`` of the program, traced abstractly (`jax.make_jaxpr`).

    Raises:
      ValueError: the model cannot run at the given inputs (names the inputs and the model's error).
    """
    abs_vars = jax.tree_util.tree_map(_abstract, program.variables)
    try:
        closed = jax.make_jaxpr(program.fn)(abs_vars, *program.inputs)
    except Exception as err:  # the model's own error (a shape mismatch inside Flax): named, with the inputs
        raise ValueError(
            f"{what}: {program.label} cannot run at input(s) {shape_list(program.inputs)}: {type(err).__name__}: {err}"
        ) from err
    paths = [tuple(_key_name(k) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(abs_vars)]
    return closed, paths
