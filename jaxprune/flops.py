"""Cost accounting: analytic MACs and parameters per layer, and XLA's cost analysis of the compiled forward.

This module only counts; it never prunes. `count_macs` traces the model abstractly (`jax.eval_shape` of `init` with a
`flax.linen.intercept_methods` hook on every conv, dense and BatchNorm call), so it costs milliseconds, needs no
variables and works for any widths. Its figures follow the paper's convention (docs/paper.md §3): one FLOP per
multiply-accumulate, conv and dense layers only (BN, ReLU, pooling and residual additions are not counted).
`xla_flops` asks XLA instead (`cost_analysis()` of the jitted inference forward), which counts 2 per MAC over in-bounds
kernel taps and adds BN, ReLU, pooling and bias work. Every printed number comes with its convention.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprune import _program
from jaxprune._table import text_table
from jaxprune.models import VGG, CifarResNet, ImageNetResNet, default_input_shape
from jaxprune.models.base import check_prunable_model, is_prunable_model
from jaxprune.models.layers import Conv
from jaxprune.utils import _model_key

__all__ = [
    "CostReport",
    "MacReport",
    "MacRow",
    "WidthAlignmentWarning",
    "compare",
    "cost_report",
    "count_macs",
    "xla_flops",
]

#: Row kinds: conv and dense rows carry weight MACs; act rows the MACs of a product of two activations (attention
#: scores, attention times values; `MacReport.activation_macs`, never in `.macs`); bn rows carry norm scale/bias;
#: other = params of unrecognised modules.
ROW_KINDS = ("conv", "dense", "act", "bn", "other")

#: Words in a 1x1 conv's module name that mark it as a projection shortcut (the zoo uses ``stage{s}_block1_shortcut``).
PROJECTION_WORDS = ("shortcut", "proj", "downsample")

#: `cost_report` warns (`WidthAlignmentWarning`) when a pruned width is not a multiple of this (docs/perf-notes.md, surprise 2).
WIDTH_MULTIPLE = 8


class WidthAlignmentWarning(UserWarning):
    """A pruned width that is not a multiple of 8 (issued by `cost_report`).

    On XLA:CPU such widths can make the pruned model no faster, or slower, than the original: ResNet-56-B's 6/22/57
    ran x1.05-1.07 of ResNet-56 (docs/perf-notes.md, surprise 2). Prune with ``round_to=8``.
    """


MAC_CONVENTION = (
    "MACs = conv + dense multiply-accumulates (the paper's 'FLOP', 1 per MAC; BN, ReLU, pooling and residual adds "
    "not counted)"
)
PARAMS_CONVENTION = "params = every 'params' leaf (BN scale/bias included); params_no_bn = conv + dense weights and biases (paper Table 1)"
ACT_CONVENTION = (
    "activation MACs = products of two activations (attention scores q.k, attention weights x values), counted apart "
    "and not in MACs"
)
XLA_CONVENTION = (
    "XLA flops = cost_analysis()['flops'] of the compiled inference forward: 2 per MAC over in-bounds kernel taps "
    "(zero padding skipped) plus BN, ReLU, pooling and bias work"
)


@dataclasses.dataclass(frozen=True)
class MacRow:
    """One layer call.

    Attributes:
      name: Module path joined with '/', e.g. ``conv3`` or ``stage2_block1_shortcut``.
      kind: One of `ROW_KINDS`.
      in_width: Input channels (features) of the call; the contracted size of an ``act`` row (e.g. head features).
      out_width: Output channels (features): the kernel's output size; the last output axis of an ``act`` row.
      out_hw: Output (H, W) for a spatial layer, None for a dense layer (or a BN after one).
      macs: Multiply-accumulates of the call (0 for bn/other; for an ``act`` row, its activation MACs).
      params: Parameter elements the layer owns (kernel + bias, or BN scale + bias).
      weights: Kernel elements only (the Table 2 convention: no biases).
      kernel_size: (kh, kw) of a conv, None otherwise.
    """

    name: str
    kind: str
    in_width: int
    out_width: int
    out_hw: tuple[int, int] | None
    macs: int
    params: int
    weights: int
    kernel_size: tuple[int, int] | None = None

    @property
    def is_projection(self) -> bool:
        """A 1x1 conv whose name marks it as a projection shortcut (see `PROJECTION_WORDS`)."""
        last = self.name.rsplit("/", 1)[-1].lower()
        return self.kind == "conv" and self.kernel_size == (1, 1) and any(w in last for w in PROJECTION_WORDS)


@dataclasses.dataclass(frozen=True)
class MacReport:
    """Analytic per-layer cost of one model at one input shape (docs/paper.md §3 conventions).

    Attributes:
      rows: Per-layer rows in call order (`MacRow`); left-out projection convs are not among them.
      input_shape: The input shape counted, NHWC for the zoo (MACs are for the whole batch; use batch 1 for per-image
        figures); one shape per input, as a tuple of shapes, for a model called with several (a U-Net's ``(x, t)``).
      exclude_projections: Whether 1x1 projection convs were left out (the paper's ResNet-34 figures).
      excluded: Names of the left-out convs.
      model_label: A short description of the model (family, depth).
    """

    rows: tuple[MacRow, ...]
    input_shape: tuple[int, ...]
    exclude_projections: bool = False
    excluded: tuple[str, ...] = ()
    model_label: str = ""

    @property
    def macs(self) -> int:
        """Conv + dense multiply-accumulates (weight MACs): the paper's FLOP."""
        return sum(r.macs for r in self.rows if r.kind in ("conv", "dense"))

    @property
    def activation_macs(self) -> int:
        """Multiply-accumulates of products of two activations (``act`` rows: attention scores, attention times
        values), apart from `macs`; 0 for a CNN."""
        return sum(r.macs for r in self.rows if r.kind == "act")

    @property
    def params(self) -> int:
        """Every element of the `params` collection (BN scale/bias included), less any left-out projections."""
        return sum(r.params for r in self.rows)

    @property
    def params_no_bn(self) -> int:
        """Conv + dense weights and biases, no BN: the paper's Table 1 parameter convention."""
        return sum(r.params for r in self.rows if r.kind in ("conv", "dense"))

    @property
    def weights(self) -> int:
        """Conv + dense kernel elements only (the paper's Table 2 convention)."""
        return sum(r.weights for r in self.rows if r.kind in ("conv", "dense"))

    @property
    def convention(self) -> str:
        """What the numbers count; printed beside every figure."""
        proj = (
            f"; 1x1 projection convs left out of MACs and params ({len(self.excluded)}: {', '.join(self.excluded)})"
            if self.exclude_projections
            else ""
        )
        act = f"; {ACT_CONVENTION}" if any(r.kind == "act" for r in self.rows) else ""
        return f"{MAC_CONVENTION}{act}; {PARAMS_CONVENTION}; input {tuple(self.input_shape)}{proj}"

    def row(self, name: str) -> MacRow:
        """The row of a layer, by name.

        Raises:
          KeyError: no such layer (the message lists the layer names).
        """
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r}; layers: {', '.join(r.name for r in self.rows)}")

    def format(self, *, include_bn: bool = False) -> str:
        """A text table: one line per conv/dense layer (BN too if asked), totals, and the convention; a model with
        activation-by-activation products (attention) gets their rows and an ``act MACs`` column."""
        act = any(r.kind == "act" for r in self.rows)
        head = ("layer", "kind", "in", "out", "HxW", "MACs", *(("act MACs",) if act else ()), "params")
        lines = [head]
        for r in self.rows:
            if r.kind == "bn" and not include_bn:
                continue
            macs = ("-", f"{r.macs:,}") if r.kind == "act" else (f"{r.macs:,}", "-")
            lines.append(
                (
                    r.name,
                    r.kind,
                    str(r.in_width),
                    str(r.out_width),
                    _hw(r.out_hw),
                    *macs[: 2 if act else 1],
                    f"{r.params:,}",
                )
            )
        out = text_table(lines, left=2)
        acts = f"; {self.activation_macs:,} activation MACs (apart)" if act else ""
        out += (
            f"\ntotal: {self.macs:,} MACs{acts}; params {self.params:,} (all leaves), {self.params_no_bn:,} (no BN)"
            f"\nconvention: {self.convention}"
        )
        return out

    def __str__(self) -> str:
        return self.format()


def _hw(hw) -> str:
    return "1" if hw is None else f"{hw[0]}x{hw[1]}"


# -- validation -------------------------------------------------------------------------------------------------------


def _downsampling(model) -> int | None:
    """Total stride of a zoo model's pooling and strided convs, or None for other models."""
    if isinstance(model, VGG):
        return 2 ** (len(model.pool_after) + 1)
    if isinstance(model, CifarResNet):
        return 4
    if isinstance(model, ImageNetResNet):
        return 32
    return None


def _check_input_shape(model, input_shape) -> tuple[int, int, int, int]:
    if input_shape is None:
        if not isinstance(model, VGG | CifarResNet | ImageNetResNet):
            raise ValueError(f"input_shape is required for {type(model).__name__} (NHWC, rank 4)")
        return default_input_shape(model)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise TypeError(f"input_shape must be a tuple of ints (N, H, W, C), got {type(input_shape).__name__}")
    for d in input_shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"input_shape must hold ints, got {tuple(input_shape)!r}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be NHWC of rank 4 (N, H, W, C), got rank {len(shape)}: {shape}")
    if min(shape) < 1:
        raise ValueError(f"input_shape must hold positive sizes, got {shape}")
    c = getattr(model, "in_channels", None)
    if c is not None and shape[3] != c:
        raise ValueError(f"input_shape must have {c} channels (NHWC, last axis) for this model, got {shape}")
    ds = _downsampling(model)
    if ds is not None and (shape[1] < ds or shape[2] < ds):
        raise ValueError(
            f"input_shape {shape} is too small for the model's pooling: {type(model).__name__}-{model.depth} "
            f"downsamples by {ds}, so H and W must be at least {ds}"
        )
    if isinstance(model, VGG) and (shape[1], shape[2]) != (model.image_size, model.image_size):
        raise ValueError(
            f"input_shape {shape} does not match the VGG's image_size {model.image_size} (fc1 reads a "
            f"{model.image_size}x{model.image_size} input's flatten)"
        )
    return shape


