"""Checkpoints of a user's own model: what `jaxprune.checkpoint` stores to rebuild it, and the rebuilding.

A user's model has no zoo config and its Python code is never stored (a checkpoint never pickles). What rebuilds it
is the unpruned model the caller passes back as ``load_checkpoint(path, model=...)``, with the stored plan history
replayed on it, each plan checked against the model it was made for (`replay`):

* a traced model (`jaxprune.trace_model`): the `TracedModel` of the unpruned model;
* a Flax NNX module: the unpruned module of the same class, usually abstract
  (``nnx.eval_shape(lambda: MyCNN(rngs=nnx.Rngs(0)))``), traced at the stored input shape. The loaded module is the
  unpruned one's graph holding the stored state, every size attribute updated, exactly as `jaxprune.prune` builds a
  pruned module; its `nnx.Optimizer` is rebuilt from the optax transformation given as ``tx=``.

The header of an NNX module's checkpoint has an ``"nnx"`` entry::

    {"class": the module's class (qualified name), "input": [shape, dtype] of the traced input,
     "state": {path: [shape, dtype]} of the module's other variables (custom `nnx.Variable`s, RNG keys and counts),
     "optimizer": null or {"wrt": the optimizer's variable filter (a class name) or null,
                           "leaves": {path: [shape, dtype]} of the optimizer's step and optax state}}

and its payload holds ``"nnx_state"`` ({path: array}) beside the variables, and the optimizer's leaves as
``"opt_state"`` ({path: array}); an orbax directory holds the same arrays (`jaxprune._orbax`). A PRNG key leaf is stored as its key data, its dtype recorded as
``"key:<implementation>"``. `flax.nnx` is imported inside the functions only (it pulls optax); this module is
imported only when a user's model is saved or loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._detect import is_nnx_module
from jaxprune._models import as_prunable, remember_trace
from jaxprune._trees import host_array, is_shape_entry
from jaxprune.plan import PruningPlan
from jaxprune.trace import nnx_adapter as _nnx

__all__ = ["check_entry", "load_nnx", "nnx_save_parts", "replay"]

_KEY = "key:"


def _is_key(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def _rest_variables(module) -> list[tuple[str, Any]]:
    """``(path, nnx.Variable)`` of every variable that is neither an `nnx.Param` nor an `nnx.BatchStat`."""
    from flax import nnx

    _, _, _, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    return [(_path(p), v) for p, v in nnx.to_flat_state(rest)]


def _entry(value, where: str) -> list:
    """``[shape, dtype]`` of an array or `jax.ShapeDtypeStruct` leaf (``"key:<impl>"`` for a PRNG key)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "shape"):
        raise TypeError(f"cannot checkpoint {where}: it holds a {type(value).__name__}, not an array")
    if _is_key(dtype):
        if isinstance(value, jax.ShapeDtypeStruct):  # abstract: its implementation is not known, only that it is one
            return [list(value.shape), _KEY]
        return [list(value.shape), _KEY + str(jax.random.key_impl(value))]
    return [list(value.shape), jnp.dtype(dtype).name]


def _optimizer_leaves(optimizer) -> list[tuple[str, Any]]:
    """``(path, nnx.Variable)`` of an optimizer's step and optax state, in a fixed order."""
    from flax import nnx

    tree = {"opt_state": optimizer.opt_state, "step": optimizer.step}
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))[0]
    return [(jax.tree_util.keystr(p), v) for p, v in flat]


def _wrt_name(wrt) -> str | None:
    return wrt.__qualname__ if isinstance(wrt, type) else None


def _compare_tables(found: Mapping[str, list], want: Mapping[str, list], *, what: str, fix: str) -> None:
    """ValueError naming the first leaf present on one side only, or of another shape or dtype."""
    missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing or extra:
        raise ValueError(f"{what}: leaves missing {missing[:4]}, unexpected leaves {extra[:4]}; {fix}")
    for leaf in sorted(want):
        a, b = found[leaf], want[leaf]
        same_dtype = (
            a[1] == b[1] or (a[1].startswith(_KEY) and b[1] == _KEY) or (a[1] == _KEY and b[1].startswith(_KEY))
        )
        if a[0] != b[0] or not same_dtype:
            raise ValueError(f"{what}: leaf {leaf} is {a}, expected {b}; {fix}")


