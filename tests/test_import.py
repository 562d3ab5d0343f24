"""`import jaxprune` stays light: no optax, matplotlib, sklearn or torch (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import jaxprune as jp


def test_import_does_not_load_heavy_or_optional_modules():
    code = (
        "import sys, json, jaxprune; "
        "print(json.dumps(sorted(m for m in ('optax', 'matplotlib', 'sklearn', 'torch', 'PIL') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_public_names_exist():
    for name in jp.__all__:
        assert hasattr(jp, name), name
    for name in ("make_plan", "prune", "prune_like_params", "l1_filter_norms", "PruningPlan", "check_groups"):
        assert name in jp.__all__
