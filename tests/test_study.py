"""`benchmarks/study_digits.py --smoke` runs end to end and writes consistent outputs (its section of
docs/results.md, the figure and the raw points), under a temporary folder.

Slow: a ResNet-20 trained for one epoch on 256 digits, four points of 3 fine-tuning steps (minutes on the shared
2-core CPU, mostly compiles).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "study_digits.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_TIMEOUT_S,  # a hang catcher only
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "docs", json.loads((out / "docs/study_digits.json").read_text())


@pytest.mark.slow
def test_smoke_writes_consistent_outputs(smoke):
    docs, raw = smoke
    cfg = raw["config"]
    assert cfg["smoke"] is True and cfg["models"] == ["resnet20"] and cfg["budgets"] == [0.5]
    assert cfg["criteria"] == ["random", "taylor"] and cfg["scopes"] == ["layer", "global"]
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
    check = raw["checks"]["resnet20"]
    assert check["ok"] is True and check["same_predictions"] is True
    assert check["macs_pruned"] == check["macs_plan"]
    assert check["max_abs_diff"] <= check["tolerance"]
    # The report: one section, both tables with one row per (scope, criterion), the cells from the raw points.
    text = (docs.parent / "docs/results.md").read_text()
    assert text.count("<!-- BEGIN study_digits -->") == 1 and text.count("<!-- END study_digits -->") == 1
    assert "SMOKE RUN" in text and "![accuracy vs MAC fraction](study_digits.png)" in text
    for p in pts:
        row = f"| resnet20 | {p['scope']} | `{p['criterion']}` | {100 * p['accuracy']:.2f} |"
        assert row in text, row
        speed = f"| resnet20 | {p['scope']} | `{p['criterion']}` | {1 / p['macs_kept']:.2f}x / {1 / p['params_kept']:.2f}x |"
        assert speed in text, speed
    png = (docs / "study_digits.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    est = raw["estimate"]
    assert est["per_model"]["resnet20"]["points"] == 3 * 6 * 2 * 4  # the full study's ResNet-20 points
    assert est["total_minutes_quiet"] > 0