def _label(model) -> str:
    depth = getattr(model, "depth", None)
    return f"{type(model).__name__}-{depth}" if depth is not None else type(model).__name__


# -- analytic count -----------------------------------------------------------------------------------------------------


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _trace_rows(model, shape: tuple[int, ...]) -> tuple[MacRow, ...]:
    """Rows from an abstract `init` with every conv/dense/BN call intercepted."""
    rows: list[MacRow] = []
    seen: set[tuple[str, ...]] = set()

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, Conv | nn.Conv | nn.Dense | nn.BatchNorm):
            return out
        path = tuple(mod.path)
        first = path not in seen
        seen.add(path)
        leaves = mod.variables.get("params", {}) if first else {}
        n_params = sum(_size(v.shape) for v in jax.tree_util.tree_leaves(leaves))
        x = args[0]
        name = "/".join(path)
        if isinstance(mod, nn.BatchNorm):
            hw = tuple(out.shape[1:3]) if out.ndim == 4 else None
            rows.append(MacRow(name, "bn", int(out.shape[-1]), int(out.shape[-1]), hw, 0, n_params, 0))
            return out
        kernel_shape = tuple(leaves["kernel"].shape) if first else tuple(mod.variables["params"]["kernel"].shape)
        weights = _size(kernel_shape) if first else 0
        if isinstance(mod, nn.Dense):
            cin, cout = kernel_shape
            macs = _size(out.shape[:-1]) * cin * cout
            hw = tuple(out.shape[1:3]) if out.ndim == 4 else None
            rows.append(MacRow(name, "dense", int(cin), int(cout), hw, int(macs), n_params, weights))
            return out
        if out.ndim != 4:
            raise ValueError(f"layer {name!r}: expected an NHWC conv output, got shape {out.shape}")
        kh, kw, cin_g, cout = kernel_shape
        # One MAC per output element per kernel tap and input channel of its group (docs/paper.md §3).
        macs = _size(out.shape) * kh * kw * cin_g
        rows.append(
            MacRow(
                name, "conv", int(x.shape[-1]), int(cout), tuple(out.shape[1:3]), int(macs), n_params, weights, (kh, kw)
            )
        )
        return out

    def init():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)

    variables = jax.eval_shape(init)
    # Parameters of modules the hook does not know still count, one row per owning module.
    counted = {tuple(r.name.split("/")) for r in rows}
    other: dict[tuple[str, ...], int] = {}
    for path, leaf in traverse_util.flatten_dict(dict(variables.get("params", {}))).items():
        owner = path[:-1]
        if owner not in counted:
            other[owner] = other.get(owner, 0) + _size(leaf.shape)
    for owner, n in other.items():
        rows.append(MacRow("/".join(owner) or "<root>", "other", 0, 0, None, 0, n, 0))
    return tuple(rows)


