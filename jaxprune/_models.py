"""One door for every kind of model the public verbs take: `as_prunable` turns a user's model into a prunable one.

`make_plan`, `prune`, `prune_like_params` and `count_macs` call `as_prunable` first (a couple of lines each). A zoo
model, a `TracedModel` or any object with the prunable-model protocol passes through unchanged; a Flax NNX module is
traced (`jaxprune.trace_model`, with an example input) into a `TracedModel` whose variables are the module's own.
Another framework registers itself here (`_ADAPTERS`), in one place.

Framework objects are recognised without importing the framework: an NNX module can only exist once ``flax.nnx`` has
been imported by the user, so ``sys.modules`` is asked, never the import system (`import jaxprune` stays light:
``flax.nnx`` pulls optax).
"""

from __future__ import annotations

import weakref
from typing import Any

from jaxprune._detect import is_nnx_module, is_nnx_optimizer

__all__ = ["as_prunable", "is_nnx_module", "is_nnx_optimizer", "remember_trace"]


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
                "batch of data"
            )
        return traced
    traced = trace_model(module, None, example_input)
    _NNX_TRACES[module] = traced
    return traced


def as_prunable(model, variables=None, example_input=None, *, what: str) -> tuple[Any, Any]:
    """``(prunable model, its variables)`` for any model a public verb takes.

    Args:
      model: A zoo model, a `TracedModel` (anything with `channel_groups()` / `with_widths()`), or a Flax NNX module.
      variables: The variables (None for an NNX module: it carries its own).
      example_input: For an NNX module: an example input to trace it with (array or `jax.ShapeDtypeStruct`). May be
        left out after `make_plan` traced the same module object.
      what: The caller's name, for messages.

    Returns:
      ``(model, variables)`` unchanged for a prunable model; ``(TracedModel, nnx_variables(module))`` for an NNX
      module.

    Raises:
      TypeError: variables passed with an NNX module.
      ValueError: an NNX module without an example input (says what to pass).
    """
    if is_nnx_module(model):
        if variables is not None:
            raise TypeError(
                f"{what}: an NNX module carries its own variables; call {what}(module, ...) without variables "
                "(or trace it with jaxprune.trace_model and pass the TracedModel with variables)"
            )
        from jaxprune.trace.nnx_adapter import nnx_variables

        return _trace_nnx(model, example_input, what), nnx_variables(model)
    return model, variables
