"""Surgery: applies a `PruningPlan` by slicing variables and optimizer state; filters vanish, they are not zeroed.

This module owns slicing only: a `take` along every producer and consumer axis of each planned group. Leaves on one
device (or replicated, or numpy) are sliced with host numpy and put back on their sharding in one batched
`jax.device_put`; a leaf sharded over several devices (any `NamedSharding` that is not replicated, e.g. FSDP-style
over a channel axis) is sliced on its devices by a jitted take with an explicit output sharding, so no host ever holds
more of it than its own shards (docs/scaling.md). It never scores or picks filters (`jaxprune.strategies` does).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprune._checks import check_inputs, check_opt_state
from jaxprune._models import as_prunable, is_eqx_module, is_nnx_module, is_plain_linen, remember_trace
from jaxprune._trees import placement
from jaxprune.groups import check_groups, flatten_variables, kept_indices
from jaxprune.models.base import check_prunable_model
from jaxprune.plan import PruningPlan
from jaxprune.scoring import expand_repeat
from jaxprune.utils import abstract_variables

__all__ = ["ReshardWarning", "prune", "prune_like_params", "slicing_ops"]


class ReshardWarning(UserWarning):
    """A pruned leaf could not keep its sharding (its new width does not divide the mesh axes it was split over).

    A sharded leaf gets the nearest sharding that divides: along that dimension the minor mesh axes are dropped until
    the rest divide the new width, down to replicated along it; other dimensions keep their split. Pass
    ``round_to=`` the mesh axis size to `jaxprune.make_plan` to keep widths divisible.
    """


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


def _put_back(arrays: list[np.ndarray], shardings: list) -> list:
    """Host arrays to jax arrays on the given shardings, in one batched `jax.device_put` each for committed and
    uncommitted leaves.

    A ``None`` sharding (`jaxprune._trees.placement` of a source leaf that was not committed to a device) brings its
    array back uncommitted too. If a sharding no longer divides its array's new shape, the arrays go one by one so that only that one is
    replicated, with a warning (`_to_device`).
    """
    out: list = [None] * len(arrays)
    free = [i for i, s in enumerate(shardings) if s is None]
    placed = [i for i, s in enumerate(shardings) if s is not None]
    if free:
        for i, a in zip(free, jax.device_put([arrays[i] for i in free]), strict=True):
            out[i] = a
    if placed:
        todo, where = [arrays[i] for i in placed], [shardings[i] for i in placed]
        try:
            moved = jax.device_put(todo, where)
        except ValueError:
            moved = [_to_device(a, s) for a, s in zip(todo, where, strict=True)]
        for i, a in zip(placed, moved, strict=True):
            out[i] = a
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Sharded leaves: sliced on their devices
# ----------------------------------------------------------------------------------------------------------------------
def _on_devices(leaf) -> bool:
    """A jax array split over several devices by a NamedSharding (or spread over several processes): slice on device.

    Single-device and replicated leaves take the host path: numpy's `take` is faster than a jitted one there, and a
    replicated leaf is read from one local copy. A leaf not fully addressable (several processes) cannot be read on one
    host at all.
    """
    if not isinstance(leaf, jax.Array):
        return False
    sharding = leaf.sharding
    if not leaf.is_fully_addressable:
        return isinstance(sharding, jax.sharding.NamedSharding)
    return (
        isinstance(sharding, jax.sharding.NamedSharding)
        and len(sharding.device_set) > 1
        and not sharding.is_fully_replicated
    )


def _axis_names(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple | list) else (entry,)


def _fitting_sharding(sharding, shape: tuple[int, ...], where: str):
    """The nearest NamedSharding to `sharding` that divides `shape`: minor mesh axes of a dimension dropped first.

    Returns ``(sharding, note)``; `note` describes the change (leaf, old and new spec), or is None when none was needed.
    """
    mesh, spec = sharding.mesh, tuple(sharding.spec)
    entries = list(spec) + [None] * (len(shape) - len(spec))
    changed = []
    for d, entry in enumerate(entries):
        names = _axis_names(entry)
        kept = names
        while kept and shape[d] % int(np.prod([mesh.shape[n] for n in kept])):
            kept = kept[:-1]
        if kept != names:
            changed.append(d)
            entries[d] = None if not kept else (kept[0] if len(kept) == 1 else kept)
    if not changed:
        return sharding, None
    new = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*entries), memory_kind=sharding.memory_kind)
    return new, f"{where} {shape}: {sharding.spec} -> {new.spec} (dimension {', '.join(map(str, changed))})"


def _warn_resharded(notes: list[str], mesh) -> None:
    """One `ReshardWarning` for every leaf whose new width no longer divides its mesh axes."""
    if not notes:
        return
    sizes = ", ".join(f"{n}={mesh.shape[n]}" for n in mesh.axis_names)
    warnings.warn(
        f"{len(notes)} pruned leaf/leaves no longer divide their sharding on the mesh ({sizes}) and take the nearest "
        f"sharding that does: {'; '.join(notes)}. Pass round_to= the mesh axis size to make_plan to keep widths "
        "divisible.",
        ReshardWarning,
        stacklevel=4,
    )


_DEVICE_TAKES: dict[Any, Any] = {}


def _device_take(leaf: jax.Array, takes: list[tuple[int, np.ndarray]], where: str, notes: list[str]) -> jax.Array:
    """Applies takes on the leaf's own devices (one jitted gather per axis), output on the nearest fitting sharding
    (appending to `notes` when that differs from the leaf's own)."""
    shape = list(leaf.shape)
    for axis, idx in takes:
        shape[axis] = len(idx)
    out, note = _fitting_sharding(leaf.sharding, tuple(shape), where)
    if note is not None:
        notes.append(note)
    axes = tuple(axis for axis, _ in takes)
    key = (axes, out)
    if key not in _DEVICE_TAKES:

        def take(x, *indices):
            for axis, idx in zip(axes, indices, strict=True):
                x = jnp.take(x, idx, axis=axis, mode="clip")  # indices are valid: no fill masks
            return x

        # The kept indices are small host arrays, replicated as inputs; one compile per (axes, sharding, shapes).
        _DEVICE_TAKES[key] = jax.jit(take, out_shardings=out)
    indices = [np.asarray(idx, np.int32) for _, idx in takes]
    return _DEVICE_TAKES[key](leaf, *indices)


# ----------------------------------------------------------------------------------------------------------------------
# Applying takes to leaves
# ----------------------------------------------------------------------------------------------------------------------
def _take_many(flat: dict, ops: dict) -> None:
    """Applies every leaf's takes: sharded leaves on their own devices (`_device_take`, one `ReshardWarning` per
    mesh); every other take on the host, then all those jax leaves back to their shardings in one batch (numpy leaves
    stay numpy)."""
    sharded = {path for path in ops if _on_devices(flat[path])}
    notes: dict[Any, list[str]] = {}  # per mesh: one warning each
    for path in sorted(sharded):
        mesh = flat[path].sharding.mesh
        flat[path] = _device_take(flat[path], ops[path], "/".join(path), notes.setdefault(mesh, []))
    for mesh, mesh_notes in notes.items():
        _warn_resharded(mesh_notes, mesh)
    paths = []
    for path, takes in ops.items():
        if path in sharded:
            continue
        leaf = flat[path]
        flat[path] = _host_take(leaf, takes)
        if isinstance(leaf, jax.Array):
            paths.append((path, placement(leaf)))
    moved = _put_back([flat[p] for p, _ in paths], [s for _, s in paths])
    for (p, _), a in zip(paths, moved, strict=True):
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


def prune(
    model, variables, plan: PruningPlan | None = None, *, example_input=None, optimizer=None, state=None, opt_state=None
):
    """Physically removes the plan's filters: returns the smaller model and its variables.

    Every producer axis (conv kernel outputs, BN scale/bias/mean/var, dense bias) and consumer axis (the next layer's
    input channels; dense rows after a flatten, `repeat` blocks) of each planned group is sliced with the kept
    indices. Leaves no group touches are shared by reference; jax arrays come back as jax arrays on the same
    sharding (a leaf sharded over several devices is sliced there, never gathered to the host; `ReshardWarning` when
    its new width no longer divides the mesh); dtypes are kept.

    A Flax NNX module is pruned as ``prune(module, plan)`` (it carries its own variables): the result is a new module
    of the same classes, the original untouched, with its parameters, batch statistics and channel-shaped custom
    `nnx.Variable` state sliced and every size attribute updated (`nnx.Conv` / `ConvTranspose` features and
    ``feature_group_count``, `nnx.Linear`, `nnx.LinearGeneral`, `nnx.MultiHeadAttention` heads and features, the
    norms, `nnx.Embed`); ``prune(module, plan, optimizer=opt)`` returns ``(new_module, new_optimizer)``, the
    `nnx.Optimizer`'s optax state sliced like the parameters (`prune_like_params`).

    An Equinox module is pruned as ``prune(model, plan, state=state, opt_state=opt_state)``: a new module of the same
    classes (the original untouched) with its arrays sliced and the size fields of its `eqx.nn` layers updated
    (Conv / ConvTranspose channels and groups, Linear features, BatchNorm ``input_size``, LayerNorm / RMSNorm
    ``shape``, GroupNorm ``channels``, Embedding sizes), its `eqx.nn.State` (running statistics) sliced alike, and an
    optax state over ``eqx.filter(model, eqx.is_array)`` sliced like the parameters. It returns the new module, then
    the new state if `state` was given, then the new optax state if `opt_state` was: ``model``, ``(model, state)``,
    ``(model, opt_state)`` or ``(model, state, opt_state)`` (docs/design.md §6).

    A plain Flax Linen module (no prunable-model protocol) is pruned as ``prune(module, variables, plan)`` after
    ``make_plan(module, variables, ..., example_input=x)`` (whose trace of the same module object is reused; else pass
    `example_input`): it returns the user's class rebuilt at the new widths (`TracedModel.module`) and the sliced
    variables, or a `ValueError` naming the group and field when no constructor field sets a pruned width.

    Args:
      model: A zoo model (or any object with `channel_groups()` and `with_widths()`, e.g. a `TracedModel`), an NNX
        module, an Equinox module or a plain Linen module.
      variables: Its variables, matching its widths (for an NNX module: the plan, ``prune(module, plan)``).
      plan: From `make_plan` or `preset`.
      example_input: NNX, Equinox and plain Linen modules: an example input to trace the module with; not needed
        when `make_plan` traced this module object.
      optimizer: NNX only: the module's `nnx.Optimizer`, pruned alongside.
      state: Equinox only: the module's `eqx.nn.State` (needed when it holds state), pruned alongside.
      opt_state: Equinox only: an optax state over ``eqx.filter(model, eqx.is_array)``, pruned alongside.

    Returns:
      ``(new_model, new_variables)`` where ``new_model = model.with_widths(plan.new_widths)``; for an NNX module the
      new module, or ``(new_module, new_optimizer)`` with `optimizer`; for an Equinox module the new module, then
      the new state (with `state`), then the new optax state (with `opt_state`).

    Raises:
      TypeError: a model without the protocol, a plan that is not a PruningPlan, or an abstract
        (`jax.ShapeDtypeStruct`) or non-array variables leaf (names the path); `state` / `opt_state` for a model that
        is not an Equinox module.
      ValueError: variables that do not match the model (missing collection or leaf, a leaf shape other than the
        model's), or a plan that does not (made for another model, unknown group, wrong width); an NNX module never
        traced by `make_plan` and no `example_input`; an optimizer state leaf that matches no parameter (names it); a
        custom `nnx.Variable` holding state of a pruned width that no parameter's slicing fits (names it); an
        Equinox module holding state without `state`, or one that cannot be rebuilt (names the module path and
        field; `jaxprune.trace.eqx_adapter.rebuild`).

    Example:
      >>> import jaxprune as jp
      >>> m = jp.models.vgg16()
      >>> v = jp.random_variables(m)
      >>> plan = jp.make_plan(m, v, prune_ratio={"conv1": 0.5})
      >>> m2, v2 = jp.prune(m, v, plan)
      >>> m2.widths[0], v2["params"]["conv2"]["kernel"].shape
      (32, (3, 3, 32, 64))
    """
    if is_eqx_module(model):  # an Equinox module: traced (or its make_plan trace reused), rebuilt as its own classes
        if optimizer is not None:
            raise TypeError(
                "prune: optimizer= is for an nnx.Optimizer; an Equinox module's optax state goes in opt_state="
            )
        return _prune_eqx(model, variables, plan, example_input=example_input, state=state, opt_state=opt_state)
    if state is not None or opt_state is not None:
        raise TypeError(
            f"prune: state= and opt_state= are for an Equinox module, got a {type(model).__name__}; for other models "
            "slice the optax state with jaxprune.prune_like_params"
        )
    if is_nnx_module(model):  # an NNX module: traced (or its make_plan trace reused), rebuilt as its own classes
        return _prune_nnx(model, variables, plan, example_input=example_input, optimizer=optimizer)
    if is_plain_linen(model) and optimizer is None:  # traced (or make_plan's trace reused), rebuilt as its own class
        return _prune_linen(model, variables, plan, example_input=example_input)
    if optimizer is not None or example_input is not None:
        raise TypeError(
            "prune: optimizer= and example_input= are for an NNX module; for other models slice the optax state "
            "with jaxprune.prune_like_params"
        )
    return _prune_variables(model, variables, plan)


def _prune_linen(module, variables, plan, *, example_input):
    """`prune` of a plain Linen module: traced (or `make_plan`'s trace of it reused), sliced, and the module rebuilt
    as its own class at the new widths (`TracedModel.module`)."""
    traced, _ = as_prunable(module, variables, example_input, what="prune")
    new_traced, new_variables = _prune_variables(traced, variables, plan)
    try:
        rebuilt = new_traced.module
    except ValueError as err:
        raise ValueError(
            f"prune: {err}. To keep the pruned model as a TracedModel (it runs and trains), trace it first: "
            "traced = jaxprune.trace_model(module, variables, x), then make_plan(traced, ...) and prune(traced, ...)"
        ) from None
    return rebuilt, new_variables


def _prune_nnx(module, plan, extra, *, example_input, optimizer):
    """`prune` of an NNX module: its trace's variables sliced, the module rebuilt as its own classes, the
    optimizer's optax state sliced like the parameters."""
    from jaxprune.trace import nnx_adapter as _nnx

    if extra is not None:
        raise TypeError("prune takes an NNX module as prune(module, plan): the module carries its own variables")
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"prune(module, plan): plan must be a jaxprune.PruningPlan, got {type(plan).__name__}")
    if optimizer is not None:
        _nnx.check_optimizer(optimizer)
    traced, variables = as_prunable(module, None, example_input, what="prune")
    new_traced, new_variables = _prune_variables(traced, variables, plan)  # checks the plan against the module first
    _nnx.check_head_sizes(module, traced, plan)
    shapes = {p: tuple(np.shape(a)) for p, a in flatten_variables(variables).items()}
    ops = slicing_ops(traced, plan, shapes=shapes)
    changed = {n: plan.widths[n] for n, k in plan.keep.items() if len(k) < plan.widths[n]}
    new_module = _nnx.rebuild(module, variables, new_variables, ops, changed)
    remember_trace(new_module, new_traced)  # its trace: make_plan / prune / save_checkpoint of it need no input
    if optimizer is None:
        return new_module
    state = prune_like_params(_nnx.optimizer_state(optimizer), traced, plan, params=variables["params"])
    return new_module, _nnx.with_optimizer_state(optimizer, state)