_ROWS_CACHE: dict[tuple[str, tuple[int, ...]], tuple[MacRow, ...]] = {}


def _jaxpr_report(program, exclude_projections: bool) -> MacReport:
    """`MacReport` of any model that is not a zoo model, read from its jaxpr (`jaxprune.trace.costs`)."""
    from jaxprune._program import traced_jaxpr
    from jaxprune.trace.costs import jaxpr_rows

    closed, paths = traced_jaxpr(program, what="count_macs")
    shapes = [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves(program.variables)]
    params = {p: s for p, s in zip(paths, shapes, strict=True) if p[:1] == ("params",)}
    in_paths = [*paths, *([None] * (len(closed.jaxpr.invars) - len(paths)))]
    rows = tuple(MacRow(**r) for r in jaxpr_rows(closed, in_paths, params))
    xs = tuple(tuple(int(d) for d in a.shape) for a in jax.tree_util.tree_leaves(program.inputs))
    return _report(rows, xs[0] if len(xs) == 1 else xs, exclude_projections, program.label)


def count_macs(model, input_shape=None, *, exclude_projections: bool = False) -> MacReport:
    """Analytic MACs and parameters per layer, from the model's configuration and the input shape (docs/paper.md §3).

    Nothing is compiled and no variables are needed: a zoo model (or another model with the prunable-model protocol)
    is traced abstractly (`jax.eval_shape` of ``model.init`` with a `flax.linen.intercept_methods` hook on every conv,
    dense and BatchNorm call; cached per configuration); any other model is counted from the jaxpr of its forward
    pass (`jax.make_jaxpr`, `jaxprune.trace.costs`): a row per conv or contraction of an activation with a kernel,
    named after the kernel's module, and an ``act`` row per product of two activations (attention scores q·k,
    attention weights times values), whose MACs are reported apart (`MacReport.activation_macs`), never in `.macs`;
    a ``scan`` body counts once per iteration, a ``cond`` its first branch, a ``while`` body once (its trip count is
    not in the program).
    A conv costs out_elements * kh * kw * c_in MACs (zero-padded taps included, as in the paper's n_{i+1} n_i k^2 h
    w; a transposed conv: input pixels * taps * c_in * c_out); a dense layer in * out per input row; a contraction
    out_elements * contracted size.

    Args:
      model: A zoo model (or any Linen module with the prunable-model protocol whose convs are
        `jaxprune.models.Conv` or `flax.linen.Conv` and whose dense layers are `flax.linen.Dense`); a `TracedModel`
        (`jaxprune.trace_model`), counted from its traced program at its current widths, with as many inputs as it
        was traced with (``trace_model(unet, v, x, t)``: two); a Flax NNX module (run as ``module(*inputs)``; its
        norms and other parameter owners get 0-MAC ``bn`` / ``other`` rows); or a plain Flax Linen module
        (``module.apply(variables, *inputs)``, ``train=False`` when its ``__call__`` takes ``train``; variables from
        an abstract ``init``).
      input_shape: The input: a shape (float32; NHWC for the zoo), a `jax.ShapeDtypeStruct` or an array, or a tuple
        of those, one per input (``((2, 16, 16, 3), jax.ShapeDtypeStruct((2,), jnp.int32))`` for ``(x, t)``). MACs
        are for the whole batch (use batch 1, the zoo's default, for per-image figures). None: a zoo model's own
        (`jaxprune.models.default_input_shape`), a `TracedModel`'s traced example inputs; required for NNX and Linen
        modules.
      exclude_projections: Leave the 1x1 projection-shortcut convs out of MACs and params (rows too), as the paper
        does for ResNet-34 (docs/paper.md §3). Their BNs stay in `.params`.

    Returns:
      A `MacReport`: `.rows`, `.macs` (conv + dense MACs, the paper's FLOP), `.activation_macs` (products of two
      activations), `.params` (every `params` leaf), `.params_no_bn` (the paper's Table 1 parameters), `.convention`.

    Raises:
      TypeError: a model of no supported kind, or `input_shape` of the wrong kind.
      ValueError: `input_shape` of the wrong rank or channels, or too small for a zoo model's pooling; sizes < 1;
        another number of inputs than a `TracedModel` takes, or shapes the model cannot run at (names the inputs and
        the model's error); no `input_shape` for an NNX or Linen module.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> r = jp.count_macs(models.vgg16(), (1, 32, 32, 3))
      >>> r.macs, r.params, r.params_no_bn
      (313463808, 14987722, 14978250)
    """
    if not isinstance(exclude_projections, bool):
        raise TypeError(f"exclude_projections must be a bool, got {type(exclude_projections).__name__}")
    if _program.is_traced(model) or not is_prunable_model(model):  # any other model: counted from its jaxpr
        like = model.example_inputs if _program.is_traced(model) else None
        inputs = _program.input_specs(input_shape, what="count_macs", like=like)
        return _jaxpr_report(_program.as_program(model, inputs, what="count_macs"), exclude_projections)
    check_prunable_model(model)
    shape = _check_input_shape(model, input_shape)
    key = _model_key(model)
    if key is None:
        rows = _trace_rows(model, shape)
    else:
        if (key, shape) not in _ROWS_CACHE:
            if len(_ROWS_CACHE) > 256:
                _ROWS_CACHE.clear()
            _ROWS_CACHE[(key, shape)] = _trace_rows(model, shape)
        rows = _ROWS_CACHE[(key, shape)]
    return _report(rows, shape, exclude_projections, _label(model))