def _eval_trace(module, example_input):
    """The `TracedModel` of `module`'s inference call (traced on a clone in eval mode: dropout draws no key, BatchNorm
    reads its running statistics; the groups are those of the training call)."""
    from flax import nnx

    from jaxprune.trace.api import trace_model

    clone = nnx.clone(module)
    clone.eval()
    return trace_model(clone, None, example_input)


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------
def nnx_save_parts(module, variables, opt_state, *, optimizer, example_input, step):
    """What `save_checkpoint` stores for an NNX module.

    Args:
      module: What was given to `save_checkpoint` (an NNX module, or another model with an NNX keyword: refused).
      variables, opt_state: What was given with it (must be None).
      optimizer, example_input, step: `save_checkpoint`'s keywords.

    Returns:
      ``(traced model, variables, header "nnx" entry, "nnx_state" arrays, "opt_state" arrays or None, step)``;
      `step` defaults to the optimizer's step (0 without one).

    Raises:
      TypeError: `optimizer` or `example_input` with another model; `variables` or `opt_state` with an NNX module;
        `optimizer` that is not an `nnx.Optimizer`; a variable holding something other than an array.
      ValueError: a module never traced and no `example_input` (says what to pass); an optimizer whose state does not
        fit the module's parameters (names the leaf).
    """
    if not is_nnx_module(module):
        raise TypeError(
            "save_checkpoint: optimizer= and example_input= are for an NNX module; for other models pass the optax "
            "state as opt_state="
        )
    if variables is not None or opt_state is not None:
        raise TypeError(
            "save_checkpoint(path, module, ...): an NNX module carries its own variables; pass its nnx.Optimizer "
            "as optimizer=, not variables or opt_state"
        )
    from flax import nnx

    if optimizer is not None:
        _nnx.check_optimizer(optimizer)
    if example_input is None:  # the trace make_plan, prune or load_checkpoint made of it
        traced, variables = as_prunable(module, None, None, what="save_checkpoint")
    else:
        traced, variables = _eval_trace(module, example_input), _nnx.nnx_variables(module)
    trace = traced._trace
    inputs = trace.in_avals[trace.n_var_leaves :]
    if len(inputs) != 1:
        raise ValueError(
            f"save_checkpoint stores NNX modules called on one array; {type(module).__name__} was traced with "
            f"{len(inputs)} input arrays"
        )
    (x,) = inputs
    state_table, state_arrays = {}, {}
    for path, var in _rest_variables(module):
        value = var.get_value()
        where = f"{type(var).__name__} {path} of the NNX module"
        state_table[path] = _entry(value, where)
        state_arrays[path] = jax.random.key_data(value) if _is_key(value.dtype) else value
    entry = {
        "class": type(module).__qualname__,
        "input": [list(x.shape), jnp.dtype(x.dtype).name],
        "state": state_table,
        "optimizer": None,
    }
    opt_arrays = None
    if optimizer is not None:
        leaves = _optimizer_leaves(optimizer)
        table = {p: _entry(v.get_value(), f"optimizer-state leaf {p}") for p, v in leaves}
        fresh = nnx.eval_shape(lambda m: nnx.Optimizer(m, optimizer.tx, wrt=optimizer.wrt), module)
        want = {p: _entry(v.get_value(), p) for p, v in _optimizer_leaves(fresh)}
        _compare_tables(
            table,
            want,
            what=f"the optimizer's state does not fit the parameters of the NNX module {type(module).__name__}",
            fix="pass the nnx.Optimizer of this module (after prune, the one prune(module, plan, optimizer=opt) "
            "returned)",
        )
        entry["optimizer"] = {"wrt": _wrt_name(optimizer.wrt), "leaves": table}
        opt_arrays = {p: v.get_value() for p, v in leaves}
        if step is None:
            step = int(np.asarray(host_array(optimizer.step.get_value())))
    return traced, variables, entry, state_arrays, opt_arrays, 0 if step is None else step


