"""Checks at the door of `make_plan`, `prune` and `prune_like_params`: real arrays, of the model's shapes, for the
plan's model.

Each public entry point calls one function here first, so a wrong input fails with a message naming the leaf before
any scoring or slicing (and never later inside Flax).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["check_inputs", "check_opt_state"]


def _path(keys) -> str:
    return "/".join(str(k) for k in keys)


def _leaf_kind(leaf) -> str | None:
    """None for a real array; otherwise what the leaf is, for the message."""
    if isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return None
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return "abstract (a jax.ShapeDtypeStruct, which holds no values)"
    return f"a {type(leaf).__name__}, not an array"


def _model_shapes(model) -> dict[str, tuple[int, ...]] | None:
    """Leaf path -> shape of the model's abstract variables, or None for a model that cannot say."""
    from jaxprune.groups import flatten_variables
    from jaxprune.utils import abstract_variables

    own = getattr(model, "abstract_variables", None)
    if callable(own):  # a traced model knows its variables
        tree = own()
    elif callable(getattr(model, "config", None)):  # a zoo model: evaluated abstractly (cached per config)
        tree = abstract_variables(model)
    else:
        return None
    return {_path(p): tuple(v.shape) for p, v in flatten_variables(tree).items()}


def check_inputs(model, variables: Mapping[str, Any], *, plan=None, what: str) -> None:
    """Checks `variables` (and `plan`, if given) against `model` before `what` uses them.

    Args:
      model: The model.
      variables: Its variables (a mapping of collections).
      plan: A `PruningPlan` to be applied to `model`: checked against the model it was made for.
      what: The caller's name for messages (``make_plan``, ``prune``).

    Raises:
      TypeError: `variables` is not a mapping, or a leaf is abstract (`jax.ShapeDtypeStruct`) or not an array
        (names the path).
      ValueError: a plan made for another model (names both), or a leaf whose shape differs from the model's
        (names the path and both shapes; kernel spatial sizes included).
    """
    from jaxprune.groups import flatten_variables
    from jaxprune.plan import PruningPlan

    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{what} needs the model's variables as a mapping of collections, got {type(variables).__name__}"
        )
    flat = flatten_variables(variables)
    for p, leaf in flat.items():
        kind = _leaf_kind(leaf)
        if kind is not None:
            raise TypeError(
                f"{what}: variables leaf {_path(p)} is {kind}; pass real arrays (e.g. jaxprune.random_variables or "
                "model.init)"
            )
    expected = _model_shapes(model)
    for p, leaf in flat.items() if expected is not None else ():
        name = _path(p)
        want = expected.get(name)
        if want is not None and tuple(np.shape(leaf)) != want:
            raise ValueError(
                f"{what}: variables leaf {name} has shape {tuple(np.shape(leaf))}, the model "
                f"{type(model).__name__} needs {want}"
            )
    if isinstance(plan, PruningPlan):  # the variables fit the model: does the plan?
        plan.check_model(model, variables)


def check_opt_state(opt_state, model, plan, params, *, what: str) -> None:
    """Checks at the door of `prune_like_params`: real optimizer-state leaves, and a plan made for `model`.

    Raises:
      TypeError: an optimizer-state leaf that is abstract or neither an array nor a Python number (names the path).
      ValueError: a plan made for another model (names both).
    """
    from jaxprune.plan import PruningPlan

    for p, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        if isinstance(leaf, bool | int | float | complex):
            continue
        kind = _leaf_kind(leaf)
        if kind is not None:
            raise TypeError(f"{what}: optimizer-state leaf {jax.tree_util.keystr(p)} is {kind}")
    if isinstance(plan, PruningPlan):
        if isinstance(params, Mapping) and "params" in params:
            params = params["params"]
        plan.check_model(model, {"params": params} if isinstance(params, Mapping) else None)
