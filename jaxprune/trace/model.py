"""`TracedModel`: a model seen through its traced channel groups (the model protocol over a trace)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import ChannelGroup
from jaxprune.models.base import checked_widths, stage_map
from jaxprune.trace import linen as _linen
from jaxprune.trace import nnx_adapter as _nnx
from jaxprune.trace.extract import (
    UntracedChannelsWarning,
    _abstract,
    _analyze,
    _check_variables,
    _materialize,
    _Spec,
    _Trace,
)
from jaxprune.trace.policy import _apply_policy
from jaxprune.trace.runner import _Runner


class TracedModel:
    """A model seen through its traced channel groups: what `make_plan`, `prune` and `mask_dropped` need.

    It implements the model protocol (`channel_groups()`, `with_widths(mapping)`, `stages()`), and `apply(variables,
    *inputs, train=False, masks=None, mutable=False, rngs=None)` (``train=True``: the model's training call, traced and
    re-run the same way, so `jaxprune.train.fit` trains it), which re-runs the traced program at the model's current widths (the jaxpr's shape parameters
    rewritten from the traced channel spaces; one jitted program per width configuration) and, with `masks`, zeroes
    the masked channels wherever channels are mixed (contractions, reductions): the masking reference for a traced
    model (docs/design.md §4). `prune(traced, variables, plan)` returns a new `TracedModel` and the sliced variables;
    `module` (Linen) or `nnx_module(variables)` (NNX) give a real model at the new widths. Build one with
    `trace_model`.

    A mean over channels (the statistics of LayerNorm, GroupNorm, RMSNorm, or any ``jnp.mean``) divides by the
    channels kept, in the pruned re-run (the pruned count) and in the masked reference (the sum of the masks) alike,
    so pruned = masked = the module rebuilt at the new widths (docs/design.md §6). A channel space split into
    GroupNorm groups is balanced (`ChannelGroup.blocks`): each norm group keeps an equal count, chosen by its own
    scores; a concrete mask with unequal counts per block is a ValueError, and a mask passed as a tracer (under
    `jax.jit` or `jax.grad`) cannot be checked, so it must be balanced too (masks from plans, `plan_masks`, and the
    sensitivity scan's are). One split into conv feature groups is one group across them (tied): pruning keeps the same channels in
    every block. Either way the group count stays (`describe_groups` says which). Other constants
    computed from a width at trace time keep their traced value: an attention's ``1 / sqrt(head features)`` stays the
    traced one, so pruning head features gives pruned = masked; `nnx_module` keeps that scale (its attention's
    ``attention_fn`` rescales the query), while `module` refuses to rebuild a Linen attention whose head features are
    pruned (a rebuilt one would rescale; prune its heads instead). Groups the trace could not follow are not prunable;
    `blocked` says why.

    Attributes:
      kind: ``"linen"`` (a Flax Linen module), ``"nnx"`` (a Flax NNX module) or ``"function"`` (an apply function).
    """

    def __init__(
        self,
        *,
        trace,
        specs,
        sizes,
        fn,
        variables_abstract,
        kind,
        module,
        fields,
        nnx_parts,
        zoo,
        call=None,
        apply_kwargs=None,
        train_kwargs=None,
        programs=None,
        rebuild=None,
        train_rngs=(),
        n_inputs=1,
    ):
        self._trace: _Trace = trace
        self._specs: list[_Spec] = specs
        self._sizes: dict[int, int] = dict(sizes)
        self._fn = fn
        self._abstract = variables_abstract
        self.kind = kind
        self._module = module
        self._fields = dict(fields or {})
        self._nnx = nnx_parts
        self._zoo = zoo
        self._groups: tuple[ChannelGroup, ...] | None = None
        self._retraced: dict[Any, tuple[_Trace, dict[int, int]]] = {}
        self._policy = None
        self._compiled: dict[Any, Any] = {}
        # The training route: the raw call (``module.apply`` or the apply function), the keyword arguments of the
        # traced inference call and of a training call (None: the trace had no ``train`` argument), and the traced
        # training programs, shared by every width configuration of one trace.
        self._call = call
        self._apply_kwargs = dict(apply_kwargs or {})
        self._train_kwargs = None if train_kwargs is None else dict(train_kwargs)
        self._programs: dict[Any, _Trace] = {} if programs is None else programs
        self._program_sizes: dict[Any, dict[int, int]] = {}
        # A Linen module outside the zoo: (traced module, field specs, group -> why no field sets it, example input);
        # `module` rebuilds it at the current widths on first use.
        self._rebuild = rebuild
        self._built: Any = None
        #: PRNG streams the training call draws from (``("dropout",)``): `jaxprune.train`'s step passes ``rngs`` with a
        #: key per stream, ``fold_in(fold_in(state.rng, step), i + 1)`` for the i-th.
        self.train_rngs: tuple[str, ...] = tuple(train_rngs)
        #: How many inputs the model is called with (`trace_model(m, v, x, t)`: 2); `apply(variables, *inputs)`.
        self.n_inputs: int = int(n_inputs)

    # -- the model protocol ----------------------------------------------------------------------------------
    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """The traced groups at the current widths, in forward order."""
        if self._groups is None:
            d = self._trace.dims
            self._groups = tuple(_materialize(s, d, self._sizes) for s in self._specs)
        return self._groups

    def group_widths(self) -> dict[str, int]:
        """Current width of every group, by name."""
        return {g.name: g.width for g in self.channel_groups()}

    @property
    def float_ratio_kinds(self) -> tuple[str, ...]:
        """The group kinds a float ratio (and a stage name) reaches: conv filters and hidden dense groups (MLP units,
        attention heads and head features); only conv filters for a zoo model, as its declaration says (paper §4)."""
        return ("conv",) if callable(getattr(self._policy, "channel_groups", None)) else ("conv", "fc")

    @property
    def blocked(self) -> dict[str, str]:
        """Group name -> why it is not prunable, for the groups whose channels the trace could not follow."""
        return {s.name: s.blocked for s in self._specs if s.blocked is not None}

    def stages(self) -> dict[str, tuple[str, ...]]:
        """Stage name -> the prunable conv-filter groups a stage ratio reaches: the declared stages of a zoo model, else
        inferred from spatial resolution (``stage1`` at the highest, then one per downsampling; empty if none)."""
        return stage_map(self.channel_groups())

    def with_widths(self, mapping: Mapping[str, int]) -> TracedModel:
        """The same traced model with the named groups at new widths (the module is rebuilt when it can be).

        Raises:
          TypeError: a mapping that is not a mapping, or a width that is not an int.
          ValueError: an unknown or non-prunable group, or a width outside [1, current width].
        """
        groups = {g.name: g for g in self.channel_groups()}
        specs = {s.name: s for s in self._specs}
        sizes = dict(self._sizes)
        changed: dict[str, int] = {}
        for name, width in checked_widths(groups.values(), mapping, "this traced model").items():
            if width != groups[name].width:
                sizes[specs[name].root] = width // specs[name].blocks  # balanced: the count per block
                changed[name] = width
        if not changed:
            return self
        module = self._module
        if self._zoo is not None:
            module = module.with_widths(changed)
        elif self._rebuild is not None:
            module = None  # rebuilt from the traced module on first use of `module`
        new = TracedModel(
            trace=self._trace,
            specs=self._specs,
            sizes=sizes,
            fn=self._fn,
            variables_abstract=self._abstract,
            kind=self.kind,
            module=module,
            fields=self._fields,
            nnx_parts=self._nnx,
            zoo=self._zoo,
            call=self._call,
            apply_kwargs=self._apply_kwargs,
            train_kwargs=self._train_kwargs,
            programs=self._programs,
            rebuild=self._rebuild,
            train_rngs=self.train_rngs,
            n_inputs=self.n_inputs,
        )
        new._policy = self._policy
        return new

    @property
    def module(self):
        """The model at the current widths: a zoo model, or the user's Linen module rebuilt through the constructor
        fields that set its widths (`trace_model`'s `fields`, else found by re-tracing with each int field changed).

        Raises:
          ValueError: when no module can be rebuilt: an apply function, an NNX model (use `nnx_module(variables)`),
            or a Linen model with a pruned group that no field sets or whose field no single value fits (names the
            group, its kernel and the field), or whose rebuilt module would compute something else than the pruned
            model: an `nn.MultiHeadDotProductAttention` with pruned query/key head features (it would divide by the
            square root of the new count; names the attention and its heads group), a `nn.GroupNorm` that would make
            another number of groups (``group_size=`` instead of ``num_groups=``; names the norm); `apply` (and
            `jaxprune.train`) always work.
        """
        if self.kind == "nnx":
            raise ValueError("an NNX traced model rebuilds its module from variables: use nnx_module(variables)")
        if self._module is not None:
            return self._module
        if self.kind == "function" or self._rebuild is None:
            raise ValueError("this model was traced from an apply function; run it with TracedModel.apply")
        if self._built is None:
            base, fields, why, example, kwargs = self._rebuild
            traced = {s.name: self._trace.dims.size[s.root] * s.blocks for s in self._specs}
            kernel_of = {}
            for g in self.channel_groups():
                if g.scored is not None:
                    kernel_of[g.name] = g.scored.path
            module = _linen.rebuild(base, fields, why, self.group_widths(), traced, kernel_of)
            want = {tuple(k): tuple(a.shape) for k, a in _flat(self.abstract_variables()).items()}
            traced_shapes = {tuple(k): tuple(a.shape) for k, a in _flat(self._abstract).items()}
            group_of = {(ref.path, ref.axis): g.name for g in self.channel_groups() for ref in g.axes}
            got = _linen.check_rebuilt(base, module, example, kwargs, traced_shapes, group_of)
            for path, shape in want.items():
                if got.get(path) != shape:
                    raise ValueError(
                        f"cannot rebuild {type(base).__name__}: the rebuilt module's {'/'.join(path)} has shape "
                        f"{got.get(path)}, the pruned variables {shape} (a field sets a width that is not a group's); "
                        "the pruned model still runs and trains as a TracedModel (TracedModel.apply, jaxprune.train.fit)"
                    )
            self._built = module
        return self._built

    def abstract_variables(self) -> dict[str, Any]:
        """`jax.ShapeDtypeStruct` leaves of the variables at the current widths."""
        runner = _Runner(self._trace, self._sizes, None)
        flat = {}
        for (path, nodes), aval in zip(self._trace.leaves, self._trace.in_avals, strict=False):
            flat[path] = jax.ShapeDtypeStruct(runner.shape(nodes), aval.dtype)
        return _unflatten(flat)

    # -- running ----------------------------------------------------------------------------------------------
    def apply(
        self,
        variables: Mapping[str, Any],
        *inputs,
        train: bool = False,
        masks: Mapping[str, Any] | None = None,
        mutable=False,
        rngs: Mapping[str, Any] | None = None,
    ):
        """Runs the traced program at the current widths: the inference pass, or the training pass with `train=True`.

        The inference pass is the program traced by `trace_model` (with its `apply_kwargs`, e.g. ``train=False``).
        ``train=True``, `mutable` or `rngs` run the model's training call instead (``module.apply(variables, x,
        **train_kwargs, mutable=..., rngs=...)``, traced once per input shape and collections, at the traced widths,
        and re-run at the current ones): BatchNorm on batch statistics, updated running averages returned, dropout
        drawing from `rngs`. A collective over a named axis that no transform binds (a BatchNorm with
        ``axis_name='batch'``) is bound by a size-1 `jax.vmap`: under `jax.jit` the program is global, so its batch
        statistics are those of the whole batch.

        Args:
          variables: Variables at the current widths (e.g. from `jaxprune.prune`).
          *inputs: The input (several for a model traced with several, ``apply(variables, x, t)``); other shapes than
            the traced examples re-trace the original model at those shapes (cached).
          train: Run the training call (needs `train_kwargs`, set by `trace_model` when the model takes ``train``).
          masks: Optional group name -> 0/1 vector: the 0-channels are zeroed wherever channels are mixed
            (contractions, reductions), so they contribute nothing, as if removed (the masking reference, docs/design.md
            §4); groups not named are not masked.
          mutable: As in Flax: False, a collection name, a sequence of them, or True (every collection of
            `variables` but ``params``); then the result is ``(output, updated collections)``.
          rngs: As in Flax: PRNG stream name -> key (e.g. ``{"dropout": key}``).

        Raises:
          ValueError: another number of inputs than traced, `train=True` on a model traced without a ``train``
            argument (no `train_kwargs`), variables that do not match the current widths, a mask for an unknown group
            or of the wrong length, a training pass in which a pruned group's channels cannot be followed.
          TypeError: `mutable` or `rngs` of the wrong kind.
        """
        x = self._packed(inputs)
        variables = _check_variables(variables)
        # An empty collection the trace did not see (a TrainState's ``batch_stats={}`` of a model without batch norm).
        variables = {k: c for k, c in variables.items() if k in self._abstract or jax.tree_util.tree_leaves(c)}
        mutable = _check_mutable(mutable, variables)
        if rngs is not None and not isinstance(rngs, Mapping):
            raise TypeError(f"rngs must be a mapping from PRNG stream names to keys, got {type(rngs).__name__}")
        rngs = dict(rngs or {})
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {type(train).__name__} {train!r}")
        if not train and not mutable and not rngs:
            trace, sizes = self._trace_for(x)
            return self._run(trace, sizes, (variables, x), masks)
        if train and self._train_kwargs is None:
            raise ValueError(
                f"train=True: this {self.kind} TracedModel was traced without a `train` argument, so it has no "
                "training call; trace it with trace_model(..., apply_kwargs={'train': False}) (a model taking "
                "`train`) or give trace_model(..., train_kwargs={...}), the keyword arguments of its training call "
                "(train_kwargs={} for a model whose training forward pass is its inference one)"
            )
        if self._call is None:
            raise ValueError(
                f"a {self.kind} TracedModel has no training call; train=True needs a Linen module or an apply function"
            )
        kwargs = self._train_kwargs if train else self._apply_kwargs
        names = tuple(sorted(rngs))
        keys = [rngs[n] for n in names]
        trace, sizes = self._program_for(kwargs, mutable, names, x, keys)
        return self._run(trace, sizes, (variables, (x, keys)), masks)

    def _program_for(self, kwargs, mutable, names, x, keys) -> tuple[_Trace, dict[int, int]]:
        abs_xr = jax.tree_util.tree_map(_abstract, (x, keys))
        key = (
            tuple(sorted(kwargs.items(), key=lambda kv: kv[0])),
            mutable,
            names,
            tuple((a.shape, str(a.dtype)) for a in jax.tree_util.tree_leaves(abs_xr)),
        )
        try:
            hash(key)
        except TypeError:
            key = (repr(key[0]), *key[1:])
        if key not in self._programs:
            self._programs[key] = self._trace_program(kwargs, mutable, names, abs_xr)
        if key not in self._program_sizes:
            trace = self._programs[key]
            new = {s.name: s for s in trace.specs}
            sizes = {}
            for s in self._specs:
                if s.root not in self._sizes:
                    continue
                t = new.get(s.name)
                if t is None:
                    raise ValueError(f"the training pass has no group {s.name!r}: it cannot run at the pruned widths")
                if t.blocked is not None:
                    raise ValueError(f"the training pass cannot follow pruned group {s.name!r}: {t.blocked}")
                sizes[t.root] = self._sizes[s.root]
            self._program_sizes[key] = sizes
        return self._programs[key], self._program_sizes[key]

    def _trace_program(self, kwargs, mutable, names, abs_xr) -> _Trace:
        fn = _linen.train_call(self._call, kwargs, mutable, names)
        axes: tuple[str, ...] = ()
        while True:
            g = _linen.bind_axes(fn, axes)
            try:
                out = jax.eval_shape(g, self._abstract, abs_xr)
                break
            except NameError as err:
                name = _linen.unbound_axis(err)
                if name is None or name in axes or len(axes) >= 4:
                    raise
                axes = (*axes, name)
        fixed = len(jax.tree_util.tree_leaves(out[0])) if mutable else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntracedChannelsWarning)  # the inference trace already warned
            trace = _analyze(g, self._abstract, abs_xr, fixed_outputs=fixed)
        _apply_policy(trace.specs, trace.dims, self._policy)
        return trace

    def _run(self, trace: _Trace, sizes: Mapping[int, int], args, masks):
        root_of = {s.name: s.root for s in trace.specs}
        mroot: dict[int, Any] = {}
        if masks:
            if not isinstance(masks, Mapping):
                raise TypeError(f"masks must be a mapping from group names to 0/1 vectors, got {type(masks).__name__}")
            groups = {g.name: g for g in self.channel_groups()}
            for name, m in masks.items():
                if name not in root_of:
                    raise ValueError(f"mask for unknown group {name!r}; groups: {', '.join(root_of)}")
                width = groups[name].width
                if tuple(jnp.shape(m)) != (width,):
                    raise ValueError(f"mask for group {name!r} must have shape ({width},), got {jnp.shape(m)}")
                # A tracer's values are unknown here: balanced by contract (the class docstring), as plans' masks are.
                if groups[name].blocks > 1 and not isinstance(m, jax.core.Tracer):
                    # Balanced (GroupNorm groups): the statistics divide by one count per block, so all must match.
                    counts = groups[name].block_counts(np.flatnonzero(np.asarray(m)))
                    if len(set(counts)) > 1:
                        raise ValueError(
                            f"mask for group {name!r} keeps {list(counts)} channels in its {len(counts)} blocks "
                            "(GroupNorm groups); a group in blocks keeps the same count in each"
                        )
                mroot[root_of[name]] = m
        leaves, tree = jax.tree_util.tree_flatten(args)
        if tree != trace.in_tree:
            raise ValueError(
                f"variables and input do not match the traced structure: expected {trace.in_tree}, got {tree}"
            )
        runner = _Runner(trace, sizes, None)
        for (path, nodes), leaf in zip(trace.leaves, leaves, strict=False):
            want = runner.shape(nodes)
            if tuple(np.shape(leaf)) != want:
                raise ValueError(
                    f"variables do not match the traced model's current widths: {'/'.join(path)} has shape "
                    f"{tuple(np.shape(leaf))}, expected {want}"
                )
        # One jitted program per (trace, masked groups): masks are traced inputs, so any mask reuses the compile.
        mkeys = tuple(sorted(mroot))
        key = (id(trace), mkeys)
        fn = self._compiled.get(key)
        if fn is None:

            def run(flat, mvals, trace=trace, sizes=sizes, mkeys=mkeys):
                return _Runner(trace, sizes, dict(zip(mkeys, mvals, strict=True))).run(flat)

            fn = self._compiled[key] = jax.jit(run)
        out = fn(leaves, [mroot[k] for k in mkeys])
        return jax.tree_util.tree_unflatten(trace.out_tree, out)

    def __call__(self, variables, *inputs, **kw):
        return self.apply(variables, *inputs, **kw)

    def _packed(self, inputs: tuple):
        """The inputs as the core sees them: the one input, or the tuple of several."""
        if len(inputs) != self.n_inputs:
            raise ValueError(
                f"this TracedModel was traced with {self.n_inputs} input(s) and is called as apply(variables, "
                f"{', '.join(f'x{i}' for i in range(self.n_inputs))}); got {len(inputs)} input(s)"
            )
        return inputs[0] if self.n_inputs == 1 else tuple(inputs)

    @property
    def example_inputs(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        """The traced example inputs' shapes and dtypes, one pytree per input (a pytree input stays one)."""
        avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self._trace.in_avals[self._trace.n_var_leaves :]]
        _, x_tree = self._trace.in_tree.children()
        x = jax.tree_util.tree_unflatten(x_tree, avals)
        return (x,) if self.n_inputs == 1 else tuple(x)

    def _trace_for(self, x) -> tuple[_Trace, dict[int, int]]:
        avals = [_abstract(a) for a in jax.tree_util.tree_leaves(x)]
        mine = self._trace.in_avals[self._trace.n_var_leaves :]
        if [(a.shape, a.dtype) for a in avals] == [(a.shape, a.dtype) for a in mine]:
            return self._trace, self._sizes
        key = tuple((a.shape, str(a.dtype)) for a in avals)
        if key not in self._retraced:
            abs_x = jax.tree_util.tree_map(_abstract, x)
            trace = _analyze(self._fn, self._abstract, abs_x)
            _apply_policy(trace.specs, trace.dims, self._policy)
            old = {s.root: s.name for s in self._specs}
            new_root = {s.name: s.root for s in trace.specs}
            sizes = {}
            for root, w in self._sizes.items():
                name = old[root]
                if name not in new_root:
                    raise ValueError(f"re-tracing at input shapes {key} lost group {name!r}; trace at that shape")
                sizes[new_root[name]] = w
            if len(self._retraced) > 8:
                self._retraced.clear()
            self._retraced[key] = (trace, sizes)
        return self._retraced[key]

    # -- NNX --------------------------------------------------------------------------------------------------
    @property
    def nnx_class(self) -> type | None:
        """The class of the NNX module this model was traced from (the root of its graph); None for other kinds."""
        return self._nnx[0].nodes[0].type if self.kind == "nnx" else None

    def nnx_module(self, variables: Mapping[str, Any]):
        """A new NNX module holding `variables` (e.g. pruned ones), with feature attributes updated to the new shapes.

        `nnx.Linear`, `nnx.Conv` (including depthwise `feature_group_count`; a grouped conv keeps its group count),
        `nnx.BatchNorm`, `nnx.LayerNorm`, `nnx.GroupNorm` (its group count stays, its ``group_size`` follows),
        `nnx.RMSNorm`, `nnx.Embed`, `nnx.LinearGeneral` and `nnx.MultiHeadAttention` (heads, key/value heads, head
        features) get their size attributes updated; other modules read their parameters' shapes at call time.

        Raises:
          ValueError: the model was not traced from an NNX module.
        """
        if self.kind != "nnx":
            raise ValueError(f"nnx_module needs a model traced from an NNX module; this one is a {self.kind} model")
        from flax import nnx

        graphdef, states = self._nnx
        variables = _check_variables(variables)
        module = nnx.merge(graphdef, *_nnx.fill(states, variables))
        _nnx.update_sizes(module)
        return module

    def __repr__(self) -> str:
        gs = self.channel_groups()
        return f"TracedModel(kind={self.kind!r}, {len(gs)} groups, {sum(g.prunable for g in gs)} prunable)"


def _check_mutable(mutable, variables) -> tuple[str, ...]:
    if mutable is False or mutable is None:
        return ()
    if mutable is True:
        return tuple(k for k in variables if k != "params")
    if isinstance(mutable, str):
        return (mutable,)
    if isinstance(mutable, list | tuple) and all(isinstance(m, str) for m in mutable):
        return tuple(mutable)
    raise TypeError(f"mutable must be a bool, a collection name or a sequence of names, got {mutable!r}")


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out
