"""The activation-based criteria of paper §4.5 (`activation_scores`), from the conv outputs before BN."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.groups import ChannelGroup
from jaxprune.models.base import check_prunable_model
from jaxprune.scoring import CRITERIA
from jaxprune.sensitivity._common import _TRACES, ACTIVATION_CRITERIA, _check_images, _scan_groups
from jaxprune.strategies import _check_positive_int


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
