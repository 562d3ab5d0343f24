"""One door for every kind of model the public verbs take: `as_prunable` turns a user's model into a prunable one.

`make_plan`, `prune` and `prune_like_params` call `as_prunable` first (a couple of lines each; the cost counters have
their own door, `jaxprune._program`). A zoo model, a `TracedModel` or any object with the prunable-model protocol
passes through unchanged; a Flax NNX module is traced (`jaxprune.trace_model`, with an example input) into a
`TracedModel` whose variables are the module's own; a plain Linen module (no protocol) is traced on the spot the same
way, with its variables; an Equinox module is traced through its adapter
(`jaxprune.trace.eqx_adapter`, with its `eqx.nn.State` if it has one).
Another framework registers itself here (`_ADAPTERS`), in one place.

Framework objects are recognised without importing the framework: an NNX module can only exist once ``flax.nnx`` has
been imported by the user, so ``sys.modules`` is asked, never the import system (`import jaxprune` stays light:
``flax.nnx`` pulls optax).
"""

from __future__ import annotations

import weakref
from typing import Any

from jaxprune._detect import is_eqx_module, is_nnx_module, is_nnx_optimizer

__all__ = ["as_prunable", "is_eqx_module", "is_nnx_module", "is_nnx_optimizer", "is_plain_linen", "remember_trace"]


#: NNX module -> the `TracedModel` `make_plan` traced it into, so that ``prune(module, plan)`` needs no example input.
_NNX_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_trace(module, traced) -> None:
    """Records `traced` as the trace of the NNX `module` (a pruned or loaded module: the trace it was built from, at
    its widths), so that `make_plan`, `prune` and `save_checkpoint` of it need no example input."""
    _NNX_TRACES[module] = traced


def _trace_nnx(module, example_input, what: str):
    from jaxprune.trace.api import trace_model

    if example_input is None:
        traced = _NNX_TRACES.get(module)
        if traced is None:
            raise ValueError(
                f"{what} on an NNX module needs an example input to trace it: pass {what}(module, ..., "
                "example_input=x) with an array (or a jax.ShapeDtypeStruct) of the module's input shape, e.g. one "
                "batch of data, or trace it first with jaxprune.trace_model(module, None, x) and pass the TracedModel"
            )
        return traced
    traced = trace_model(module, None, example_input)
    _NNX_TRACES[module] = traced
    return traced


def _is_plain_linen(model) -> bool:
    """A Flax Linen module without the prunable-model protocol (not a zoo model): traced on the spot."""
    import flax.linen as nn

    return isinstance(model, nn.Module) and not callable(getattr(model, "channel_groups", None))


#: Plain Linen module -> ``(module, variable shapes, TracedModel)`` of its last trace, so that `prune` of the module
#: `make_plan` traced needs no example input. Keyed by identity (a Linen module may hold unhashable fields); the
#: module is held so that its id is not reused; the 8 most recent are kept.
_LINEN_TRACES: dict[int, tuple[Any, Any, Any]] = {}


def _shapes(variables):
    import jax
    import numpy as np

    return tuple(
        (jax.tree_util.keystr(p), tuple(np.shape(a))) for p, a in jax.tree_util.tree_leaves_with_path(variables)
    )


def _trace_linen(module, variables, example_input, what: str):
    name = type(module).__name__
    if variables is None:
        raise TypeError(f"{what} on the Linen module {name} needs its variables: {what}(module, variables, ...)")
    if example_input is None:
        hit = _LINEN_TRACES.get(id(module))
        if hit is not None and hit[0] is module and hit[1] == _shapes(variables):
            return hit[2]
        raise ValueError(
            f"{what} on the Linen module {name} needs an example input to trace its channel groups: pass "
            f"{what}(module, variables, ..., example_input=x) with an array (or a jax.ShapeDtypeStruct) of the "
            "module's input shape, or trace it first with jaxprune.trace_model(module, variables, x) (several "
            "inputs: jaxprune.trace_model(module, variables, x, t)) and pass the TracedModel"
        )
    from jaxprune.trace.api import trace_model

    traced = trace_model(module, variables, example_input)
    _LINEN_TRACES[id(module)] = (module, _shapes(variables), traced)
    while len(_LINEN_TRACES) > 8:
        del _LINEN_TRACES[next(iter(_LINEN_TRACES))]
    return traced


def is_plain_linen(model) -> bool:
    """A Flax Linen module without the prunable-model protocol (not a zoo model): traced on the spot."""
    return _is_plain_linen(model)


def as_prunable(model, variables=None, example_input=None, *, what: str, state=None) -> tuple[Any, Any]:
    """``(prunable model, its variables)`` for any model a public verb takes.

    Args:
      model: A zoo model, a `TracedModel` (anything with `channel_groups()` / `with_widths()`), a Flax NNX module,
        an Equinox module, or a plain Flax Linen module (traced on the spot with `example_input`,
        `jaxprune.trace_model`).
      variables: The variables (None for an NNX or Equinox module: it carries its own).
      example_input: For an NNX or Equinox module: an example input to trace it with (array or `jax.ShapeDtypeStruct`). May be
        left out after `make_plan` traced the same module object. Required for a plain Linen module.
      what: The caller's name, for messages.
      state: An Equinox module's `eqx.nn.State` (its BatchNorm statistics); only for an Equinox module.

    Returns:
      ``(model, variables)`` unchanged for a prunable model; ``(TracedModel, nnx_variables(module))`` for an NNX
      module; ``(TracedModel, variables)`` for a plain Linen module.

    Raises:
      TypeError: variables passed with an NNX or Equinox module, or none with a Linen module; `state` for
        anything but an Equinox module.
      ValueError: an NNX, Equinox or plain Linen module without an example input (says to pass ``example_input=`` or a
        `jaxprune.trace_model` result).
    """
    if is_eqx_module(model):
        if variables is not None:
            raise TypeError(
                f"{what}: an Equinox module carries its own parameters; call {what}(model, ...) without variables "
                "(its eqx.nn.State goes in state=)"
            )
        from jaxprune.trace.eqx_adapter import prunable

        traced, own, _, _ = prunable(model, example_input, state, what=what)
        return traced, own
    if state is not None:
        raise TypeError(f"{what}: state= is for an Equinox module (its eqx.nn.State); got a {type(model).__name__}")
    if _is_plain_linen(model):
        return _trace_linen(model, variables, example_input, what), variables
    if is_nnx_module(model):
        if variables is not None:
            raise TypeError(
                f"{what}: an NNX module carries its own variables; call {what}(module, ...) without variables "
                "(or trace it with jaxprune.trace_model and pass the TracedModel with variables)"
            )
        from jaxprune.trace.nnx_adapter import nnx_variables

        return _trace_nnx(model, example_input, what), nnx_variables(model)
    return model, variables
