"""Inference latency: wall-clock time of the jitted forward, and latency ratios beside MAC ratios.

Pruning filters exists to make networks faster (Li et al. 2017, §1 and §4: the FLOP reduction is the paper's proxy
for speed). This module measures whether the proxy holds on the machine at hand: `benchmark_latency` times the jitted
inference forward ``model.apply(variables, x, train=False)`` of one model, `benchmark_many` several models
interleaved (one call of each in turn, so that load from other processes hits all of them alike), and
`compare_latency` puts the pruned/original latency ratio next to the MAC ratio of `jaxprune.count_macs`.

What is timed: one call of the compiled forward on an input already on the device, until its result is ready
(``block_until_ready``). Compilation is excluded (done ahead with ``jit(...).lower(...).compile()``, and reported
separately); warm-up calls run before timing. It does not prune, count MACs itself or pick conv paths (the models'
``conv_impl`` field does; see `jaxprune.models.layers`).
"""

from __future__ import annotations

import dataclasses
import gc
import numbers
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._table import text_table
from jaxprune.models.base import is_prunable_model

__all__ = ["LatencyComparison", "LatencyResult", "benchmark_latency", "benchmark_many", "compare_latency"]

LATENCY_CONVENTION = (
    "latency = wall-clock ms of one call of the jitted inference forward (train=False) on an input already on the "
    "device, until the result is ready; compile excluded, warm-up calls not timed"
)


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """Latency of one model's jitted inference forward at several batch sizes.

    Attributes:
      name: A label for the model (the `benchmark_many` key, or the model's class and depth).
      image_shape: The (H, W, C) image shape timed.
      samples_ms: Batch size -> the timed calls, in milliseconds, in the order they ran.
      compile_s: Batch size -> seconds spent compiling that forward (not part of the samples).
      backend: The jax backend it ran on (``cpu``, ``gpu``, ``tpu``).
      xla_flops: Batch size -> XLA's FLOP count of that compiled forward (``cost_analysis()['flops']``, the figure
        `jaxprune.xla_flops` reports for the same model, variables and input shape), read from the program timed,
        so no second compile; empty when the backend reports no cost analysis.
    """

    name: str
    image_shape: tuple[int, int, int]
    samples_ms: Mapping[int, tuple[float, ...]]
    compile_s: Mapping[int, float]
    backend: str
    xla_flops: Mapping[int, float] = dataclasses.field(default_factory=dict)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes timed, in the order given."""
        return tuple(self.samples_ms)

    def median_ms(self, batch_size: int) -> float:
        """Median latency in ms at `batch_size`."""
        return float(statistics.median(self._samples(batch_size)))

    def min_ms(self, batch_size: int) -> float:
        """Fastest call in ms at `batch_size`."""
        return float(min(self._samples(batch_size)))

    def max_ms(self, batch_size: int) -> float:
        """Slowest timed call in ms at `batch_size`."""
        return float(max(self._samples(batch_size)))

    def _samples(self, batch_size: int) -> tuple[float, ...]:
        if batch_size not in self.samples_ms:
            raise KeyError(f"batch size {batch_size!r} was not timed; timed: {', '.join(map(str, self.samples_ms))}")
        return self.samples_ms[batch_size]

    def format(self) -> str:
        """One line per batch size: median, min, max (ms), images/s at the median, compile time."""
        lines = [("batch", "median ms", "min ms", "max ms", "images/s", "compile s")]
        for b in self.batch_sizes:
            med = self.median_ms(b)
            lines.append(
                (
                    str(b),
                    f"{med:.3f}",
                    f"{self.min_ms(b):.3f}",
                    f"{self.max_ms(b):.3f}",
                    f"{1e3 * b / med:,.0f}",
                    f"{self.compile_s[b]:.2f}",
                )
            )
        n = len(next(iter(self.samples_ms.values()))) if self.samples_ms else 0
        return (
            f"{self.name}, image {self.image_shape}, {self.backend}, {n} timed calls per batch size\n"
            f"{text_table(lines, left=0)}\nconvention: {LATENCY_CONVENTION}"
        )

    def __str__(self) -> str:
        return self.format()


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """An original and a pruned model timed interleaved, with the MAC ratio beside the latency ratio.

    Attributes:
      before: `LatencyResult` of the original model.
      after: `LatencyResult` of the pruned model.
      macs_before: `count_macs(model).macs` per image (conv + dense MACs, the paper's FLOP).
      macs_after: The same for the pruned model.
    """

    before: LatencyResult
    after: LatencyResult
    macs_before: int
    macs_after: int

    @property
    def mac_ratio(self) -> float:
        """Pruned / original MACs (per image, so the same at every batch size)."""
        return self.macs_after / self.macs_before

    def latency_ratio(self, batch_size: int) -> float:
        """Pruned / original median latency at `batch_size` (below 1: the pruned model is faster)."""
        return self.after.median_ms(batch_size) / self.before.median_ms(batch_size)

    def speedup(self, batch_size: int) -> float:
        """Original / pruned median latency at `batch_size`."""
        return 1.0 / self.latency_ratio(batch_size)

    def format(self) -> str:
        """A table: per batch size, both medians (min..max), the latency ratio and the MAC ratio."""
        lines = [("batch", "original ms", "pruned ms", "latency ratio", "MAC ratio", "latency - MAC")]
        for b in self.before.batch_sizes:
            r = self.latency_ratio(b)
            lines.append(
                (
                    str(b),
                    _spread(self.before, b),
                    _spread(self.after, b),
                    f"{r:.3f}",
                    f"{self.mac_ratio:.3f}",
                    f"{r - self.mac_ratio:+.3f}",
                )
            )
        return (
            f"{self.before.name} -> {self.after.name}, image {self.before.image_shape}, {self.before.backend}; "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} per image\n{text_table(lines, left=0)}\n"
            f"convention: {LATENCY_CONVENTION}; medians, (min..max) beside; MACs = conv + dense "
            "multiply-accumulates (the paper's FLOP)"
        )

    def __str__(self) -> str:
        return self.format()


def _spread(r: LatencyResult, b: int) -> str:
    return f"{r.median_ms(b):.3f} ({r.min_ms(b):.3f}..{r.max_ms(b):.3f})"


# -- validation -------------------------------------------------------------------------------------------------------


def _check_int(v, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{what} must be an int >= {lo}, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v}")
    return int(v)


def _check_batch_sizes(batch_sizes) -> tuple[int, ...]:
    if isinstance(batch_sizes, numbers.Integral) and not isinstance(batch_sizes, bool):
        batch_sizes = (batch_sizes,)
    if not isinstance(batch_sizes, Sequence) or isinstance(batch_sizes, str):
        raise TypeError(f"batch_sizes must be a tuple of ints >= 1, got {type(batch_sizes).__name__}")
    if not batch_sizes:
        raise ValueError("batch_sizes must name at least one batch size (ints >= 1), got an empty sequence")
    out = []
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise TypeError(f"batch_sizes must hold ints >= 1, got {type(b).__name__} {b!r} in {tuple(batch_sizes)}")
        if b <= 0:
            raise ValueError(f"batch sizes must be >= 1, got {int(b)} in {tuple(batch_sizes)}")
        if int(b) in out:
            raise ValueError(f"batch sizes must be distinct, got {int(b)} twice in {tuple(batch_sizes)}")
        out.append(int(b))
    return tuple(out)


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    if not isinstance(image_shape, Sequence) or isinstance(image_shape, str):
        raise TypeError(f"image_shape must be a tuple (H, W, C) of ints, got {type(image_shape).__name__}")
    for d in image_shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"image_shape must hold ints (H, W, C), got {tuple(image_shape)!r}")
    if len(image_shape) != 3:
        raise ValueError(
            f"image_shape must be (H, W, C) of length 3 (no batch axis: batch_sizes gives it), got {tuple(image_shape)}"
        )
    if min(image_shape) < 1:
        raise ValueError(f"image_shape must hold sizes >= 1, got {tuple(image_shape)}")
    return tuple(int(d) for d in image_shape)  # type: ignore[return-value]


def _check_entry(name: str, model, variables) -> None:
    if not isinstance(name, str):
        raise TypeError(f"benchmark names must be str, got {type(name).__name__} {name!r}")
    if not is_prunable_model(model):
        raise TypeError(
            f"{name}: {type(model).__name__} is not a prunable model: it needs channel_groups() and "
            "with_widths(mapping) (the jaxprune.models protocol)"
        )
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            f"{name}: variables must be a mapping with a 'params' collection (as model.init returns), got "
            f"{type(variables).__name__}"
        )
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(variables)):
        raise TypeError(
            f"{name}: variables hold abstract shapes (jax.ShapeDtypeStruct); timing needs arrays, e.g. "
            "jaxprune.random_variables(model)"
        )


def _label(model) -> str:
    depth = getattr(model, "depth", None)
    return f"{type(model).__name__}-{depth}" if depth is not None else type(model).__name__


# -- timing -------------------------------------------------------------------------------------------------------------


def _compile(model, variables, shape: tuple[int, ...]):
    def forward(v, x):
        return model.apply(v, x, train=False)

    t = time.perf_counter()
    compiled = jax.jit(forward).lower(variables, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
    return compiled, time.perf_counter() - t


def _cost_flops(compiled) -> float | None:
    """XLA's flops of a compiled forward (`jaxprune.xla_flops`' figure), or None if the backend reports none."""
    from jaxprune.flops import _flops_of  # flops imports the zoo; keep this module's import light

    try:
        return _flops_of(compiled.cost_analysis())
    except RuntimeError:
        return None


def benchmark_many(
    entries: Mapping[str, tuple[Any, Mapping[str, Any]]],
    image_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    collect: bool = False,
) -> dict[str, LatencyResult]:
    """Latency of several models' jitted inference forwards, timed interleaved (paper §1, §4: FLOPs as speed proxy).

    Every forward is compiled first (excluded from the timings), then warmed up `warmup` times; then, `repeats`
    times, each model runs once in turn (the order alternates between rounds so that no model always follows the
    same one). Interleaving makes the ratios fair on a shared, noisy machine: a burst of load from other processes
    hits every model of the round.

    Args:
      entries: Name -> (model, variables); the models take ``apply(variables, x, train=False)`` with NHWC float32 x.
      image_shape: (H, W, C) of one image (no batch axis).
      batch_sizes: Batch sizes to time, each timed separately (ints >= 1, distinct).
      repeats: Timed calls per model and batch size (>= 1).
      warmup: Untimed calls per model and batch size after compiling (>= 0).
      seed: Seed of the random input (the same input for every model).
      collect: Run ``gc.collect()`` before each timed call (steadier for short calls that allocate on the host).

    Returns:
      Name -> `LatencyResult`, in the order of `entries`.

    Raises:
      TypeError: an entry that is not (prunable model, variables mapping), or arguments of the wrong kind.
      ValueError: no entries, a batch size <= 0 (or repeated), `repeats` < 1, `warmup` < 0, an `image_shape` not of
        length 3 or with sizes < 1.
    """
    if not isinstance(entries, Mapping):
        raise TypeError(f"entries must be a mapping name -> (model, variables), got {type(entries).__name__}")
    if not entries:
        raise ValueError("entries must hold at least one (model, variables) pair, got an empty mapping")
    for name, entry in entries.items():
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise TypeError(f"entry {name!r} must be a (model, variables) pair, got {type(entry).__name__}")
        _check_entry(name, *entry)
    shape = _check_image_shape(image_shape)
    sizes = _check_batch_sizes(batch_sizes)
    repeats = _check_int(repeats, "repeats", 1)
    warmup = _check_int(warmup, "warmup", 0)
    if not isinstance(collect, bool):
        raise TypeError(f"collect must be a bool, got {type(collect).__name__}")

    names = list(entries)
    device_vars = {n: jax.device_put(entries[n][1]) for n in names}
    samples: dict[str, dict[int, list[float]]] = {n: {} for n in names}
    compile_s: dict[str, dict[int, float]] = {n: {} for n in names}
    flops: dict[str, dict[int, float]] = {n: {} for n in names}
    rng = np.random.default_rng(seed)
    for b in sizes:
        x = jax.device_put(rng.standard_normal((b, *shape), dtype=np.float32))
        fns = {}
        for n in names:
            fns[n], compile_s[n][b] = _compile(entries[n][0], device_vars[n], (b, *shape))
            f = _cost_flops(fns[n])
            if f is not None:
                flops[n][b] = f
        for n in names:
            for _ in range(warmup):
                jax.block_until_ready(fns[n](device_vars[n], x))
            samples[n][b] = []
        for r in range(repeats):
            for n in names if r % 2 == 0 else reversed(names):
                if collect:
                    gc.collect()
                t = time.perf_counter()
                jax.block_until_ready(fns[n](device_vars[n], x))
                samples[n][b].append(1e3 * (time.perf_counter() - t))
        del fns, x
    backend = jax.default_backend()
    return {
        n: LatencyResult(
            name=n,
            image_shape=shape,
            samples_ms={b: tuple(samples[n][b]) for b in sizes},
            compile_s=dict(compile_s[n]),
            backend=backend,
            xla_flops=dict(flops[n]),
        )
        for n in names
    }


def benchmark_latency(
    model,
    variables: Mapping[str, Any],
    image_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> LatencyResult:
    """Median, min and max latency of a model's jitted inference forward at each batch size (paper §1, §4).

    Compile excluded (reported in ``compile_s``), `warmup` untimed calls first, then `repeats` timed calls of
    ``model.apply(variables, x, train=False)`` on a random input already on the device, each until its result is
    ready.

    Args:
      model: A zoo model (or any module with the prunable-model protocol).
      variables: Its variables.
      image_shape: (H, W, C) of one image, e.g. ``(32, 32, 3)``; the batch axis comes from `batch_sizes`.
      batch_sizes: Batch sizes to time (ints >= 1).
      repeats: Timed calls per batch size (>= 1).
      warmup: Untimed calls per batch size after compiling (>= 0).
      seed: Seed of the random input.

    Returns:
      A `LatencyResult`: ``.median_ms(b)``, ``.min_ms(b)``, ``.max_ms(b)``, ``.samples_ms``, ``.compile_s``;
      ``str(result)`` is a table.

    Raises:
      TypeError: `model` lacks the protocol, `variables` is not a mapping with ``params``, or an argument of the
        wrong kind.
      ValueError: a batch size <= 0, `repeats` < 1, `warmup` < 0, or `image_shape` not (H, W, C) of sizes >= 1.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> r = jp.benchmark_latency(m, jp.random_variables(m), (32, 32, 3), batch_sizes=(2,), repeats=3)
      >>> r.batch_sizes, len(r.samples_ms[2]), r.min_ms(2) <= r.median_ms(2) <= r.max_ms(2)
      ((2,), 3, True)
    """
    _check_entry(_label(model), model, variables)
    out = benchmark_many(
        {_label(model): (model, variables)},
        image_shape,
        batch_sizes=batch_sizes,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    return next(iter(out.values()))


def compare_latency(
    model,
    variables: Mapping[str, Any],
    new_model,
    new_variables: Mapping[str, Any],
    image_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    verbose: bool = False,
) -> LatencyComparison:
    """Times an original and a pruned model interleaved and sets the latency ratio beside the MAC ratio (paper §4).

    The paper reports FLOP reductions as the speed-up of pruning; this says how much of it the machine delivers.
    Both forwards are compiled, warmed up and timed in alternation (`benchmark_many`); MACs come from
    `jaxprune.count_macs` at one image (conv + dense MACs, the paper's FLOP).

    Args:
      model: The original model.
      variables: Its variables.
      new_model: The pruned model (e.g. from `jaxprune.prune`).
      new_variables: Its variables.
      image_shape: (H, W, C) of one image.
      batch_sizes: Batch sizes to time (ints >= 1).
      repeats: Timed calls per model and batch size (>= 1).
      warmup: Untimed calls per model and batch size (>= 0).
      seed: Seed of the random input.
      verbose: Print the table (``str`` of the result) before returning.

    Returns:
      A `LatencyComparison`: ``.latency_ratio(b)``, ``.mac_ratio``, ``.speedup(b)``; ``str(result)`` is the table.

    Raises:
      TypeError, ValueError: as `benchmark_many` and `jaxprune.count_macs`.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet20()
      >>> v = jp.random_variables(m)
      >>> small, small_v = jp.prune(m, v, jp.make_plan(m, v, prune_ratio=0.5))
      >>> c = jp.compare_latency(m, v, small, small_v, (32, 32, 3), batch_sizes=(2,), repeats=3)
      >>> round(c.mac_ratio, 3), c.latency_ratio(2) > 0
      (0.51, True)
    """
    from jaxprune.flops import count_macs  # flops imports the zoo; keep this module's import light

    _check_entry("model", model, variables)
    _check_entry("new_model", new_model, new_variables)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be a bool, got {type(verbose).__name__}")
    shape = _check_image_shape(image_shape)
    a, b = _label(model), _label(new_model)
    if a == b:
        a, b = f"{a} (original)", f"{b} (pruned)"
    results = benchmark_many(
        {a: (model, variables), b: (new_model, new_variables)},
        shape,
        batch_sizes=batch_sizes,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    macs_b = count_macs(model, (1, *shape)).macs
    macs_a = count_macs(new_model, (1, *shape)).macs
    out = LatencyComparison(before=results[a], after=results[b], macs_before=macs_b, macs_after=macs_a)
    if verbose:
        print(out)
    return out
