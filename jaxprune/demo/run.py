"""The end-to-end demo, `run_demo`: its six stages in order."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxprune._table import text_table
from jaxprune.demo._common import (
    CHECKPOINT_FILE,
    _check_int,
    _describe,
    _json_ready,
    _quiet_log,
    _write_text,
    output_folder,
)
from jaxprune.demo.digits import (
    FULL_RECIPE,
    QUICK_RECIPE,
    _digits_model,
    _finetune_tx,
    _fit_options,
    _load_data,
    _train_with_checkpoints,
)
from jaxprune.demo.report import _report_markdown, _result_rows
from jaxprune.demo.scan import _scan, _scan_data


# ----------------------------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------------------------
def _last_test_accuracy(history) -> float | None:
    """The test accuracy `fit` recorded after the last epoch of `history`, or None if it holds none."""
    return history[-1].get("test_accuracy") if history else None


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
      model: One of `DIGITS_MODELS` (ResNet-20 is the quickest; VGG-16 takes much longer). CPU and wall seconds of
        ResNet-20 from a cold start, per phase: docs/benchmarks.md.
      quick: Use `QUICK_RECIPE` (fewer epochs, ratios and timings: about half the CPU time) instead of
        `FULL_RECIPE`.
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
    acc_pruned = train.evaluate(small, data.x_test, data.y_test, batch_size=recipe.eval_batch_size)["accuracy"]
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
            **_fit_options(recipe, seed=seed, progress=progress, callback=save),
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
    steps = ["accuracy", "MACs", "latency", "XLA FLOPs"]
    nums: dict[str, Any] = {}
    with tqdm(total=len(steps), desc="measure", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        # `fit` evaluated both states on the test split after their last epoch, with the same evaluation (batch
        # size, mesh): those are the figures; a run without such a record evaluates here.
        acc_before = _last_test_accuracy(history)
        if acc_before is None:
            acc_before = train.evaluate(state, data.x_test, data.y_test, batch_size=recipe.eval_batch_size)["accuracy"]
        acc_after = _last_test_accuracy(ft_history)
        if acc_after is None:
            acc_after = train.evaluate(small, data.x_test, data.y_test, batch_size=recipe.eval_batch_size)["accuracy"]
        bar.update(1)
        r0, r1 = count_macs(m, shape), count_macs(small.model, shape)
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
        # XLA's flops of the forward at `shape`: read from the latency's compiled batch-1 forward when it timed one
        # (the same program `xla_flops` compiles), so it is not compiled twice.
        x0, x1 = (
            res.xla_flops[shape[0]] if shape[0] in res.xla_flops else xla_flops(mod, var, shape)
            for res, mod, var in ((lat.before, m, variables), (lat.after, small.model, new_vars))
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
        + f", round_to {round_to}, fine-tuned {recipe.finetune_epochs} epochs\n\n{text_table(table)}"
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