# ----------------------------------------------------------------------------------------------------------------------
# The header entry
# ----------------------------------------------------------------------------------------------------------------------
def _table_ok(table) -> bool:
    return isinstance(table, dict) and all(is_shape_entry(e) for e in table.values())


def check_entry(entry, bad: Callable[[str, str], None]) -> None:
    """Strict types of the header's ``"nnx"`` entry (`bad(field, what)` raises)."""
    if not isinstance(entry, dict) or set(entry) != {"class", "input", "state", "optimizer"}:
        bad("'nnx'", "must be null or an object with exactly 'class', 'input', 'state', 'optimizer'")
    if not isinstance(entry["class"], str) or not entry["class"]:
        bad("'nnx.class'", f"must be a class name, got {entry['class']!r}")
    if not _table_ok({"input": entry["input"]}):
        bad("'nnx.input'", f"must be [shape (list of ints >= 0), dtype (str)], got {entry['input']!r}")
    if not _table_ok(entry["state"]):
        bad("'nnx.state'", "must map variable paths to [shape, dtype]")
    opt = entry["optimizer"]
    if opt is not None:
        if not isinstance(opt, dict) or set(opt) != {"wrt", "leaves"}:
            bad("'nnx.optimizer'", "must be null or an object with exactly 'wrt' and 'leaves'")
        if opt["wrt"] is not None and not isinstance(opt["wrt"], str):
            bad("'nnx.optimizer.wrt'", f"must be null or a class name, got {opt['wrt']!r}")
        if not _table_ok(opt["leaves"]):
            bad("'nnx.optimizer.leaves'", "must map optimizer-state paths to [shape, dtype]")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------
def replay(path: str, header: Mapping[str, Any], model, *, wrt):
    """A user model's checkpoint: ``(the model at its saved widths, the traced unpruned NNX module or None)``, rebuilt
    from the unpruned `model` by the plans (an NNX module: from its trace at the stored input).

    Raises:
      ValueError: no `model`; a model the plans were not made for (names the plan and the leaf or group); a model
        whose pruned widths are not the checkpoint's; another kind of model than the checkpoint's.
      TypeError: a model that is neither a traced model nor (for an NNX checkpoint) an NNX module; `wrt` without an
        NNX checkpoint.
    """
    traced_like = None
    if header.get("nnx") is not None:
        traced_like = model = trace_like(path, header["nnx"], model)
    elif wrt is not None:
        raise TypeError("load_checkpoint: wrt= is for a checkpoint of an NNX module and its nnx.Optimizer")
    elif is_nnx_module(model):
        raise ValueError(
            f"checkpoint {path} holds a traced model, not an NNX module: pass the unpruned TracedModel as model="
        )
    if model is None:
        raise ValueError(
            f"checkpoint {path} holds a user model (no zoo config): pass the unpruned model it was pruned from as "
            "model= (e.g. the jaxprune.trace_model of your module); the stored plan history rebuilds the rest"
        )
    if not callable(getattr(model, "with_widths", None)):
        raise TypeError(f"model must have with_widths() (a traced model), got {type(model).__name__}")
    try:
        plans = [PruningPlan.from_dict(p) for p in header["plans"]]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"checkpoint {path} has a malformed plan history: {e}") from e
    current = model
    for i, plan in enumerate(plans):
        own = getattr(current, "abstract_variables", None)  # a traced model: its leaf shapes are checked too
        try:
            plan.check_model(current, own() if callable(own) else None)
        except ValueError as e:
            raise ValueError(f"checkpoint {path}: the given model is not the one plan {i} was made for: {e}") from e
        current = current.with_widths({n: len(k) for n, k in plan.keep.items() if len(k) < plan.widths[n]})
    fp = header["made_for"]
    groups = {g.name: int(g.width) for g in current.channel_groups()}
    if not isinstance(fp, dict) or groups != fp.get("groups"):
        raise ValueError(
            f"checkpoint {path}: the given model, pruned by the stored plans, has group widths {groups}; the "
            f"checkpoint's model had {fp.get('groups') if isinstance(fp, dict) else fp}"
        )
    return current, traced_like