def _report(rows, shape, exclude_projections: bool, label: str) -> MacReport:
    """A `MacReport` of `rows`, without the projection shortcuts' rows if asked (they are named in `excluded`)."""
    excluded: tuple[str, ...] = ()
    if exclude_projections:
        excluded = tuple(r.name for r in rows if r.is_projection)
        rows = tuple(r for r in rows if not r.is_projection)
    return MacReport(
        rows=rows, input_shape=shape, exclude_projections=exclude_projections, excluded=excluded, model_label=label
    )


def _pct(before: int, after: int) -> str:
    return f"{100 * (before - after) / before:.2f}%" if before else "-"


def compare(before: MacReport, after: MacReport) -> str:
    """A text table of what pruning saved, per layer (like paper Table 2) and in total, with the convention.

    Per-layer lines are the conv and dense layers, matched by name: width before -> after, output size, MACs and
    params before and after, and the MAC saving. BN parameters appear in the `params` total only.

    Args:
      before: `count_macs` of the original model.
      after: `count_macs` of the pruned model, at the same input shape and projection option.

    Returns:
      The table as text.

    Raises:
      TypeError: an argument that is not a `MacReport`.
      ValueError: the reports were counted at different input shapes or projection options.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.vgg16()
      >>> small = m.with_widths({"conv1": 32})
      >>> print(jp.compare(jp.count_macs(m), jp.count_macs(small)).splitlines()[2])
      conv1  3 -> 3     64 -> 32  32x32  1,769,472    884,736  50.00%  1,728    864
    """
    for what, r in (("before", before), ("after", after)):
        if not isinstance(r, MacReport):
            raise TypeError(f"compare: {what} must be a MacReport (from jaxprune.count_macs), got {type(r).__name__}")
    if before.input_shape != after.input_shape or before.exclude_projections != after.exclude_projections:
        raise ValueError(
            "compare needs reports counted the same way: input shapes "
            f"{before.input_shape} vs {after.input_shape}, exclude_projections "
            f"{before.exclude_projections} vs {after.exclude_projections}"
        )
    b_rows = {r.name: r for r in before.rows if r.kind in ("conv", "dense")}
    a_rows = {r.name: r for r in after.rows if r.kind in ("conv", "dense")}
    names = list(b_rows) + [n for n in a_rows if n not in b_rows]
    lines = [("layer", "in", "out", "HxW", "MACs before", "MACs after", "saved", "params before", "params after")]
    for n in names:
        b, a = b_rows.get(n), a_rows.get(n)
        ref = b or a
        lines.append(
            (
                n,
                f"{b.in_width if b else '-'} -> {a.in_width if a else '-'}",
                f"{b.out_width if b else '-'} -> {a.out_width if a else '-'}",
                _hw(ref.out_hw),
                f"{b.macs:,}" if b else "-",
                f"{a.macs:,}" if a else "-",
                _pct(b.macs, a.macs) if (a and b) else "-",
                f"{b.params:,}" if b else "-",
                f"{a.params:,}" if a else "-",
            )
        )
    out = text_table(lines, left=4)
    totals = [
        ("total", "before", "after", "saved"),
        ("MACs (conv + dense)", f"{before.macs:,}", f"{after.macs:,}", _pct(before.macs, after.macs)),
        ("params (all leaves)", f"{before.params:,}", f"{after.params:,}", _pct(before.params, after.params)),
        (
            "params (no BN, paper)",
            f"{before.params_no_bn:,}",
            f"{after.params_no_bn:,}",
            _pct(before.params_no_bn, after.params_no_bn),
        ),
    ]
    if before.activation_macs or after.activation_macs:
        ab, aa = before.activation_macs, after.activation_macs
        totals.insert(2, ("activation MACs (apart)", f"{ab:,}", f"{aa:,}", _pct(ab, aa)))
    return f"{out}\n\n{text_table(totals)}\nconvention: {before.convention}"


