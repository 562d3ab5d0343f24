"""The masking reference that defines correctness (docs/design.md §4).

Pruning a group is defined as zeroing its removed channels' post-BN activations in the original-shape network
(zeroing the filter alone is not equivalent: the BN shift still flows). This module owns the 0/1 masks and the one
jitted masked forward whose masks are traced inputs, so a sensitivity scan evaluates any mask without recompiling.
It does not decide or slice anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan

__all__ = ["full_masks", "mask_dropped", "masked_forward", "plan_masks"]


def full_masks(model, dtype=np.float32) -> dict[str, np.ndarray]:
    """All-ones masks for every group of the model (a complete dict keeps one compiled forward for any mask)."""
    check_prunable_model(model)
    return {g.name: np.ones((g.width,), dtype) for g in model.channel_groups()}


def plan_masks(model, plan: PruningPlan, dtype=np.float32) -> dict[str, np.ndarray]:
    """0/1 masks for every group: 0 at the channels the plan removes.

    Raises:
      ValueError: the plan names a group the model lacks or cannot prune, or its widths differ from the model's.
    """
    masks = full_masks(model, dtype)
    plan.validate(model.channel_groups())
    for name, keep in plan.keep.items():
        m = np.zeros_like(masks[name])
        m[list(keep)] = 1
        masks[name] = m
    return masks


_FORWARDS: dict[tuple[int, bool], Any] = {}


def masked_forward(model, *, train: bool = False):
    """A jitted ``f(variables, x, masks)`` of the original-shape model with channel masks as traced inputs.

    With `train=False` it returns logits; with `train=True` it returns ``(logits, new_batch_stats)`` (batch
    statistics, as in training). One compile serves every mask of the same groups: pass a complete dict
    (`full_masks` / `plan_masks`).
    """
    check_prunable_model(model)
    cache_key = (id(model), bool(train))
    if cache_key in _FORWARDS and _FORWARDS[cache_key][0] is model:
        return _FORWARDS[cache_key][1]

    if train:

        def f(variables, x, masks):
            y, updates = model.apply(variables, x, train=True, masks=masks, mutable=["batch_stats"])
            return y, updates["batch_stats"]

    else:

        def f(variables, x, masks):
            return model.apply(variables, x, train=False, masks=masks)

    fn = jax.jit(f)
    if len(_FORWARDS) > 32:
        _FORWARDS.clear()
    _FORWARDS[cache_key] = (model, fn)
    return fn


def mask_dropped(model, variables: Mapping[str, Any], plan: PruningPlan, x, *more_inputs, train: bool = False):
    """Output of the original model with the plan's removed channels zeroed after BN: what `prune` must equal.

    Args:
      model: The unpruned model.
      variables: Its variables.
      plan: The plan.
      x: NHWC input batch.
      *more_inputs: Further inputs of a `TracedModel` traced with several (``trace_model(unet, v, x, t)``:
        ``mask_dropped(traced, v, plan, x, t)``).
      train: Batch-statistics mode; then returns ``(logits, new_batch_stats)``.
    """
    masks = {k: jnp.asarray(v) for k, v in plan_masks(model, plan).items()}
    if more_inputs:  # a TracedModel's apply compiles its masked program itself
        if train:
            y, updates = model.apply(variables, x, *more_inputs, train=True, masks=masks, mutable=["batch_stats"])
            return y, updates["batch_stats"]
        return model.apply(variables, x, *more_inputs, train=False, masks=masks)
    return masked_forward(model, train=train)(variables, x, masks)
