"""`SensitivityResult`: the table of a single-group sensitivity scan."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprune._table import markdown_table


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
        """A markdown table: one row per group, one column per ratio, the metric in the cells.

        With ``round_to`` > 1 each cell also gives the filters kept (``0.9500 (8)``): rounding can land several ratios
        on one width, and those cells then measured the same network.
        """
        rows = [("group", "width", *(f"{p:g}" for p in self.ratios))]
        for i, g in enumerate(self.groups):
            cells = [f"{v:.{digits}f}" for v in self.values[i]]
            if self.round_to > 1:
                cells = [f"{c} ({int(k)})" for c, k in zip(cells, self.kept[i], strict=True)]
            rows.append((g, str(self.widths[g]), *cells))
        note = (
            f"; cells give the filters kept, rounded to multiples of {self.round_to} (equal counts: the same network)"
            if self.round_to > 1
            else ""
        )
        return (
            f"{self.metric} with one group pruned (criterion {self.criterion}, {self.method} path); "
            f"unpruned: {self.baseline:.{digits}f}{note}\n\n{markdown_table(rows)}"
        )


def _ratio_index(ratios: Sequence[float], ratio: float) -> int:
    for j, p in enumerate(ratios):
        if math.isclose(p, float(ratio), rel_tol=0, abs_tol=1e-12):
            return j
    raise KeyError(f"ratio {ratio!r} was not scanned; scanned ratios: {', '.join(f'{p:g}' for p in ratios)}")