def load_nnx(path, entry, like, traced_like, stored_model, variables, state_arrays, raw_opt, *, tx, wrt):
    """``(the pruned NNX module, its nnx.Optimizer or None)`` of a checkpoint whose variables were checked against
    `stored_model` (the trace of `like` at the saved widths); the optimizer only with `tx` (`load_optimizer`).

    Raises:
      ValueError: header and payload disagree on the optimizer; everything `load_module` and `load_optimizer` raise.
    """
    if (entry["optimizer"] is None) != (raw_opt is None):
        raise ValueError(f"checkpoint {path} is corrupted: header and payload disagree on the NNX optimizer")
    module = load_module(path, entry, like, traced_like, stored_model, variables, state_arrays)
    optimizer = (
        load_optimizer(path, entry, module, raw_opt, tx, wrt) if tx is not None and raw_opt is not None else None
    )
    return module, optimizer


def trace_like(path: str, entry: Mapping[str, Any], like):
    """The `TracedModel` of the unpruned module `like` at the stored input shape (`_eval_trace`).

    Raises:
      ValueError: no `like`, or a module of another class than the checkpoint's.
      TypeError: `like` is not an NNX module.
    """
    cls = entry["class"]
    if like is None:
        raise ValueError(
            f"checkpoint {path} holds an NNX module of class {cls}: pass the unpruned module it was pruned from as "
            f"model=, e.g. model=nnx.eval_shape(lambda: {cls}(..., rngs=nnx.Rngs(0))); the stored plan history "
            "rebuilds the pruned one"
        )
    if not _nnx.is_module(like):
        raise TypeError(
            f"checkpoint {path} holds an NNX module of class {cls}: model= must be an nnx.Module, got "
            f"{type(like).__name__}"
        )
    if type(like).__qualname__ != cls:
        raise ValueError(
            f"checkpoint {path} holds an NNX module of class {cls}, the given model is a {type(like).__qualname__}"
        )
    shape, dtype = entry["input"]
    return _eval_trace(like, jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)))


def _expected_state(like, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list]:
    """The table the pruned module's other variables must have: a variable takes the pruned shape of the parameters
    of its module (and the modules below) that have its shape, as `jaxprune.prune` slices it; else its own."""
    params_before = _nnx._flat(before)
    params_after = _nnx._flat(after)
    out = {}
    for path, var in _rest_variables(like):
        entry = _entry(var.get_value(), path)
        owner = tuple(path.split("/")[:-1])
        shapes = {
            tuple(np.shape(params_after[p]))
            for p, a in params_before.items()
            if p[1 : 1 + len(owner)] == owner and list(np.shape(a)) == entry[0] and p in params_after
        }
        if len(shapes) == 1:
            entry = [list(shapes.pop()), entry[1]]
        out[path] = entry
    return out


