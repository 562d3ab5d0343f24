"""Host-side batching: `num_batches` and `batches`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxprune.data._checks import _check_bool, _check_int


# ----------------------------------------------------------------------------------------------------------------------
# Batching (host)
# ----------------------------------------------------------------------------------------------------------------------
def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batches` yields for `n` examples.

    Args:
        n: Number of examples, an int >= 0.
        batch_size: An int >= 1.
        drop_last: If True, a final partial batch is not counted.

    Returns:
        `n // batch_size` if `drop_last`, else `ceil(n / batch_size)`.

    Raises:
        TypeError: `n` or `batch_size` not an int, `drop_last` not a bool.
        ValueError: `n` < 0 or `batch_size` < 1.

    Example:
        >>> num_batches(10, 3), num_batches(10, 3, drop_last=True)
        (4, 3)
    """
    n = _check_int(n, "n", minimum=0)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    drop_last = _check_bool(drop_last, "drop_last")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x,
    y,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (x, y) minibatches as numpy arrays, in order or shuffled.

    Every example appears exactly once per epoch (except the final partial batch when `drop_last`). Arguments are
    validated and the order is drawn when `batches` is called, not when iteration starts. An int `seed` gives the
    same order every call: pass a different seed per epoch (e.g. `seed=epoch`) or one `np.random.Generator`, which
    advances, to get a new order each epoch.

    Args:
        x: Inputs, an array of N examples along axis 0.
        y: Targets, an array of N examples along axis 0.
        batch_size: Examples per batch, an int >= 1.
        shuffle: Whether to visit examples in a random order (required, so the choice is explicit).
        seed: A non-negative int or a `np.random.Generator`; required when `shuffle` is True, ignored otherwise.
        drop_last: If True, leave out a final batch smaller than `batch_size`.

    Returns:
        A generator of `num_batches(N, batch_size, drop_last)` pairs `(x_batch, y_batch)`.

    Raises:
        TypeError: `batch_size` not an int, `shuffle`/`drop_last` not bools, or `seed` neither an int nor a Generator.
        ValueError: `batch_size` < 1, `x` and `y` of different lengths, or `shuffle=True` without a `seed`.

    Example:
        >>> x = np.arange(10); y = x * 10
        >>> [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)]
        [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
        >>> sorted(int(v) for xb, _ in batches(x, y, 4, shuffle=True, seed=0) for v in xb)
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    shuffle = _check_bool(shuffle, "shuffle")
    drop_last = _check_bool(drop_last, "drop_last")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"x and y must have a leading example axis, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; they must match")
    order = None
    if shuffle:
        if seed is None:
            raise ValueError("shuffle=True needs seed= (a non-negative int or a np.random.Generator)")
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng(_check_int(seed, "seed", minimum=0))
        order = rng.permutation(x.shape[0])
    return _iter_batches(x, y, order, batch_size, num_batches(x.shape[0], batch_size, drop_last))


def _iter_batches(x, y, order, batch_size: int, count: int):
    for b in range(count):
        if order is None:
            sl = slice(b * batch_size, (b + 1) * batch_size)
            yield x[sl], y[sl]
        else:
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield x[idx], y[idx]
