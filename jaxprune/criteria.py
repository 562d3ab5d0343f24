"""Criteria beyond the paper's norms: FPGM, BN scale (data-free) and first-order Taylor (data-driven).

This module owns three filter scores that pruning papers compare against, each higher = more important = kept
first, one vector per channel group:

* `fpgm` (He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration",
  CVPR 2019): how far a filter is from the others of its layer.
* `bn_scale` (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017): |gamma| of
  the BatchNorm after the filter.
* `taylor` (Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017):
  the first-order change of the loss when a channel is removed, from one jitted gradient of the masked forward.

`make_plan(criterion=...)` accepts the data-free ones (`DATA_FREE_CRITERIA`); Taylor scores need data and go in
through ``make_plan(scores=taylor_scores(model, variables, x, labels))``. It does not select filters (that is
`jaxprune.strategies`) and does not slice variables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import ChannelGroup, flatten_variables
from jaxprune.masking import masked_forward
from jaxprune.models.base import check_prunable_model

__all__ = [
    "DATA_CRITERIA",
    "DATA_FREE_CRITERIA",
    "bn_scale_scores",
    "fpgm_scores",
    "score_group",
    "taylor_scores",
]

#: Data-free criteria of this module, accepted by `make_plan(criterion=...)` next to `jaxprune.scoring.CRITERIA`.
DATA_FREE_CRITERIA = ("fpgm", "bn_scale")

#: Criteria that need data: computed by a function here and passed to `make_plan(scores=...)`.
DATA_CRITERIA = ("taylor",)


def _filters(kernel, group: ChannelGroup, input_keep: Sequence[tuple[int, np.ndarray]] = ()) -> np.ndarray:
    """The group's filters as rows of a float64 matrix ``(width, weights per filter)``.

    The scored axis may hold more than the group (`AxisRef.offset`) or `repeat` blocks per channel: a filter is then
    the group's span, its blocks side by side.
    """
    ref = group.scored
    k = np.asarray(kernel, dtype=np.float64)
    for axis, idx in input_keep:  # the greedy strategy: leave out inputs already removed
        k = np.take(k, idx, axis=axis)
    k = np.moveaxis(k, ref.axis, 0)
    start = ref.offset or 0
    k = k[start : start + group.width * ref.repeat].reshape(ref.repeat, group.width, -1)
    return np.transpose(k, (1, 0, 2)).reshape(group.width, -1)


def _checked_scored(flat, group: ChannelGroup):
    if group.scored is None:
        raise ValueError(f"group {group.name!r} has no scored kernel (prunable=False)")
    if group.scored.path not in flat:
        raise ValueError(f"group {group.name!r}: scored kernel {group.scored.name} not found in variables")
    return flat[group.scored.path]


def _fpgm(flat, group: ChannelGroup, input_keep=()) -> np.ndarray:
    f = _filters(_checked_scored(flat, group), group, input_keep)
    if not np.isfinite(f).all():
        raise ValueError(
            f"group {group.name!r}: scored kernel {group.scored.name} holds NaN or inf; refusing to pick filters "
            "from non-finite weights"
        )
    sq = np.einsum("ij,ij->i", f, f)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)  # |a - b|^2 from the Gram matrix: O(width^2) memory only
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0)).sum(axis=1)


def _bn_scale_ref(group: ChannelGroup):
    """The producer that is a BatchNorm scale: a `params` leaf named `scale` whose module has a running mean."""
    paths = {ref.path for ref in group.producers}
    found = [
        ref
        for ref in group.producers
        if ref.path[0] == "params" and ref.path[-1] == "scale" and ("batch_stats", *ref.path[1:-1], "mean") in paths
    ]
    if not found:
        raise ValueError(
            f"criterion 'bn_scale' needs a BatchNorm after the filters, and group {group.name!r} has none among its "
            f"producers ({', '.join(r.name for r in group.producers)}); use another criterion for this group"
        )
    if len(found) > 1:
        raise ValueError(
            f"criterion 'bn_scale': group {group.name!r} has {len(found)} BatchNorms "
            f"({', '.join(r.name for r in found)}), so no single BN follows its filters (a residual stream); "
            "skip it or use another criterion"
        )
    return found[0]


def _bn_scale(flat, group: ChannelGroup) -> np.ndarray:
    ref = _bn_scale_ref(group)
    if ref.path not in flat:
        raise ValueError(f"group {group.name!r}: BatchNorm scale {ref.name} not found in variables")
    g = np.moveaxis(np.asarray(flat[ref.path], dtype=np.float64), ref.axis, 0).reshape(-1)
    start = ref.offset or 0
    g = np.abs(g[start : start + group.width * ref.repeat].reshape(ref.repeat, group.width)).sum(axis=0)
    if not np.isfinite(g).all():
        raise ValueError(f"group {group.name!r}: BatchNorm scale {ref.name} holds NaN or inf")
    return g


def score_group(
    flat: Mapping[tuple[str, ...], Any],
    group: ChannelGroup,
    *,
    criterion: str,
    input_keep: Sequence[tuple[int, np.ndarray]] = (),
) -> np.ndarray:
    """One group's `fpgm` or `bn_scale` scores (float64), as `jaxprune.scoring.score_group` does for the norms.

    `input_keep` (the greedy strategy) leaves removed input slices out of FPGM's filters; it does not change a BN
    scale, which depends on no inputs.

    Raises:
      ValueError: an unknown criterion, a missing kernel or BN, several BNs (`bn_scale`), NaN/inf.
    """
    if criterion == "fpgm":
        return _fpgm(flat, group, input_keep)
    if criterion == "bn_scale":
        return _bn_scale(flat, group)
    raise ValueError(f"unknown criterion {criterion!r} for jaxprune.criteria; valid: {', '.join(DATA_FREE_CRITERIA)}")


def fpgm_scores(variables: Mapping[str, Any], groups: Iterable[ChannelGroup]) -> dict[str, np.ndarray]:
    """FPGM: per filter, the sum of Euclidean distances to every other filter of its group (He et al., CVPR 2019).

    FPGM prunes the filters nearest the geometric median of a layer's filters, as the most replaceable. The paper
    does not solve for the median: it restricts it to the filters themselves and ranks filter i by
    ``sum_j ||F_i - F_j||_2`` over the other filters j of the layer, and that sum is what this returns; the smallest
    sums are pruned first. A filter is the scored kernel's slice for that output channel, flattened over
    (kh, kw, c_in); computed in float64 on the host from the Gram matrix.

    Args:
      variables: Variables dict (`params` at least).
      groups: Channel groups; every group with a scored kernel is scored.

    Returns:
      ``{group name: np.ndarray[width]}`` (float64).

    Raises:
      ValueError: a missing kernel, or NaN/inf in one.

    Example:
      >>> import numpy as np
      >>> from jaxprune import AxisRef, ChannelGroup
      >>> k = AxisRef(("params", "conv", "kernel"), 3)
      >>> g = ChannelGroup("conv", 3, producers=(k,), consumers=(), scored=k)
      >>> kernel = np.array([0.0, 1.0, 3.0]).reshape(1, 1, 1, 3)  # filters at 0, 1 and 3 on a line
      >>> fpgm_scores({"params": {"conv": {"kernel": kernel}}}, [g])["conv"]
      array([4., 3., 5.])
    """
    flat = flatten_variables(variables)
    return {g.name: _fpgm(flat, g) for g in groups if g.scored is not None}


def bn_scale_scores(variables: Mapping[str, Any], groups: Iterable[ChannelGroup]) -> dict[str, np.ndarray]:
    """Network slimming's criterion: |gamma| of the BatchNorm following the filters (Liu et al., ICCV 2017).

    The BN is the group's producer named ``.../scale`` in `params` whose module also has a running mean in
    `batch_stats` (a `flax.linen.BatchNorm`). The paper trains with an L1 penalty on gamma first; this scores any
    weights as they are.

    Args:
      variables: Variables dict (`params` and `batch_stats`).
      groups: The groups to score; each must have exactly one BatchNorm among its producers.

    Returns:
      ``{group name: np.ndarray[width]}`` (float64).

    Raises:
      ValueError: a group with no BatchNorm, or with several (a residual stream), naming the group; NaN/inf.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> convs = [g for g in m.channel_groups() if g.kind == "conv"]
      >>> bn_scale_scores(v, convs)["stage1_block1_conv1"].shape
      (16,)
    """
    flat = flatten_variables(variables)
    return {g.name: _bn_scale(flat, g) for g in groups}


# -- Taylor ------------------------------------------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Per-example softmax cross-entropy for integer labels (the default loss of `taylor_scores`)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


_GRADS: dict[tuple, Any] = {}


def _mask_grad(model, train: bool, loss_fn):
    key = (id(model), train, loss_fn)
    hit = _GRADS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]

    forward = masked_forward(model, train=train)  # the masking reference: masks are traced inputs

    def loss(masks, variables, x, labels):
        out = forward(variables, x, masks)
        logits = out[0] if train else out  # train=True also returns the new batch statistics
        return jnp.mean(loss_fn(logits, labels))

    fn = jax.jit(jax.grad(loss))
    if len(_GRADS) > 32:
        _GRADS.clear()
    _GRADS[key] = (model, fn)
    return fn


def _positions(model, groups: Sequence[ChannelGroup], shape: tuple[int, ...]) -> dict[str, int]:
    """H * W of each group's masked activation: the output size of the module owning its scored kernel (or, for a
    group without one, its first producer with a counted row); 1 for a dense output."""
    from jaxprune.flops import count_macs  # flops imports the zoo; only needed here

    rows = {r.name: r for r in count_macs(model, (1, *shape[1:])).rows}
    out = {}
    for g in groups:
        refs = ([g.scored] if g.scored is not None else []) + list(g.producers)
        row = next((rows["/".join(r.path[1:-1])] for r in refs if "/".join(r.path[1:-1]) in rows), None)
        if row is None:
            raise ValueError(f"taylor_scores: cannot find the output size of group {g.name!r} among the MAC rows")
        out[g.name] = 1 if row.out_hw is None else int(row.out_hw[0]) * int(row.out_hw[1])
    return out


def taylor_scores(
    model,
    variables: Mapping[str, Any],
    x,
    labels,
    *,
    train: bool = False,
    loss_fn: Callable | None = None,
) -> dict[str, np.ndarray]:
    """First-order Taylor scores (Molchanov et al., ICLR 2017), from one jitted gradient of the masked forward.

    Per channel c of every group: ``|mean over images n and positions (h, w) of a[n,h,w,c] * dL/da[n,h,w,c]|``,
    with ``a`` the channel's post-BN activation (where `jaxprune.masked_forward` applies the group's mask) and ``L``
    the batch-mean loss; the absolute value is taken after averaging. Since the mask ``m`` multiplies ``a``,
    ``dL/dm_c = sum over n, h, w of a * dL/d(m a)`` at ``m = 1``, summed over the 1/N of the mean, so the score is
    ``|dL/dm_c| / (H * W)``: one `jax.grad` with respect to the masks (traced inputs) gives every group at once.
    For a group masked at several places (a residual stream) the derivative adds them up. Higher = kept first.

    Args:
      model: A zoo model (the `jaxprune.models` protocol, with ``masks=`` in its forward).
      variables: Its variables.
      x: NHWC images (one pass over all of them: mind memory).
      labels: Integer class labels ``(N,)`` for the default loss, or whatever `loss_fn` takes.
      train: Run BN on batch statistics (as during training, where the paper computes the scores) instead of the
        running averages.
      loss_fn: ``loss_fn(logits, labels) -> per-example losses (N,)``; default softmax cross-entropy
        (`cross_entropy`). ``L`` is their mean.

    Returns:
      ``{group name: np.ndarray[width]}`` (float64) for every group, usable as ``make_plan(scores=...)``.

    Raises:
      TypeError: a model without the protocol, a non-callable `loss_fn`, a non-bool `train`.
      ValueError: `x` not NHWC, labels of another length than `x` or not integers (default loss), non-finite scores.

    Example:
      >>> import numpy as np, jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m, seed=0)
      >>> x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
      >>> s = taylor_scores(m, v, x, np.array([0, 1]))
      >>> plan = jp.make_plan(m, v, prune_ratio=0.5, scores=s, meta={"scores": "taylor"})
      >>> plan.new_widths["stage1_block1_conv1"]
      8
    """
    check_prunable_model(model)
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {type(train).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (logits, labels) -> per-example losses, got {type(loss_fn)}")
    if not hasattr(x, "shape") or len(x.shape) != 4:
        raise ValueError(f"taylor_scores: x must be NHWC images of rank 4, got shape {getattr(x, 'shape', None)}")
    if x.shape[0] < 1:
        raise ValueError("taylor_scores: x holds no images")
    if loss_fn is None:
        labels_arr = np.asarray(labels)
        if labels_arr.shape != (x.shape[0],) or not np.issubdtype(labels_arr.dtype, np.integer):
            raise ValueError(
                f"taylor_scores: labels must be {x.shape[0]} integer class labels (shape ({x.shape[0]},)) for the "
                f"default cross-entropy, got shape {labels_arr.shape} dtype {labels_arr.dtype}"
            )
    groups = list(model.channel_groups())
    dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)  # a float mask even for uint8 images
    masks = {g.name: jnp.ones((g.width,), dtype) for g in groups}
    grads = _mask_grad(model, train, loss_fn or cross_entropy)(masks, variables, x, labels)
    hw = _positions(model, groups, tuple(x.shape))
    out = {}
    for g in groups:
        s = np.abs(np.asarray(grads[g.name], dtype=np.float64)) / hw[g.name]
        if not np.isfinite(s).all():
            raise ValueError(f"taylor_scores: group {g.name!r} got non-finite scores (a NaN/inf loss or gradient)")
        out[g.name] = s
    return out
