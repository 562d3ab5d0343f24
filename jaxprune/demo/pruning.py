"""``jaxprune prune`` and ``jaxprune report`` as functions: `prune_to_folder`, `report_text`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxprune.demo._common import (
    CHECKPOINT_FILE,
    _check_choice,
    _check_int,
    _describe,
    _load_checkpoint,
    _pct,
    _same_architecture,
    _write_text,
    output_folder,
)


# ----------------------------------------------------------------------------------------------------------------------
# prune
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PruneOutcome:
    """What `prune_to_folder` did.

    Attributes:
      model: The unpruned model.
      new_model: The pruned model.
      plan: The `PruningPlan` applied.
      before: `count_macs` of the unpruned model.
      after: `count_macs` of the pruned model.
      files: Name -> path of every file written (``plan``, ``comparison``, ``checkpoint``).
      source: Where the weights came from (a checkpoint folder, or ``random (seed N)``).
      text: The comparison table and a summary, as printed by the CLI.
    """

    model: Any
    new_model: Any
    plan: Any
    before: Any
    after: Any
    files: Mapping[str, Path]
    source: str
    text: str


def _zoo_model(name: str):
    from jaxprune import models

    return models.get(_check_choice(name, "model", models.available()))


def report_text(
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: int | None = None,
    include_bn: bool = False,
    exclude_projections: bool = False,
    xla: bool = False,
) -> str:
    """The per-layer MAC and parameter table of a zoo model or of a checkpoint's model (docs/paper.md §3 conventions).

    Args:
      model: A zoo model name (``resnet56``...); exactly one of `model` and `checkpoint`.
      checkpoint: A jaxprune checkpoint folder.
      input_size: Input height and width; default the model's own (32, or 224 for the ImageNet ResNets).
      include_bn: List BatchNorm rows as well.
      exclude_projections: Leave 1x1 projection convs out (the paper's ResNet-34 convention).
      xla: Add XLA's FLOP count of the compiled inference forward (`jaxprune.xla_flops`; compiles the model).

    Returns:
      The table (`jaxprune.MacReport.format`), its totals and conventions.

    Raises:
      ValueError: neither or both of `model` and `checkpoint`, an unknown model (lists the valid ones), a bad input
        size, or a folder that is not a jaxprune checkpoint.
      FileNotFoundError: the checkpoint folder does not exist.
    """
    from jaxprune import models
    from jaxprune.flops import XLA_CONVENTION, count_macs, xla_flops
    from jaxprune.utils import abstract_variables

    if (model is None) == (checkpoint is None):
        raise ValueError("report needs exactly one of model= (a zoo name) and checkpoint= (a folder)")
    if checkpoint is not None:
        m, variables, _ = _load_checkpoint(checkpoint)
        source = f"checkpoint {os.fspath(checkpoint)}"
    else:
        m, variables, source = _zoo_model(model), None, f"zoo model {model}"
    shape = models.default_input_shape(m)
    if input_size is not None:
        shape = (1, _check_int(input_size, "input size", minimum=1), int(input_size), shape[-1])
    rep = count_macs(m, shape, exclude_projections=exclude_projections)
    lines = [f"{_describe(m)} ({source}), input {shape}", rep.format(include_bn=include_bn)]
    if xla:
        v = variables if variables is not None else abstract_variables(m, shape)
        flops = xla_flops(m, v, shape)
        lines.append(f"XLA flops: {flops:,.0f} ({flops / (2 * rep.macs):.3f} x 2*MACs); {XLA_CONVENTION}")
    return "\n".join(lines)


def prune_to_folder(
    out: str | os.PathLike,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    preset: str | None = None,
    prune_ratio: float | Mapping[str, float] | None = None,
    strategy: str = "independent",
    criterion: str = "l1",
    round_to: int = 1,
    skip: Sequence[str] = (),
    seed: int = 0,
) -> PruneOutcome:
    """Prunes a model by a paper preset or by ratios and writes the result to a folder (paper §3, §4).

    The weights are those of `checkpoint`, or seeded random weights (`jaxprune.random_variables`) of the zoo
    `model`. The plan comes from `jaxprune.preset` or `jaxprune.make_plan`; `jaxprune.prune` slices the variables
    (and a checkpoint's optimizer state); `jaxprune.count_macs` and `jaxprune.compare` count what was saved.

    Files in `out`, which becomes a checkpoint folder: `CHECKPOINT_FILE` (the pruned model and variables, its plan
    history grown by this plan; `jaxprune.load_checkpoint` reads it, and ``jaxprune report/finetune --checkpoint OUT``
    take the folder), ``plan.json`` (the plan) and ``comparison.txt`` (per-layer MACs and params before -> after,
    with the convention).

    Args:
      out: Output folder (created; must not be a file).
      model: Zoo model name; needed without `checkpoint`, and with one it must name the checkpoint's architecture.
      checkpoint: A jaxprune checkpoint folder whose weights are pruned.
      preset: A paper preset (`jaxprune.presets.available`); exactly one of `preset` and `prune_ratio`.
      prune_ratio: A float for every conv-filter group, or ``{stage or group: ratio}``.
      strategy: ``independent`` or ``greedy``.
      criterion: Filter criterion for ratio pruning (`jaxprune.CRITERIA`; presets use ``l1``).
      round_to: Round kept widths to a multiple (8 helps XLA:CPU speed).
      skip: Groups left unpruned (ratio pruning only).
      seed: Seed of the random weights (and of the ``random`` criterion).

    Returns:
      A `PruneOutcome`; ``.text`` is what the CLI prints.

    Raises:
      ValueError: unknown model, preset, strategy, criterion or group (each lists the valid ones), neither or both
        of `preset` and `prune_ratio`, a preset for another model, a bad ratio, or a folder that is not a jaxprune
        checkpoint.
      FileNotFoundError: the checkpoint folder does not exist.
      FileExistsError: `out` exists and is a file.
    """
    import jax

    from jaxprune.flops import compare, count_macs
    from jaxprune.presets import available as preset_names
    from jaxprune.presets import preset as make_preset
    from jaxprune.strategies import STRATEGIES, make_plan
    from jaxprune.surgery import prune
    from jaxprune.utils import random_variables

    if (preset is None) == (prune_ratio is None):
        raise ValueError("prune needs exactly one of preset= (a paper preset) and prune_ratio= (ratios)")
    _check_choice(strategy, "strategy", STRATEGIES)
    if preset is not None:
        _check_choice(preset, "preset", tuple(preset_names()))
    seed = _check_int(seed, "seed", minimum=0)
    if model is None and checkpoint is None:
        raise ValueError("prune needs model= (a zoo name) or checkpoint= (a folder)")
    named = _zoo_model(model) if model is not None else None
    folder = output_folder(out, what="--out")
    ckpt = None
    if checkpoint is not None:
        m, variables, ckpt = _load_checkpoint(checkpoint)
        if named is not None and not _same_architecture(named, m):
            raise ValueError(
                f"--model {model} does not match the checkpoint's model {_describe(m)} in {os.fspath(checkpoint)!r}"
            )
        source = f"checkpoint {os.fspath(checkpoint)}"
    else:
        m = named
        variables = random_variables(m, seed=seed)
        source = f"random weights (seed {seed})"

    if preset is not None:
        plan = make_preset(preset, m, variables, strategy=strategy, round_to=round_to)
    else:
        key = jax.random.key(seed) if criterion == "random" else None
        plan = make_plan(
            m,
            variables,
            prune_ratio=prune_ratio,
            strategy=strategy,
            criterion=criterion,
            key=key,
            skip=tuple(skip),
            round_to=round_to,
        )
    plan = dataclasses.replace(plan, meta={**plan.meta, "source": source})  # keeps made_for: the plan stays bound
    new_m, new_v = prune(m, variables, plan)
    shape = tuple(count_macs(m).input_shape)
    before, after = count_macs(m, shape), count_macs(new_m, shape)

    files = {
        "checkpoint": folder / CHECKPOINT_FILE,
        "plan": folder / "plan.json",
        "comparison": folder / "comparison.txt",
    }
    plan.save(files["plan"])
    how = f"preset {preset}" if preset is not None else f"ratios {plan.meta.get('prune_ratio')}"
    table = compare(before, after)
    _write_text(files["comparison"], f"{_describe(m)} pruned by {how} ({source})\n\n{plan.summary()}\n\n{table}")
    _save_pruned(folder, new_m, new_v, plan, ckpt, source)

    text = (
        f"{_describe(m)} pruned by {how}, strategy {strategy}, {source}\n\n{table}\n\n"
        f"MACs {before.macs:,} -> {after.macs:,} ({_pct(before.macs, after.macs)} fewer); "
        f"params {before.params:,} -> {after.params:,} ({_pct(before.params, after.params)} fewer)\n"
        + _unaligned_note(plan)
        + "\n".join(f"wrote {p}" for p in files.values())
    )
    return PruneOutcome(
        model=m, new_model=new_m, plan=plan, before=before, after=after, files=files, source=source, text=text
    )


def _unaligned_note(plan) -> str:
    """A line naming pruned widths that are not multiples of 8 (XLA:CPU runs them slowly; docs/perf-notes.md, 2)."""
    from jaxprune.flops import WIDTH_MULTIPLE

    odd = {g: w for g, w in plan.new_widths.items() if w != plan.widths[g] and w % WIDTH_MULTIPLE}
    if not odd:
        return ""
    shown = ", ".join(f"{g} = {w}" for g, w in list(odd.items())[:4]) + (" ..." if len(odd) > 4 else "")
    return (
        f"note: {len(odd)} pruned width(s) not a multiple of {WIDTH_MULTIPLE} ({shown}); XLA:CPU can run such widths "
        f"no faster than the original: add --round-to {WIDTH_MULTIPLE}\n"
    )


def _save_pruned(folder: Path, new_model, new_variables, plan, ckpt, source: str) -> Path:
    """Writes the pruned model as a checkpoint folder; the plan history grows by `plan`."""
    from jaxprune.checkpoint import save_checkpoint

    folder = output_folder(folder)
    path = folder / CHECKPOINT_FILE
    history = (*ckpt.plans, plan) if ckpt is not None else (plan,)
    metadata = {**(ckpt.metadata if ckpt is not None else {}), "pruned_from": source}
    # The optimizer state is not carried: the paper retrains pruned networks with a fresh optimizer (§4, lr 0.001).
    save_checkpoint(path, new_model, new_variables, plans=history, metadata=metadata)
    return path
