"""One door for every kind of model the public verbs take: `as_prunable` turns a user's model into a prunable one.

`make_plan`, `prune`, `prune_like_params` and `count_macs` call `as_prunable` first (a couple of lines each). A zoo
model, a `TracedModel` or any object with the prunable-model protocol passes through unchanged; a Flax NNX module is
traced (`jaxprune.trace_model`, with an example input) into a `TracedModel` whose variables are the module's own; an
Equinox module likewise, through its adapter (`jaxprune.trace.eqx_adapter`, with its `eqx.nn.State` if it has one).
Another framework registers itself here (`_ADAPTERS`), in one place.

Framework objects are recognised without importing the framework: an NNX module can only exist once ``flax.nnx`` has
been imported by the user, so ``sys.modules`` is asked, never the import system (`import jaxprune` stays light:
``flax.nnx`` pulls optax).
"""

from __future__ import annotations

import weakref
from typing import Any

from jaxprune._detect import is_eqx_module, is_nnx_module, is_nnx_optimizer

__all__ = ["as_prunable", "is_eqx_module", "is_nnx_module", "is_nnx_optimizer"]


#: NNX module -> the `TracedModel` `make_plan` traced it into, so that ``prune(module, plan)`` needs no example input.
_NNX_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trace_nnx(module, example_input, what: str):
    from jaxprune.trace.api import trace_model

    if example_input is None:
        traced = _NNX_TRACES.get(module)
        if traced is None:
            raise ValueError(
                f"{what} on an NNX module needs an example input to trace it: pass {what}(module, ..., "
                "example_input=x) with an array (or a jax.ShapeDtypeStruct) of the module's input shape, e.g. one "
                "batch of data"
            )
        return traced
    traced = trace_model(module, None, example_input)
    _NNX_TRACES[module] = traced
    return traced


def as_prunable(model, variables=None, example_input=None, *, what: str, state=None) -> tuple[Any, Any]:
    """``(prunable model, its variables)`` for any model a public verb takes.

    Args:
      model: A zoo model, a `TracedModel` (anything with `channel_groups()` / `with_widths()`), a Flax NNX module or
        an Equinox module.
      variables: The variables (None for an NNX or Equinox module: it carries its own).
      example_input: For an NNX or Equinox module: an example input to trace it with (array or
        `jax.ShapeDtypeStruct`). May be left out after `make_plan` traced the same module object.
      what: The caller's name, for messages.
      state: An Equinox module's `eqx.nn.State` (its BatchNorm statistics); only for an Equinox module.

    Returns:
      ``(model, variables)`` unchanged for a prunable model; ``(TracedModel, nnx_variables(module))`` for an NNX
      module.

    Raises:
      TypeError: variables passed with an NNX or Equinox module; `state` for anything but an Equinox module.
      ValueError: an NNX or Equinox module without an example input (says what to pass).
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
    if is_nnx_module(model):
        if variables is not None:
            raise TypeError(
                f"{what}: an NNX module carries its own variables; call {what}(module, ...) without variables "
                "(or trace it with jaxprune.trace_model and pass the TracedModel with variables)"
            )
        from jaxprune.trace.nnx_adapter import nnx_variables

        return _trace_nnx(model, example_input, what), nnx_variables(model)
    return model, variables
