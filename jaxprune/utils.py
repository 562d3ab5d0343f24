"""Variables without compiling: abstract shapes and seeded random values for the zoo's models.

This module owns helpers that build or describe variables pytrees (`abstract_variables`, `random_variables`,
`init_variables`, `count_leaves`). It does not train, score or prune.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprune.models import default_input_shape

__all__ = ["abstract_variables", "count_leaves", "init_variables", "random_variables"]


def _model_key(model) -> str | None:
    cfg = getattr(model, "config", None)
    if not callable(cfg):
        return None
    try:
        return json.dumps(cfg(), sort_keys=True)
    except TypeError:
        return None


_ABSTRACT_CACHE: dict[tuple[str, tuple[int, ...]], Any] = {}


def _abstract_cached(model_key: str, model, shape: tuple[int, ...]):
    if (model_key, shape) not in _ABSTRACT_CACHE:
        if len(_ABSTRACT_CACHE) > 128:
            _ABSTRACT_CACHE.clear()
        _ABSTRACT_CACHE[(model_key, shape)] = _abstract(model, shape)
    return _ABSTRACT_CACHE[(model_key, shape)]


def _abstract(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))


def abstract_variables(model, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`jax.ShapeDtypeStruct` leaves of `model.init` (no compile; cached per model configuration).

    Args:
      model: A zoo model (or any Linen module taking ``(x, *, train)``).
      input_shape: NHWC input shape; defaults to the model's own (`models.default_input_shape`).
    """
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    key = _model_key(model)
    out = _abstract_cached(key, model, shape) if key is not None else _abstract(model, shape)
    return _plain(out)


def random_variables(model, *, seed: int = 0, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Seeded random variables with realistic statistics, built from abstract shapes (no `model.init` compile).

    Kernels ~ N(0, 2 / fan_in); BN scale ~ U(0.5, 1.5), bias ~ N(0, 0.1); running mean ~ N(0, 0.1), var ~ U(0.5, 1.5);
    dense biases ~ N(0, 0.1). Unlike a fresh init, BN statistics are not trivial, so masking and slicing tests see
    every coupled leaf matter. Leaves are jax arrays.

    Example:
      >>> from jaxprune import models, random_variables
      >>> v = random_variables(models.resnet20(), seed=0)
      >>> v["params"]["stem"]["kernel"].shape
      (3, 3, 3, 16)
    """
    abstract = abstract_variables(model, input_shape)
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract)
    out = {}
    for path in sorted(flat):
        leaf = flat[path]
        shape, dtype, name = tuple(leaf.shape), leaf.dtype, path[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = rng.normal(0.0, 0.1, shape)
        out[path] = jnp.asarray(v, dtype=dtype)
    return traverse_util.unflatten_dict(out)


def init_variables(model, *, seed: int = 0, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`model.init` under `jax.jit` with a zero input, as a plain nested dict (compiles: seconds for large models)."""
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    v = jax.jit(lambda k: model.init(k, jnp.zeros(shape, jnp.float32), train=False))(jax.random.key(seed))
    return _plain(v)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def count_leaves(tree) -> int:
    """Total number of elements over the leaves of a pytree (arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))