# -- XLA cost analysis --------------------------------------------------------------------------------------------------

_XLA_CACHE: dict[tuple, float] = {}


def _flops_of(cost) -> float:
    """`cost_analysis()` is a dict in current jax and a list of dicts (one per computation) in older versions."""
    if isinstance(cost, Mapping):
        entries = [cost]
    elif isinstance(cost, Sequence):
        entries = list(cost)
    else:
        entries = []
    values = [float(e["flops"]) for e in entries if isinstance(e, Mapping) and "flops" in e]
    if not values:
        raise RuntimeError(f"XLA's cost analysis reported no 'flops' for this backend (got {cost!r})")
    return float(sum(values))


def xla_flops(model, variables: Mapping[str, Any] | None = None, input_shape=None) -> float:
    """XLA's FLOP count of the compiled inference forward: ``jax.jit(f).lower(...).compile().cost_analysis()``.

    The forward is compiled abstractly (`jax.ShapeDtypeStruct` variables and inputs: nothing runs, nothing is
    allocated). Convention (docs/perf-notes.md, surprise 4): 2 FLOPs per MAC over in-bounds kernel taps only (zero
    padding is skipped), plus BN (about 3 per element), ReLU, pooling and bias adds, and for a transformer the
    attention products, softmax and norms. For VGG-16 on the plain `lax.conv` path it is about 0.79 x 2 *
    `count_macs(...).macs`, so a saving measured here differs from the paper's (e.g. 30.0 % vs 34.2 % for VGG-16-A).

    The figure is that of the computation XLA actually compiles, so it depends on the conv path
    (`jaxprune.models.layers`): on CPU the zoo models' ``conv_impl="auto"`` computes convs with <= 2x2 outputs and
    3x3 first layers over RGB as im2col + matmul, which multiplies the zero-padded taps too (a 3x3 conv at a 2x2
    output: 9 taps per pixel in the matmul against 4 in bounds, so conv11-13 of VGG-16 count 2.25x their in-bounds
    work), and computes some widths (56, 57, 120...) with zero filters up to a multiple of 16, which are counted too.
    So ``auto`` gives a higher figure than the plain path, and a pruned model's XLA saving can differ between paths;
    compare on ``model.clone(conv_impl="lax")`` for XLA's in-bounds convention. `count_macs` does not depend on the
    path. Results are cached per model (configuration, traced model or NNX graph), variable shapes and input shapes
    (the compile takes about a second for VGG-16).

    Args:
      model: A zoo model or another model with the prunable-model protocol (``model.apply(variables, x,
        train=False)``); a `TracedModel` (`jaxprune.trace_model`; its traced program at its current widths, with as
        many inputs as it was traced with: ``trace_model(unet, v, x, t)`` takes two); a Flax NNX module (run as
        ``module(*inputs)``: put it in eval mode first); an Equinox module (``eqx.nn.inference_mode(model)(x)``, or
        ``(x, state)`` for one with state; one input, as it takes it); or a plain Flax Linen module (``module.apply(variables,
        *inputs)``, with ``train=False`` when its ``__call__`` takes ``train``).
      variables: Its variables (arrays or `jax.ShapeDtypeStruct`s: only shapes and dtypes are read). None: the
        model's own abstract ones (a zoo model's, a `TracedModel`'s at its current widths, an abstract ``init`` of a
        Linen module); an NNX module always uses its own, and variables given for it must match them; an Equinox
        module takes none.
      input_shape: The input: a shape (float32; NHWC for the zoo), a `jax.ShapeDtypeStruct` or an array, or a tuple
        of those, one per input (``((2, 16, 16, 3), jax.ShapeDtypeStruct((2,), jnp.int32))`` for ``(x, t)``). None: a
        zoo model's own shape, a `TracedModel`'s traced example inputs; required for NNX, Equinox and Linen modules.

    Returns:
      The flops figure as a float (for the whole batch).

    Raises:
      TypeError: a model of no supported kind, `variables` that is not a mapping, `input_shape` of the wrong kind.
      ValueError: `input_shape` of the wrong rank or channels, or too small for a zoo model's pooling; another number
        of inputs than a `TracedModel` takes, or shapes the model cannot run at; NNX variables that differ from the
        module's own (names the leaf); no `input_shape` for an NNX or Linen module.
      RuntimeError: the backend reports no cost analysis.

    Example:
      >>> import flax.linen as nn, jaxprune as jp
      >>> conv = nn.Conv(8, (3, 3), padding="VALID")  # any Linen module; variables from an abstract init
      >>> jp.count_macs(conv, (1, 6, 6, 3)).macs
      3456
      >>> jp.xla_flops(conv, None, (1, 6, 6, 3)) >= 2 * 3456  # 2 per MAC, plus the bias adds
      True
    """
    if variables is not None and not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a mapping of collections (e.g. {{'params': ...}}), got {type(variables)}")
    if _program.is_traced(model) or not is_prunable_model(model):
        like = model.example_inputs if _program.is_traced(model) else None
        inputs = _program.input_specs(input_shape, what="xla_flops", like=like)
        program = _program.as_program(model, inputs, variables, what="xla_flops")
        return _compiled_flops(program, program.cache_key)
    shape = _check_input_shape(model, input_shape)
    if variables is None:
        from jaxprune.utils import abstract_variables

        variables = abstract_variables(model, shape)
    model_key = _model_key(model)

    def forward(v, x):
        return model.apply(v, x, train=False)

    program = _program.Program(
        forward, variables, (jax.ShapeDtypeStruct(shape, jnp.float32),), _label(model), ("zoo", model_key)
    )
    return _compiled_flops(program, None if model_key is None else program.cache_key)


