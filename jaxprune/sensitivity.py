"""Sensitivity analysis (paper §3.2, §4.4-4.5): prune one group at a time, evaluate, and propose ratios from it.

This module owns the single-group sensitivity scan (`sensitivity`), the activation-based criteria of paper §4.5
(`activation_scores`), the scan over several criteria on the same model and data (`compare_criteria`), and the step
the paper does by hand after looking at the curves: choosing per-stage ratios and a skip list, or the ratios that
reach a MACs or parameter budget (`suggest_ratios`). It returns tables, never plots (`jaxprune.viz` draws them), and
it never slices variables itself: the physical path calls `jaxprune.prune`, the fast path uses the masking reference
(`jaxprune.masking`, docs/design.md §4) with the masks as traced inputs, so one compile serves every group and ratio.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import ChannelGroup
from jaxprune.masking import full_masks
from jaxprune.models import default_input_shape
from jaxprune.models.base import check_prunable_model
from jaxprune.scoring import CRITERIA, _check_criterion, filter_norms
from jaxprune.strategies import _check_positive_int, make_plan, plan_from_scores
from jaxprune.surgery import prune

__all__ = [
    "ACTIVATION_CRITERIA",
    "ALL_CRITERIA",
    "DEFAULT_RATIOS",
    "METRICS",
    "CriteriaComparison",
    "RatioSuggestion",
    "SensitivityResult",
    "activation_scores",
    "compare_criteria",
    "scan_trace_count",
    "sensitivity",
    "suggest_ratios",
]

#: The paper's scan: 10 % to 90 % of a layer's filters (Fig. 2(b)).
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Activation-based criteria of paper §4.5, computed from the conv outputs before BN on a batch of data.
ACTIVATION_CRITERIA = ("mean_mean", "mean_std", "mean_l1", "mean_l2", "var_l2")

#: Every criterion `sensitivity` and `compare_criteria` accept: the data-free ones of `jaxprune.scoring`, then these.
ALL_CRITERIA = CRITERIA + ACTIVATION_CRITERIA

#: Built-in metrics of the fast path: name -> higher is better.
METRICS = {"accuracy": True, "loss": False}

_TRACES = {"scan": 0, "activations": 0}


def scan_trace_count() -> int:
    """How many times the fast scan's masked forward has been traced in this process (tests pin one per shape)."""
    return _TRACES["scan"]


# ----------------------------------------------------------------------------------------------------------------------
# Result tables
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SensitivityResult:
    """The table of a single-group sensitivity scan: one metric value per (group, ratio).

    Attributes:
      groups: Scanned group names, in forward order.
      ratios: Prune ratios, increasing.
      values: float64 array (len(groups), len(ratios)): the metric with only that group pruned at that ratio.
      baseline: The metric of the unpruned network.
      kept: int array like `values`: filters the group keeps at that ratio (`jaxprune.kept_count`).
      widths: Group name -> its unpruned width.
      stages: Group name -> its stage name (``stage1``...) or None.
      stage_groups: Stage name -> every conv group of the model a stage ratio reaches (`model.stages()`), so that a
        suggestion only names a stage when the scan covered all of it.
      metric: Name of the metric (``accuracy``, ``loss``, a callable's name, or ``evaluate``).
      higher_is_better: Whether a larger metric is better; `drop` uses it.
      criterion: The criterion that picked the pruned filters (``precomputed`` for `scores=`).
      method: ``masked`` (fast path) or ``physical`` (prune + `evaluate`).
      round_to: Rounding of kept counts used by the scan (`make_plan(round_to=)`).
      min_keep: Minimum kept count used by the scan.
      input_shape: NHWC shape (batch 1) for MAC counts, from the data or the model's default.
      model: The scanned model (for MAC and parameter counts in `suggest_ratios`); not part of the table.
      seconds: Wall-clock time of the scan, compile included.
    """

    groups: tuple[str, ...]
    ratios: tuple[float, ...]
    values: np.ndarray
    baseline: float
    kept: np.ndarray
    widths: Mapping[str, int]
    stages: Mapping[str, str | None]
    stage_groups: Mapping[str, tuple[str, ...]]
    metric: str
    higher_is_better: bool
    criterion: str
    method: str
    round_to: int = 1
    min_keep: int = 1
    input_shape: tuple[int, ...] | None = None
    model: Any = dataclasses.field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def drop(self) -> np.ndarray:
        """Degradation per (group, ratio): baseline - value if higher is better, else value - baseline (> 0 = worse)."""
        d = self.baseline - self.values if self.higher_is_better else self.values - self.baseline
        return np.asarray(d, np.float64)

    def value(self, group: str, ratio: float) -> float:
        """The metric with `group` pruned at `ratio` (a scanned point).

        Raises:
          KeyError: `group` or `ratio` was not scanned.
        """
        if group not in self.groups:
            raise KeyError(f"group {group!r} was not scanned; scanned groups: {', '.join(self.groups)}")
        j = _ratio_index(self.ratios, ratio)
        return float(self.values[self.groups.index(group), j])

    def rows(self) -> list[dict[str, Any]]:
        """The table as records: group, stage, ratio, width, kept, value, drop (forward order, then ratio)."""
        drop = self.drop
        return [
            {
                "group": g,
                "stage": self.stages.get(g),
                "ratio": p,
                "width": int(self.widths[g]),
                "kept": int(self.kept[i, j]),
                "value": float(self.values[i, j]),
                "drop": float(drop[i, j]),
            }
            for i, g in enumerate(self.groups)
            for j, p in enumerate(self.ratios)
        ]

    def to_markdown(self, *, digits: int = 4) -> str:
        """A markdown table: one row per group, one column per ratio, the metric in the cells."""
        head = "| group | width | " + " | ".join(f"{p:g}" for p in self.ratios) + " |"
        sep = "|---|---:|" + "---:|" * len(self.ratios)
        lines = [
            f"{self.metric} with one group pruned (criterion {self.criterion}, {self.method} path); "
            f"unpruned: {self.baseline:.{digits}f}",
            "",
            head,
            sep,
        ]
        for i, g in enumerate(self.groups):
            cells = " | ".join(f"{v:.{digits}f}" for v in self.values[i])
            lines.append(f"| {g} | {self.widths[g]} | {cells} |")
        return "\n".join(lines)


def _ratio_index(ratios: Sequence[float], ratio: float) -> int:
    for j, p in enumerate(ratios):
        if math.isclose(p, float(ratio), rel_tol=0, abs_tol=1e-12):
            return j
    raise KeyError(f"ratio {ratio!r} was not scanned; scanned ratios: {', '.join(f'{p:g}' for p in ratios)}")


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------
def _check_ratios(ratios) -> tuple[float, ...]:
    if isinstance(ratios, str | bytes) or not isinstance(ratios, Iterable):
        raise TypeError(f"ratios must be a sequence of floats in [0, 1), got {type(ratios).__name__} {ratios!r}")
    out = []
    for p in ratios:
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"ratios must be real numbers in [0, 1), got {type(p).__name__} {p!r}")
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"every ratio must be in [0, 1), got {p!r} in ratios {list(ratios)!r}")
        out.append(p)
    if not out:
        raise ValueError("ratios must hold at least one ratio in [0, 1)")
    for a, b in itertools.pairwise(out):
        if not b > a:
            raise ValueError(f"ratios must be strictly increasing, got {a!r} then {b!r} in {out!r}")
    return tuple(out)


