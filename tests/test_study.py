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
        assert 0 <= p["accuracy"] <= 1 and 0 <= p["accuracy_pruned"] <= 1
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
