"""jaxprune: structured filter pruning for JAX/Flax after Li et al., "Pruning Filters for Efficient ConvNets".

`import jaxprune` loads jax, flax and numpy only; optax, matplotlib, scikit-learn and torch are imported by the
modules that need them (`jaxprune.train`, `jaxprune.viz`, `jaxprune.data`, the benchmarks) when those are used.
"""

from jaxprune import models, presets
from jaxprune.checkpoint import Checkpoint, load_checkpoint, read_checkpoint_header, save_checkpoint
from jaxprune.demo import DemoResult, run_demo
from jaxprune.flops import MacReport, WidthAlignmentWarning, compare, cost_report, count_macs, xla_flops
from jaxprune.groups import AxisRef, ChannelGroup, check_groups
from jaxprune.latency import LatencyComparison, LatencyResult, benchmark_latency, benchmark_many, compare_latency
from jaxprune.masking import full_masks, mask_dropped, masked_forward, plan_masks
from jaxprune.plan import PruningPlan
from jaxprune.presets import preset
from jaxprune.scoring import CRITERIA, filter_norms, l1_filter_norms
from jaxprune.sensitivity import (
    ACTIVATION_CRITERIA,
    CriteriaComparison,
    RatioSuggestion,
    SensitivityResult,
    activation_scores,
    compare_criteria,
    sensitivity,
    suggest_ratios,
)
from jaxprune.strategies import STRATEGIES, kept_count, make_plan, resolve_ratios, select_top
from jaxprune.surgery import prune, prune_like_params
from jaxprune.trace import TracedModel, describe_groups, format_groups, nnx_variables, trace_groups, trace_model
from jaxprune.utils import abstract_variables, count_leaves, init_variables, random_variables

__version__ = "0.1.0"

__all__ = [
    "LatencyComparison",
    "LatencyResult",
    "WidthAlignmentWarning",
    "benchmark_latency",
    "benchmark_many",
    "compare_latency",
    "ACTIVATION_CRITERIA",
    "CriteriaComparison",
    "RatioSuggestion",
    "SensitivityResult",
    "activation_scores",
    "compare_criteria",
    "sensitivity",
    "suggest_ratios",
    "CRITERIA",
    "STRATEGIES",
    "AxisRef",
    "ChannelGroup",
    "Checkpoint",
    "MacReport",
    "PruningPlan",
    "__version__",
    "abstract_variables",
    "check_groups",
    "compare",
    "cost_report",
    "count_leaves",
    "count_macs",
    "filter_norms",
    "full_masks",
    "init_variables",
    "kept_count",
    "l1_filter_norms",
    "load_checkpoint",
    "make_plan",
    "mask_dropped",
    "masked_forward",
    "models",
    "plan_masks",
    "preset",
    "presets",
    "prune",
    "prune_like_params",
    "random_variables",
    "DemoResult",
    "run_demo",
    "read_checkpoint_header",
    "resolve_ratios",
    "save_checkpoint",
    "select_top",
    "xla_flops",
    "TracedModel",
    "describe_groups",
    "format_groups",
    "nnx_variables",
    "trace_groups",
    "trace_model",
]