def _check_criterion_any(criterion) -> None:
    if not isinstance(criterion, str) or criterion not in ALL_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(ALL_CRITERIA)}")


def _scan_groups(model, groups) -> list[ChannelGroup]:
    """The groups a scan covers: those a float ratio reaches (docs/design.md §3), or the named prunable ones."""
    all_groups = list(model.channel_groups())
    by_name = {g.name: g for g in all_groups}
    prunable = [g.name for g in all_groups if g.prunable and g.scored is not None]
    if groups is None:
        return [g for g in all_groups if g.prunable and g.kind == "conv"]
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of group names, got {type(groups).__name__} {groups!r}")
    names = []
    for g in groups:
        name = g.name if isinstance(g, ChannelGroup) else g
        if not isinstance(name, str):
            raise TypeError(f"groups must hold group names (str), got {type(name).__name__} {name!r}")
        if name not in by_name:
            raise ValueError(f"unknown group {name!r}; prunable groups: {', '.join(prunable)}")
        if name not in prunable:
            raise ValueError(
                f"group {name!r} is not prunable (kind {by_name[name].kind!r}); prunable groups: {', '.join(prunable)}"
            )
        if name in names:
            raise ValueError(f"group {name!r} is named twice in groups")
        names.append(name)
    if not names:
        raise ValueError("groups must name at least one group")
    return [g for g in all_groups if g.name in names]  # forward order


def _check_images(x, what: str) -> np.ndarray | jax.Array:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{what} must be an array of NHWC images, got {type(x).__name__}")
    if len(shape) < 2:
        raise ValueError(f"{what} must be a batch of images (N, H, W, C), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{what} is empty (0 examples); the scan needs at least one example")
    return x


def _check_data(data) -> tuple[Any, Any]:
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(f"data must be a pair (x, y) of images and labels, got {type(data).__name__}")
    x, y = data
    x = _check_images(x, "data x")
    if getattr(y, "shape", None) is None:
        y = np.asarray(y)
    if len(y.shape) == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"data x and y must hold the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    return x, y