def _prune_eqx(model, plan, extra, *, example_input, state, opt_state):
    """`prune` of an Equinox module: its trace's variables sliced, the module rebuilt as its own classes (with its
    state), the optax state sliced like the parameters; the logic lives in `jaxprune.trace.eqx_adapter`."""
    from jaxprune.trace import eqx_adapter as _eqx

    if extra is not None:
        raise TypeError(
            "prune takes an Equinox module as prune(model, plan, state=...): the module carries its own parameters"
        )
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"prune(model, plan): plan must be a jaxprune.PruningPlan, got {type(plan).__name__}")
    traced, variables, parts, example = _eqx.prunable(model, example_input, state, what="prune")
    _, new_variables = _prune_variables(traced, variables, plan)  # checks the plan against the module first
    shapes = {p: tuple(np.shape(a)) for p, a in flatten_variables(variables).items()}
    ops = slicing_ops(traced, plan, shapes=shapes)
    changed = {n: plan.widths[n] for n, k in plan.keep.items() if len(k) < plan.widths[n]}
    new_model, new_state = _eqx.rebuild(model, parts, variables, new_variables, ops, changed, example)
    out = [new_model]
    if state is not None:
        _eqx.remember_state(new_model, new_state)
        out.append(new_state)
    if opt_state is not None:
        out.append(_eqx.slice_opt_state(opt_state, model, new_model, parts, ops))
    return out[0] if len(out) == 1 else tuple(out)


