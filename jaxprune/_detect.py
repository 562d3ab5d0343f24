"""Recognising framework objects without importing the framework.

An NNX module can only exist once ``flax.nnx`` has been imported by the user (an Equinox module once ``equinox`` has),
so ``sys.modules`` is asked, never the import system: `import jaxprune` stays light (``flax.nnx`` pulls optax). This module imports nothing of jaxprune, so
the dispatch (`jaxprune._models`) and the tracing adapters can both use it without an import cycle.
"""

from __future__ import annotations

import sys

__all__ = ["is_eqx_module", "is_nnx_module", "is_nnx_optimizer"]


def _nnx():
    return sys.modules.get("flax.nnx")


def is_nnx_module(obj) -> bool:
    """True for a Flax NNX module (checked without importing ``flax.nnx``)."""
    nnx = _nnx()
    return nnx is not None and isinstance(obj, nnx.Module)


def is_nnx_optimizer(obj) -> bool:
    """True for an `nnx.Optimizer` (checked without importing ``flax.nnx``)."""
    nnx = _nnx()
    return nnx is not None and isinstance(obj, nnx.Optimizer)


def is_eqx_module(obj) -> bool:
    """True for an Equinox module (`eqx.Module`; checked without importing ``equinox``)."""
    eqx = sys.modules.get("equinox")
    return eqx is not None and isinstance(obj, eqx.Module)
