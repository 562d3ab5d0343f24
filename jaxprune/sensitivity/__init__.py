"""Sensitivity analysis (paper §3.2, §4.4-4.5): prune one group at a time, evaluate, and propose ratios from it.

This module owns the single-group sensitivity scan (`sensitivity`), the activation-based criteria of paper §4.5
(`activation_scores`), the scan over several criteria on the same model and data (`compare_criteria`), and the step
the paper does by hand after looking at the curves: choosing per-stage ratios and a skip list, or the ratios that
reach a MACs or parameter budget (`suggest_ratios`). It returns tables, never plots (`jaxprune.viz` draws them), and
it never slices variables itself: the physical path calls `jaxprune.prune`, the fast path uses the masking reference
(`jaxprune.masking`, docs/design.md §4) with the masks as traced inputs, so one compile serves every group and ratio.

The package is split by decision: `result` (the table), `scan` (`sensitivity`), `activations` (`activation_scores`),
`criteria` (`compare_criteria`) and `suggest` (`suggest_ratios`); every public name is importable from
``jaxprune.sensitivity``.
"""

from __future__ import annotations

from jaxprune.sensitivity._common import ACTIVATION_CRITERIA, ALL_CRITERIA, DEFAULT_RATIOS, METRICS, scan_trace_count
from jaxprune.sensitivity.activations import activation_scores
from jaxprune.sensitivity.criteria import CriteriaComparison, compare_criteria
from jaxprune.sensitivity.result import SensitivityResult
from jaxprune.sensitivity.scan import sensitivity
from jaxprune.sensitivity.suggest import RatioSuggestion, suggest_ratios

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
