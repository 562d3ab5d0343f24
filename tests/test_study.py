"""`benchmarks/study_digits.py --smoke` runs end to end and writes consistent outputs (its section of
docs/results.md, the figure and the raw points), under a temporary folder.

The script runs in this process (imported as a module, its `main` called with the command line's arguments): the
test is about what the script computes and writes, not about a fresh interpreter. Its default smoke is a ResNet-8
(stages, strided shortcuts and BN like the study's ResNet-20, a third of its layers) at the digits' native 8x8,
trained for one epoch on 256 digits, then four points of 3 fine-tuning steps. The full-study estimate, which only the
study's own models get, is checked on the same measured costs relabelled as ResNet-20's.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "study_digits.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    ret = study.main(["--smoke", "--out", str(out)])
    raw = json.loads((out / "docs/study_digits.json").read_text())
    assert raw["points"] == json.loads(json.dumps(ret["points"]))  # the file holds what the run computed
    return out / "docs", raw


@pytest.mark.slow
def test_smoke_writes_consistent_outputs(smoke):
    docs, raw = smoke
    cfg = raw["config"]
    assert cfg["smoke"] is True and cfg["models"] == ["resnet8"] and cfg["budgets"] == [0.5]
    assert cfg["criteria"] == ["random", "taylor"] and cfg["scopes"] == ["layer", "global"]
    recipe = cfg["recipes"]["resnet8"]
    assert (recipe["image_size"], recipe["finetune_steps"], cfg["n_train"], cfg["init"]) == (8, 3, 256, "random")
    # Every (criterion, scope) point once: 2 x 2, each meeting its MAC budget, fractions in (0, 1].
    pts = raw["points"]
    assert sorted((p["criterion"], p["scope"]) for p in pts) == sorted(
        (c, s) for c in ("random", "taylor") for s in ("layer", "global")
    )
    for p in pts:
        assert 0 < p["macs_kept"] <= p["budget"] and 0 < p["params_kept"] <= 1
        assert 0 <= p["accuracy"] <= 1 and 0 <= p["accuracy_pruned"] <= 1 and 0 <= p["accuracy_stale_bn"] <= 1
        assert p["seconds_recalibrate"] > 0
        # Accuracy on 360 test images is a multiple of 1/360 (exact up to float64 rounding of the mean).
        assert abs(p["accuracy"] * 360 - round(p["accuracy"] * 360)) < 1e-9
    # Pruned = masked, checked by the script on the first point: logits within float32 error, MACs exact.
    check = raw["checks"]["resnet8"]
    assert check["ok"] is True and check["same_predictions"] is True
    assert check["macs_pruned"] == check["macs_plan"]
    assert check["max_abs_diff"] <= check["tolerance"]
    # The report: one section, both tables with one row per (scope, criterion), the cells from the raw points.
    text = (docs.parent / "docs/results.md").read_text()
    assert text.count("<!-- BEGIN study_digits -->") == 1 and text.count("<!-- END study_digits -->") == 1
    assert "SMOKE RUN" in text and "![accuracy vs MAC fraction](study_digits.png)" in text
    assert "no model of the full study in this run" in text
    for p in pts:
        row = f"| resnet8 | {p['scope']} | `{p['criterion']}` | {100 * p['accuracy']:.2f} |"
        assert row in text, row
        speed = (
            f"| resnet8 | {p['scope']} | `{p['criterion']}` | {1 / p['macs_kept']:.2f}x / {1 / p['params_kept']:.2f}x |"
        )
        assert speed in text, speed
    # The recalibration table: the means over the points, stale and recalibrated.
    for key, label in (("accuracy_stale_bn", "stale BN"), ("accuracy", "recalibrated")):
        assert f"| resnet8 | {label} | {100 * sum(p[key] for p in pts) / len(pts):.2f} |" in text, label
    png = (docs / "study_digits.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert raw["estimate"]["per_model"] == {}  # a smoke-only model: no full-study estimate


@pytest.mark.slow
def test_estimate_from_measured_costs(study, smoke):
    # The same measured costs as if ResNet-20's: the full study's ResNet-20 points and a positive estimate.
    _, raw = smoke
    out = copy.deepcopy(raw)
    for row in out["bases"] + out["points"]:
        row["model"] = "resnet20"
    out["config"]["recipes"] = {"resnet20": out["config"]["recipes"]["resnet8"]}  # the run's recipe (3 steps a point)
    est = study.estimate_full(out)
    assert list(est["per_model"]) == ["resnet20"]
    assert est["per_model"]["resnet20"]["points"] == 3 * 6 * 2 * 4  # the full study's ResNet-20 points
    assert est["total_minutes_quiet"] > 0 and est["total_minutes_at_load"] > 0


def test_smoke_only_models_refused_outside_smoke(study):
    with pytest.raises(SystemExit):
        study.main(["--models", "resnet8", "--out", "unused"])


def test_recalibrated_statistics_are_the_batch_statistics(study):
    # Recalibration replaces every BN running mean and variance by the batch statistics of x through the masked
    # network: feeding the same x again in train mode (running <- m * running + (1 - m) * batch) leaves them where
    # they are, and the momentum read off the model is jaxprune's BatchNorm's 0.9. float32: the update
    # m * r + (1 - m) * r is r to within a few ulps of values of order 1, so 1e-5 relative.
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxprune as jp

    model = study.SMOKE_MODELS["resnet8"](10)
    variables = jp.random_variables(model, seed=0, input_shape=(1, 8, 8, 3))
    plan = jp.make_plan(model, variables, prune_ratio=0.5)
    masks = {k: jnp.asarray(v) for k, v in jp.plan_masks(model, plan).items()}
    # A batch of the smoke run's RECAL_IMAGES (256) at its 8x8x3: the same masked train-mode program as the smoke's
    # recalibrations (every group has a mask, so the masks' shapes do not depend on the plan), whose compile the
    # persistent cache then shares with this test.
    x = jax.random.normal(jax.random.key(1), (study.RECAL_IMAGES, 8, 8, 3))
    trainer = study.MaskedTrainer(model)
    recal = trainer.recalibrate(variables, masks, x)
    assert trainer.momentum == pytest.approx(0.9, abs=1e-6)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a is b, recal["params"], variables["params"]))
    _, again = trainer.batch_stats(recal, x, masks)
    moved = 0
    for a, b, old in zip(*(jax.tree_util.tree_leaves(t) for t in (again, recal["batch_stats"], variables["batch_stats"])),
                         strict=True):  # fmt: skip
        a, b, old = (np.asarray(t, np.float64) for t in (a, b, old))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))
        moved += int(not np.allclose(b, old))
    assert moved == len(jax.tree_util.tree_leaves(variables["batch_stats"]))  # every leaf was replaced
