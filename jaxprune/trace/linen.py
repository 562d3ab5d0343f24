"""The Flax Linen adapter: a Linen module as the pure function ``module.apply(variables, x)``, and back (the module
rebuilt at new widths through the constructor fields that set them)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune.trace.dims import _Dims
from jaxprune.trace.extract import _materialize, _Spec


def is_module(obj) -> bool:
    import flax.linen as nn

    return isinstance(obj, nn.Module)


def apply_fn(module, kwargs: Mapping[str, Any] | None = None):
    """The pure function the tracing core sees: ``module.apply(v, *inputs, **kwargs)``."""
    kwargs = dict(kwargs or {})
    return lambda v, *xs: module.apply(v, *xs, **kwargs)


def takes_train(module) -> bool:
    """Whether the module's ``__call__`` has a ``train`` parameter (flax-examples style)."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    return "train" in params


def train_call(call: Callable, kwargs: Mapping[str, Any], mutable: tuple[str, ...], rng_names: tuple[str, ...]):
    """``f(v, (x, rngs))`` for the training program: ``call(v, x, **kwargs, mutable=..., rngs=...)``, the output
    ``(out, updates)`` when collections are mutable (Flax's convention), else ``out``."""
    kwargs = dict(kwargs)

    def f(v, xr):
        x, keys = xr
        kw = dict(kwargs)
        if mutable:
            kw["mutable"] = list(mutable)
        if rng_names:
            kw["rngs"] = dict(zip(rng_names, keys, strict=True))
        return call(v, x, **kw)

    return f


_UNBOUND = re.compile(r"unbound axis name:? ['\"]?([A-Za-z_]\w*)")


def unbound_axis(err: NameError) -> str | None:
    """The axis name of a ``NameError: unbound axis name: X`` (a collective naming an axis no transform binds)."""
    m = _UNBOUND.search(str(err))
    return m.group(1) if m else None


def bind_axes(fn: Callable, names: tuple[str, ...]) -> Callable:
    """``fn(v, (x, rngs))`` with each axis in `names` bound by a size-1 `jax.vmap` over the input batch.

    A BatchNorm with ``axis_name='batch'`` averages its batch statistics over that axis; under `jax.jit` on a data mesh
    the program is already global (the batch mean is over the whole global batch), so a size-1 axis binds the name
    with the same result: ``pmean`` over it is the identity.
    """
    if not names:
        return fn

    def g(v, xr):
        x, keys = xr

        def inner(xx):
            return fn(v, (xx, keys))

        f = inner
        for name in reversed(names):
            f = jax.vmap(f, axis_name=name, axis_size=1)
        xx = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (1,) * len(names) + jnp.shape(a)), x)
        out = f(xx)
        return jax.tree_util.tree_map(lambda a: jnp.reshape(a, jnp.shape(a)[len(names) :]), out)

    return g


def zoo_of(module):
    """The module itself when it declares its groups (a jaxprune zoo model), else None."""
    return module if callable(getattr(module, "channel_groups", None)) else None


def check_fields(module, fields: Mapping[str, Any], specs: list[_Spec], dims: _Dims) -> dict[str, tuple]:
    """Validates ``fields`` (group name -> field or (field, index)); returns group -> (field, index, scale).

    Raises:
      ValueError: an unknown group or field, a field whose value is not the group's width, a group owning only part
        of its kernel's filters.
      TypeError: a field spec that is neither a name nor (name, index).
    """
    names = {s.name: s for s in specs}
    out: dict[str, tuple[str, int | None, int]] = {}
    for name, spec in fields.items():
        if name not in names:
            raise ValueError(f"fields names unknown group {name!r}; traced groups: {', '.join(names)}")
        if isinstance(spec, str):
            field, idx = spec, None
        elif isinstance(spec, tuple) and len(spec) == 2:
            field, idx = spec
        else:
            field, idx = None, None
        if not isinstance(field, str):
            raise TypeError(f"fields[{name!r}] must be a field name or (field name, index), got {spec!r}")
        if not hasattr(module, field) or field not in {f.name for f in dataclasses.fields(module)}:
            raise ValueError(f"fields[{name!r}]: {type(module).__name__} has no constructor field {field!r}")
        value = getattr(module, field)
        if idx is not None:
            if not isinstance(value, tuple | list) or not isinstance(idx, int) or not -len(value) <= idx < len(value):
                raise ValueError(f"fields[{name!r}]: {field}[{idx!r}] is not an index of {value!r}")
            value = value[idx]
        g = _materialize(names[name], dims, {})
        if g.scored is None or g.scored.offset is not None:
            raise ValueError(
                f"fields[{name!r}]: group {name!r} owns only part of its kernel's filters; a constructor field "
                "cannot follow it (run the pruned model with TracedModel.apply)"
            )
        # A field counts the kernel's filters: width x repeat (e.g. GroupNorm splits a conv's filters into `repeat`
        # blocks of one group).
        scale = g.scored.repeat
        if value != g.width * scale:
            extra = f" x {scale} blocks" if scale > 1 else ""
            raise ValueError(
                f"fields[{name!r}]: {type(module).__name__}.{field}{'' if idx is None else f'[{idx}]'} is "
                f"{value!r}, but group {name!r} has width {g.width}{extra}"
            )
        out[name] = (field, idx, scale)
    return out


