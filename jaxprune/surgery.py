"""Surgery: applies a `PruningPlan` by slicing variables and optimizer state; filters vanish, they are not zeroed.

This module owns slicing only: host numpy `take` along every producer and consumer axis of each planned group, then
back to jax arrays on the original sharding. It never scores or picks filters (`jaxprune.strategies` does).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jaxprune._checks import check_inputs, check_opt_state
from jaxprune.groups import check_groups, flatten_variables, kept_indices
from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan
from jaxprune.scoring import expand_repeat
from jaxprune.utils import abstract_variables

__all__ = ["ReshardWarning", "prune", "prune_like_params", "slicing_ops"]


class ReshardWarning(UserWarning):
    """A pruned leaf could not keep its sharding (the new shape does not divide it) and was replicated."""


def slicing_ops(
    model, plan: PruningPlan, *, shapes: Mapping[tuple[str, ...], tuple[int, ...]] | None = None
) -> dict[tuple[str, ...], list[tuple[int, np.ndarray]]]:
    """For every leaf path a plan changes: the (axis, kept indices) takes to apply, one per axis.

    When several groups share one axis (refs with an `offset`, e.g. the consumer of a concatenation), the kept
    indices of that axis are computed at once on the original layout (`jaxprune.groups.kept_indices`).

    The returned index arrays are read-only and may be shared between paths (one array per group).

    Args:
      model: The model the plan was made for.
      plan: The plan.
      shapes: Leaf path -> shape; needed only when a planned group has a ref with an `offset` (its axis length is
        not implied by the group's width).

    Raises:
      TypeError: `plan` is not a PruningPlan, or `model` lacks the protocol.
      ValueError: the plan names a group the model does not have or cannot prune, or its widths differ from the
        model's (names the group, expected vs found); an offset ref whose leaf is not in `shapes`.
    """
    check_prunable_model(model)
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a jaxprune.PruningPlan, got {type(plan).__name__}")
    groups = plan.validate(model.channel_groups())
    claims: dict[tuple[tuple[str, ...], int], list] = {}
    for name, keep in plan.keep.items():
        g = groups[name]
        if len(keep) == g.width:
            continue
        idx = np.array(keep, dtype=np.int64)  # once per group, shared by its axes
        idx.flags.writeable = False
        for ref in g.axes:
            claims.setdefault((ref.path, ref.axis), []).append((ref, g.width, idx))
    ops: dict[tuple[str, ...], list[tuple[int, np.ndarray]]] = {}
    for (path, axis), cl in claims.items():
        if len(cl) == 1 and cl[0][0].offset is None:
            ref, width, keep = cl[0]
            idx = keep if ref.repeat == 1 else expand_repeat(keep, width, ref.repeat)
        else:
            if shapes is None or path not in shapes:
                raise ValueError(
                    f"leaf {'/'.join(path)} axis {axis} holds several groups side by side; slicing it needs the "
                    "variables' shapes (pass shapes=)"
                )
            idx = kept_indices(shapes[path][axis], cl)
        ops.setdefault(path, []).append((axis, idx))
    return ops


def _host_take(leaf, takes: list[tuple[int, np.ndarray]]) -> np.ndarray:
    arr = np.asarray(leaf)
    for axis, idx in takes:
        arr = arr.take(idx, axis=axis)
    return arr


def _to_device(arr: np.ndarray, sharding):
    try:
        return jax.device_put(arr, sharding)
    except ValueError:
        # A sharding that no longer divides the new shape (e.g. a sharded channel axis): replicate over the same
        # devices rather than fail after the work is done, and say so.
        warnings.warn(
            f"a pruned leaf of shape {arr.shape} no longer divides its sharding {sharding}; it is replicated over the "
            "same devices instead",
            ReshardWarning,
            stacklevel=3,
        )
        mesh = jax.sharding.Mesh(np.array(list(sharding.device_set)), ("d",))
        return jax.device_put(arr, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _take_all(leaf, takes: list[tuple[int, np.ndarray]]):
    """Applies takes on the host; returns a leaf of the same kind (jax array on the same sharding, or numpy)."""
    arr = _host_take(leaf, takes)
    return _to_device(arr, leaf.sharding) if isinstance(leaf, jax.Array) else arr


def _private_batched_put():
    """jax's C++ batched put (where `jax.device_put` ends) and the abstract-value type it takes; private APIs."""
    from jax._src import core as _core
    from jax._src.interpreters import pxla as _pxla

    return _pxla.xc.batched_device_put, _core.ShapedArray


@functools.lru_cache(maxsize=64)
def _fast_single_device_put(sharding):
    """A ~8x cheaper host-to-device copy for single-device arrays, or None to use `jax.device_put`.

    `jax.device_put` costs ~20 us of Python per array; surgery returns ~160 arrays for a ResNet-56, which made the
    transfer most of the prune time. The C++ batched put that jax's own `device_put` ends in is called directly, with
    the abstract value cached per (shape, dtype) (a private API: any failure to find or call it falls back to the
    public path). Cached per sharding, so the probe transfer runs once, not once per prune.
    """
    if not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return None
    try:
        device = next(iter(sharding.device_set))
        if sharding.memory_kind not in (None, device.default_memory().kind):
            return None  # e.g. pinned_host: the cached abstract value would label host memory as device memory
        put, shaped_array = _private_batched_put()
        devices = [device]
        avals: dict = {}

        def fast(arr):
            key = (arr.shape, arr.dtype)
            aval = avals.get(key)
            if aval is None:
                if len(avals) > 4096:
                    avals.clear()
                aval = avals[key] = shaped_array(arr.shape, arr.dtype)
            return put(aval, sharding, [arr], devices, True)

        probe = fast(np.arange(3, dtype=np.float32))
        if not isinstance(probe, jax.Array) or probe.sharding != sharding or np.asarray(probe).tolist() != [0, 1, 2]:
            return None
        return fast
    except Exception:
        return None


def _take_many(flat: dict, ops: dict) -> None:
    """`_take_all` over many leaves; jax leaves are grouped by sharding and moved back per group (the fast
    single-device put where it applies, else one batched `jax.device_put`)."""
    host = {path: _host_take(flat[path], takes) for path, takes in ops.items()}
    by_sharding: dict = {}
    for path, arr in host.items():
        leaf = flat[path]
        if isinstance(leaf, jax.Array):
            by_sharding.setdefault(leaf.sharding, []).append(path)
        else:
            flat[path] = arr
    for sharding, paths in by_sharding.items():
        fast = _fast_single_device_put(sharding)
        if fast is not None:
            moved = [fast(host[p]) for p in paths]
        else:
            try:
                moved = jax.device_put([host[p] for p in paths], sharding)
            except ValueError:
                moved = [_to_device(host[p], sharding) for p in paths]
        for p, a in zip(paths, moved, strict=True):
            flat[p] = a


class _Shapes(Mapping):
    """``{path: shape}`` over flattened variables, read on demand (only offset refs ask; hot path)."""

    def __init__(self, flat: Mapping):
        self._flat = flat

    def __getitem__(self, path):
        return np.shape(self._flat[path])

    def __contains__(self, path) -> bool:
        return path in self._flat

    def __iter__(self):
        return iter(self._flat)

    def __len__(self) -> int:
        return len(self._flat)


def prune(model, variables: Mapping[str, Any], plan: PruningPlan):
    """Physically removes the plan's filters: returns the smaller model and its variables.

    Every producer axis (conv kernel outputs, BN scale/bias/mean/var, dense bias) and consumer axis (the next layer's
    input channels; dense rows after a flatten, `repeat` blocks) of each planned group is sliced with the kept
    indices. Leaves no group touches are shared by reference; jax arrays come back as jax arrays on the same
    sharding; dtypes are kept.

    Args:
      model: A zoo model (or any object with `channel_groups()` and `with_widths()`).
      variables: Its variables, matching its widths.
      plan: From `make_plan` or `preset`.

    Returns:
      ``(new_model, new_variables)`` where ``new_model = model.with_widths(plan.new_widths)``.

    Raises:
      TypeError: a model without the protocol, a plan that is not a PruningPlan, or an abstract
        (`jax.ShapeDtypeStruct`) or non-array variables leaf (names the path).
      ValueError: variables that do not match the model (missing collection or leaf, a leaf shape other than the
        model's), or a plan that does not (made for another model, unknown group, wrong width).

    Example:
      >>> import jaxprune as jp
      >>> m = jp.models.vgg16()
      >>> v = jp.random_variables(m)
      >>> plan = jp.make_plan(m, v, prune_ratio={"conv1": 0.5})
      >>> m2, v2 = jp.prune(m, v, plan)
      >>> m2.widths[0], v2["params"]["conv2"]["kernel"].shape
      (32, (3, 3, 32, 64))
    """
    flat = check_inputs(model, variables, plan=plan, what="prune")  # also flattens
    ops = slicing_ops(model, plan, shapes=_Shapes(flat))
    check_groups(model.channel_groups(), variables, flat=flat)
    _take_many(flat, ops)
    new_model = model.with_widths({n: len(k) for n, k in plan.keep.items() if len(k) < plan.widths[n]})
    return new_model, traverse_util.unflatten_dict(flat)


def _key_name(k) -> str | None:
    """Dict keys name parameters; tuple positions and attribute names (optax's NamedTuples) do not."""
    return str(k.key) if isinstance(k, jax.tree_util.DictKey) else None


def prune_like_params(opt_state, model, plan: PruningPlan, *, params: Mapping[str, Any] | None = None):
    """Slices every optimizer-state leaf that mirrors a pruned parameter, as `prune` slices the parameter.

    Works on any optax state: SGD momentum traces, Adam `mu`/`nu`, `chain`, `masked` weight-decay states,
    `inject_hyperparams`. A leaf mirrors a parameter when the dict keys along its tree path name a parameter (e.g.
    ``conv1/kernel``, with or without a leading ``params``) and its shape equals that parameter's. Scalars (step
    counts, injected hyperparameters) are kept as they are.

    Args:
      opt_state: The optimizer state for the model's `params` (before pruning).
      model: The model the plan was made for (unpruned widths).
      plan: The plan applied to the parameters.
      params: The (unpruned) params, to check shapes against; default: the model's abstract shapes.

    Returns:
      A new optimizer state of the same structure; untouched leaves shared by reference.

    Raises:
      TypeError: an abstract (`jax.ShapeDtypeStruct`) or non-array optimizer-state leaf (names the path).
      ValueError: a plan made for another model, or a non-scalar leaf whose path names no parameter or whose shape
        differs from it (never a silent pass-through of a leaf that might be stale).
    """
    check_opt_state(opt_state, model, plan, params, what="prune_like_params")
    if params is None:
        # A traced model (`jaxprune.TracedModel`) knows its variables' shapes; a zoo model is evaluated abstractly.
        own = getattr(model, "abstract_variables", None)
        params = (own() if callable(own) else abstract_variables(model))["params"]
    elif isinstance(params, Mapping) and "params" in params:
        params = params["params"]  # a full variables dict: its params collection
    shapes = {path: tuple(leaf.shape) for path, leaf in flatten_variables(params).items()}
    ops = slicing_ops(model, plan, shapes={("params", *p): s for p, s in shapes.items()})

    def visit(path, leaf):
        shape = tuple(np.shape(leaf))
        if len(shape) == 0:
            return leaf
        names = tuple(n for n in (_key_name(k) for k in path) if n is not None)
        p = names if names in shapes else (names[1:] if names[:1] == ("params",) else None)
        where = jax.tree_util.keystr(path)
        if p is None or p not in shapes:
            raise ValueError(f"optimizer-state leaf {where} with shape {shape} matches no parameter")
        if shape != shapes[p]:
            raise ValueError(
                f"optimizer-state leaf {where} has shape {shape} but parameter {'/'.join(p)} has shape {shapes[p]}"
            )
        takes = ops.get(("params", *p))
        return _take_all(leaf, takes) if takes else leaf

    return jax.tree_util.tree_map_with_path(visit, opt_state)
