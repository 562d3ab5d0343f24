"""jaxprune: structured filter pruning for JAX/Flax after Li et al., "Pruning Filters for Efficient ConvNets".

`import jaxprune` loads the core only: groups, scoring, criteria, global_rank, strategies, plan, surgery, masking,
flops, presets, models and utils (with jax, flax.linen and numpy). Every other public name (checkpoints, the demo, latency, sensitivity,
tracing, training, data, figures) is imported the first time it is used, through a module-level `__getattr__`
(PEP 562): ``jaxprune.run_demo`` or ``jaxprune.trace_model`` work as before, and optax, matplotlib, scikit-learn,
torch and `flax.nnx` are loaded only by the modules that need them.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

from jaxprune import models, presets
from jaxprune.criteria import DATA_CRITERIA, DATA_FREE_CRITERIA, bn_scale_scores, fpgm_scores, taylor_scores
from jaxprune.flops import MacReport, WidthAlignmentWarning, compare, cost_report, count_macs, xla_flops
from jaxprune.global_rank import NORMALIZATIONS, SCOPES
from jaxprune.groups import AxisRef, ChannelGroup, check_groups
from jaxprune.masking import full_masks, mask_dropped, masked_forward, plan_masks
from jaxprune.plan import PruningPlan
from jaxprune.presets import preset
from jaxprune.scoring import CRITERIA, filter_norms, l1_filter_norms
from jaxprune.strategies import STRATEGIES, kept_count, make_plan, resolve_ratios, select_top
from jaxprune.surgery import prune, prune_like_params
from jaxprune.utils import abstract_variables, count_leaves, init_variables, random_variables

if _typing.TYPE_CHECKING:  # the lazy names, for type checkers and editors
    from jaxprune.checkpoint import Checkpoint, load_checkpoint, read_checkpoint_header, save_checkpoint
    from jaxprune.demo import DemoResult, run_demo
    from jaxprune.latency import (
        LatencyComparison,
        LatencyResult,
        benchmark_latency,
        benchmark_many,
        compare_latency,
    )
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
    from jaxprune.trace import (
        TracedModel,
        UntracedChannelsWarning,
        describe_groups,
        format_groups,
        nnx_variables,
        trace_groups,
        trace_model,
    )

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first use.
_LAZY = {
    **dict.fromkeys(("Checkpoint", "load_checkpoint", "read_checkpoint_header", "save_checkpoint"), "checkpoint"),
    **dict.fromkeys(("DemoResult", "run_demo"), "demo"),
    **dict.fromkeys(
        ("LatencyComparison", "LatencyResult", "benchmark_latency", "benchmark_many", "compare_latency"), "latency"
    ),
    **dict.fromkeys(
        (
            "ACTIVATION_CRITERIA",
            "CriteriaComparison",
            "RatioSuggestion",
            "SensitivityResult",
            "activation_scores",
            "compare_criteria",
            "sensitivity",
            "suggest_ratios",
        ),
        "sensitivity",
    ),
    **dict.fromkeys(
        (
            "TracedModel",
            "UntracedChannelsWarning",
            "describe_groups",
            "format_groups",
            "nnx_variables",
            "trace_groups",
            "trace_model",
        ),
        "trace",
    ),
}

#: Submodules outside the core, reachable as attributes (``jaxprune.train``) and imported on first use.
_LAZY_SUBMODULES = ("checkpoint", "cli", "data", "demo", "latency", "paper", "trace", "train", "viz")

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
    "DATA_CRITERIA",
    "DATA_FREE_CRITERIA",
    "NORMALIZATIONS",
    "SCOPES",
    "STRATEGIES",
    "AxisRef",
    "ChannelGroup",
    "Checkpoint",
    "MacReport",
    "PruningPlan",
    "__version__",
    "abstract_variables",
    "bn_scale_scores",
    "check_groups",
    "compare",
    "cost_report",
    "count_leaves",
    "count_macs",
    "filter_norms",
    "fpgm_scores",
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
    "taylor_scores",
    "xla_flops",
    "TracedModel",
    "UntracedChannelsWarning",
    "describe_groups",
    "format_groups",
    "nnx_variables",
    "trace_groups",
    "trace_model",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f"jaxprune.{_LAZY[name]}"), name)
    elif name in _LAZY_SUBMODULES:
        value = _importlib.import_module(f"jaxprune.{name}")
    else:
        raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    own = (n for n in globals() if not n.startswith("_") or n.startswith("__"))
    return sorted({*own, *__all__, *_LAZY_SUBMODULES})


class _Package(_types.ModuleType):
    """Keeps ``jaxprune.sensitivity`` the function: importing the submodule `jaxprune.sensitivity` (from anywhere, at
    any time) binds the module to that attribute of the package, which would hide the function of the same name."""

    def __setattr__(self, name: str, value) -> None:
        if name == "sensitivity" and isinstance(value, _types.ModuleType):
            value = value.sensitivity
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