# -- the module rebuilt at new widths -------------------------------------------------------------------------------
#: A field spec: group name -> (path, coefficient, repeat): the group's scored kernel axis counts
#: ``coefficient * value`` filters, ``repeat`` per channel, where ``value`` is the field at `path` (attribute names and
#: tuple indices from the root module, e.g. ``("num_filters",)`` or ``("layers", 2, "features")``).
_MAX_PROBES = 64


def user_fields(checked: Mapping[str, tuple]) -> dict[str, tuple]:
    """`check_fields`'s result as field specs (the field's value is the kernel's filter count)."""
    out = {}
    for name, (field, idx, scale) in checked.items():
        out[name] = ((field,) if idx is None else (field, idx), Fraction(1), scale)
    return out


def _path_str(module, path) -> str:
    out = type(module).__name__
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def _candidates(obj, path=(), depth=0):
    """(path, int value) of every int constructor field, tuple entry and field of a held submodule."""
    import flax.linen as nn

    if depth > 4:
        return
    for f in dataclasses.fields(obj):
        if f.name in ("parent", "name"):
            continue
        val = getattr(obj, f.name, None)
        if isinstance(val, int) and not isinstance(val, bool):
            yield (*path, f.name), val
        elif isinstance(val, tuple | list):
            for i, e in enumerate(val):
                if isinstance(e, int) and not isinstance(e, bool):
                    yield (*path, f.name, i), e
                elif isinstance(e, nn.Module):
                    yield from _candidates(e, (*path, f.name, i), depth + 1)
        elif isinstance(val, nn.Module):
            yield from _candidates(val, (*path, f.name), depth + 1)


