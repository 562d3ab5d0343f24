"""The pipelines behind the `jaxprune` command line, as library functions.

This module owns the end-to-end demo (`run_demo`: train on the digits data, sensitivity scan, suggested ratios,
prune, fine-tune, measure, report) and the other steps the command line offers as one call each (`prune_to_folder`,
`report_text`, `train_to_folder`, `finetune_to_folder`, `sensitivity_from_checkpoint`), with their settings
(`Recipe`) and the checkpoint-folder convention (`CHECKPOINT_FILE`, `checkpoint_file`, `output_folder`). Every step calls the public API (`make_plan`, `preset`, `prune`, `count_macs`,
`xla_flops`, `sensitivity`, `suggest_ratios`, `jaxprune.train`, `jaxprune.checkpoint`, `jaxprune.viz`); this module
adds only orchestration, files and words. It does not parse command lines (that is `jaxprune.cli`) and owns no
algorithm. optax, matplotlib and scikit-learn are imported inside the functions that need them, so
``import jaxprune`` stays light.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------------------------------------------------
# Small validated helpers
# ----------------------------------------------------------------------------------------------------------------------
def parse_ratios(text: str) -> dict[str, float]:
    """Parses a ratio mapping written as ``NAME=RATIO,NAME=RATIO`` (the CLI's ``--ratios``).

    Names are stage names (``stage1``...) or group names; they are checked against a model later, by
    `jaxprune.make_plan`, which lists the valid ones. A ratio is the fraction of filters removed, in [0, 1).

    Args:
      text: e.g. ``"stage1=0.6,stage2=0.3"``; spaces around items, names and numbers are ignored.

    Returns:
      ``{name: ratio}`` in the order written.

    Raises:
      TypeError: `text` is not a str.
      ValueError: an empty text or item, an item without exactly one ``=``, an empty name, a ratio that is not a
        number or lies outside [0, 1), or a name given twice. The message quotes the offending item.

    Example:
      >>> parse_ratios("stage1=0.6, stage2=0.3")
      {'stage1': 0.6, 'stage2': 0.3}
    """
    if not isinstance(text, str):
        raise TypeError(f"ratios must be a str like 'stage1=0.6,stage2=0.3', got {type(text).__name__}")
    if not text.strip():
        raise ValueError("ratios is empty; write NAME=RATIO pairs separated by commas, e.g. 'stage1=0.6,stage2=0.3'")
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"ratios {text!r} has an empty item; write NAME=RATIO pairs separated by single commas")
        if item.count("=") != 1:
            raise ValueError(f"ratios item {item!r} is malformed; expected NAME=RATIO, e.g. 'stage1=0.6'")
        name, _, value = (s.strip() for s in item.partition("="))
        if not name:
            raise ValueError(f"ratios item {item!r} has no name; expected NAME=RATIO, e.g. 'stage1=0.6'")
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"ratios item {item!r}: {value!r} is not a number; a ratio is in [0, 1)") from None
        if not 0.0 <= p < 1.0:  # also refuses nan
            raise ValueError(f"ratios item {item!r}: ratio {value} is outside [0, 1) (the fraction of filters removed)")
        if name in out:
            raise ValueError(f"ratios names {name!r} twice; give each stage or group once")
        out[name] = p
    return out


def output_folder(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Creates (if needed) and returns an output folder, refusing a path that exists as something else.

    Args:
      path: The folder.
      what: How error messages name it (e.g. ``--out``).

    Returns:
      The folder as a `Path`.

    Raises:
      TypeError: `path` is not a str or path.
      FileExistsError: `path` (or a parent) exists and is not a folder.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{what} must be a path, got {type(path).__name__}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{what} {str(p)!r} exists and is a file, not a folder; choose another path")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"{what} {str(p)!r}: {str(parent)!r} exists and is a file, not a folder")
            break
    p.mkdir(parents=True, exist_ok=True)
    return p


def _check_choice(value, what: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")
    return value


def _check_int(value, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _pct(before: float, after: float) -> str:
    return f"{100.0 * (before - after) / before:.1f} %" if before else "-"


def _write_text(path: Path, text: str) -> None:
    from jaxprune.plan import atomic_write_text

    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


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


#: The file a CLI checkpoint folder holds (`jaxprune.checkpoint.save_checkpoint` format).
CHECKPOINT_FILE = "checkpoint.ckpt"


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file of a checkpoint folder (one holding `CHECKPOINT_FILE`), or `path` itself if it is a file.

    Args:
      path: A folder written by ``jaxprune train``/``prune``/``finetune`` (or `run_demo`'s ``baseline``/``pruned``),
        or a checkpoint file.

    Returns:
      The path of the checkpoint file (not yet validated: `jaxprune.load_checkpoint` checks its contents).

    Raises:
      TypeError: `path` is not a str or path.
      FileNotFoundError: nothing exists at `path`.
      ValueError: `path` is a folder without a checkpoint file (not a jaxprune checkpoint folder).
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"checkpoint must be a folder path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint folder {str(p)!r} does not exist")
    if p.is_dir():
        f = p / CHECKPOINT_FILE
        if not f.is_file():
            raise ValueError(
                f"{str(p)!r} is not a jaxprune checkpoint folder: it holds no {CHECKPOINT_FILE} "
                "(write one with 'jaxprune train' or jaxprune.save_checkpoint)"
            )
        return f
    return p


def _load_checkpoint(path):
    """(model, variables, Checkpoint) from a jaxprune checkpoint folder or file."""
    from jaxprune.checkpoint import load_checkpoint

    c = load_checkpoint(checkpoint_file(path))
    return c.model, c.variables, c


def _describe(model) -> str:
    family = getattr(model, "family", type(model).__name__)
    depth = getattr(model, "depth", None)
    label = {"vgg": "VGG", "resnet_cifar": "ResNet", "resnet_imagenet": "ResNet"}.get(family, family)
    return f"{label}-{depth}" if depth else label


def _same_architecture(a, b) -> bool:
    return getattr(a, "family", None) == getattr(b, "family", None) and getattr(a, "depth", None) == getattr(
        b, "depth", None
    )


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
    from jaxprune.plan import PruningPlan
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
    plan = PruningPlan(keep=plan.keep, widths=plan.widths, meta={**plan.meta, "source": source})
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
    """A line naming pruned widths that are not multiples of 8 (XLA:CPU runs them slowly; docs/perf-notes.md, surprise 2)."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Training on the digits data, with a checkpoint after every epoch
# ----------------------------------------------------------------------------------------------------------------------
#: Zoo models the digits pipeline trains: the CIFAR-size ones (32x32x3 inputs). VGG is about 8x the MACs of ResNet-20.
DIGITS_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg11", "vgg13", "vgg16", "vgg19")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Settings of the digits pipeline (`run_demo`, `train_to_folder`, `finetune_to_folder`).

    Attributes:
      epochs: Training epochs (`jaxprune.train.paper_sgd`: lr divided by 10 at 50 % and 75 %).
      batch_size: Training batch.
      lr: Initial training learning rate.
      augment: `jaxprune.train.fit` augmentation (None, ``"crop"``; digits must not be mirrored).
      nesterov: Nesterov momentum (`jaxprune.train.paper_sgd`).
      weight_decay: Coupled weight decay (the paper's is 1e-4; 5e-4 trains the small digits set better).
      label_smoothing: `jaxprune.train.fit` label smoothing.
      finetune_epochs: Fine-tuning epochs after pruning.
      finetune_lr: Initial fine-tuning learning rate, divided by 10 at 50 % and 75 % of the fine-tuning (the paper
        retrains at a constant 0.001 for 40 epochs; a few epochs need a larger rate that then decays).
      scan_images: Training images the sensitivity scan evaluates (the test split is kept for the report).
      scan_ratios: Ratios of the sensitivity scan.
      target_macs: MACs budget (fraction of the original) for `suggest_ratios`' budget mode, the default way.
      tolerance: Allowed single-layer accuracy drop for `suggest_ratios`' tolerance mode (the paper's way).
      latency_batch_sizes: Batch sizes timed.
      latency_repeats: Timed calls per model and batch size.
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    augment: str | None = None
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    finetune_epochs: int = 3
    finetune_lr: float = 0.02
    scan_images: int = 256
    scan_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    target_macs: float = 0.6
    tolerance: float = 0.02
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20

    def training(self, seed: int) -> dict[str, Any]:
        """The part of the recipe a trained checkpoint must match to be reused or resumed (JSON-ready)."""
        return {
            "data": "digits",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "augment": self.augment,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "label_smoothing": self.label_smoothing,
            "seed": seed,
        }


#: `run_demo`'s default recipe (about 3 minutes for ResNet-20 on a 2-core CPU).
FULL_RECIPE = Recipe()
#: `run_demo(quick=True)`: the same pipeline, shorter (CI).
QUICK_RECIPE = Recipe(
    epochs=4,
    finetune_epochs=2,
    scan_images=128,
    scan_ratios=(0.25, 0.5, 0.75),
    latency_batch_sizes=(1, 32),
    latency_repeats=5,
)


def _digits_model(name: str):
    from jaxprune import models

    if not isinstance(name, str):
        raise TypeError(f"model must be a zoo model name (str), got {type(name).__name__}")
    if name in models.available() and name not in DIGITS_MODELS:
        raise ValueError(
            f"model {name!r} is an ImageNet model (224x224 inputs); the digits pipeline trains the CIFAR-size models: "
            f"{', '.join(DIGITS_MODELS)}"
        )
    return models.get(_check_choice(name, "model", DIGITS_MODELS))


def _check_digits_model(model) -> None:
    from jaxprune import models

    shape = models.default_input_shape(model)
    if shape[1:] != (32, 32, 3) or getattr(model, "num_classes", None) != 10:
        raise ValueError(
            f"{_describe(model)} takes {shape[1:]} inputs and {getattr(model, 'num_classes', '?')} classes; the digits "
            "data are 32x32x3 images of 10 classes"
        )


def _load_data():
    from jaxprune.data import load_digits

    return load_digits()


def _json_ready(obj):
    import json

    return json.loads(json.dumps(obj, default=float))


def _quiet_log(*_args, **_kwargs) -> None:
    return None


def _train_with_checkpoints(
    folder: Path,
    model,
    data,
    recipe: Recipe,
    *,
    seed: int,
    progress: bool,
    log,
    on_mismatch: str,
):
    """Trains `model` from scratch, or resumes / reuses the checkpoint in `folder` if it was made by the same recipe.

    A checkpoint is written after every epoch (atomically), with the recipe, the epochs done and the history in its
    metadata, so an interrupted run (Ctrl-C) leaves the last complete epoch and the same call resumes from it.

    Returns:
      ``(state, history, status)`` with status ``trained``, ``resumed`` or ``reused``.
    """
    from jaxprune import train
    from jaxprune.checkpoint import load_checkpoint, save_checkpoint

    path = folder / CHECKPOINT_FILE
    spe = train.steps_per_epoch(data, recipe.batch_size)
    tx = train.paper_sgd(
        epochs=recipe.epochs,
        steps_per_epoch=spe,
        learning_rate=recipe.lr,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    wanted = _json_ready(recipe.training(seed))
    state, history, status = None, [], "trained"
    if path.exists():
        reason = None
        try:
            ckpt = load_checkpoint(path, model=model, tx=tx)
            info = ckpt.metadata.get("training", {})
            if info.get("recipe") != wanted:
                reason = f"it was trained with {info.get('recipe')}, this run asks for {wanted}"
            elif ckpt.step % spe:
                reason = f"its step {ckpt.step} is not at the end of an epoch"
        except ValueError as e:
            reason = _one_line_text(e)
        if reason is None:
            state, history = ckpt.train_state(), list(info.get("history", []))
            done = ckpt.step // spe
            status = "reused" if done >= recipe.epochs else "resumed"
            log(
                f"  {status} {path} ({done}/{recipe.epochs} epochs"
                + (f", test accuracy {history[-1]['test_accuracy']:.4f})" if history and status == "reused" else ")")
            )
        elif on_mismatch == "error":
            raise FileExistsError(
                f"--out {str(folder)!r} already holds a checkpoint this run cannot continue ({reason}); choose "
                "another --out or remove it"
            )
        else:
            log(f"  not reusing {path}: {reason}; training from scratch")
    if state is None:
        from jaxprune.utils import init_variables

        state = train.TrainState.create(model, init_variables(model, seed=seed), tx, seed=seed)
    done = int(state.step) // spe
    if done >= recipe.epochs:
        return state, history, status

    def save(st, record):
        history.append(_json_ready(record))
        k = record["step"] // spe
        meta = {"training": {"recipe": wanted, "epochs_done": k, "complete": k >= recipe.epochs, "history": history}}
        save_checkpoint(path, st, metadata=meta)

    try:
        state, _ = train.fit(
            state,
            data,
            epochs=recipe.epochs - done,
            batch_size=recipe.batch_size,
            seed=seed,
            augment=recipe.augment,
            label_smoothing=recipe.label_smoothing,
            progress=progress,
            callback=save,
        )
    except KeyboardInterrupt:
        k = history[-1]["epoch"] if history else done
        where = f"{path} holds epoch {k}/{recipe.epochs}" if path.exists() else "no checkpoint was written yet"
        log(f"\ninterrupted: {where}; run the same command again to resume")
        raise
    return state, history, status


def _finetune_tx(lr: float, epochs: int, steps_per_epoch: int, recipe: Recipe):
    """The fine-tuning optimizer: the training one (`jaxprune.train.sgd`) with `lr` divided by 10 at 50 % and 75 %."""
    from jaxprune import train

    schedule = train.step_schedule(lr, epochs * steps_per_epoch)
    return train.sgd(schedule, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)


def _one_line_text(e) -> str:
    return " ".join(str(e).split())


@dataclasses.dataclass(frozen=True, eq=False)
class StepOutcome:
    """What `train_to_folder`, `finetune_to_folder` and `sensitivity_from_checkpoint` did.

    Attributes:
      text: The summary the CLI prints.
      files: Name -> path of every file written.
      numbers: The figures of the summary (accuracies, epochs, ...), JSON-ready.
      result: The main object produced (a `jaxprune.train.TrainState`, or a `SensitivityResult`).
    """

    text: str
    files: Mapping[str, Path]
    numbers: Mapping[str, Any]
    result: Any = None


def train_to_folder(
    out: str | os.PathLike,
    *,
    model: str = "resnet20",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> StepOutcome:
    """Trains a zoo model on the digits data with the paper's recipe; a checkpoint after every epoch (docs/paper.md §7).

    SGD with momentum 0.9 and weight decay 1e-4, lr divided by 10 at 50 % and 75 % of training
    (`jaxprune.train.paper_sgd`). ``out/checkpoint.ckpt`` is rewritten atomically after each epoch: Ctrl-C leaves
    the last complete epoch, and calling again with the same arguments resumes from it (bit-identical on CPU).

    Args:
      out: Checkpoint folder (created).
      model: One of `DIGITS_MODELS`.
      epochs: Default `FULL_RECIPE.epochs`.
      lr: Initial learning rate; default `FULL_RECIPE.lr`.
      batch_size: Default `FULL_RECIPE.batch_size`.
      seed: Initialization and data-order seed.
      progress: Show a progress bar.
      log: ``log(str)`` for status lines (e.g. `print`); default silent.

    Returns:
      A `StepOutcome` whose `result` is the trained `jaxprune.train.TrainState`.

    Raises:
      ValueError: unknown or ImageNet model, epochs/batch size < 1, lr <= 0.
      FileExistsError: `out` is a file, or holds a checkpoint of another model or recipe.
      KeyboardInterrupt: interrupted; the checkpoint of the last complete epoch stays.
    """
    from jaxprune import train

    log = log or _quiet_log
    m = _digits_model(model)
    recipe = dataclasses.replace(
        FULL_RECIPE,
        epochs=FULL_RECIPE.epochs if epochs is None else _check_int(epochs, "epochs", minimum=1),
        lr=FULL_RECIPE.lr if lr is None else _check_positive(lr, "lr"),
        batch_size=FULL_RECIPE.batch_size if batch_size is None else _check_int(batch_size, "batch size", minimum=1),
    )
    seed = _check_int(seed, "seed", minimum=0)
    folder = output_folder(out, what="--out")
    data = _load_data()
    log(
        f"training {_describe(m)} on digits ({len(data.x_train)} train / {len(data.x_test)} test images), {recipe.epochs} epochs"
    )
    state, _, status = _train_with_checkpoints(
        folder, m, data, recipe, seed=seed, progress=progress, log=log, on_mismatch="error"
    )
    ev = train.evaluate(state, data.x_test, data.y_test)
    path = folder / CHECKPOINT_FILE
    nums = {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"], "epochs": recipe.epochs, "status": status}
    text = (
        f"{_describe(m)}: test accuracy {ev['accuracy']:.4f} (loss {ev['loss']:.4f}) after {recipe.epochs} epochs "
        f"({status})\nwrote {path}"
    )
    return StepOutcome(text=text, files={"checkpoint": path}, numbers=nums, result=state)


def _check_positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number > 0, got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return float(value)


def finetune_to_folder(
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> StepOutcome:
    """Fine-tunes a checkpoint's (pruned) model on the digits data (docs/paper.md §7: retraining after pruning).

    The paper retrains pruned networks at a constant lr of 0.001 for 40 epochs; on the digits data a few epochs at
    `Recipe.finetune_lr`, divided by 10 at 50 % and 75 % of the fine-tuning, recover the accuracy (same SGD as
    training, fresh optimizer state). The plan history of the checkpoint is kept, and ``out/checkpoint.ckpt`` is
    rewritten after every epoch.

    Args:
      out: Checkpoint folder for the fine-tuned model (may be the source folder).
      checkpoint: The checkpoint folder (or file) to start from.
      epochs: Default `FULL_RECIPE.finetune_epochs`.
      lr: Initial learning rate (then divided by 10 at 50 % and 75 %); default `FULL_RECIPE.finetune_lr`.
      batch_size: Default `FULL_RECIPE.batch_size`.
      seed: Data-order seed.
      progress: Show a progress bar.
      log: ``log(str)`` for status lines; default silent.

    Returns:
      A `StepOutcome` with the accuracies before and after; `result` is the fine-tuned train state.

    Raises:
      FileNotFoundError: the checkpoint folder does not exist.
      ValueError: not a jaxprune checkpoint, a model that does not take the digits data, epochs < 1, lr <= 0.
      FileExistsError: `out` is a file.
    """
    from jaxprune import train
    from jaxprune.checkpoint import save_checkpoint

    log = log or _quiet_log
    epochs = FULL_RECIPE.finetune_epochs if epochs is None else _check_int(epochs, "epochs", minimum=1)
    lr = FULL_RECIPE.finetune_lr if lr is None else _check_positive(lr, "lr")
    batch_size = FULL_RECIPE.batch_size if batch_size is None else _check_int(batch_size, "batch size", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    m, variables, ckpt = _load_checkpoint(checkpoint)
    _check_digits_model(m)
    folder = output_folder(out, what="--out")
    data = _load_data()
    tx = _finetune_tx(lr, epochs, train.steps_per_epoch(data, batch_size), FULL_RECIPE)
    state = train.TrainState.create(m, variables, tx, seed=seed)
    before = train.evaluate(state, data.x_test, data.y_test)
    log(f"fine-tuning {_describe(m)} from {os.fspath(checkpoint)}: test accuracy {before['accuracy']:.4f} before")
    path = folder / CHECKPOINT_FILE
    history: list[dict[str, Any]] = []

    def save(st, record):
        history.append(_json_ready(record))
        meta = {**ckpt.metadata, "finetuning": {"lr": lr, "epochs": epochs, "history": history}}
        save_checkpoint(path, st, plans=ckpt.plans, metadata=meta)

    try:
        state, _ = train.finetune(
            state,
            data,
            epochs=epochs,
            tx=tx,
            keep_optimizer_state=False,
            batch_size=batch_size,
            seed=seed,
            label_smoothing=FULL_RECIPE.label_smoothing,
            progress=progress,
            callback=save,
        )
    except KeyboardInterrupt:
        log(f"\ninterrupted: {path} holds the last complete epoch" if history else "\ninterrupted before epoch 1 ended")
        raise
    after = train.evaluate(state, data.x_test, data.y_test)
    nums = {"test_accuracy_before": before["accuracy"], "test_accuracy": after["accuracy"], "epochs": epochs}
    text = (
        f"{_describe(m)}: test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} after {epochs} "
        f"fine-tuning epochs from lr {lr:g}\nwrote {path}"
    )
    return StepOutcome(text=text, files={"checkpoint": path}, numbers=nums, result=state)


# ----------------------------------------------------------------------------------------------------------------------
# Sensitivity
# ----------------------------------------------------------------------------------------------------------------------
def _scan_data(data, n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.x_train), size=min(n, len(data.x_train)), replace=False))
    return data.x_train[idx], data.y_train[idx]


def _scan(model, variables, x, y, *, ratios, criterion: str, round_to: int, progress: bool, seed: int = 0):
    """`jaxprune.sensitivity` one group at a time (a progress bar per group; one compile serves all), merged."""
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jaxprune.sensitivity import sensitivity

    names = [g.name for g in model.channel_groups() if g.prunable and g.kind == "conv"]
    key = jax.random.key(seed) if criterion == "random" else None
    parts = []
    chunk = min(len(ratios) + 1, 10)  # the baseline and every ratio of a group in one vmapped call
    for name in tqdm(names, desc="sensitivity", unit="group", disable=not progress, dynamic_ncols=True):
        parts.append(
            sensitivity(
                model,
                variables,
                data=(x, y),
                ratios=ratios,
                groups=[name],
                criterion=criterion,
                key=key,
                batch_size=128,
                chunk=chunk,
                round_to=round_to,
            )
        )
    first = parts[0]
    return dataclasses.replace(
        first,
        groups=tuple(n for p in parts for n in p.groups),
        values=np.concatenate([p.values for p in parts]),
        kept=np.concatenate([p.kept for p in parts]),
        widths={k: v for p in parts for k, v in p.widths.items()},
        stages={k: v for p in parts for k, v in p.stages.items()},
        seconds=sum(p.seconds for p in parts),
    )


def sensitivity_from_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    ratios: Sequence[float] | None = None,
    criterion: str = "l1",
    tolerance: float = 0.02,
    round_to: int = 1,
    images: int | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
) -> StepOutcome:
    """The paper's sensitivity analysis (§3.2, Fig. 2) of a trained checkpoint on digits images, and suggested ratios.

    Every prunable conv group is pruned alone at each ratio and the accuracy measured without retraining
    (`jaxprune.sensitivity`, on `images` training images: the test split is kept for reporting);
    `jaxprune.suggest_ratios` then picks one ratio per stage and the sensitive layers to skip.

    Args:
      checkpoint: A trained checkpoint folder (or file), e.g. from ``jaxprune train``.
      ratios: Ratios to scan, strictly increasing in [0, 1); default 0.1 ... 0.9.
      criterion: Which filters go first (`jaxprune.sensitivity.ALL_CRITERIA`; ``l1`` is the paper's).
      tolerance: Allowed single-layer accuracy drop for the suggestion, >= 0.
      round_to: Kept-count rounding of the scan (as `make_plan`).
      images: Training images to evaluate on; default `FULL_RECIPE.scan_images`.
      out: If given, write ``sensitivity.md``, ``suggestion.txt`` and the figures ``fig2a_sorted_filter_norms.png``
        and ``fig2b_sensitivity.png`` there.
      seed: Picks the scanned images.
      progress: Show a progress bar.

    Returns:
      A `StepOutcome` whose `result` is the `SensitivityResult`; ``numbers["suggestion"]`` holds the plan-ready
      ratios and skip list.

    Raises:
      FileNotFoundError: the checkpoint folder does not exist.
      ValueError: not a jaxprune checkpoint, a model that does not take the digits data, bad ratios, an unknown
        criterion, tolerance < 0.
      FileExistsError: `out` is a file.
    """
    from jaxprune.sensitivity import DEFAULT_RATIOS, suggest_ratios

    m, variables, _ = _load_checkpoint(checkpoint)
    _check_digits_model(m)
    folder = output_folder(out, what="--out") if out is not None else None
    data = _load_data()
    images = FULL_RECIPE.scan_images if images is None else _check_int(images, "images", minimum=1)
    x, y = _scan_data(data, images, seed)
    ratios = tuple(DEFAULT_RATIOS if ratios is None else ratios)
    sens = _scan(m, variables, x, y, ratios=ratios, criterion=criterion, round_to=round_to, progress=progress)
    suggestion = suggest_ratios(sens, tolerance=tolerance)
    files: dict[str, Path] = {}
    if folder is not None:
        from jaxprune import viz

        files = {
            "table": folder / "sensitivity.md",
            "suggestion": folder / "suggestion.txt",
            "fig2a": folder / "fig2a_sorted_filter_norms.png",
            "fig2b": folder / "fig2b_sensitivity.png",
        }
        _write_text(files["table"], sens.to_markdown())
        _write_text(files["suggestion"], suggestion.explanation)
        viz.plot_sorted_filter_norms(m, variables, path=files["fig2a"])
        viz.plot_sensitivity(sens, by_stage=True, path=files["fig2b"])
    nums = {"baseline": sens.baseline, "suggestion": _json_ready(suggestion.plan_kwargs())}
    text = "\n".join(
        [sens.to_markdown(), "", suggestion.explanation, "", f"make_plan arguments: {suggestion.plan_kwargs()}"]
        + [f"wrote {p}" for p in files.values()]
    )
    return StepOutcome(text=text, files=files, numbers=nums, result=sens)


# ----------------------------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class DemoResult:
    """What `run_demo` measured and wrote.

    Attributes:
      numbers: Every reported figure, JSON-ready (also written to ``report.json``): ``before`` and ``after`` with
        ``test_accuracy``, ``params``, ``params_no_bn``, ``macs``, ``xla_flops`` and ``latency_ms`` (batch size ->
        median ms); ``after`` also ``test_accuracy_pruned`` (right after pruning, before fine-tuning); the plan's
        ratios, the phases' seconds, and the settings.
      files: Name -> path of every file written.
      text: The report table printed at the end.
      plan: The `PruningPlan` applied.
      sensitivity: The `SensitivityResult` of the scan.
    """

    numbers: Mapping[str, Any]
    files: Mapping[str, Path]
    text: str
    plan: Any
    sensitivity: Any


def _fmt_int(v: int) -> str:
    return f"{v:,}"


def _fmt_m(v: float) -> str:
    return f"{v / 1e6:,.2f} M"


def _change(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f} %" if before else ""


def _md_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _text_table(rows: Sequence[Sequence[str]]) -> str:
    size = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(size[i]) if i == 0 else c.rjust(size[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * s for s in size))
    return "\n".join(out)


def _result_rows(n: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    b, a = n["before"], n["after"]
    rows = [("", "before", "after", "change")]
    rows.append(
        (
            "test accuracy",
            f"{100 * b['test_accuracy']:.2f} %",
            f"{100 * a['test_accuracy']:.2f} %",
            f"{100 * (a['test_accuracy'] - b['test_accuracy']):+.2f} pt",
        )
    )
    rows.append(("  right after pruning, no fine-tuning", "", f"{100 * a['test_accuracy_pruned']:.2f} %", ""))
    rows.append(("params", _fmt_int(b["params"]), _fmt_int(a["params"]), _change(b["params"], a["params"])))
    rows.append(
        ("MACs (conv + FC, the paper's FLOP)", _fmt_m(b["macs"]), _fmt_m(a["macs"]), _change(b["macs"], a["macs"]))
    )
    rows.append(("XLA FLOPs (cost analysis)", _fmt_m(b["xla_flops"]), _fmt_m(a["xla_flops"]), _change(b["xla_flops"], a["xla_flops"])))  # fmt: skip
    for bs in b["latency_ms"]:
        tb, ta = b["latency_ms"][bs], a["latency_ms"][bs]
        speed = f"{tb / ta:.2f}x faster" if ta <= tb else f"{ta / tb:.2f}x slower"
        rows.append((f"CPU latency, batch {bs} (median)", f"{tb:.2f} ms", f"{ta:.2f} ms", speed))
    return rows


def run_demo(
    out: str | os.PathLike = "jaxprune-demo",
    *,
    model: str = "resnet20",
    quick: bool = False,
    epochs: int | None = None,
    finetune_epochs: int | None = None,
    tolerance: float | None = None,
    target_macs: float | None = None,
    round_to: int = 8,
    retrain: bool = False,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> DemoResult:
    """The whole paper on real data: train, sensitivity scan, suggested ratios, prune, fine-tune, measure, report.

    1. Train `model` on the digits data with the paper's recipe (`jaxprune.train.paper_sgd`), or reuse the trained
       checkpoint in ``out/baseline`` (resume it if it was interrupted).
    2. Scan the sensitivity of every prunable conv layer on training images (paper §3.2, Fig. 2(b);
       `jaxprune.sensitivity`).
    3. Choose the ratios (`jaxprune.suggest_ratios`): by default the per-stage ratios with the least summed
       single-layer accuracy drop that keep `target_macs` of the MACs; with `tolerance` alone, the paper's way: one
       ratio per stage such that every layer's single-layer drop stays within `tolerance`, sensitive layers skipped.
    4. Prune the whole train state (`jaxprune.make_plan`, `jaxprune.train.prune_state`) and fine-tune it
       (`jaxprune.train.finetune`), checkpointing to ``out/pruned``.
    5. Measure before -> after: test accuracy, params and MACs (`jaxprune.count_macs`), XLA FLOPs
       (`jaxprune.xla_flops`) and CPU latency (`jaxprune.compare_latency`).
    6. Write ``plan.json``, ``report.md``, ``report.json``, ``sensitivity.md`` and figures (``figures/*.png``:
       paper Fig. 2(a) and 2(b), widths and MACs per layer) to `out`.

    Args:
      out: Output folder (created; reused as the training cache).
      model: One of `DIGITS_MODELS` (ResNet-20 takes about 3 minutes on a 2-core CPU; VGG-16 much longer).
      quick: Use `QUICK_RECIPE` (fewer epochs, ratios and timings; about a minute) instead of `FULL_RECIPE`.
      epochs: Training epochs instead of the recipe's.
      finetune_epochs: Fine-tuning epochs instead of the recipe's.
      tolerance: Allowed single-layer accuracy drop; alone it selects the paper's tolerance mode, with `target_macs`
        it caps every pruned layer's drop.
      target_macs: MACs budget as a fraction of the original, in (0, 1]; default the recipe's (0.6) unless
        `tolerance` is given.
      round_to: Kept widths rounded to a multiple (8 by default: XLA:CPU runs odd widths slowly).
      retrain: Train from scratch even if ``out/baseline`` holds a usable checkpoint.
      seed: Seed of the initialization, data order and scanned images.
      progress: Show a progress bar per phase.
      log: ``log(str)`` for the phase headers and the final report (e.g. `print`); default silent.

    Returns:
      A `DemoResult`.

    Raises:
      ValueError: an unknown or ImageNet model (lists the valid ones), epochs < 1, tolerance < 0, target_macs outside
        (0, 1] or out of reach, round_to < 1.
      TypeError: arguments of the wrong kind (a non-int epoch count, a non-number tolerance...).
      FileExistsError: `out` exists and is a file.
      KeyboardInterrupt: interrupted; ``out/baseline`` keeps the last complete training epoch, and the same call
        resumes from it.
    """
    import platform
    import time

    import jax
    from tqdm.auto import tqdm

    from jaxprune import train
    from jaxprune.checkpoint import save_checkpoint
    from jaxprune.flops import MAC_CONVENTION, XLA_CONVENTION, count_macs, xla_flops
    from jaxprune.latency import LATENCY_CONVENTION, compare_latency
    from jaxprune.sensitivity import suggest_ratios
    from jaxprune.strategies import make_plan

    t_start = time.perf_counter()
    log = log or _quiet_log
    m = _digits_model(model)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {type(quick).__name__}")
    base = QUICK_RECIPE if quick else FULL_RECIPE
    recipe = dataclasses.replace(
        base,
        epochs=base.epochs if epochs is None else _check_int(epochs, "epochs", minimum=1),
        finetune_epochs=base.finetune_epochs
        if finetune_epochs is None
        else _check_int(finetune_epochs, "finetune epochs", minimum=1),
    )
    for what, v in (("tolerance", tolerance), ("target_macs", target_macs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise TypeError(f"{what} must be a number, got {type(v).__name__} {v!r}")
    if tolerance is not None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be a number >= 0 (an accuracy drop), got {tolerance!r}")
        recipe = dataclasses.replace(recipe, tolerance=float(tolerance))
    if target_macs is not None and not 0 < target_macs <= 1:
        raise ValueError(f"target_macs must be a fraction of the original MACs in (0, 1], got {target_macs!r}")
    round_to = _check_int(round_to, "round_to", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    folder = output_folder(out, what="--out")
    figures = output_folder(folder / "figures")
    seconds: dict[str, float] = {}
    name = _describe(m)

    def phase(i: int, title: str) -> float:
        log(f"[{i}/6] {title}")
        return time.perf_counter()

    # 1. Data and the trained baseline ---------------------------------------------------------------------------------
    t = phase(1, f"train {name} on digits ({recipe.epochs} epochs) or reuse {folder / 'baseline'}")
    data = _load_data()
    baseline_dir = output_folder(folder / "baseline")
    if retrain and (baseline_dir / CHECKPOINT_FILE).exists():
        log(f"  --retrain: removing {baseline_dir / CHECKPOINT_FILE}")
        (baseline_dir / CHECKPOINT_FILE).unlink()
    state, history, status = _train_with_checkpoints(
        baseline_dir, m, data, recipe, seed=seed, progress=progress, log=log, on_mismatch="retrain"
    )
    variables = state.variables
    seconds["train"] = time.perf_counter() - t

    # 2. Sensitivity ------------------------------------------------------------------------------------------------
    t = phase(2, f"sensitivity scan: each conv layer pruned alone at {', '.join(f'{p:g}' for p in recipe.scan_ratios)}")
    x_scan, y_scan = _scan_data(data, recipe.scan_images, seed)
    sens = _scan(m, variables, x_scan, y_scan, ratios=recipe.scan_ratios, criterion="l1", round_to=round_to, progress=progress)  # fmt: skip
    seconds["sensitivity"] = time.perf_counter() - t

    # 3. Ratios and plan --------------------------------------------------------------------------------------------
    t = phase(3, "suggest ratios and make the plan")
    if target_macs is None and tolerance is None:
        target_macs = recipe.target_macs
    if target_macs is not None:
        suggestion = suggest_ratios(sens, target_macs=float(target_macs), tolerance=tolerance)
    else:
        suggestion = suggest_ratios(sens, tolerance=recipe.tolerance)
    plan = make_plan(m, variables, **suggestion.plan_kwargs(), round_to=round_to)
    files: dict[str, Path] = {"plan": folder / "plan.json"}
    plan.save(files["plan"])
    for line in suggestion.explanation.splitlines():
        log(f"  {line}")
    seconds["plan"] = time.perf_counter() - t

    # 4. Prune and fine-tune ----------------------------------------------------------------------------------------
    t = phase(4, f"prune and fine-tune ({recipe.finetune_epochs} epochs from lr {recipe.finetune_lr:g})")
    pruned_dir = output_folder(folder / "pruned")
    small = train.prune_state(state, plan) if plan.keep else state
    acc_pruned = train.evaluate(small, data.x_test, data.y_test)["accuracy"]
    ft_history: list[dict[str, Any]] = []

    def save(st, record):
        ft_history.append(_json_ready(record))
        meta = {"finetuning": {"lr": recipe.finetune_lr, "history": ft_history}, "baseline": str(baseline_dir)}
        save_checkpoint(pruned_dir / CHECKPOINT_FILE, st, plans=[plan], metadata=meta)

    try:
        # A fresh optimizer state: the schedule restarts at finetune_lr (the trained state's count is past its end).
        small, _ = train.finetune(
            small,
            data,
            epochs=recipe.finetune_epochs,
            tx=_finetune_tx(
                recipe.finetune_lr, recipe.finetune_epochs, train.steps_per_epoch(data, recipe.batch_size), recipe
            ),
            keep_optimizer_state=False,
            batch_size=recipe.batch_size,
            seed=seed,
            augment=recipe.augment,
            label_smoothing=recipe.label_smoothing,
            progress=progress,
            callback=save,
        )
    except KeyboardInterrupt:
        log(f"\ninterrupted while fine-tuning; {baseline_dir} holds the trained network, run again to continue")
        raise
    files["baseline"] = baseline_dir / CHECKPOINT_FILE
    files["pruned"] = pruned_dir / CHECKPOINT_FILE
    seconds["prune_finetune"] = time.perf_counter() - t

    # 5. Measure ----------------------------------------------------------------------------------------------------
    t = phase(5, "measure before -> after: accuracy, params, MACs, XLA FLOPs, CPU latency")
    new_vars = small.variables
    shape = (1, 32, 32, 3)
    steps = ["accuracy", "MACs", "XLA FLOPs", "latency"]
    nums: dict[str, Any] = {}
    with tqdm(total=len(steps), desc="measure", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        acc_before = train.evaluate(state, data.x_test, data.y_test)["accuracy"]
        acc_after = train.evaluate(small, data.x_test, data.y_test)["accuracy"]
        bar.update(1)
        r0, r1 = count_macs(m, shape), count_macs(small.model, shape)
        bar.update(1)
        x0, x1 = xla_flops(m, variables, shape), xla_flops(small.model, new_vars, shape)
        bar.update(1)
        lat = compare_latency(
            m,
            variables,
            small.model,
            new_vars,
            shape[1:],
            batch_sizes=recipe.latency_batch_sizes,
            repeats=recipe.latency_repeats,
            seed=seed,
        )
        bar.update(1)
    for key, acc, rep, xf, res in (
        ("before", acc_before, r0, x0, lat.before),
        ("after", acc_after, r1, x1, lat.after),
    ):
        nums[key] = {
            "test_accuracy": acc,
            "params": rep.params,
            "params_no_bn": rep.params_no_bn,
            "macs": rep.macs,
            "xla_flops": xf,
            "latency_ms": {str(b): res.median_ms(b) for b in recipe.latency_batch_sizes},
        }
    nums["after"]["test_accuracy_pruned"] = acc_pruned
    seconds["measure"] = time.perf_counter() - t

    # 6. Figures and report -----------------------------------------------------------------------------------------
    t = phase(6, f"figures and report in {folder}")
    from jaxprune import viz

    drawings = {
        "fig2a": ("fig2a_sorted_filter_norms.png", lambda p: viz.plot_sorted_filter_norms(m, variables, path=p)),
        "fig2b": ("fig2b_sensitivity.png", lambda p: viz.plot_sensitivity(sens, by_stage=True, path=p)),
        "widths": ("widths.png", lambda p: viz.plot_widths(m, small.model, path=p)),
        "macs": ("macs_per_layer.png", lambda p: viz.plot_macs(m, small.model, path=p)),
    }
    for key, (fname, draw) in tqdm(
        drawings.items(), desc="figures", unit="fig", disable=not progress, dynamic_ncols=True
    ):
        files[key] = figures / fname
        draw(files[key])
    files["sensitivity"] = folder / "sensitivity.md"
    _write_text(files["sensitivity"], sens.to_markdown())
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start

    nums.update(
        {
            "model": model,
            "quick": quick,
            "baseline": status,
            "epochs": recipe.epochs,
            "finetune_epochs": recipe.finetune_epochs,
            "finetune_lr": recipe.finetune_lr,
            "round_to": round_to,
            "tolerance": recipe.tolerance if target_macs is None else tolerance,
            "target_macs": target_macs,
            "prune_ratio": _json_ready(suggestion.prune_ratio),
            "skip": list(suggestion.skip),
            "widths_after": small.model.group_widths(),
            "scan_images": len(x_scan),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "latency_ratio": {str(b): lat.latency_ratio(b) for b in recipe.latency_batch_sizes},
            "mac_ratio": lat.mac_ratio,
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        }
    )
    table = _result_rows(nums)
    text = (
        f"{name} on digits ({len(data.x_train)} train / {len(data.x_test)} test images), "
        f"pruned {', '.join(f'{k} {v:g}' for k, v in suggestion.prune_ratio.items()) or 'nothing'}"
        + (f" (skip {', '.join(suggestion.skip)})" if suggestion.skip else "")
        + f", round_to {round_to}, fine-tuned {recipe.finetune_epochs} epochs\n\n{_text_table(table)}"
    )
    files["report_json"] = folder / "report.json"
    files["report"] = folder / "report.md"
    rel = {k: os.path.relpath(v, folder) for k, v in files.items()}
    nums["files"] = rel
    _write_text(files["report_json"], __import__("json").dumps(_json_ready(nums), indent=1))
    _write_text(
        files["report"],
        _report_markdown(
            name=name,
            numbers=nums,
            table=table,
            suggestion=suggestion,
            plan=plan,
            history=history,
            ft_history=ft_history,
            rel=rel,
            conventions=(MAC_CONVENTION, XLA_CONVENTION, LATENCY_CONVENTION),
            data_sizes=(len(data.x_train), len(data.x_test)),
        ),
    )
    log("")
    log(text)
    log(
        f"\nwrote {files['report']}, {files['plan'].name}, report.json, figures/ and checkpoints; {seconds['total']:.0f} s"
    )
    return DemoResult(numbers=nums, files=files, text=text, plan=plan, sensitivity=sens)


def _report_markdown(
    *, name, numbers, table, suggestion, plan, history, ft_history, rel, conventions, data_sizes
) -> str:
    n_train, n_test = data_sizes
    sec = numbers["seconds"]
    cmd = f"jaxprune demo --model {numbers['model']}" + (" --quick" if numbers["quick"] else "")
    lines = [
        f"# jaxprune demo: {name} on the digits data",
        "",
        "Li et al., *Pruning Filters for Efficient ConvNets* (ICLR 2017), end to end on real data: a network trained, "
        "its filters scored by L1 norm, a sensitivity scan, per-stage ratios chosen from it, the network physically "
        "pruned and fine-tuned, then measured.",
        "",
        f"Command: `{cmd}`. Data: scikit-learn's handwritten digits, {n_train} training and {n_test} test images "
        f"(32x32x3). Machine: {numbers['machine']}, jax {numbers['jax']} ({numbers['backend']}). "
        f"Total {sec['total']:.0f} s.",
        "",
        "## Result",
        "",
        _md_table(table),
        "",
        f"Latency / MAC ratio: MACs x{numbers['mac_ratio']:.3f}, latency "
        + ", ".join(f"x{v:.3f} at batch {b}" for b, v in numbers["latency_ratio"].items())
        + ".",
        "",
        "## How the ratios were chosen",
        "",
        "```",
        suggestion.explanation,
        "```",
        "",
        "## The plan",
        "",
        f"`{rel['plan']}` (round_to {numbers['round_to']}):",
        "",
        "```",
        plan.summary() if plan.keep else "(nothing pruned)",
        "```",
        "",
        "## Training",
        "",
        f"Baseline ({numbers['baseline']}, `{rel['baseline']}`): "
        + ", ".join(f"{h.get('test_accuracy', float('nan')):.4f}" for h in history)
        + " test accuracy per epoch.",
        f"Fine-tuning (`{rel['pruned']}`, lr {numbers['finetune_lr']:g} divided by 10 at 50 % and 75 %): "
        + ", ".join(f"{h.get('test_accuracy', float('nan')):.4f}" for h in ft_history)
        + f" (right after pruning: {numbers['after']['test_accuracy_pruned']:.4f}).",
        "",
        "## Figures",
        "",
        f"![Sorted filter L1 norms, paper Fig. 2(a)]({rel['fig2a']})",
        f"![Sensitivity, paper Fig. 2(b)]({rel['fig2b']})",
        f"![Widths before and after]({rel['widths']})",
        f"![MACs per layer before and after]({rel['macs']})",
        "",
        "## Time per phase",
        "",
        _md_table([("phase", "seconds")] + [(k, f"{v:.1f}") for k, v in sec.items()]),
        "",
        "## Conventions",
        "",
        *[f"- {c}" for c in conventions],
        f"- Accuracy: fraction of the {n_test} test images classified correctly; the sensitivity scan uses "
        f"{numbers['scan_images']} training images, so the test split only measures.",
    ]
    return "\n".join(lines)
