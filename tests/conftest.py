"""Shared fixtures: models and their variables are built once per test session.

Variables come from `jaxprune.random_variables` (abstract shapes + a seeded numpy RNG): `model.init` would cost
seconds of XLA compile per model, and random BN statistics make every coupled leaf matter in equivalence tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import models

ALL_MODELS = models.available()
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
    """design.md §4: max|a - b| <= rel * max(1, max|b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    tol = rel * max(1.0, float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b)))
    assert err <= tol, f"max|delta| = {err:.3g} > {tol:.3g}"
