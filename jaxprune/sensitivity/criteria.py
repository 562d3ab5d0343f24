"""Sensitivity scans of one model under several criteria (`compare_criteria`, paper §4.4-4.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune._table import markdown_table
from jaxprune.models.base import check_prunable_model
from jaxprune.sensitivity._common import (
    ACTIVATION_CRITERIA,
    ALL_CRITERIA,
    _check_criterion_any,
    _check_data,
    _scan_groups,
)
from jaxprune.sensitivity.activations import _activation_input, _activation_stats
from jaxprune.sensitivity.result import SensitivityResult, _ratio_index
from jaxprune.sensitivity.scan import sensitivity


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
        rows = [("group", "kept", *crit)]
        for i, g in enumerate(first.groups):
            vals = [float(self.results[c].values[i, j]) for c in crit]
            best = max(vals) if first.higher_is_better else min(vals)
            cells = [f"**{v:.{digits}f}**" if v == best and len(crit) > 1 else f"{v:.{digits}f}" for v in vals]
            rows.append((g, f"{int(first.kept[i, j])}/{first.widths[g]}", *cells))
        return markdown_table(rows)


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
      criteria: Criteria to compare, each in `ALL_CRITERIA` (the data-free `jaxprune.CRITERIA`, `fpgm` and
        `bn_scale` included, then the activation criteria), no repeats. Taylor scores need labels: scan them with
        ``sensitivity(..., scores=jaxprune.taylor_scores(model, variables, x, labels))``.
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