def _prune_like_params_eqx(opt_state, model, plan, params, example_input, state):
    """`prune_like_params` of an Equinox module: an optax state over the module's arrays (nodes of its class) is
    sliced and restructured like the module (`_prune_eqx`); one over its params dict as any other model's."""
    cls = type(model)
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda n: isinstance(n, cls))
    if any(isinstance(n, cls) for n in nodes):
        if params is not None:
            raise TypeError(
                f"prune_like_params: params= is for an optax state over a params dict; this state holds "
                f"{cls.__name__} modules (optax over eqx.filter(model, ...)), sliced like the module itself: drop params="
            )
        out = _prune_eqx(model, plan, None, example_input=example_input, state=state, opt_state=opt_state)
        return out[-1]
    traced, own = as_prunable(model, None, example_input, what="prune_like_params", state=state)
    return prune_like_params(opt_state, traced, plan, params=own["params"] if params is None else params)


def _prune_variables(model, variables: Mapping[str, Any], plan: PruningPlan):
    flat = check_inputs(model, variables, plan=plan, what="prune")  # also flattens
    ops = slicing_ops(model, plan, shapes=_Shapes(flat))
    check_groups(model.channel_groups(), variables, flat=flat)
    _take_many(flat, ops)
    new_model = model.with_widths({n: len(k) for n, k in plan.keep.items() if len(k) < plan.widths[n]})
    return new_model, traverse_util.unflatten_dict(flat)


