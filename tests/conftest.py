"""Shared fixtures: models and their variables are built once per test session; compiled programs persist.

Variables come from `jaxprune.random_variables` (abstract shapes + a seeded numpy RNG): `model.init` would cost
seconds of XLA compile per model, and random BN statistics make every coupled leaf matter in equivalence tests.

`pytest_configure` turns on jax's persistent compilation cache under the pytest cache folder (or wherever
``JAX_COMPILATION_CACHE_DIR`` already points) and exports it, so that every process a test starts reuses what
earlier processes and earlier runs compiled.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import models

#: Bound on a subprocess or notebook cell that a test waits for: it only catches hangs. The slowest such process
#: (the 8-device parallel `fit`) takes about a minute of wall time on a quiet 2-core machine and up to five times
#: that when the machine is shared, so 1800 s is >= 10x the expected time even under load.
HANG_TIMEOUT_S = 1800

ALL_MODELS = models.available()


def _jax_cache_dir(config) -> Path:
    cache = getattr(config, "cache", None)  # None under `-p no:cacheprovider`
    if cache is not None:
        return Path(cache.mkdir("jax-cache"))
    path = Path(config.rootpath) / ".pytest_cache" / "jax-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_configure(config):
    """A persistent jax compilation cache for this session and every process its tests start.

    Runs before any test compiles anything. A ``JAX_COMPILATION_CACHE_DIR`` the user set is kept as it is. The two
    thresholds are 0 so that every program is cached: the suite's programs are small and compile in well under the
    default one second, yet together their compiles are most of the suite's CPU time.

    For the same reason the session (and every process it starts, through the environment) compiles with LLVM's
    optimisation off, ``XLA_FLAGS=--xla_backend_optimization_level=0``, unless ``XLA_FLAGS`` already sets a level.
    The tests run tiny batches, so compile time dominates: measured here from an empty cache, test_surgery +
    test_masking + test_sensitivity fell from 226 to 164 s of CPU, test_train + test_nnx from 66 to 58 s. Only the
    code XLA emits for fused elementwise work is less optimised; convolutions and matmuls are Eigen's library
    routines either way, and without fast-math LLVM reorders no float operation at any level, so results do not
    depend on it (every tolerance in the suite is stated for float32 or float64 arithmetic, not for a code path).

    Likewise ``--xla_cpu_use_fusion_emitters=false`` (unless ``XLA_FLAGS`` sets it): XLA's CPU backend then emits its
    fusions with the older elemental emitter instead of the MLIR fusion emitters, which halves compile time at level
    0. Measured here, fresh processes, no cache: a ResNet-56 batch-2 forward compiled in 1.6 s of CPU -> 0.7 s, a
    ResNet-20 batch-16 training step in 4.9 s -> 2.7 s; the step then runs in 379 ms instead of 301 ms, which the
    suite's few steps per program never pay back. Both emitters compute the same HLO in float32/float64 arithmetic.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        flags = f"{flags} --xla_backend_optimization_level=0".strip()
    if "xla_cpu_use_fusion_emitters" not in flags:
        flags = f"{flags} --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = flags
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(_jax_cache_dir(config))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


#: ``XLA_FLAGS`` as the user set it, before `pytest_configure` added the session's optimisation level: for the
#: subprocesses that train for hundreds of steps (the demo's), where optimised code pays for its compile. Measured
#: here (ResNet-20, batch 16): a training step compiles in 6.7 s of CPU at level 0 against 11.8 s, and then runs in
#: 289 ms against 191 ms, so past about 50 steps the default level costs less.
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")

CIFAR_MODELS = tuple(n for n in ALL_MODELS if n not in ("resnet18", "resnet34"))


class _Zoo:
    """Lazily built (model, variables) per name, cached for the whole session."""

    def __init__(self):
        self._cache: dict[str, tuple] = {}

    def __call__(self, name: str, seed: int = 0):
        key = (name, seed)
        if key not in self._cache:
            m = models.get(name)
            self._cache[key] = (m, jp.random_variables(m, seed=seed))
        return self._cache[key]


@pytest.fixture(scope="session")
def zoo():
    return _Zoo()


def input_batch(model, n: int = 2, seed: int = 0, size: int | None = None):
    """A random NHWC batch for a model (ImageNet ResNets at a reduced size unless `size` is given)."""
    shape = list(models.default_input_shape(model, n))
    if size is not None:
        shape[1] = shape[2] = size
    return jax.random.normal(jax.random.key(seed), tuple(shape), jnp.float32)


def assert_close(a, b, *, rel: float = 1e-5):
    """docs/design.md §4: max|a - b| <= rel * max(1, max|b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    tol = rel * max(1.0, float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b)))
    assert err <= tol, f"max|delta| = {err:.3g} > {tol:.3g}"


def random_leaf(rng: np.random.Generator, name: str, leaf):
    """One seeded random leaf of `leaf`'s shape and dtype by its name: kernels He-scaled, norm scales and variances
    around 1, the rest small (so every coupled leaf matters in equivalence tests)."""
    if name == "kernel":
        v = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
        v = rng.uniform(0.5, 1.5, leaf.shape)
    else:
        v = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(v, leaf.dtype)


def random_eqx_tree(tree, rng: np.random.Generator):
    """Seeded random arrays for an abstract (`eqx.filter_eval_shape`) Equinox pytree, drawn from `rng`: weights
    He-scaled, norm scales and running variances around 1, the rest small; integer state (BatchNorm's counter) 0.
    Eager init would compile every initializer."""

    def fill(path, leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        name = str(getattr(path[-1], "name", ""))
        if name == "weight" and len(leaf.shape) >= 2:
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[1:])), leaf.shape)
        elif name == "weight" or str(getattr(path[-1], "idx", "")) == "1":  # norm scales, running variances
            v = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            v = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(v, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, tree)


def linen_random_variables(model, x, seed: int = 0):
    """Seeded random variables from abstract shapes (as `jp.random_variables`, for Linen models without `train=`)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(lambda path, leaf: random_leaf(rng, path[-1].key, leaf), dict(abstract))


#: The first line of a single-file checkpoint (`jaxprune.checkpoint`).
CHECKPOINT_MAGIC = b"JAXPRUNE-CHECKPOINT\n"


def split_checkpoint(path):
    """(header dict, payload bytes) of a version-2 single-file checkpoint, for tests that forge or edit one."""
    import json

    raw = path.read_bytes()
    magic_end = raw.index(b"\n") + 1
    header_end = raw.index(b"\n", magic_end) + 1
    digest_end = raw.index(b"\n", header_end) + 1
    return json.loads(raw[magic_end:header_end]), raw[digest_end:]