def load_module(path: str, entry: Mapping[str, Any], like, traced_like, stored_model, variables, state_arrays):
    """The pruned NNX module: `like`'s graph holding `variables` and the stored other variables, sizes updated.

    Raises:
      ValueError: the stored other variables differ from what the unpruned module pruned by the plans has (names the
        leaf), or their arrays from the header's table.
    """
    from flax import nnx

    want = _expected_state(like, traced_like.abstract_variables(), stored_model.abstract_variables())
    _compare_tables(
        entry["state"],
        want,
        what=f"checkpoint {path}: the NNX module's variables other than parameters and batch statistics do not match "
        f"the given {type(like).__qualname__}",
        fix="is it the unpruned module the checkpoint's module was pruned from?",
    )
    if not isinstance(state_arrays, dict) or set(state_arrays) != set(entry["state"]):
        raise ValueError(f"checkpoint {path} is corrupted: its NNX variables differ from its header's table")
    rest_values = {}
    for leaf, (shape, dtype) in entry["state"].items():
        arr = np.asarray(state_arrays[leaf])
        if dtype.startswith(_KEY):
            try:
                value = jax.random.wrap_key_data(jnp.asarray(arr, jnp.uint32), impl=dtype[len(_KEY) :])
            except Exception as e:  # an unknown implementation, key data of another shape
                raise ValueError(f"checkpoint {path}: NNX variable {leaf} does not make a PRNG key ({e})") from e
        else:
            if arr.dtype != jnp.dtype(dtype):
                raise ValueError(f"checkpoint {path} is corrupted: NNX variable {leaf} is {arr.dtype}, not {dtype}")
            value = jnp.asarray(arr)
        if list(value.shape) != shape:
            raise ValueError(
                f"checkpoint {path} is corrupted: NNX variable {leaf} has shape {value.shape}, not {shape}"
            )
        rest_values[tuple(leaf.split("/"))] = value

    graphdef, params, stats, rest = nnx.split(like, nnx.Param, nnx.BatchStat, ...)
    pure = rest.to_pure_dict()
    new_rest = jax.tree_util.tree_map(lambda a: a, rest)
    if pure:
        nested: dict = {}
        for keys, value in rest_values.items():
            node = nested
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        new_rest.replace_by_pure_dict(_nnx._restore_keys(nested, pure))
    params_st, stats_st, _ = _nnx.fill((params, stats, rest), variables)
    module = nnx.merge(graphdef, params_st, stats_st, new_rest)
    _nnx.update_sizes(module)
    remember_trace(module, stored_model)  # make_plan / prune / save_checkpoint of it need no example input
    return module


def load_optimizer(path: str, entry: Mapping[str, Any], module, raw, tx, wrt):
    """An `nnx.Optimizer` of `module` with the stored step and optax state, checked leaf by leaf.

    Raises:
      ValueError: another `wrt` than the saved optimizer's, or a state that does not fit `tx` (names the leaf).
    """
    from flax import nnx

    info = entry["optimizer"]
    wrt = nnx.Param if wrt is None else wrt
    if info["wrt"] is not None and _wrt_name(wrt) is not None and _wrt_name(wrt) != info["wrt"]:
        raise ValueError(
            f"checkpoint {path}: its optimizer was built with wrt={info['wrt']}, the given wrt is {_wrt_name(wrt)}"
        )
    if not callable(getattr(tx, "init", None)):
        raise TypeError(f"tx must be an optax GradientTransformation, got {type(tx).__name__}")
    optimizer = nnx.Optimizer(module, tx, wrt=wrt)
    leaves = _optimizer_leaves(optimizer)
    _compare_tables(
        info["leaves"],
        {p: _entry(v.get_value(), p) for p, v in leaves},
        what=f"checkpoint {path}: the stored optimizer state does not fit the given tx and wrt",
        fix="pass the optax transformation (and wrt=) the saved nnx.Optimizer was built with",
    )
    if not isinstance(raw, dict) or set(raw) != set(info["leaves"]):
        raise ValueError(f"checkpoint {path} is corrupted: its optimizer state differs from its header's table")
    for p, var in leaves:
        arr = raw[p] if isinstance(raw[p], jax.Array) else np.asarray(raw[p])  # an orbax restore keeps its sharding
        want = var.get_value()
        if list(arr.shape) != list(want.shape) or jnp.dtype(arr.dtype) != jnp.dtype(want.dtype):
            raise ValueError(f"checkpoint {path} is corrupted: optimizer-state leaf {p} is {arr.shape} {arr.dtype}")
        var.set_value(jnp.asarray(arr))
    return optimizer