def _set(obj, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        seq = list(obj)
        seq[head] = _set(obj[head], rest, value)
        return type(obj)(seq)
    return obj.clone(**{head: _set(getattr(obj, head), rest, value)})


class Several(tuple):
    """Several example inputs of one call, ``module.init(key, *inputs)`` (`trace_model(m, v, x, t)`), as opposed to one
    input that is a tuple."""


def _init_shapes(module, example_input, apply_kwargs) -> dict[tuple[str, ...], tuple[int, ...]]:
    from flax import traverse_util

    kw = dict(apply_kwargs)
    xs = tuple(example_input) if isinstance(example_input, Several) else (example_input,)
    abs_v = jax.eval_shape(lambda k, xs: module.init(k, *xs, **kw), jax.random.key(0), xs)
    return {tuple(str(p) for p in k): tuple(a.shape) for k, a in traverse_util.flatten_dict(dict(abs_v)).items()}


def _census(module, example_input, apply_kwargs) -> tuple[dict, dict]:
    """`_init_shapes`, and what the module's Flax attentions and GroupNorms are: Linen submodule path ->
    ``("attention", class name)`` or ``("groupnorm", groups, channels, num_groups, group_size)``, read through
    `flax.linen.intercept_methods` while ``init`` runs abstractly."""
    import flax.linen as nn

    records: dict[tuple[str, ...], tuple] = {}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__":
            path = tuple(str(p) for p in m.path)
            if isinstance(m, nn.MultiHeadDotProductAttention):
                records.setdefault(path, ("attention", type(m).__name__))
            elif isinstance(m, nn.GroupNorm):
                x = args[0] if args else kwargs.get("x")
                c = int(jnp.shape(x)[-1])
                groups = m.num_groups if m.num_groups is not None else c // m.group_size if m.group_size else None
                records.setdefault(path, ("groupnorm", groups, c, m.num_groups, m.group_size))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        shapes = _init_shapes(module, example_input, apply_kwargs)
    return shapes, records


def check_rebuilt(base, module, example_input, apply_kwargs, traced_shapes, group_of) -> dict:
    """The rebuilt module's variable shapes (`_init_shapes`), after checking that its Flax layers compute what the
    pruned traced model does.

    Args:
      base: The traced module (the original widths).
      module: The module rebuilt at the new widths.
      traced_shapes: Variable path -> shape at the traced widths.
      group_of: (variable path, axis) -> group name, at the new widths (`shape` of a group's axes).

    Raises:
      ValueError: a rebuilt module that fails to initialise; an `nn.MultiHeadDotProductAttention` whose query/key
        head features are pruned (a rebuilt one divides its logits by the square root of the new head features, the
        pruned model keeps the traced scale: names the module and the group to prune instead); a GroupNorm the
        rebuilt module splits into another number of groups than the pruned model keeps (the traced count, the same
        channels kept in each group; one group per kept channel for groups of one channel: names the module and
        its fields).
    """
    tail = "; the pruned model still runs and trains as a TracedModel (TracedModel.apply, jaxprune.train.fit)"
    name = type(base).__name__
    try:
        shapes, after = _census(module, example_input, apply_kwargs)
    except Exception as err:  # e.g. a GroupNorm(num_groups=16) rebuilt over 8 channels
        raise ValueError(
            f"cannot rebuild {name}: the module rebuilt at the new widths fails to initialise on the example input "
            f"({type(err).__name__}: {err}){tail}"
        ) from err
    before = None
    for path, rec in after.items():
        where = "/".join(path) or name
        if rec[0] == "attention":
            q = ("params", *path, "query", "kernel")
            old, new = traced_shapes.get(q), shapes.get(q)
            if old is None or new is None or len(old) != 3 or old[-1] == new[-1]:
                continue
            features, heads = group_of.get((q, 2), "its head features"), group_of.get((q, 1))
            instead = f"prune its heads (group {heads!r}) instead" if heads else "prune heads instead"
            raise ValueError(
                f"cannot rebuild {name}: the plan prunes the query/key head features of its attention {where} "
                f"(group {features!r}: {old[-1]} -> {new[-1]} per head); a rebuilt flax.linen.{rec[1]} would divide "
                f"its logits by sqrt({new[-1]}), while the pruned model keeps the traced 1 / sqrt({old[-1]}) (pruned = "
                f"masked original), so the two would differ. Leave {features!r} out of the plan (make_plan(..., "
                f"skip=[{features!r}])) and {instead}{tail}"
            )
        elif rec[0] == "groupnorm":
            if before is None:
                before = _census(base, example_input, apply_kwargs)[1]
            was = before.get(path)
            if was is None or was[0] != "groupnorm" or was[1] is None:
                continue
            # Groups of several channels are balanced (an equal count kept in each) or tied: the pruned model keeps
            # their number. Groups of one channel each (an instance norm) are the channels themselves: the pruned
            # model keeps one group per kept channel.
            keeps = was[1] if was[2] > was[1] else rec[2]
            if rec[1] == keeps:
                continue
            raise ValueError(
                f"cannot rebuild {name}: its GroupNorm {where} normalises {was[1]} groups over {was[2]} channels in "
                f"the traced model, and the pruned model keeps {keeps} groups (an equal count of channels in each), "
                f"but the rebuilt GroupNorm(num_groups={rec[3]}, group_size={rec[4]}) over {rec[2]} channels makes "
                f"{rec[1]}; give it num_groups={keeps} (a fixed group count) rather than group_size{tail}"
            )
    return shapes


def discover_fields(module, example_input, apply_kwargs, specs: list[_Spec], dims: _Dims) -> tuple[dict, dict]:
    """Which constructor field sets which group's width, found by re-tracing the module's ``init`` (abstractly, with
    `jax.eval_shape`) with each int field (and tuple entry, and field of a held submodule) doubled: a group whose
    scored kernel's filter count doubles with it is set by that field, as ``coefficient * field`` (``num_filters *
    2**i`` gives coefficient ``2**i``). Returns (field specs, group name -> why no field sets it)."""
    try:
        base = _init_shapes(module, example_input, apply_kwargs)
    except Exception as err:  # an init that needs more than a params key: no field can be found, apply still works
        reason = f"{type(module).__name__}.init(key, x, **apply_kwargs) could not be re-run ({type(err).__name__})"
        return {}, {s.name: reason for s in specs}
    kernels = {}
    for s in specs:
        g = _materialize(s, dims, {})
        if g.scored is not None and g.scored.offset is None and g.scored.path in base:
            kernels[s.name] = (g.scored.path, g.scored.axis, g.scored.repeat)
    found: dict[str, list] = {n: [] for n in kernels}
    odd: dict[str, list] = {n: [] for n in kernels}
    for k, (path, value) in enumerate(_candidates(module)):
        if k >= _MAX_PROBES or value <= 0:
            break
        try:
            probe = _init_shapes(_set(module, path, 2 * value), example_input, apply_kwargs)
        except Exception:
            continue
        if set(probe) != set(base) or any(len(probe[k]) != len(base[k]) for k in base):
            continue  # the field changes the architecture (layers added or removed), not widths
        for name, (kpath, axis, repeat) in kernels.items():
            if kpath not in probe or len(probe[kpath]) != len(base[kpath]):
                continue
            k0, k1 = base[kpath][axis], probe[kpath][axis]
            if k1 == k0:
                continue
            if k1 == 2 * k0:
                found[name].append((path, Fraction(k0, value), repeat))
            else:
                odd[name].append(path)
    fields, why = {}, {}
    for name in [s.name for s in specs]:
        if name not in kernels:
            why[name] = "its kernel's filters are shared with other groups"
        elif len(found[name]) == 1 and not odd[name]:
            fields[name] = found[name][0]
        elif found[name] or odd[name]:
            paths = [_path_str(module, p) for p, *_ in found[name]] + [_path_str(module, p) for p in odd[name]]
            why[name] = f"its width changes with several fields or not in proportion to one: {', '.join(paths)}"
        else:
            why[name] = f"no int constructor field of {type(module).__name__} sets it"
    return fields, why


def rebuild(module, fields: Mapping[str, tuple], why: Mapping[str, str], widths, traced, kernel_of) -> Any:
    """The module with the fields of the groups whose width differs from the traced one set to produce the new widths.

    Raises:
      ValueError: a changed group that no field sets (names it, its kernel and why), or a field whose groups' kept
        counts no single value produces (names the field and the values each group would need).
    """
    changed = [n for n in widths if widths[n] != traced[n]]
    tail = "; the pruned model still runs and trains as a TracedModel (TracedModel.apply, jaxprune.train.fit)"
    unmapped = [n for n in changed if n not in fields]
    if unmapped:
        detail = "; ".join(
            f"{n} (kernel {'/'.join(kernel_of.get(n, ()))}): {why.get(n, 'not in fields=')}" for n in unmapped
        )
        raise ValueError(
            f"cannot rebuild {type(module).__name__}: pruned groups {unmapped} have no constructor field that sets "
            f"their width ({detail}){tail}"
        )
    by_path: dict[tuple, dict[str, Fraction]] = {}
    for name, (path, coef, repeat) in fields.items():
        by_path.setdefault(tuple(path), {})[name] = Fraction(widths[name] * repeat) / coef
    out = module
    for path, need in by_path.items():
        if not any(n in changed for n in need):
            continue
        values = set(need.values())
        if len(values) != 1 or next(iter(values)).denominator != 1:
            field = _path_str(module, path)
            parts = ", ".join(
                f"{n} ({fields[n][1]} x {path[-1]}: kept {widths[n]}, needs {path[-1]} = {float(v):g})"
                for n, v in need.items()
            )
            raise ValueError(
                f"cannot rebuild {type(module).__name__}: field {field} sets groups {sorted(need)}, and no single "
                f"value of it produces their kept counts: {parts}{tail}"
            )
        out = _set(out, path, int(next(iter(values))))
    return out
