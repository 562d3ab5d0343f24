"""Data parallel placement: the ``"data"`` mesh, splitting batches over it, replicating the state.

Two ways to feed a multi-process job (docs/scaling.md):

* **replicated data** (the default): every process holds the same arrays and `shard_batch` takes its own slice of
  every global batch;
* **per-process data** (``per_process_data=True`` in `fit`, `finetune`, `evaluate`): every process holds only its own
  shard; global batch i is the concatenation, in process order, of each process's batch i (`shard_local_batch`).
  The processes first agree that their shards have the same lengths (`check_per_process_lengths`), so that they run
  the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# ----------------------------------------------------------------------------------------------------------------------
# Meshes and placement
# ----------------------------------------------------------------------------------------------------------------------
def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over `devices` (default: `jax.devices()`, every device of every process).

    Example:
      >>> data_mesh().axis_names
      ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def _check_mesh(mesh) -> Mesh:
    if mesh is None:
        return data_mesh()
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {DATA_AXIS!r} to split batches over, got {mesh.axis_names}")
    return mesh


def _data_size(mesh: Mesh) -> int:
    return int(mesh.shape[DATA_AXIS])


def _check_batch_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
    n = _data_size(mesh)
    if batch_size % n:
        lower, upper = (batch_size // n) * n, (batch_size // n + 1) * n
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {n} devices of the mesh's {DATA_AXIS!r} axis; each device "
            f"takes an equal share, so use a multiple of {n} (e.g. {hint})"
        )


def shard_batch(mesh: Mesh, array) -> jax.Array:
    """Places a host batch split along its first axis over the mesh's ``"data"`` axis (replicated over other axes).

    With several processes, every process passes the same global batch and contributes its own slice of it.

    Raises:
      ValueError: a first axis not divisible by the ``"data"`` axis size.
    """
    mesh = _check_mesh(mesh)
    array = np.asarray(array)
    _check_batch_divisible(array.shape[0], mesh, "batch size")
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    procs = jax.process_count()
    if procs == 1:
        return jax.device_put(array, sharding)
    per = array.shape[0] // procs
    local = array[jax.process_index() * per : (jax.process_index() + 1) * per]
    return jax.make_array_from_process_local_data(sharding, local, array.shape)


def _replicate(tree, mesh: Mesh):
    """Every array leaf of `tree` replicated over `mesh`.

    On a mesh spanning several processes, a leaf that lives on this process's devices only (e.g. restored from a
    checkpoint with `jaxprune.load_checkpoint`) cannot be moved by `jax.device_put` directly: its host value is placed
    instead, which every process must hold identically (as the replicated training loop guarantees).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x  # already replicated on this mesh (every epoch after the first)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global: a resharding collective
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(put, tree)


# ----------------------------------------------------------------------------------------------------------------------
# Per-process data
# ----------------------------------------------------------------------------------------------------------------------
def check_per_process_lengths(lengths: Mapping[str, int]) -> None:
    """Checks that `jax.distributed` is initialised and every process holds shards of the same lengths.

    A collective: every process must call it with the same keys. Per-process data needs equal lengths because every
    process must run the same number of steps (a process with fewer batches would leave the others waiting in a
    collective until the job is aborted).

    Args:
      lengths: What is counted -> this process's count, e.g. ``{"training examples": 5000}``.

    Raises:
      ValueError: `jax.distributed.initialize()` has not been called (names the process count), or the counts differ
        between processes (names every process's count).
    """
    if not jax.distributed.is_initialized():
        raise ValueError(
            "per_process_data=True needs a multi-process job: call jax.distributed.initialize() in every process "
            f"first (jax.distributed is not initialised; jax.process_count() is {jax.process_count()}); with one "
            "process, pass the whole data set with per_process_data=False"
        )
    from jax.experimental import multihost_utils

    names = sorted(lengths)
    mine = np.asarray([int(lengths[k]) for k in names], np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), len(names))
    for j, name in enumerate(names):
        counts = [int(c) for c in everyone[:, j]]
        if len(set(counts)) > 1:
            per = ", ".join(f"process {i}: {c}" for i, c in enumerate(counts))
            raise ValueError(
                f"per_process_data=True needs the same number of {name} in every process, got {per}; give every "
                "process a shard of equal length (e.g. drop the remainder), so that all run the same steps"
            )


def shard_local_batch(mesh: Mesh, array) -> jax.Array:
    """Places this process's part of a global batch: the global batch is every process's part, in process order.

    Each process passes its own rows (``global batch size / jax.process_count()`` of them); they land on its own
    devices of the mesh's ``"data"`` axis. With one process this is `shard_batch`.

    Raises:
      ValueError: a global batch (local rows times the process count) not divisible by the ``"data"`` axis size.
    """
    mesh = _check_mesh(mesh)
    array = np.asarray(array)
    procs = jax.process_count()
    global_shape = (array.shape[0] * procs, *array.shape[1:])
    _check_batch_divisible(global_shape[0], mesh, "global batch size")
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    if procs == 1:
        return jax.device_put(array, sharding)
    return jax.make_array_from_process_local_data(sharding, array, global_shape)


def _placement(mesh: Mesh, batch_size: int, per_process_data: bool, lengths: Mapping[str, int]):
    """(rows this process reads per global batch, the function placing them on the mesh) for one data mode."""
    if not per_process_data:
        return batch_size, lambda a: shard_batch(mesh, a)
    check_per_process_lengths(lengths)
    procs = jax.process_count()
    if batch_size % procs:
        raise ValueError(
            f"per_process_data=True splits each global batch equally over the {procs} processes, but batch size "
            f"{batch_size} is not a multiple of {procs}"
        )
    place: Callable[[Any], jax.Array] = lambda a: shard_local_batch(mesh, a)  # noqa: E731
    return batch_size // jax.process_count(), place
