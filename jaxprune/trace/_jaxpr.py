"""Small helpers over jaxpr values shared by the tracer, the primitive rules and the re-runner."""

from __future__ import annotations

import os
import sysconfig
from typing import Any

import jax
import jaxlib
import numpy as np
from jax.extend import core as jcore
from jax.extend import source_info_util


class _Frame:
    """One evaluation of one jaxpr (the top level, or a sub-jaxpr at one call site): nodes per variable."""

    __slots__ = ("consts", "counts", "ctx", "divisors", "env", "jaxpr", "less", "meta", "pd", "src", "subs")

    def __init__(self, jaxpr, consts, ctx: tuple):
        self.jaxpr = jaxpr
        self.consts = list(consts)
        self.ctx = ctx
        self.env: dict[Any, tuple[int, ...]] = {}
        self.src: dict[Any, tuple[tuple[str, ...], tuple[int | None, ...]]] = {}  # var -> (param path, axis map)
        self.pd: set = set()  # param-derived vars (computed from parameters and constants only)
        self.subs: dict[int, list[_Frame]] = {}
        self.meta: dict[int, Any] = {}
        # Channel statistics: var -> (count, reduced nodes) for a sum over axes (reduce_sum and what carries it
        # unchanged), and eqn index -> (operand index, count, nodes, op) for the division by that count (a mean).
        self.counts: dict[Any, tuple[int, tuple[int, ...]]] = {}
        self.divisors: dict[int, tuple[int, int, tuple[int, ...], str]] = {}
        # A scalar ``N - x`` of a literal N (jnp.var's ``count - ddof``): var -> (eqn index, N); it becomes a divisor
        # (its literal is the count) when a sum of N elements is divided by it.
        self.less: dict[Any, tuple[int, float]] = {}


def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _shape(v) -> tuple[int, ...]:
    return tuple(np.shape(v.val)) if _is_literal(v) else tuple(v.aval.shape)


def _loc(eqn) -> str:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - a source info the public summary cannot read
        return ""


# Files that are not the caller of a jax operation: jax's and jaxlib's own, and the standard library's, but not the
# packages installed beneath the standard library's folder (an interpreter without a virtual environment keeps its
# site-packages there, and jax's own `summarize` then skips Flax and Equinox too: a location cannot tell what called).
_NOT_CALLERS = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, jaxlib))
_STDLIB = os.path.normpath(sysconfig.get_path("stdlib")) + os.sep
_INSTALLED = frozenset({"site-packages", "dist-packages"})


def _is_caller_file(path: str) -> bool:
    """Whether a frame in the file at `path` may be the code that called jax (a model library's or the user's)."""
    if path.startswith(_NOT_CALLERS):
        return False
    if path.startswith(_STDLIB):
        return not _INSTALLED.isdisjoint(path[len(_STDLIB) :].split(os.sep))
    return True


def _caller(eqn) -> str:
    """The qualified name of the function whose call made the equation (``GroupNorm.__call__``): its innermost frame
    outside jax and the standard library, or "" where the equation carries no traceback."""
    tb = getattr(getattr(eqn, "source_info", None), "traceback", None)
    if tb is None:
        return ""
    try:
        frames = tb.frames  # innermost first
    except Exception:  # pragma: no cover - a traceback object without frames
        return ""
    for fr in frames:
        if _is_caller_file(fr.file_name):
            return fr.function_name
    return ""


def _where(eqn, ctx: tuple) -> str:
    """Where an equation comes from: its source line (or its nearest call site's), and the calls it sits in."""
    loc = _loc(eqn) if eqn is not None else ""
    for _, call in reversed(ctx):
        if loc:
            break
        loc = _loc(call)
    inside = " > ".join(label for label, _ in ctx)
    return (loc or "an unknown location") + (f", inside {inside}" if inside else "")
