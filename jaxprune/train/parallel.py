"""Data parallel placement: the ``"data"`` mesh, splitting batches over it, replicating the state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
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
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