#: Stands in for a sliced jax leaf of an optimizer state until the batched put returns it.
_PENDING = object()


def _key_name(k) -> str | None:
    """Dict keys name parameters; tuple positions and attribute names (optax's NamedTuples) do not."""
    return str(k.key) if isinstance(k, jax.tree_util.DictKey) else None


def prune_like_params(
    opt_state, model, plan: PruningPlan, *, params: Mapping[str, Any] | None = None, example_input=None, state=None
):
    """Slices every optimizer-state leaf that mirrors a pruned parameter, as `prune` slices the parameter.

    Works on any optax state: SGD momentum traces, Adam `mu`/`nu`, `chain`, `masked` weight-decay states,
    `inject_hyperparams`. A leaf mirrors a parameter when the dict keys along its tree path name a parameter (e.g.
    ``conv1/kernel``, with or without a leading ``params``) and its shape equals that parameter's. Scalars (step
    counts, injected hyperparameters) are kept as they are.

    An Equinox module's optax state is either over ``eqx.filter(model, eqx.is_array)`` (or ``eqx.is_inexact_array``):
    every copy of the parameters in it is sliced and given the pruned module's structure, as
    ``prune(model, plan, state=..., opt_state=...)`` does; or over its variables' ``params`` dict (the layout
    `jaxprune.train` keeps), sliced leaf by leaf as for any other model.

    Args:
      opt_state: The optimizer state for the model's `params` (before pruning).
      model: The model the plan was made for (unpruned widths); an NNX module too (e.g. with
        ``nnx.as_pure(optimizer.opt_state)``; `prune` with ``optimizer=`` does this for an `nnx.Optimizer`), or an
        Equinox module.
      plan: The plan applied to the parameters.
      params: The (unpruned) params, to check shapes against; default: the model's abstract shapes (an NNX module's
        own params).
      example_input: For an NNX or Equinox `model` not traced by `make_plan`: an example input to trace it with.
      state: Equinox only: the module's `eqx.nn.State`, when it holds one whose initial value was taken out.

    Returns:
      A new optimizer state of the same structure; untouched leaves shared by reference.

    Raises:
      TypeError: an abstract (`jax.ShapeDtypeStruct`) or non-array optimizer-state leaf (names the path); `state`
        for a model that is not an Equinox module.
      ValueError: a plan made for another model, or a non-scalar leaf whose path names no parameter or whose shape
        differs from it (never a silent pass-through of a leaf that might be stale).
    """
    if is_eqx_module(model):
        return _prune_like_params_eqx(opt_state, model, plan, params, example_input, state)
    if state is not None:
        raise TypeError(
            f"prune_like_params: state= is for an Equinox module's eqx.nn.State, got a {type(model).__name__}"
        )
    if is_nnx_module(model):  # its traced model (from make_plan's trace of this module) and its own params
        model, own = as_prunable(model, None, example_input, what="prune_like_params")
        params = own["params"] if params is None else params
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
        if not takes:
            return leaf
        if _on_devices(leaf):  # sliced where it lives, never read to the host
            notes: list[str] = []
            new = _device_take(leaf, takes, where, notes)
            _warn_resharded(notes, leaf.sharding.mesh)
            return new
        arr = _host_take(leaf, takes)
        if not isinstance(leaf, jax.Array):
            return arr
        pending.append((arr, placement(leaf)))
        return _PENDING

    pending: list = []
    sliced = jax.tree_util.tree_map_with_path(visit, opt_state)
    moved = iter(_put_back([a for a, _ in pending], [s for _, s in pending]))  # one batched put, in visit order
    return jax.tree_util.tree_map(lambda a: next(moved) if a is _PENDING else a, sliced)
