"""`benchmarks/gpu_check.sh`: the accelerator check must work before anyone spends device time on it.

On CPU (every developer and CI machine) the full run refuses and ``--smoke`` runs every phase at toy sizes, writing
the line that says no accelerator was available into its own section only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HANG = 900  # a bound that only catches hangs: the smoke run takes about a minute on a loaded 2-core machine

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the check is a bash script")


def _run(*args, timeout: int = HANG) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def _sections(text: str) -> dict[str, str]:
    out, rest = {}, text
    while "<!-- BEGIN " in rest:
        _, rest = rest.split("<!-- BEGIN ", 1)
        name, rest = rest.split(" -->", 1)
        body, rest = rest.split(f"<!-- END {name} -->", 1)
        out[name] = body
    return out


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the smoke run's no-accelerator line is written on CPU")
def test_smoke_run_passes_on_cpu_and_writes_only_its_section(tmp_path):
    out = tmp_path / "benchmarks-copy.txt"  # a copy of docs/benchmarks.md
    shutil.copy(ROOT / "docs/benchmarks.md", out)
    before = _sections(out.read_text())
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for phase in ("phase 1: quick tests", "phase 2: latency", "phase 3: XLA flops", "phase 4: conv paths"):
        assert phase in proc.stdout
    # The full run's report is built (and printed) by the smoke run too: its tables have their rows.
    assert "| ResNet-20 -> ResNet-20 pruned | 0." in proc.stdout and "| ResNet-20 pruned | " in proc.stdout
    assert "`conv_impl='auto'` resolves to" in proc.stdout
    after = _sections(out.read_text())
    assert "No accelerator was available for this run: jax saw only the CPU" in after["gpu_check"]
    assert "tests: 17 passed" in after["gpu_check"]  # the smoke run's two parametrised test functions
    assert {k: v for k, v in after.items() if k != "gpu_check"} == {k: v for k, v in before.items() if k != "gpu_check"}


def test_docs_carry_the_gpu_section_or_the_no_accelerator_line():
    section = _sections((ROOT / "docs/benchmarks.md").read_text())["gpu_check"]
    assert "No accelerator was available for this run" in section or "Device: " in section


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="on an accelerator the full run is the real thing")
def test_full_run_refuses_without_an_accelerator():
    proc = _run(timeout=300)
    assert proc.returncode == 2
    assert "jax sees no accelerator here (backend 'cpu'" in proc.stderr
    assert "pass --smoke to check the script on CPU" in proc.stderr


def test_cpu_only_tests_named_by_the_check_exist(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    for test in gpu_check.CPU_ONLY_TESTS + gpu_check.SMOKE_TEST_FILES:
        file, name = test.split("::")
        assert f"def {name}(" in (ROOT / file).read_text(), test
    for file in gpu_check.TEST_FILES:
        assert (ROOT / file).is_file(), file


def test_unknown_option_is_refused():
    proc = _run("--fast", timeout=300)
    assert proc.returncode == 2
    assert "unrecognized arguments: --fast" in proc.stderr


def test_repeats_must_be_positive():
    proc = _run("--smoke", "--repeats", "0", timeout=300)
    assert proc.returncode == 2
    assert "--repeats must be >= 1, got 0" in proc.stderr
