"""The pipelines behind the `jaxprune` command line, as library functions.

This module owns the end-to-end demo (`run_demo`: train on the digits data, sensitivity scan, suggested ratios,
prune, fine-tune, measure, report) and the other steps the command line offers as one call each (`prune_to_folder`,
`report_text`, `train_to_folder`, `finetune_to_folder`, `sensitivity_from_checkpoint`), with their settings
(`Recipe`) and the checkpoint-folder convention (`CHECKPOINT_FILE`, `checkpoint_file`, `output_folder`). Every step calls the public API (`make_plan`, `preset`, `prune`, `count_macs`,
`xla_flops`, `sensitivity`, `suggest_ratios`, `jaxprune.train`, `jaxprune.checkpoint`, `jaxprune.viz`); this module
adds only orchestration, files and words. It does not parse command lines (that is `jaxprune.cli`) and owns no
algorithm. optax, matplotlib and scikit-learn are imported inside the functions that need them, so
``import jaxprune`` stays light.

The package is split by decision: `pruning` (``prune``, ``report``), `digits` (the recipe, training and fine-tuning
with checkpoints), `scan` (the sensitivity step), `run` (the demo's stages) and `report` (its tables and
``report.md``); every public name is importable from ``jaxprune.demo``.
"""

from __future__ import annotations

from jaxprune.demo._common import CHECKPOINT_FILE, checkpoint_file, output_folder, parse_ratios
from jaxprune.demo.digits import (
    DIGITS_MODELS,
    FULL_RECIPE,
    QUICK_RECIPE,
    Recipe,
    StepOutcome,
    finetune_to_folder,
    train_to_folder,
)
from jaxprune.demo.pruning import PruneOutcome, prune_to_folder, report_text
from jaxprune.demo.run import DemoResult, run_demo
from jaxprune.demo.scan import sensitivity_from_checkpoint

__all__ = [
    "CHECKPOINT_FILE",
    "DIGITS_MODELS",
    "FULL_RECIPE",
    "QUICK_RECIPE",
    "DemoResult",
    "PruneOutcome",
    "Recipe",
    "StepOutcome",
    "checkpoint_file",
    "finetune_to_folder",
    "output_folder",
    "parse_ratios",
    "prune_to_folder",
    "report_text",
    "run_demo",
    "sensitivity_from_checkpoint",
    "train_to_folder",
]
