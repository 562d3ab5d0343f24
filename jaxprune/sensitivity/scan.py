"""The single-group sensitivity scan (`sensitivity`): the fast masked path and the physical path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.masking import full_masks
from jaxprune.models import default_input_shape
from jaxprune.models.base import check_prunable_model
from jaxprune.scoring import _check_criterion, filter_norms
from jaxprune.sensitivity._common import (
    _TRACES,
    ACTIVATION_CRITERIA,
    DEFAULT_RATIOS,
    METRICS,
    _check_criterion_any,
    _check_data,
    _check_ratios,
    _scan_groups,
)
from jaxprune.sensitivity.activations import _activation_input, _activation_stats
from jaxprune.sensitivity.result import SensitivityResult
from jaxprune.strategies import _check_positive_int, make_plan, plan_from_scores
from jaxprune.surgery import prune


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
    progress: bool = False,
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
      compile plus ``ceil((distinct networks + 1) / chunk)`` calls, whatever the groups and ratios (ratios that keep
      the same filters of a group, and a ratio that keeps all of them, are one network); later scans of the
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
      progress: Fast path: a progress bar on stderr over the networks evaluated.

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
        baseline, values = _masked_scan(
            model, variables, x, y, scan_groups, keeps, metric_fn, batch_size, chunk, progress=progress
        )
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


def _masked_scan(model, variables, x, y, groups, keeps, metric_fn, batch_size, chunk, progress=False):
    """Evaluates the baseline and every (group, ratio) mask through one compiled masked forward.

    Each distinct network is evaluated once: a point that keeps every filter is the unpruned network, and ratios that
    keep the same filters of a group (``round_to`` lands 40, 60 and 80 % of 16 filters all on 8) are one network.
    """
    base = full_masks(model)
    # Row 0 is the unpruned network; padding repeats it (same shape every call, no recompile).
    rows: dict[tuple[str, tuple[int, ...]], int] = {}
    point_rows = []
    for g, row in zip(groups, keeps, strict=True):
        for keep in row:
            if len(keep) == g.width:
                point_rows.append(0)
                continue
            point_rows.append(rows.setdefault((g.name, tuple(keep)), len(rows) + 1))
    n_padded = -(-(len(rows) + 1) // chunk) * chunk
    stacked = {name: np.ones((n_padded, m.shape[0]), m.dtype) for name, m in base.items()}
    for (name, keep), r in rows.items():
        mask = np.zeros_like(stacked[name][r])
        mask[list(keep)] = 1
        stacked[name][r] = mask
    fn = _scan_fn(model, metric_fn)
    n = int(x.shape[0])
    bs = n if batch_size is None else min(batch_size, n)
    batches = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    xs = [jnp.asarray(x[a:b]) for a, b in batches]
    ys = [jnp.asarray(y[a:b]) for a, b in batches]
    out = np.zeros((n_padded,), np.float64)
    from tqdm.auto import tqdm

    with tqdm(total=n_padded, desc="sensitivity", unit="net", disable=not progress, dynamic_ncols=True) as bar:
        for c in range(0, n_padded, chunk):
            masks = {name: jnp.asarray(m[c : c + chunk]) for name, m in stacked.items()}
            acc = np.zeros((chunk,), np.float64)
            for (a, b), xb, yb in zip(batches, xs, ys, strict=True):
                res = fn(variables, xb, yb, masks)
                if tuple(res.shape) != (chunk,):  # vmapped over the chunk: one scalar per mask
                    raise ValueError(f"metric must return a scalar per evaluation, got shape {tuple(res.shape)[1:]}")
                acc += np.asarray(res, np.float64) * (b - a)
            out[c : c + chunk] = acc / n
            bar.update(chunk)
    values = out[point_rows].reshape(len(groups), -1) if groups else np.zeros((0, 0))
    return float(out[0]), values
