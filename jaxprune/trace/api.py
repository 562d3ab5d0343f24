"""The public entry points: `trace_model` and `trace_groups`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxprune.groups import ChannelGroup, check_groups
from jaxprune.trace import linen as _linen
from jaxprune.trace import nnx_adapter as _nnx
from jaxprune.trace.extract import _abstract, _analyze, _check_variables
from jaxprune.trace.model import TracedModel
from jaxprune.trace.policy import _apply_policy


def _resolve_target(model_or_fn, variables, apply_kwargs=None):
    """(kind, apply fn, variables, module, zoo model, nnx parts) for a Linen module, an NNX module or a function."""
    if _nnx.is_module(model_or_fn):
        graphdef, states = _nnx.split(model_or_fn)
        if variables is None:
            variables = _nnx.nnx_variables(model_or_fn)
        variables = _check_variables(variables)
        return "nnx", _nnx.apply_fn(graphdef, states), variables, None, None, (graphdef, states)
    if variables is None:
        raise TypeError("variables are required (only an NNX module carries its own)")
    variables = _check_variables(variables)
    if _linen.is_module(model_or_fn):
        module = model_or_fn
        return "linen", _linen.apply_fn(module, apply_kwargs), variables, module, _linen.zoo_of(module), None
    if callable(model_or_fn):
        owner = getattr(model_or_fn, "__self__", None) or getattr(getattr(model_or_fn, "func", None), "__self__", None)
        zoo = owner if callable(getattr(owner, "channel_groups", None)) else None
        fn = model_or_fn
        if apply_kwargs:
            kw = dict(apply_kwargs)

            def fn(v, *xs, _f=model_or_fn, _kw=kw):
                return _f(v, *xs, **_kw)

        return "function", fn, variables, None, zoo, None
    raise TypeError(
        f"expected a flax Linen module, an NNX module or an apply function (variables, x) -> output, got "
        f"{type(model_or_fn).__name__}"
    )


def _check_input(example_input) -> None:
    leaves = jax.tree_util.tree_leaves(example_input)
    if not leaves:
        raise TypeError("example_input must be an array (or a pytree of arrays / jax.ShapeDtypeStruct), got no leaves")
    for leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct | jax.Array | np.ndarray | np.generic | float | int):
            raise TypeError(f"example_input leaves must be arrays or jax.ShapeDtypeStruct, got {type(leaf).__name__}")


def trace_model(
    model_or_fn,
    variables: Mapping[str, Any] | None,
    example_input,
    *more_inputs,
    policy=None,
    fields: Mapping[str, str | tuple[str, int]] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    train_rngs: tuple[str, ...] = (),
) -> TracedModel:
    """Traces a model and returns a `TracedModel` that `make_plan`, `prune` and `mask_dropped` accept.

    Args:
      model_or_fn: A Flax Linen module (run as ``module.apply(variables, x)``), a Flax NNX module (split into state and
        graph; run as ``module(x)``, so put it in eval mode first), or an apply function ``(variables, x) -> output``.
      variables: The variables (arrays or `jax.ShapeDtypeStruct`; only shapes are read). None for an NNX module:
        its own (`nnx_variables`).
      example_input: An example input (array or `jax.ShapeDtypeStruct`, or a pytree of them); its shape is traced.
      *more_inputs: Further example inputs, for a model called with several (a diffusion U-Net's ``(x, t)``):
        ``trace_model(unet, variables, x, t)`` traces ``unet.apply(variables, x, t)`` (``module(x, t)`` for NNX,
        ``fn(variables, x, t)`` for a function), and the `TracedModel` runs as ``apply(variables, x, t)``.
      policy: Which traced groups are prunable: None (the model's declaration when it has `channel_groups()`,
        else every traced group), a model with `channel_groups()`, a mapping ``{group name: prunable}``, or a
        callable ``group -> bool | ChannelGroup`` (rename, re-kind, re-score, or set prunability).
      fields: For a Linen module whose widths are constructor fields: group name -> field name, or
        ``(field name, index)`` for a tuple field; `TracedModel.module` then rebuilds the module through them. None
        (a Linen module outside the zoo): found by re-tracing ``init`` abstractly with each int field (tuple entry,
        field of a held submodule such as an ``nn.Sequential``'s layers) doubled; a group whose filter count doubles
        with a field is set by it, derived widths (``num_filters * 2**i``) included.
      apply_kwargs: Keyword arguments of the traced (inference) call, ``module.apply(variables, x, **apply_kwargs)``
        or ``fn(variables, x, **apply_kwargs)``. Default: ``{"train": False}`` when the module's ``__call__`` (or the
        function) takes a ``train`` argument, else none.
      train_kwargs: Keyword arguments of the training call that ``TracedModel.apply(..., train=True, mutable=...,
        rngs=...)`` makes (``mutable`` and ``rngs`` are added to them). Default: `apply_kwargs` with ``train=True``
        when `apply_kwargs` has ``train=False``; else None, and ``apply(train=True)`` raises. ``{}`` for a model
        without a training flag (its training pass is its inference one, with `mutable` and `rngs`).
      train_rngs: PRNG stream names the training call draws from (e.g. ``("dropout",)``); `jaxprune.train`'s train
        step then passes ``rngs`` with a key per stream and step (`TracedModel.train_rngs`).

    Returns:
      A `TracedModel`.

    Raises:
      TypeError: arguments of the wrong kind.
      ValueError: everything `trace_groups` raises; `fields` naming an unknown group or field, or a field whose
        value is not the group's width; a `policy` that makes a group the trace could not follow prunable.
    """
    apply_kwargs = _check_kwargs(apply_kwargs, "apply_kwargs")
    if isinstance(train_rngs, str) or not all(isinstance(n, str) for n in train_rngs):
        raise TypeError(f"train_rngs must be a tuple of PRNG stream names, got {train_rngs!r}")
    if train_kwargs is not None:
        train_kwargs = _check_kwargs(train_kwargs, "train_kwargs")
    if apply_kwargs is None:
        takes = _linen.takes_train(model_or_fn) if _linen.is_module(model_or_fn) else _fn_takes_train(model_or_fn)
        apply_kwargs = {"train": False} if takes and not _nnx.is_module(model_or_fn) else {}
    if train_kwargs is None and apply_kwargs.get("train", None) is False:
        train_kwargs = {**apply_kwargs, "train": True}
    kind, fn, variables, module, zoo, nnx_parts = _resolve_target(model_or_fn, variables, apply_kwargs)
    for x in (example_input, *more_inputs):
        _check_input(x)
    call = None if kind == "nnx" else (module.apply if kind == "linen" else model_or_fn)
    if more_inputs:  # the core traces one input: the inputs as one tuple, unpacked into the call
        example_input = _linen.Several((example_input, *more_inputs))
        fn = _unpacked(fn)
        call = None if call is None else _unpacked(call)
    trace = _analyze(fn, variables, tuple(example_input) if more_inputs else example_input)
    if policy is None and zoo is not None:
        policy = zoo
    if policy is not zoo:
        zoo = None  # the zoo rebuilds itself by its declared group names only
    _apply_policy(trace.specs, trace.dims, policy)
    abstract = jax.tree_util.tree_map(_abstract, variables)
    if kind == "function" and zoo is not None:
        zoo = None  # a bare function is re-run from its jaxpr; a zoo policy still names its groups
    fields = dict(fields or {})
    norm_fields: dict[str, tuple] = {}
    rebuild = None
    if fields:
        if kind != "linen" or zoo is not None:
            raise ValueError("fields= is for Linen modules outside the zoo (zoo models rebuild themselves)")
        norm_fields = _linen.check_fields(module, fields, trace.specs, trace.dims)
        why = {s.name: "not in fields=" for s in trace.specs if s.name not in norm_fields}
        rebuild = (module, _linen.user_fields(norm_fields), why, example_input, apply_kwargs)
    elif kind == "linen" and zoo is None:
        found, why = _linen.discover_fields(module, example_input, apply_kwargs, trace.specs, trace.dims)
        rebuild = (module, found, why, example_input, apply_kwargs)
    tm = TracedModel(
        trace=trace,
        specs=trace.specs,
        sizes={},
        fn=fn,
        variables_abstract=abstract,
        kind=kind,
        module=module,
        fields=norm_fields,
        nnx_parts=nnx_parts,
        zoo=zoo,
        call=call,
        apply_kwargs=apply_kwargs,
        train_kwargs=None if kind == "nnx" else train_kwargs,
        rebuild=rebuild,
        train_rngs=tuple(train_rngs),
        n_inputs=1 + len(more_inputs),
    )
    tm._policy = policy
    check_groups(tm.channel_groups(), abstract)
    return tm


def _unpacked(f):
    """``f(v, *inputs, **kw)`` as ``g(v, inputs, **kw)``: several inputs travel through the core as one tuple."""

    def g(v, xs, **kw):
        return f(v, *xs, **kw)

    return g


def _check_kwargs(kwargs, what: str) -> dict[str, Any] | None:
    if kwargs is None:
        return None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"{what} must be a mapping of keyword-argument names to values, got {kwargs!r}")
    bad = sorted({"mutable", "rngs"} & set(kwargs))
    if bad:
        raise ValueError(f"{what} must not hold {bad}: TracedModel.apply takes mutable= and rngs= itself")
    return dict(kwargs)


def _fn_takes_train(fn) -> bool:
    try:
        return "train" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def trace_groups(
    apply_fn, variables: Mapping[str, Any] | None, example_input, *, policy=None
) -> tuple[ChannelGroup, ...]:
    """Discovers a model's channel groups from its jaxpr (docs/design.md §6; paper §3.2-3.3 coupling, found by tracing).

    The forward pass is traced with `jax.make_jaxpr` (abstract shapes: nothing is compiled) and every parameter axis
    is followed through the program by one rule per primitive (`jaxprune.trace.SUPPORTED_PRIMITIVES`):
    conv_general_dilated (grouped and depthwise: a depthwise conv ties its input and output channels), dot_general,
    broadcasting elementwise ops (BN statistics and affine terms, biases, gates, residual additions), concatenate
    (the consumer holds each input group at its offset), contiguous slice and split, pad, tile, channel-last reshape
    / flatten (`AxisRef.repeat`; an axis split in two keeps its major part whole, as grouped-query attention's
    key/value heads), transpose, gather and scatter on other axes, pooling windows, reductions, select, activations,
    and the sub-programs of jit, custom_jvp / custom_vjp, remat, cond, while and scan. Axes that must share one
    channel index space are joined; spaces tied to the model's input or output are not groups. A residual stream is
    one group (its kind is ``stream``). A stage is inferred for conv-filter groups from spatial resolution.

    Tracing never refuses a model for one operation: a group whose channels pass through a primitive without a rule
    (or one that depends on channel positions: sort, a gather along channels, ...) is not prunable, with the
    primitive and its source line as the reason (`describe_groups`, `TracedModel.blocked`) and an
    `UntracedChannelsWarning`.

    Args:
      apply_fn: A Flax Linen module, an NNX module, or a function ``(variables, x) -> output``.
      variables: Variables (arrays or `jax.ShapeDtypeStruct`); None for an NNX module.
      example_input: An example input (array or `jax.ShapeDtypeStruct`).
      policy: See `trace_model`: None uses the model's own declaration (zoo models), else every group is prunable.

    Returns:
      The groups in forward order. A group is named after its scored kernel's module (``conv1``,
      ``Block_0/Conv_0``; a kernel split between groups gets ``[start:stop]``), or after the declared group it
      matches.

    Raises:
      TypeError: arguments of the wrong kind.
      ValueError: a model none of whose groups can be followed (names the first blocking primitive and its source
        line), a parameter whose channels reach the output through no channel-preserving path or which is not used;
        errors of the model itself (e.g. an input of the wrong rank).

    Example:
      >>> import jax, jax.numpy as jnp, jaxprune as jp
      >>> m = jp.models.vgg11()
      >>> groups = jp.trace_groups(m, jp.abstract_variables(m), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
      >>> [g.name for g in groups][:3], groups[0].producers[0]
      (['conv1', 'conv2', 'conv3'], AxisRef(path=('params', 'conv1', 'kernel'), axis=3, repeat=1, offset=None))
    """
    return trace_model(apply_fn, variables, example_input, policy=policy).channel_groups()
