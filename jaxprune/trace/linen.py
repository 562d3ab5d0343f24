"""The Flax Linen adapter: a Linen module as the pure function ``module.apply(variables, x)``, and back (the module
rebuilt at new widths through the constructor fields that set them)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune.trace.dims import _Dims
from jaxprune.trace.extract import _materialize, _Spec


def is_module(obj) -> bool:
    import flax.linen as nn

    return isinstance(obj, nn.Module)


def apply_fn(module, kwargs: Mapping[str, Any] | None = None):
    """The pure function the tracing core sees: ``module.apply(v, x, **kwargs)``."""
    kwargs = dict(kwargs or {})
    return lambda v, x: module.apply(v, x, **kwargs)


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


def rebuild(module, fields: Mapping[str, tuple], changed: Mapping[str, int]):
    """The module with the changed groups' fields set to their new widths; None when a changed group has no field."""
    if any(n not in fields for n in changed):
        return None
    updates: dict[str, Any] = {}
    for name, width in changed.items():
        field, idx, scale = fields[name]
        if idx is None:
            updates[field] = width * scale
        else:
            cur = list(updates.get(field, getattr(module, field)))
            cur[idx] = width * scale
            updates[field] = type(getattr(module, field))(cur)
    return module.clone(**updates)
