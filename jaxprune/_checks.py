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

__all__ = ["check_inputs", "check_opt_state", "check_touched", "model_leaf_shapes"]


def _path(keys) -> str:
    return "/".join(str(k) for k in keys)


_ARRAYS = (jax.Array, np.ndarray, np.generic)


def _leaf_kind(leaf) -> str | None:
    """None for a real array; otherwise what the leaf is, for the message."""
    if isinstance(leaf, _ARRAYS):
        return None
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return "abstract (a jax.ShapeDtypeStruct, which holds no values)"
    return f"a {type(leaf).__name__}, not an array"


_SHAPES: dict[str, dict[tuple[str, ...], tuple[int, ...]]] = {}


def _model_shapes(model) -> Mapping[tuple[str, ...], tuple[int, ...]] | None:
    """Leaf path -> shape of the model's abstract variables (cached per zoo config), or None if it cannot say."""
    from jaxprune.groups import flatten_variables
    from jaxprune.utils import _model_key, abstract_variables

    own = getattr(model, "abstract_variables", None)
    if callable(own):  # a traced model knows its variables
        return {p: tuple(v.shape) for p, v in flatten_variables(own()).items()}
    if not callable(getattr(model, "config", None)):
        return None
    from jaxprune.models import default_input_shape

    try:  # a model without a default input (its shapes depend on the input it is given) cannot say
        default_input_shape(model)
    except (AttributeError, TypeError, ValueError):
        return None
    key = _model_key(model)
    shapes = _SHAPES.get(key) if key is not None else None
    if shapes is None:  # a zoo model: evaluated abstractly once per configuration
        shapes = {p: tuple(v.shape) for p, v in flatten_variables(abstract_variables(model)).items()}
        if key is not None:
            if len(_SHAPES) > 128:
                _SHAPES.clear()
            _SHAPES[key] = shapes
    return shapes


def check_inputs(model, variables: Mapping[str, Any], *, plan=None, what: str) -> dict[tuple[str, ...], Any]:
    """Checks `variables` (and `plan`, if given) against `model` before `what` uses them.

    Args:
      model: The model.
      variables: Its variables (a mapping of collections).
      plan: A `PruningPlan` to be applied to `model`: checked against the model it was made for.
      what: The caller's name for messages (``make_plan``, ``prune``).

    Returns:
      `jaxprune.groups.flatten_variables(variables)` (a fresh dict the caller may reuse).

    Raises:
      TypeError: `variables` is not a mapping, or a leaf is abstract (`jax.ShapeDtypeStruct`) or not an array
        (names the path).
      ValueError: a leaf whose shape differs from the model's (names the path and both shapes; kernel spatial sizes
        included), or a plan made for another model (names both).
    """
    from jaxprune.groups import flatten_variables

    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{what} needs the model's variables as a mapping of collections, got {type(variables).__name__}"
        )
    flat = flatten_variables(variables)
    for p, leaf in flat.items():
        if not isinstance(leaf, _ARRAYS):
            raise TypeError(
                f"{what}: variables leaf {_path(p)} is {_leaf_kind(leaf)}; pass real arrays (e.g. "
                "jaxprune.random_variables or model.init)"
            )
    expected = _model_shapes(model)
    if expected is not None:
        for p, leaf in flat.items():
            want = expected.get(p)
            if want is not None and leaf.shape != want:
                raise ValueError(
                    f"{what}: variables leaf {_path(p)} has shape {tuple(leaf.shape)}, the model "
                    f"{type(model).__name__} needs {want}"
                )
    # The variables fit the model: does the plan? (A `PruningPlan`, read by its method: plan imports this module.
    # Anything else is refused, with its type named, by the plan validation that follows.)
    if callable(getattr(plan, "check_model", None)):
        plan.check_model(model, flat=flat)
    return flat


def check_touched(model, variables: Mapping[str, Any], paths, *, what: str) -> None:
    """Like `check_inputs` for the leaves at `paths` only (what `make_plan` reads: the scored kernels), without
    flattening the rest."""
    from jaxprune.groups import LeafView

    view = LeafView(variables)
    expected = _model_shapes(model)
    for p in paths:
        if p not in view:
            continue  # a missing leaf is reported by the caller, naming its group
        leaf = view[p]
        if not isinstance(leaf, _ARRAYS):
            raise TypeError(
                f"{what}: variables leaf {_path(p)} is {_leaf_kind(leaf)}; pass real arrays (e.g. "
                "jaxprune.random_variables or model.init)"
            )
        want = expected.get(p) if expected is not None else None
        if want is not None and leaf.shape != want:
            raise ValueError(
                f"{what}: variables leaf {_path(p)} has shape {tuple(leaf.shape)}, the model "
                f"{type(model).__name__} needs {want}"
            )


def model_leaf_shapes(model, variables: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{leaf path: shape}`` of the model (its abstract variables when it can say, else `variables`), sorted."""
    from jaxprune.groups import flatten_variables

    shapes = _model_shapes(model)
    if shapes is None:
        shapes = {p: tuple(np.shape(v)) for p, v in flatten_variables(variables).items()}
    return {"/".join(p): list(shapes[p]) for p in sorted(shapes)}


def check_opt_state(opt_state, model, plan, params, *, what: str) -> None:
    """Checks at the door of `prune_like_params`: real optimizer-state leaves, and a plan made for `model`.

    Raises:
      TypeError: an optimizer-state leaf that is abstract or neither an array nor a Python number (names the path).
      ValueError: a plan made for another model (names both).
    """
    for p, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        if isinstance(leaf, bool | int | float | complex):
            continue
        kind = _leaf_kind(leaf)
        if kind is not None:
            raise TypeError(f"{what}: optimizer-state leaf {jax.tree_util.keystr(p)} is {kind}")
    if callable(getattr(plan, "check_model", None)):  # a PruningPlan (plan imports this module); others refused later
        if isinstance(params, Mapping) and "params" in params:
            params = params["params"]
        plan.check_model(model, {"params": params} if isinstance(params, Mapping) else None)
