"""The sensitivity scan of a trained checkpoint (`sensitivity_from_checkpoint`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jaxprune.demo._common import (
    _check_int,
    _json_ready,
    _load_checkpoint,
    _write_text,
    output_folder,
)
from jaxprune.demo.digits import (
    FULL_RECIPE,
    StepOutcome,
    _check_digits_model,
    _load_data,
)


# ----------------------------------------------------------------------------------------------------------------------
# Sensitivity
# ----------------------------------------------------------------------------------------------------------------------
def _scan_data(data, n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.x_train), size=min(n, len(data.x_train)), replace=False))
    return data.x_train[idx], data.y_train[idx]


def _scan(model, variables, x, y, *, ratios, criterion: str, round_to: int, progress: bool, seed: int = 0):
    """`jaxprune.sensitivity` over every prunable conv group: one compile, each distinct network evaluated once."""
    import jax

    from jaxprune.sensitivity import sensitivity

    key = jax.random.key(seed) if criterion == "random" else None
    return sensitivity(
        model,
        variables,
        data=(x, y),
        ratios=ratios,
        criterion=criterion,
        key=key,
        batch_size=128,
        round_to=round_to,
        progress=progress,
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