def _compiled_flops(program, key) -> float:
    """``cost_analysis()`` flops of the program compiled at its abstract variables and inputs; cached under `key`
    and the program's shapes (None: not cached)."""
    if key is not None:
        key = (key, _program.signature(program), jax.default_backend())
        if key in _XLA_CACHE:
            return _XLA_CACHE[key]
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), dict(program.variables)
    )
    try:
        lowered = jax.jit(program.fn).lower(abstract, *program.inputs)
    except Exception as err:  # the model's own error (a shape mismatch inside Flax): named, with the inputs
        if program.cache_key is not None and program.cache_key[0] == "zoo":
            raise
        raise ValueError(
            f"xla_flops: {program.label} cannot run at input(s) {_program.shape_list(program.inputs)}: "
            f"{type(err).__name__}: {err}"
        ) from err
    flops = _flops_of(lowered.compile().cost_analysis())
    if key is not None:
        if len(_XLA_CACHE) > 256:
            _XLA_CACHE.clear()
        _XLA_CACHE[key] = flops
    return flops


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Analytic and XLA costs of a model before and after pruning.

    Attributes:
      before: `count_macs` of the original model.
      after: `count_macs` of the pruned model.
      xla_before: `xla_flops` of the original model.
      xla_after: `xla_flops` of the pruned model.
      conv_impl: The models' conv path, which shapes the XLA figure.
      unaligned: Pruned groups whose new width is not a multiple of 8, name -> width (see `WidthAlignmentWarning`).
    """

    before: MacReport
    after: MacReport
    xla_before: float
    xla_after: float
    conv_impl: str = ""
    unaligned: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ratio_before(self) -> float:
        """XLA flops / (2 * MACs) of the original model (about 0.79 for VGG-16 on the lax path)."""
        return self.xla_before / (2 * self.before.macs)

    @property
    def ratio_after(self) -> float:
        """XLA flops / (2 * MACs) of the pruned model."""
        return self.xla_after / (2 * self.after.macs)

    def format(self) -> str:
        """Analytic and XLA figures side by side, before and after, with savings and the measured ratios."""
        b, a = self.before, self.after
        rows = [
            ("", "before", "after", "saved"),
            ("MACs (paper FLOP)", f"{b.macs:,}", f"{a.macs:,}", _pct(b.macs, a.macs)),
            ("2 x MACs", f"{2 * b.macs:,}", f"{2 * a.macs:,}", _pct(b.macs, a.macs)),
            ("XLA flops", f"{self.xla_before:,.0f}", f"{self.xla_after:,.0f}", _pct(self.xla_before, self.xla_after)),
            ("XLA / (2 x MACs)", f"{self.ratio_before:.4f}", f"{self.ratio_after:.4f}", ""),
            ("params (all leaves)", f"{b.params:,}", f"{a.params:,}", _pct(b.params, a.params)),
            (
                "params (no BN, paper)",
                f"{b.params_no_bn:,}",
                f"{a.params_no_bn:,}",
                _pct(b.params_no_bn, a.params_no_bn),
            ),
        ]
        impl = f" (conv_impl={self.conv_impl!r})" if self.conv_impl else ""
        out = f"{text_table(rows)}\nanalytic: {b.convention}\nXLA{impl}: {XLA_CONVENTION}"
        if self.unaligned:
            out += f"\nwarning: {_unaligned_message(self.unaligned)}"
        return out

    def __str__(self) -> str:
        return self.format()


def cost_report(
    model,
    variables: Mapping[str, Any],
    new_model,
    new_variables: Mapping[str, Any],
    input_shape: Sequence[int] | None = None,
    *,
    exclude_projections: bool = False,
) -> CostReport:
    """Analytic MACs and XLA's flops side by side, before and after pruning, with the measured XLA/(2*MACs) ratio.

    Args:
      model: The original model.
      variables: Its variables (only shapes are read).
      new_model: The pruned model (e.g. from `jaxprune.prune`).
      new_variables: Its variables.
      input_shape: NHWC input shape; None means the original model's own.
      exclude_projections: Passed to `count_macs` (the XLA figure always includes every layer).

    Returns:
      A `CostReport`; ``str(report)`` is the table with both conventions.

    Raises:
      TypeError, ValueError: as `count_macs` and `xla_flops`.

    Warns:
      WidthAlignmentWarning: a group that pruning changed has a width that is not a multiple of 8 (the message names
        the groups and widths and suggests ``round_to=8``; `CostReport.unaligned` lists them too).
    """
    check_prunable_model(model)  # the width check below reads group_widths()
    check_prunable_model(new_model)
    before = count_macs(model, input_shape, exclude_projections=exclude_projections)
    after = count_macs(new_model, before.input_shape, exclude_projections=exclude_projections)
    xb = xla_flops(model, variables, before.input_shape)
    xa = xla_flops(new_model, new_variables, before.input_shape)
    impl = getattr(model, "conv_impl", "")
    unaligned = _unaligned_widths(model, new_model)
    if unaligned:
        warnings.warn(_unaligned_message(unaligned), WidthAlignmentWarning, stacklevel=2)
    return CostReport(before=before, after=after, xla_before=xb, xla_after=xa, conv_impl=impl, unaligned=unaligned)


def _unaligned_widths(model, new_model) -> dict[str, int]:
    """Groups whose width pruning changed to one that is not a multiple of `WIDTH_MULTIPLE`, in forward order."""
    old, new = model.group_widths(), new_model.group_widths()
    return {g: w for g, w in new.items() if w != old.get(g) and w % WIDTH_MULTIPLE}


def _unaligned_message(unaligned: Mapping[str, int]) -> str:
    items = list(unaligned.items())
    shown = ", ".join(f"{g} = {w}" for g, w in items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")
    return (
        f"{len(items)} pruned width(s) not a multiple of {WIDTH_MULTIPLE} ({shown}): on XLA:CPU such widths can make "
        f"the pruned model no faster than the original; prune with round_to={WIDTH_MULTIPLE} (e.g. "
        f"jaxprune.preset(name, model, variables, round_to={WIDTH_MULTIPLE}))"
    )
