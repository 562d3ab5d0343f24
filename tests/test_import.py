"""`import jaxprune` loads the core only (checked in a fresh interpreter); the package uses public jax APIs only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import jaxprune as jp

#: What `import jaxprune` must not load: the non-core jaxprune modules and the heavy or optional dependencies.
NOT_AT_IMPORT = (
    "jaxprune.checkpoint",
    "jaxprune.cli",
    "jaxprune.data",
    "jaxprune.demo",
    "jaxprune.latency",
    "jaxprune.sensitivity",
    "jaxprune.trace",
    "jaxprune.train",
    "jaxprune.viz",
    "optax",
    "matplotlib",
    "sklearn",
    "torch",
    "flax.nnx",
    "equinox",
    "PIL",
)

# One fresh interpreter answers every process-level question (each interpreter costs seconds of imports): first what
# `import jaxprune` loaded, then what tracing a Linen model loaded (before anything else touches the lazy names, which
# may legitimately import optax), then whether `import jaxprune.viz` loaded matplotlib, then whether every public
# name resolves.
_PROBE = """
import json, sys, types
import jaxprune as jp
loaded = sorted(m for m in NOT_AT_IMPORT if m in sys.modules)

import flax.linen as nn
import jax
import jax.numpy as jnp

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))

x = jnp.zeros((1, 4))
jp.trace_model(Net(), Net().init(jax.random.key(0), x), x)
after_trace = sorted(m for m in ("flax.nnx", "optax") if m in sys.modules)

import jaxprune.viz  # its module imports matplotlib only when a figure is drawn
viz_loaded_matplotlib = "matplotlib" in sys.modules

import jaxprune.sensitivity  # the submodule binds itself to the package; the public name stays the function
unresolved = [n for n in jp.__all__ if getattr(jp, n, None) is None]
print(json.dumps({
    "loaded": loaded,
    "after_trace": after_trace,
    "viz_loaded_matplotlib": viz_loaded_matplotlib,
    "unresolved": unresolved,
    "sensitivity": type(jp.sensitivity).__name__,
    "train": isinstance(jp.train, types.ModuleType),
    "missing_from_dir": sorted(set(jp.__all__) - set(dir(jp))),
}))
"""


@pytest.fixture(scope="module")
def probe():
    code = f"NOT_AT_IMPORT = {NOT_AT_IMPORT!r}\n{_PROBE}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_only_the_core_and_every_public_name_resolves(probe):
    assert {k: v for k, v in probe.items() if k not in ("after_trace", "viz_loaded_matplotlib")} == {
        "loaded": [],
        "unresolved": [],
        "sensitivity": "function",
        "train": True,
        "missing_from_dir": [],
    }


def test_tracing_a_linen_model_loads_neither_nnx_nor_optax(probe):
    assert probe["after_trace"] == []


def test_matplotlib_is_not_imported_by_jaxprune(probe):
    # Neither `import jaxprune` ("loaded" above) nor `import jaxprune.viz`: matplotlib comes with the first figure.
    assert probe["viz_loaded_matplotlib"] is False


def test_public_names_exist():
    assert len(jp.__all__) == len(set(jp.__all__))
    for name in jp.__all__:
        assert hasattr(jp, name), name
        assert name in dir(jp), name
    for name in ("make_plan", "prune", "prune_like_params", "l1_filter_norms", "PruningPlan", "check_groups"):
        assert name in jp.__all__
    # `jp.sensitivity` is the scan function, not the `jaxprune.sensitivity` package it lives in.
    assert callable(jp.sensitivity) and jp.sensitivity.__module__.startswith("jaxprune.sensitivity.")


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'jaxprune' has no attribute 'no_such_name'"):
        jp.no_such_name  # noqa: B018


def _private_jax_imports(source: str) -> list[str]:
    """Every import of (or attribute access to) jax's private modules in one file's source."""
    found = []
    private = ("jax._src", "jax.interpreters")
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jax":
            names = [f"jax.{node.attr}"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            arg = node.args[0].value  # importlib.import_module("jax._src...") / __import__(...)
            names = [arg] if isinstance(arg, str) else []
        hits = [n for n in names if any(n == p or n.startswith(p + ".") for p in private)]
        if hits:
            found.append(f"line {node.lineno}: {hits[-1]}")
    return found


def test_the_package_uses_no_private_jax_api():
    """No module under jaxprune/ (subpackages included) imports `jax._src` or `jax.interpreters`: public APIs only."""
    root = Path(jp.__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10 and root / "surgery.py" in files  # the walk sees the package, subpackages included
    bad = {str(f.relative_to(root)): hits for f in files if (hits := _private_jax_imports(f.read_text()))}
    assert bad == {}


def test_the_private_api_check_catches_every_spelling():
    src = (
        "import jax._src.core\nfrom jax._src import core\nfrom jax import _src\nfrom jax.interpreters import pxla\n"
        "import importlib\nm = importlib.import_module('jax._src.util')\nx = jax._src\nimport jax.numpy\n"
    )
    assert [h.split(":")[0] for h in _private_jax_imports(src)] == [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "line 6",
        "line 7",
    ]