def _as_scalar(value, what: str) -> float:
    """A Python float from a scalar metric (Python number, numpy scalar, 0-d array)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes | Mapping):
        raise TypeError(f"{what} must return a real scalar (e.g. accuracy as a float), got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # pragma: no cover - exotic objects
        raise TypeError(f"{what} must return a real scalar, got {type(value).__name__}") from e
    if arr.ndim != 0:
        raise ValueError(f"{what} must return a scalar, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{what} must return a real scalar, got dtype {arr.dtype}")
    return float(arr)


def _resolve_metric(metric, higher_is_better) -> tuple[Callable, str, bool]:
    if higher_is_better is not None and not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be a bool or None, got {type(higher_is_better).__name__}")
    if metric is None:
        metric = "accuracy"
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}, or a callable")
        if higher_is_better is not None and higher_is_better != METRICS[metric]:
            raise ValueError(f"metric {metric!r} has higher_is_better={METRICS[metric]}; do not override it")
        return (_accuracy if metric == "accuracy" else _loss), metric, METRICS[metric]
    if not callable(metric):
        raise TypeError(f"metric must be one of {', '.join(METRICS)} or a callable(logits, labels), got {metric!r}")
    name = getattr(metric, "__name__", type(metric).__name__)
    return metric, name, True if higher_is_better is None else higher_is_better


def _accuracy(logits, labels):
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def _loss(logits, labels):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


# ----------------------------------------------------------------------------------------------------------------------
# Activation-based criteria (paper §4.5)
# ----------------------------------------------------------------------------------------------------------------------
def _module_path(group: ChannelGroup) -> tuple[str, ...]:
    ref = group.scored
    if ref.path[0] != "params" or len(ref.path) < 3:
        raise ValueError(f"group {group.name!r}: scored kernel {ref.name} is not a params/<module>/kernel leaf")
    return tuple(ref.path[1:-1])


_ACT_FNS: dict[tuple[int, tuple], Any] = {}


def _activation_fn(model, module_paths: tuple[tuple[str, ...], ...]):
    """Jitted f(variables, x, weights) -> {module path: (5, width) per-channel sums of the per-image statistics}."""
    key = (id(model), module_paths)
    if key in _ACT_FNS and _ACT_FNS[key][0] is model:
        return _ACT_FNS[key][1]
    wanted = set(module_paths)

    def take(mdl, method_name):
        return method_name == "__call__" and tuple(mdl.scope.path) in wanted

    def f(variables, x, weights):
        _TRACES["activations"] += 1
        _, state = model.apply(variables, x, train=False, capture_intermediates=take, mutable=["intermediates"])
        inter = state["intermediates"]
        out = {}
        for path in module_paths:
            node = inter
            for p in path:
                node = node[p]
            a = node["__call__"][0].astype(jnp.float32)  # conv output before BN: (N, H, W, C) or (N, C)
            a = a.reshape(a.shape[0], -1, a.shape[-1])  # (N, positions, C)
            mean = jnp.mean(a, axis=1)
            std = jnp.std(a, axis=1)
            l1 = jnp.sum(jnp.abs(a), axis=1)
            l2 = jnp.sqrt(jnp.sum(a * a, axis=1))
            w = weights[:, None]
            out[path] = jnp.stack([mean * w, std * w, l1 * w, l2 * w, l2 * l2 * w]).sum(axis=1)
        return out

    fn = jax.jit(f)
    if len(_ACT_FNS) > 16:
        _ACT_FNS.clear()
    _ACT_FNS[key] = (model, fn)
    return fn


def _activation_stats(model, variables, x, groups: list[ChannelGroup], batch_size: int) -> dict[str, dict[str, Any]]:
    """All five §4.5 statistics for every group, from one pass over `x` in fixed-size chunks (one compile)."""
    paths = {}
    for g in groups:
        ref = g.scored
        if ref is None:
            raise ValueError(f"group {g.name!r} has no scored kernel (prunable=False); it has no activations to score")
        kernel_ndim = len(_kernel_shape(variables, ref.path, g.name))
        if ref.axis != kernel_ndim - 1:
            raise ValueError(
                f"group {g.name!r}: activation criteria read the output channels of {ref.name}, whose scored axis "
                f"{ref.axis} is not its last axis"
            )
        paths[g.name] = _module_path(g)
    module_paths = tuple(sorted(set(paths.values())))
    fn = _activation_fn(model, module_paths)
    n = int(x.shape[0])
    bs = min(batch_size, n)
    sums: dict[tuple[str, ...], np.ndarray] = {}
    for start in range(0, n, bs):
        xb = np.asarray(x[start : start + bs], np.float32)
        weights = np.ones((bs,), np.float32)
        if xb.shape[0] < bs:  # pad the last chunk with zero-weighted copies: same shape, no recompile
            pad = bs - xb.shape[0]
            weights[xb.shape[0] :] = 0.0
            xb = np.concatenate([xb, np.repeat(xb[:1], pad, axis=0)])
        out = fn(variables, xb, weights)
        for path, s in out.items():
            s = np.asarray(s, np.float64)
            sums[path] = s if path not in sums else sums[path] + s
    stats = {}
    for g in groups:
        s = sums[paths[g.name]]
        if s.shape[-1] != g.width:
            raise ValueError(
                f"group {g.name!r}: the output of module {'/'.join(paths[g.name])} has {s.shape[-1]} channels, "
                f"the group has width {g.width}"
            )
        mean_mean, mean_std, mean_l1, mean_l2, mean_l2sq = s / n
        stats[g.name] = {
            "mean_mean": mean_mean,
            "mean_std": mean_std,
            "mean_l1": mean_l1,
            "mean_l2": mean_l2,
            # Population variance over images of the map's l2 norm (Polyak & Wolf's contribution variance).
            "var_l2": np.maximum(mean_l2sq - mean_l2 * mean_l2, 0.0),
        }
    return stats


def _kernel_shape(variables, path: tuple[str, ...], group: str) -> tuple[int, ...]:
    node = variables
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            raise ValueError(f"group {group!r}: scored kernel {'/'.join(path)} not found in variables")
        node = node[p]
    return tuple(node.shape)


def _activation_input(batch, what: str):
    if isinstance(batch, tuple | list):
        if len(batch) != 2:
            raise TypeError(f"{what} must be images x or a pair (x, y), got a sequence of length {len(batch)}")
        batch = batch[0]
    return _check_images(batch, what)


def activation_scores(
    model,
    variables: Mapping[str, Any],
    batch,
    *,
    criterion: str,
    groups: Iterable[str] | None = None,
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Activation-based filter scores of paper §4.5, from the conv outputs before BN on a batch of data.

    For each group, the output of the module owning its scored kernel (the conv, before BN and ReLU; for `fc1` the
    Dense output before its BN) is captured with Flax's ``capture_intermediates``. With ``a[n, c]`` the map of
    channel ``c`` for image ``n`` (its H x W values):

    * ``mean_mean``: mean over images of the map's mean;
    * ``mean_std``: mean over images of the map's standard deviation (over positions);
    * ``mean_l1``: mean over images of the map's l1 norm;
    * ``mean_l2``: mean over images of the map's l2 norm;
    * ``var_l2``: variance over images of the map's l2 norm (Polyak & Wolf's contribution variance).

    Higher is more important (kept first), as for the L1 criterion. The images are processed in chunks of
    `batch_size` (the last one padded with zero-weighted copies), so any number of images costs one compile.

    Args:
      model: A zoo model (the `jaxprune.models` protocol).
      variables: Its variables (`params` and `batch_stats`); BN runs in inference mode.
      batch: NHWC images ``x``, or a pair ``(x, y)`` whose labels are ignored. The paper uses training images.
      criterion: One of `ACTIVATION_CRITERIA`.
      groups: Group names to score; default every prunable group with a scored kernel.
      batch_size: Images per forward pass.

    Returns:
      ``{group name: np.ndarray[width]}`` (float64), usable as ``jaxprune.make_plan(scores=...)``.

    Raises:
      ValueError: unknown criterion (lists the valid ones), empty `batch`, ``var_l2`` on fewer than 2 images, an
        unknown or non-prunable group, a scored kernel whose output channels are not its module's last axis.
      TypeError: a model without the protocol, `batch` that is not an array or pair, a non-int `batch_size`.

    Example:
      >>> import numpy as np, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
      >>> s = jp.activation_scores(m, v, x, criterion="mean_l1")
      >>> s["stage1_block1_conv1"].shape
      (16,)
      >>> plan = jp.make_plan(m, v, prune_ratio=0.5, scores=s)
    """
    check_prunable_model(model)
    if not isinstance(criterion, str) or criterion not in ACTIVATION_CRITERIA:
        raise ValueError(
            f"unknown activation criterion {criterion!r}; valid activation criteria: {', '.join(ACTIVATION_CRITERIA)}"
            f" (data-free criteria {', '.join(CRITERIA)} are computed by jaxprune.filter_norms)"
        )
    x = _activation_input(batch, "batch")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if criterion == "var_l2" and x.shape[0] < 2:
        raise ValueError(f"criterion 'var_l2' is a variance over images and needs at least 2 images, got {x.shape[0]}")
    if groups is None:
        chosen = [g for g in model.channel_groups() if g.prunable and g.scored is not None]
    else:
        chosen = _scan_groups(model, groups)
    stats = _activation_stats(model, variables, x, chosen, batch_size)
    return {name: s[criterion] for name, s in stats.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------------------------------
_SCAN_FNS: dict[tuple, Any] = {}


def _scan_fn(model, metric_fn: Callable):
    """Jitted f(variables, x, y, stacked masks) -> metric per mask: vmapped over a chunk of complete mask dicts."""
    key = (id(model), id(metric_fn))
    hit = _SCAN_FNS.get(key)
    if hit is not None and hit[0] is model and hit[1] is metric_fn:
        return hit[2]

    def one(variables, x, y, masks):
        return metric_fn(model.apply(variables, x, train=False, masks=masks), y)

    def f(variables, x, y, stacked):
        _TRACES["scan"] += 1  # runs at trace time only
        return jax.vmap(one, in_axes=(None, None, None, 0))(variables, x, y, stacked)

    fn = jax.jit(f)
    if len(_SCAN_FNS) > 32:
        _SCAN_FNS.clear()
    _SCAN_FNS[key] = (model, metric_fn, fn)
    return fn


def _scores_for(model, variables, groups, criterion, key, scores, activation_data, activation_batch_size):
    if scores is not None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must be a mapping from group names to arrays, got {type(scores).__name__}")
        missing = [g.name for g in groups if g.name not in scores]
        if missing:
            raise ValueError(f"scores has no entry for scanned groups {missing}")
        return {g.name: np.asarray(scores[g.name]) for g in groups}, "precomputed"
    _check_criterion_any(criterion)
    if criterion in ACTIVATION_CRITERIA:
        if activation_data is None:
            raise ValueError(
                f"criterion {criterion!r} is computed from activations and needs data: pass data=(x, y) or "
                "activation_data=x"
            )
        x = _activation_input(activation_data, "activation_data")
        if criterion == "var_l2" and x.shape[0] < 2:
            raise ValueError(f"criterion 'var_l2' needs at least 2 images, got {x.shape[0]}")
        stats = _activation_stats(model, variables, x, groups, activation_batch_size)
        return {n: s[criterion] for n, s in stats.items()}, criterion
    _check_criterion(criterion, key)
    return filter_norms(variables, groups, criterion=criterion, key=key), criterion


def sensitivity(
    model,
    variables: Mapping[str, Any],
    evaluate: Callable[[Any, Mapping[str, Any]], float] | None = None,
    *,
    data: tuple[Any, Any] | None = None,
    metric: str | Callable | None = None,
    higher_is_better: bool | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    groups: Iterable[str] | None = None,
    criterion: str = "l1",
    key=None,
    scores: Mapping[str, np.ndarray] | None = None,
    activation_data=None,
    batch_size: int | None = None,
    chunk: int | None = None,
    round_to: int = 1,
    min_keep: int = 1,
) -> SensitivityResult:
    """Single-group sensitivity scan (paper §3.2, Fig. 2(b)): prune one group at a time and measure the network.

    For every scanned group and every ratio, the group's lowest-scoring filters are pruned as
    ``make_plan(model, variables, prune_ratio={group: ratio}, scores=...)`` would (same rounding, same selection,
    docs/design.md §1) and every other group is left intact; the network is evaluated without retraining.

    Two paths:

    * **Fast (masked) path** - pass ``data=(x, y)`` and no `evaluate`. The metric is a function of the logits and
      the labels of that batch: ``metric="accuracy"`` (fraction of ``argmax(logits) == y``, the default),
      ``metric="loss"`` (mean softmax cross-entropy) or any jax-traceable ``metric(logits, y) -> scalar`` (say
      `higher_is_better`). One jitted forward of the *original-shape* network takes the channel masks as traced
      inputs (the masking reference, docs/design.md §4), vmapped over `chunk` masks at a time, so the whole scan costs one
      compile plus ``ceil((groups x ratios + 1) / chunk)`` calls, whatever the groups and ratios; later scans of the
      same model object and metric reuse the compile. With `batch_size`, ``x`` is split into batches and the
      per-batch metrics are averaged weighted by batch size, which is exact for per-example means such as accuracy
      and loss (a custom metric must be one too); the last partial batch costs one more compile.
    * **Physical path** - pass ``evaluate(model, variables) -> float``. Each point is really pruned
      (`jaxprune.prune`) and `evaluate` is called on the smaller model and variables: use it for metrics that need
      more than one batch of logits, at the cost of a compile per point inside `evaluate`.

    Both paths give the same numbers for the same metric (within float tolerance): masking is how pruning is defined.

    Args:
      model: A zoo model (the `jaxprune.models` protocol).
      variables: Its variables.
      evaluate: ``evaluate(model, variables) -> float`` for the physical path; None for the fast path.
      data: ``(x, y)``: NHWC images and labels for the fast path (and for activation criteria).
      metric: Fast path only: ``"accuracy"`` (default), ``"loss"``, or ``metric(logits, y) -> scalar``.
      higher_is_better: For a callable metric or `evaluate` (default True); fixed for the named metrics.
      ratios: Prune ratios, strictly increasing, each in [0, 1).
      groups: Group names to scan; default every group a float ratio reaches (the prunable conv-filter groups,
        docs/design.md §3). Name `fc1` or an ImageNet stream to scan it.
      criterion: Which filters go first: one of `ALL_CRITERIA` (`l1` is the paper's). Activation criteria are
        computed from `activation_data`, default the images of `data`.
      key: PRNG key for ``criterion="random"``.
      scores: Precomputed scores ``{group: array[width]}`` instead of a criterion.
      activation_data: Images (or ``(x, y)``) for the activation criteria; the paper uses training images.
      batch_size: Fast path: examples per forward pass; None evaluates all of ``x`` at once.
      chunk: Fast path: masks evaluated per call (vmapped). None picks 1 on CPU, where a larger batch does not run
        faster per image (measured: ResNet-56 and VGG-16 at batch 32, chunk 8 costs 1.7-2x more per point), and
        8 on accelerators, where it cuts dispatch and fills the device.
      round_to: Kept-count rounding, as `make_plan`.
      min_keep: Minimum kept count, as `make_plan`.

    Returns:
      A `SensitivityResult` table (``values[i, j]`` = metric with ``groups[i]`` pruned at ``ratios[j]``).

    Raises:
      ValueError: ratios outside [0, 1), not strictly increasing or empty; neither `evaluate` nor `data`; empty or
        mismatched data; an `evaluate` or metric returning a non-scalar; unknown criterion or metric (lists the
        valid ones); an activation criterion without data; unknown or non-prunable groups; `metric` given with
        `evaluate`.
      TypeError: a model without the protocol, a non-callable `evaluate`, an `evaluate` returning a non-number,
        mistyped options.

    Example:
      >>> import numpy as np, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(8, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 8)
      >>> sens = jp.sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.5, 0.9), groups=["stage3_block1_conv1"])
      >>> sens.values.shape
      (1, 2)
    """
    t0 = time.perf_counter()
    check_prunable_model(model)
    ratios = _check_ratios(ratios)
    round_to = _check_positive_int(round_to, "round_to")
    min_keep = _check_positive_int(min_keep, "min_keep")
    chunk = (1 if jax.default_backend() == "cpu" else 8) if chunk is None else _check_positive_int(chunk, "chunk")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable(model, variables) -> float, got {type(evaluate).__name__}")
    if evaluate is None and data is None:
        raise ValueError(
            "sensitivity needs data=(x, y) for the fast masked path or evaluate(model, variables) -> float for the "
            "physical path"
        )
    if evaluate is not None and metric is not None:
        raise ValueError("metric applies to the fast path (data=) only; with evaluate= the metric is evaluate's")
    if batch_size is not None:
        batch_size = _check_positive_int(batch_size, "batch_size")
    x = y = None
    if data is not None:
        x, y = _check_data(data)
    if activation_data is None and x is not None:
        activation_data = x
    scan_groups = _scan_groups(model, groups)
    group_scores, criterion_name = _scores_for(
        model, variables, scan_groups, criterion, key, scores, activation_data, batch_size or 128
    )
    all_groups = list(model.channel_groups())

    # The plan of every point: exactly what make_plan would decide for {group: ratio}.
    keeps: list[list[tuple[int, ...]]] = []
    kept = np.zeros((len(scan_groups), len(ratios)), np.int64)
    for i, g in enumerate(scan_groups):
        row = []
        for j, p in enumerate(ratios):
            plan = plan_from_scores(all_groups, {g.name: p}, {g.name: group_scores[g.name]}, round_to=round_to,
                                    min_keep=min_keep)  # fmt: skip
            row.append(plan.keep[g.name])
            kept[i, j] = len(plan.keep[g.name])
        keeps.append(row)

    if evaluate is None:
        metric_fn, metric_name, hib = _resolve_metric(metric, higher_is_better)
        if isinstance(metric, str) or metric is None:
            yv = np.asarray(y)
            if not np.issubdtype(yv.dtype, np.integer) or yv.ndim != 1:
                raise ValueError(
                    f"metric {metric_name!r} needs integer class labels of shape (N,), got {yv.dtype} {yv.shape}"
                )
        baseline, values = _masked_scan(model, variables, x, y, scan_groups, keeps, metric_fn, batch_size, chunk)
        method = "masked"
        input_shape = (1, *tuple(int(d) for d in x.shape[1:]))
    else:
        if higher_is_better is not None and not isinstance(higher_is_better, bool):
            raise TypeError(f"higher_is_better must be a bool or None, got {type(higher_is_better).__name__}")
        hib = True if higher_is_better is None else higher_is_better
        metric_name = "evaluate"
        baseline = _as_scalar(evaluate(model, variables), "evaluate")
        values = np.zeros((len(scan_groups), len(ratios)), np.float64)
        for i, g in enumerate(scan_groups):
            for j, p in enumerate(ratios):
                plan = make_plan(model, variables, prune_ratio={g.name: p}, scores={g.name: group_scores[g.name]},
                                 round_to=round_to, min_keep=min_keep)  # fmt: skip
                new_model, new_vars = prune(model, variables, plan)
                values[i, j] = _as_scalar(evaluate(new_model, new_vars), "evaluate")
        method = "physical"
        input_shape = (1, *tuple(int(d) for d in x.shape[1:])) if x is not None else default_input_shape(model)

    return SensitivityResult(
        groups=tuple(g.name for g in scan_groups),
        ratios=ratios,
        values=np.asarray(values, np.float64),
        baseline=float(baseline),
        kept=kept,
        widths={g.name: g.width for g in scan_groups},
        stages={g.name: g.stage for g in scan_groups},
        stage_groups=dict(model.stages()),
        metric=metric_name,
        higher_is_better=hib,
        criterion=criterion_name,
        method=method,
        round_to=round_to,
        min_keep=min_keep,
        input_shape=input_shape,
        model=model,
        seconds=time.perf_counter() - t0,
    )


def _masked_scan(model, variables, x, y, groups, keeps, metric_fn, batch_size, chunk):
    """Evaluates the baseline and every (group, ratio) mask through one compiled masked forward."""
    base = full_masks(model)
    n_points = 1 + sum(len(row) for row in keeps)
    n_padded = -(-n_points // chunk) * chunk
    # Point 0 is the unpruned network; padding repeats it (same shape every call, no recompile).
    stacked = {name: np.ones((n_padded, m.shape[0]), m.dtype) for name, m in base.items()}
    k = 1
    for g, row in zip(groups, keeps, strict=True):
        for keep in row:
            mask = np.zeros((g.width,), base[g.name].dtype)
            mask[list(keep)] = 1
            stacked[g.name][k] = mask
            k += 1
    fn = _scan_fn(model, metric_fn)
    n = int(x.shape[0])
    bs = n if batch_size is None else min(batch_size, n)
    batches = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    xs = [jnp.asarray(x[a:b]) for a, b in batches]
    ys = [jnp.asarray(y[a:b]) for a, b in batches]
    out = np.zeros((n_padded,), np.float64)
    for c in range(0, n_padded, chunk):
        masks = {name: jnp.asarray(m[c : c + chunk]) for name, m in stacked.items()}
        acc = np.zeros((chunk,), np.float64)
        for (a, b), xb, yb in zip(batches, xs, ys, strict=True):
            res = fn(variables, xb, yb, masks)
            if tuple(res.shape) != (chunk,):  # vmapped over the chunk: one scalar per mask
                raise ValueError(f"metric must return a scalar per evaluation, got shape {tuple(res.shape)[1:]}")
            acc += np.asarray(res, np.float64) * (b - a)
        out[c : c + chunk] = acc / n
    values = out[1:n_points].reshape(len(groups), -1) if groups else np.zeros((0, 0))
    return float(out[0]), values


# ----------------------------------------------------------------------------------------------------------------------
# Criteria comparison (paper §4.4-4.5)
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class CriteriaComparison:
    """Sensitivity scans of the same model and data under several criteria.

    Attributes:
      results: Criterion -> its `SensitivityResult` (same groups, ratios, metric and baseline).
    """

    results: Mapping[str, SensitivityResult]

    @property
    def criteria(self) -> tuple[str, ...]:
        return tuple(self.results)

    def _first(self) -> SensitivityResult:
        return next(iter(self.results.values()))

    def at(self, ratio: float) -> dict[str, dict[str, float]]:
        """``{criterion: {group: metric}}`` at one scanned ratio."""
        first = self._first()
        j = _ratio_index(first.ratios, ratio)
        return {c: {g: float(r.values[i, j]) for i, g in enumerate(r.groups)} for c, r in self.results.items()}

    def wins(self, a: str, b: str, *, ratio: float) -> tuple[int, int, int]:
        """How many groups criterion `a` leaves better off than `b` at `ratio`: (a better, b better, ties).

        Raises:
          KeyError: a criterion or ratio that was not scanned.
        """
        for c in (a, b):
            if c not in self.results:
                raise KeyError(f"criterion {c!r} was not compared; compared: {', '.join(self.results)}")
        ra, rb = self.results[a], self.results[b]
        j = _ratio_index(ra.ratios, ratio)
        da, db = ra.drop[:, j], rb.drop[:, j]
        return int(np.sum(da < db)), int(np.sum(db < da)), int(np.sum(da == db))

    def to_markdown(self, *, ratio: float, digits: int = 4) -> str:
        """A markdown table at one ratio: one row per group, one column per criterion (the metric), best in bold."""
        first = self._first()
        j = _ratio_index(first.ratios, ratio)
        crit = list(self.results)
        lines = [
            "| group | kept | " + " | ".join(crit) + " |",
            "|---|---:|" + "---:|" * len(crit),
        ]
        for i, g in enumerate(first.groups):
            vals = [float(self.results[c].values[i, j]) for c in crit]
            best = max(vals) if first.higher_is_better else min(vals)
            cells = [f"**{v:.{digits}f}**" if v == best and len(crit) > 1 else f"{v:.{digits}f}" for v in vals]
            lines.append(f"| {g} | {int(first.kept[i, j])}/{first.widths[g]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def compare_criteria(
    model,
    variables: Mapping[str, Any],
    data: tuple[Any, Any],
    *,
    criteria: Sequence[str] = ("l1", "l2", "random", "largest_l1"),
    key=None,
    activation_data=None,
    **kwargs,
) -> CriteriaComparison:
    """Runs the sensitivity scan for several criteria on the same model and data (paper §4.4 Fig. 8, §4.5 Fig. 9).

    Every scan uses the fast masked path of `sensitivity` on ``data``; they share one compiled forward, so each
    extra criterion costs only its evaluations. Activation criteria are computed once from `activation_data`
    (default the images of `data`; the paper takes them on training images and evaluates on validation data).

    Args:
      model: A zoo model.
      variables: Its variables.
      data: ``(x, y)`` evaluation batch (see `sensitivity`'s fast path for the metric).
      criteria: Criteria to compare, each in `ALL_CRITERIA`, no repeats.
      key: PRNG key, required when ``random`` is among the criteria.
      activation_data: Images for the activation criteria.
      **kwargs: Passed to `sensitivity`: ``metric``, ``higher_is_better``, ``ratios``, ``groups``, ``batch_size``,
        ``chunk``, ``round_to``, ``min_keep``.

    Returns:
      A `CriteriaComparison` with one `SensitivityResult` per criterion, in the order given.

    Raises:
      ValueError: an unknown criterion (lists the valid ones), a repeated or empty list, ``random`` without `key`,
        plus everything `sensitivity` raises.
      TypeError: `criteria` not a sequence of names, or an unsupported keyword.
    """
    allowed = {"metric", "higher_is_better", "ratios", "groups", "batch_size", "chunk", "round_to", "min_keep"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"compare_criteria got unexpected keywords {unknown}; allowed: {sorted(allowed)}")
    if isinstance(criteria, str) or not isinstance(criteria, Sequence):
        raise TypeError(f"criteria must be a sequence of criterion names, got {type(criteria).__name__} {criteria!r}")
    if not criteria:
        raise ValueError(f"criteria must name at least one criterion; valid criteria: {', '.join(ALL_CRITERIA)}")
    for c in criteria:
        _check_criterion_any(c)
    if len(set(criteria)) != len(criteria):
        raise ValueError(f"criteria must not repeat, got {list(criteria)}")
    if "random" in criteria and key is None:
        raise ValueError("criterion 'random' needs an explicit PRNG key: key=jax.random.key(seed)")
    check_prunable_model(model)
    x, _ = _check_data(data)
    act_scores: dict[str, dict[str, np.ndarray]] = {}
    wanted_act = [c for c in criteria if c in ACTIVATION_CRITERIA]
    if wanted_act:
        act_x = _activation_input(activation_data if activation_data is not None else x, "activation_data")
        if "var_l2" in wanted_act and act_x.shape[0] < 2:
            raise ValueError(f"criterion 'var_l2' needs at least 2 images, got {act_x.shape[0]}")
        scan_groups = _scan_groups(model, kwargs.get("groups"))
        stats = _activation_stats(model, variables, act_x, scan_groups, kwargs.get("batch_size") or 128)
        for c in wanted_act:
            act_scores[c] = {n: s[c] for n, s in stats.items()}
    results = {}
    for c in criteria:
        if c in act_scores:
            r = sensitivity(model, variables, data=data, scores=act_scores[c], **kwargs)
            r = dataclasses.replace(r, criterion=c)
        else:
            r = sensitivity(model, variables, data=data, criterion=c, key=key, **kwargs)
        results[c] = r
    return CriteriaComparison(results=results)


# ----------------------------------------------------------------------------------------------------------------------
# Suggesting ratios
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class RatioSuggestion:
    """Ratios chosen from a sensitivity scan, ready for `make_plan`.

    Attributes:
      prune_ratio: ``{stage or group name: ratio}`` for ``make_plan(prune_ratio=...)``; a group entry overrides its
        stage, zero ratios are left out.
      skip: Groups left unpruned (sensitive layers), for ``make_plan(skip=...)``.
      group_ratios: The effective ratio of every scanned group (0 for skipped ones).
      predicted_drop: Every pruned group's measured single-layer drop at its ratio.
      explanation: A text account of how every ratio was chosen.
      macs_fraction: Pruned / original MACs (conv + FC, `jaxprune.flops.count_macs`), or None without a model.
      params_fraction: Pruned / original parameters (`MacReport.params`), or None without a model.
      by: ``stage`` or ``group``.
    """

    prune_ratio: Mapping[str, float]
    skip: tuple[str, ...]
    group_ratios: Mapping[str, float]
    predicted_drop: Mapping[str, float]
    explanation: str
    macs_fraction: float | None = None
    params_fraction: float | None = None
    by: str = "stage"

    def plan_kwargs(self) -> dict[str, Any]:
        """``{"prune_ratio": ..., "skip": [...]}`` to splat into `jaxprune.make_plan`."""
        return {"prune_ratio": dict(self.prune_ratio), "skip": list(self.skip)}

    def __str__(self) -> str:
        return self.explanation


def _check_tolerance(tolerance) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"tolerance must be a real number >= 0 (a metric drop), got {type(tolerance).__name__}")
    t = float(tolerance)
    if not t >= 0.0 or math.isinf(t):
        raise ValueError(f"tolerance must be a finite number >= 0 (the allowed metric drop per layer), got {t!r}")
    return t


def _check_fraction(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a fraction of the original in (0, 1], got {type(v).__name__} {v!r}")
    v = float(v)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{what} must be a fraction of the original in (0, 1], got {v!r}")
    return v


def _safe_ratio(drops: np.ndarray, ratios: tuple[float, ...], tol: float) -> float:
    """Largest scanned ratio whose drop, and every smaller ratio's drop, is within `tol` (0 if none)."""
    best = 0.0
    for j, p in enumerate(ratios):
        d = drops[j]
        if not np.isfinite(d) or d > tol:
            break
        best = p
    return best


def _units(sens: SensitivityResult, by: str) -> list[tuple[str, list[str]]]:
    """(name, groups) decision units: a stage the scan fully covers, else single groups, in forward order."""
    if by == "group":
        return [(g, [g]) for g in sens.groups]
    units: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    scanned = set(sens.groups)
    for g in sens.groups:
        s = sens.stages.get(g)
        if s is not None and s in sens.stage_groups and set(sens.stage_groups[s]) <= scanned:
            if s not in seen:
                seen.add(s)
                units.append((s, [h for h in sens.groups if sens.stages.get(h) == s]))
        else:
            units.append((g, [g]))
    return units


class _Counter:
    """Exact MACs and params of any width configuration of the scanned groups, from one `count_macs` report.

    A conv or dense row costs in_dim x out_dim x a constant (MACs and kernel weights), its bias and a BN row scale
    with out_dim, and an axis's length is its unscanned channels plus ``width x repeat`` of every scanned group on it
    (several groups may sit side by side, `AxisRef.offset`). No layer reads and writes the same group, so rescaling
    each row is exact; `suggest_ratios` still checks its final answer against a direct `count_macs` call.
    """

    def __init__(self, model, input_shape, groups: Sequence[str]):
        from jaxprune.flops import count_macs

        self._count_macs = count_macs
        self.model, self.input_shape = model, input_shape
        by_name = {g.name: g for g in model.channel_groups()}
        self.width = {g: by_name[g].width for g in groups}
        report = count_macs(model, input_shape)
        self.base = (int(report.macs), int(report.params))
        # (module path..., leaf) -> {axis: [(group, repeat)]} for the scanned groups.
        where: dict[tuple[str, ...], dict[int, list[tuple[str, int]]]] = {}
        for g in groups:
            for ref in by_name[g].axes:
                if ref.path[0] == "params":
                    where.setdefault(ref.path[1:], {}).setdefault(ref.axis, []).append((g, ref.repeat))
        # Each term: (macs, params, input-axis spec, output-axis spec); a spec is (length, [(group, repeat)]) or None.
        self.terms: list[tuple[int, int, Any, Any]] = []
        for r in report.rows:
            module = tuple(r.name.split("/"))
            if r.kind in ("conv", "dense"):
                out_axis = 3 if r.kind == "conv" else 1
                axes = where.get((*module, "kernel"), {})
                spec_in = (int(r.in_width), axes[out_axis - 1]) if out_axis - 1 in axes else None
                spec_out = (int(r.out_width), axes[out_axis]) if out_axis in axes else None
                self.terms.append((int(r.macs), int(r.weights), spec_in, spec_out))
                self.terms.append((0, int(r.params - r.weights), None, spec_out))  # bias
            elif r.kind == "bn":
                axes = where.get((*module, "scale"), {})
                self.terms.append((0, int(r.params), None, (int(r.out_width), axes[0]) if 0 in axes else None))
            else:
                self.terms.append((0, int(r.params), None, None))

    def _dim(self, spec, widths: Mapping[str, int]) -> tuple[int, int]:
        if spec is None:
            return 1, 1
        length, members = spec
        new = length + sum((widths.get(g, self.width[g]) - self.width[g]) * rep for g, rep in members)
        return new, length

    def __call__(self, widths: Mapping[str, int]) -> tuple[int, int]:
        macs = params = 0
        for m, p, spec_in, spec_out in self.terms:
            n_in, d_in = self._dim(spec_in, widths)
            n_out, d_out = self._dim(spec_out, widths)
            num, den = n_in * n_out, d_in * d_out
            macs += m * num // den
            params += p * num // den
        return macs, params


def suggest_ratios(
    sens: SensitivityResult,
    *,
    tolerance: float | None = None,
    by: str = "stage",
    target_macs: float | None = None,
    target_params: float | None = None,
    max_skip: float = 0.25,
    sensitive: str = "skip",
    model=None,
    input_shape: tuple[int, ...] | None = None,
) -> RatioSuggestion:
    """Chooses prune ratios from a sensitivity scan: the paper's manual step (§3.2, §4.2) as a function.

    **Tolerance mode** (`tolerance` alone). A group's *safe ratio* is the largest scanned ratio at which its
    single-layer drop, and the drop at every smaller scanned ratio, is within `tolerance` (in the metric's units:
    0.01 = one point of accuracy). With ``by="stage"`` one ratio is chosen per stage (layers of one feature-map size
    behave alike, paper §3.2): the largest scanned ratio that at most ``floor(max_skip x stage size)`` of the stage's
    groups cannot take. Those sensitive groups are skipped (``sensitive="skip"``, the paper's presets) or pruned at
    their own safe ratio (``sensitive="less"``). A stage is named only when the scan covered all its groups; other
    groups are decided one by one. With ``by="group"`` every group gets its own safe ratio. Either way every pruned
    group's measured single-layer drop stays within `tolerance`.

    **Budget mode** (`target_macs` or `target_params`: what may remain, as a fraction of the original). Starting from
    nothing pruned, the step (raising one stage's or group's ratio to any larger scanned ratio) with the least
    increase of summed single-layer drop per MAC (or parameter) saved is taken until the budget is met, then steps
    that can be undone while staying within budget without raising the summed drop are undone (greedy, not a global
    optimum). A negative drop (pruning that happened to help) counts as zero: single-layer gains are within noise
    and do not add up. Counts are exact: the
    analytic counter `jaxprune.flops.count_macs` (conv + FC MACs; `MacReport.params`) at the widths that
    `make_plan` would produce. With `tolerance` as well, a group is only ever given ratios whose drop is within it
    (in stage mode, groups that cannot take the stage's ratio are skipped).

    Single-layer drops add up only approximately when several layers are pruned together; fine-tune afterwards, as
    the paper does.

    Args:
      sens: A `sensitivity` result.
      tolerance: Allowed single-layer metric drop, >= 0. Required unless a budget is given.
      by: ``stage`` (one ratio per stage, the paper's way) or ``group``.
      target_macs: MACs budget as a fraction of the original, in (0, 1].
      target_params: Parameter budget as a fraction of the original, in (0, 1].
      max_skip: Tolerance mode, ``by="stage"``: fraction of a stage's groups that may be left out, in [0, 1).
      sensitive: ``skip`` or ``less`` (see above).
      model: Model for the counts; default the scanned one.
      input_shape: NHWC input shape for MACs; default the scan's.

    Returns:
      A `RatioSuggestion`: ``make_plan(model, variables, **s.plan_kwargs())`` applies it.

    Raises:
      ValueError: tolerance < 0 or missing without a budget; both budgets; a budget outside (0, 1] or one no scanned
        ratio reaches (says the smallest reachable); unknown `by` or `sensitive`; `max_skip` outside [0, 1).
      TypeError: `sens` not a `SensitivityResult`, mistyped numbers.

    Example:
      >>> import numpy as np, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(8, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 8)
      >>> sens = jp.sensitivity(m, v, data=(x, y), metric="loss", ratios=(0.25, 0.5))
      >>> s = jp.suggest_ratios(sens, tolerance=0.05)
      >>> plan = jp.make_plan(m, v, **s.plan_kwargs())
    """
    if not isinstance(sens, SensitivityResult):
        raise TypeError(f"sens must be a SensitivityResult (from jaxprune.sensitivity), got {type(sens).__name__}")
    if by not in ("stage", "group"):
        raise ValueError(f"unknown by={by!r}; valid: 'stage', 'group'")
    if sensitive not in ("skip", "less"):
        raise ValueError(f"unknown sensitive={sensitive!r}; valid: 'skip', 'less'")
    if isinstance(max_skip, bool) or not isinstance(max_skip, numbers.Real):
        raise TypeError(f"max_skip must be a fraction in [0, 1), got {type(max_skip).__name__}")
    if not 0.0 <= float(max_skip) < 1.0:
        raise ValueError(f"max_skip must be a fraction in [0, 1), got {max_skip!r}")
    tol = None if tolerance is None else _check_tolerance(tolerance)
    if target_macs is not None and target_params is not None:
        raise ValueError("give one budget: target_macs= or target_params=, not both")
    budget = None
    if target_macs is not None:
        budget = ("macs", _check_fraction(target_macs, "target_macs"))
    elif target_params is not None:
        budget = ("params", _check_fraction(target_params, "target_params"))
    if tol is None and budget is None:
        raise ValueError(
            "suggest_ratios needs tolerance= (allowed single-layer metric drop) or a budget (target_macs= / "
            "target_params=)"
        )
    model = model if model is not None else sens.model
    input_shape = tuple(input_shape) if input_shape is not None else sens.input_shape
    if budget is not None and model is None:
        raise ValueError("budget mode counts MACs and params and needs the model: pass model=")

    drops = sens.drop
    gi = {g: i for i, g in enumerate(sens.groups)}
    units = _units(sens, by)
    word = "higher" if sens.higher_is_better else "lower"
    lines = [
        f"Sensitivity of {sens.metric} ({word} is better; unpruned {sens.baseline:.4g}) to pruning one group at a time "
        f"by criterion {sens.criterion}: {len(sens.groups)} groups x {len(sens.ratios)} ratios "
        f"({', '.join(f'{p:g}' for p in sens.ratios)})."
    ]
    group_ratio: dict[str, float] = dict.fromkeys(sens.groups, 0.0)
    mapping: dict[str, float] = {}
    skip: list[str] = []

    if budget is None:
        lines.append(f"Tolerance: every pruned group's single-layer drop <= {tol:g}.")
        safe = {g: _safe_ratio(drops[gi[g]], sens.ratios, tol) for g in sens.groups}
        for name, members in units:
            if len(members) == 1 and name == members[0]:
                g = name
                if safe[g] > 0:
                    group_ratio[g] = mapping[g] = safe[g]
                    lines.append(
                        f"- {g}: ratio {safe[g]:g} (drop {drops[gi[g], _ratio_index(sens.ratios, safe[g])]:.4g})"
                    )
                else:
                    skip.append(g)
                    lines.append(f"- {g}: skipped (drop {drops[gi[g], 0]:.4g} > {tol:g} already at {sens.ratios[0]:g})")
                continue
            allowed = math.floor(max_skip * len(members))
            p_stage = 0.0
            for p in sens.ratios:
                if sum(safe[g] < p for g in members) <= allowed:
                    p_stage = p
            weak = [g for g in members if safe[g] < p_stage]
            if p_stage == 0.0:
                skip.extend(members)
                lines.append(
                    f"- {name}: not pruned: more than {allowed} of its {len(members)} groups exceed the tolerance "
                    f"at {sens.ratios[0]:g}"
                )
                continue
            mapping[name] = p_stage
            for g in members:
                group_ratio[g] = p_stage
            text = f"- {name}: ratio {p_stage:g} for {len(members) - len(weak)} of {len(members)} groups"
            if weak:
                parts = []
                for g in weak:
                    if sensitive == "less" and safe[g] > 0:
                        mapping[g] = group_ratio[g] = safe[g]
                        parts.append(f"{g} pruned less, at {safe[g]:g}")
                    else:
                        skip.append(g)
                        group_ratio[g] = 0.0
                        parts.append(f"{g} skipped (safe ratio {safe[g]:g})")
                text += "; sensitive: " + ", ".join(parts)
            lines.append(text)
    else:
        kind, frac = budget
        counter = _Counter(model, input_shape, list(sens.groups))
        idx = 0 if kind == "macs" else 1
        total0 = counter.base[idx]
        target = frac * total0
        lines.append(
            f"Budget: {kind} <= {frac:g} x original ({total0:,} -> at most {math.floor(target):,}), least summed "
            f"single-layer drop (greedy)" + (f", every pruned group's drop <= {tol:g}." if tol is not None else ".")
        )
        levels = (0.0, *sens.ratios)
        kept_at = {g: {0.0: sens.widths[g], **{p: int(sens.kept[gi[g], j]) for j, p in enumerate(sens.ratios)}}
                   for g in sens.groups}  # fmt: skip

        def drop_at(g: str, p: float) -> float:
            return 0.0 if p == 0.0 else float(drops[gi[g], _ratio_index(sens.ratios, p)])

        def unit_groups_at(members, p):  # {group: ratio} for a unit at level p (tolerance may exclude some)
            out = {}
            for g in members:
                q = p
                if tol is not None and p > 0 and not drop_at(g, p) <= tol:
                    q = 0.0
                out[g] = q
            return out

        unit_level = {name: 0.0 for name, _ in units}
        members_of = dict(units)

        def config():
            r = {}
            for name, lvl in unit_level.items():
                r.update(unit_groups_at(members_of[name], lvl))
            return r

        def total(ratios_by_group):
            return counter({g: kept_at[g][p] for g, p in ratios_by_group.items()})[idx]

        def cost(ratios_by_group):
            # A single-layer gain is within noise and does not add up: it counts as no drop.
            return sum(max(drop_at(g, p), 0.0) for g, p in ratios_by_group.items())

        def usable(name, lvl):
            if by == "group" and tol is not None and lvl > 0:
                return drop_at(name, lvl) <= tol
            return True

        current = config()
        cur_total, cur_cost = total(current), cost(current)
        while cur_total > target:
            best = None
            for name, _ in units:
                for lvl in levels:
                    if lvl <= unit_level[name] or not usable(name, lvl):
                        continue
                    old = unit_level[name]
                    unit_level[name] = lvl
                    cand = config()
                    unit_level[name] = old
                    t = total(cand)
                    saved = cur_total - t
                    if saved <= 0:
                        continue
                    dc = cost(cand) - cur_cost
                    score = (dc / saved, -saved)
                    if best is None or score < best[0]:
                        best = (score, name, lvl, t, cost(cand))
            if best is None:
                smallest = {name: max([lv for lv in levels if usable(name, lv)]) for name, _ in units}
                for name, lv in smallest.items():
                    unit_level[name] = lv
                reach = total(config()) / total0
                raise ValueError(
                    f"{kind} budget {frac:g} cannot be reached with the scanned ratios"
                    + (" within the tolerance" if tol is not None else "")
                    + f": the most pruning gives {reach:.4f} of the original"
                )
            _, name, lvl, cur_total, cur_cost = best
            unit_level[name] = lvl
        # Undo what the budget does not need (any step back that keeps the budget and does not raise the summed
        # drop), costliest units first; each accepted step lowers a level, so this ends.
        improved = True
        while improved:
            improved = False
            for name, _ in sorted(units, key=lambda u: -cost(unit_groups_at(u[1], unit_level[u[0]]))):
                for lvl in levels:
                    if lvl >= unit_level[name] or not usable(name, lvl):
                        continue
                    old = unit_level[name]
                    unit_level[name] = lvl
                    cand = config()
                    if total(cand) <= target and cost(cand) <= cur_cost:
                        cur_total, cur_cost = total(cand), cost(cand)
                        improved = True
                        break
                    unit_level[name] = old
        for name, members in units:
            lvl = unit_level[name]
            per = unit_groups_at(members, lvl)
            for g, q in per.items():
                group_ratio[g] = q
            if lvl == 0.0:
                lines.append(f"- {name}: not pruned")
                continue
            out = [g for g, q in per.items() if q == 0.0]
            if len(members) == 1 and name == members[0]:
                mapping[name] = lvl
                lines.append(f"- {name}: ratio {lvl:g} (drop {drop_at(name, lvl):.4g})")
            else:
                mapping[name] = lvl
                skip.extend(out)
                text = f"- {name}: ratio {lvl:g} (summed drop {sum(drop_at(g, q) for g, q in per.items()):.4g})"
                if out:
                    text += f"; skipped (drop above tolerance): {', '.join(out)}"
                lines.append(text)

    predicted = {g: float(drops[gi[g], _ratio_index(sens.ratios, p)]) for g, p in group_ratio.items() if p > 0}
    macs_frac = params_frac = None
    if model is not None and input_shape is not None:
        from jaxprune.flops import count_macs

        widths = {g: int(sens.kept[gi[g], _ratio_index(sens.ratios, p)]) for g, p in group_ratio.items() if p > 0}
        r0 = count_macs(model, input_shape)
        r1 = count_macs(model.with_widths(widths) if widths else model, input_shape)
        if budget is not None and counter(widths) != (r1.macs, r1.params):
            raise RuntimeError(  # pragma: no cover - the counts are multilinear in the widths
                f"internal error: interpolated counts {counter(widths)} differ from count_macs "
                f"{(r1.macs, r1.params)}; please report"
            )
        macs_frac = r1.macs / r0.macs
        params_frac = r1.params / r0.params
        lines.append(
            f"Result: MACs {r0.macs:,} -> {r1.macs:,} ({macs_frac:.4f} of the original; conv + FC "
            f"multiply-accumulates), params {r0.params:,} -> {r1.params:,} ({params_frac:.4f}; every params leaf)."
        )
    lines.append(f"Summed single-layer drop of the pruned groups: {sum(predicted.values()):.4g}.")
    return RatioSuggestion(
        prune_ratio=mapping,
        skip=tuple(skip),
        group_ratios=group_ratio,
        predicted_drop=predicted,
        explanation="\n".join(lines),
        macs_fraction=macs_frac,
        params_fraction=params_frac,
        by=by,
    )
