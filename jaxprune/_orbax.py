"""The orbax layout of a jaxprune checkpoint: sharded and multi-host arrays in an orbax directory, with the header
of `jaxprune.checkpoint` beside them and one digest over the header and every file orbax wrote.

Layout of a checkpoint directory ``D``::

    D/checkpoint.jaxprune     magic line, JSON header line, ``sha256:<hex>`` line (the digest of the first two)
    D/arrays/                 an orbax PyTree checkpoint of ``{"000000": leaf 0, "000001": leaf 1, ...}``

The header is the single-file header (model config, plans, step, RNG, metadata, the variables' leaf table) whose
``payload`` entry is ``{"orbax": {"opt_state": leaf table, "files": {relative path: sha256}}}``: leaf ``i`` of the
orbax tree is the ``i``-th entry of the variables table, then of the optimizer-state table, in sorted path order.
An NNX module's checkpoint (`jaxprune._user_checkpoint`) adds ``"nnx_state"``, the leaf table of the module's other
variables, whose leaves follow.
Every file under ``arrays/`` is hashed, so a changed byte anywhere (orbax's own metadata included) is a `ValueError`,
and the restore target is built from the digest-checked tables after they were checked against the rebuilt model:
orbax never decides a shape. orbax-checkpoint is a runtime dependency (flax requires it anyway), imported only
here and only when an orbax checkpoint is written or read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprune._trees import is_shape_entry

__all__ = ["HEADER_FILE", "is_orbax_dir", "read", "write"]

HEADER_FILE = "checkpoint.jaxprune"
_ARRAYS = "arrays"


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - a dependency of flax, so always installed with it
        raise ImportError("format='orbax' needs orbax-checkpoint: pip install orbax-checkpoint") from e
    return ocp


def is_orbax_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HEADER_FILE))


def _table(tree: Mapping[str, Any], *, keep_empty: bool) -> tuple[dict[str, Any], list]:
    """Sorted leaf table ``{path: [shape, dtype] or None (an empty node)}`` and the leaves in that order."""
    flat = traverse_util.flatten_dict(tree, keep_empty_nodes=keep_empty) if tree else {}
    table, leaves = {}, []
    for p in sorted(flat, key=lambda k: "/".join(map(str, k))):
        v = flat[p]
        name = "/".join(map(str, p))
        if v is traverse_util.empty_node:
            table[name] = None
            continue
        dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
        table[name] = [list(np.shape(v)), jnp.dtype(dtype).name]
        leaves.append(v)
    return table, leaves


def _file_digests(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = h.hexdigest()
    return dict(sorted(out.items()))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write(
    path: str, header: dict[str, Any], variables: Mapping[str, Any], opt_state_dict, *, encode, nnx_state=None
) -> None:
    """Writes the directory `path` (every process must call; process 0 writes the header and renames).

    `encode(header) -> bytes` gives the header file's bytes (magic, header line, digest line). The directory is
    built as ``path.partial`` and renamed over `path` only once complete; an old `path` is replaced only then.
    """
    ocp = _ocp()
    var_table, var_leaves = _table(variables, keep_empty=False)
    opt_table, opt_leaves = _table(opt_state_dict, keep_empty=True) if opt_state_dict is not None else ({}, [])
    nnx_table, nnx_leaves = _table(nnx_state, keep_empty=False) if nnx_state is not None else ({}, [])
    leaves = var_leaves + opt_leaves + nnx_leaves
    tree = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
    partial = f"{path}.partial"
    if jax.process_index() == 0 and os.path.lexists(partial):
        shutil.rmtree(partial)  # a save killed before its rename
    _sync("jaxprune-orbax-clean")
    try:
        with ocp.PyTreeCheckpointer() as ck:
            ck.save(os.path.join(os.path.abspath(partial), _ARRAYS), tree)
    except Exception as e:
        raise ValueError(f"orbax could not write checkpoint directory {path}: {type(e).__name__}: {e}") from e
    _sync("jaxprune-orbax-saved")
    if jax.process_index() == 0:
        header = {
            **header,
            "variables": var_table,
            "payload": {
                "orbax": {
                    "opt_state": opt_table,
                    "files": _file_digests(os.path.join(partial, _ARRAYS)),
                    **({"nnx_state": nnx_table} if nnx_state is not None else {}),
                }
            },
        }
        from jaxprune._atomic import atomic_write

        with atomic_write(os.path.join(partial, HEADER_FILE)) as f:
            f.write(encode(header))
        old = f"{path}.old"
        if os.path.lexists(path):
            if os.path.lexists(old):
                shutil.rmtree(old)
            os.rename(path, old)
        os.rename(partial, path)
        if os.path.lexists(old):
            shutil.rmtree(old)
    _sync("jaxprune-orbax-renamed")


def _shape_dtype(entry) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(entry[0]), jnp.dtype(entry[1])


def read(path: str, header: Mapping[str, Any], *, sharding) -> tuple[dict[str, Any], Any, Any]:
    """The variables, optimizer state-dict and (an NNX module's checkpoint, else None) the module's other variables
    of a verified header, restored at `sharding`.

    The caller has checked the header's digest and its tables against the rebuilt model. This checks every file
    under ``arrays/`` against the header's digests, restores exactly the tables' shapes and dtypes, and checks the
    restored arrays against them again.

    Args:
      path: The checkpoint directory.
      header: Its verified header.
      sharding: None (the first device), a `jax.sharding.Sharding` for every array, or a callable
        ``(leaf path, shape) -> Sharding``.

    Raises:
      ValueError: a file added, missing or changed; anything orbax raises (naming the directory).
    """
    info = header["payload"]["orbax"]
    arrays = os.path.join(path, _ARRAYS)
    found = _file_digests(arrays) if os.path.isdir(arrays) else {}
    want = info["files"]
    if set(found) != set(want):
        diff = sorted(set(found) ^ set(want))
        raise ValueError(f"orbax checkpoint {path} is incomplete or was modified: files added or missing {diff[:5]}")
    for name in want:
        if found[name] != want[name]:
            raise ValueError(f"orbax checkpoint {path} is corrupted or was modified: {_ARRAYS}/{name} changed")
    names = [("variables", k, e) for k, e in header["variables"].items() if e is not None]
    names += [("opt_state", k, e) for k, e in info["opt_state"].items() if e is not None]
    names += [("nnx_state", k, e) for k, e in info.get("nnx_state", {}).items()]

    def place(leaf: str, shape):
        if sharding is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        if isinstance(sharding, jax.sharding.Sharding):
            return sharding
        return sharding(leaf, shape)

    ocp = _ocp()
    target = {}
    for i, (_, leaf, entry) in enumerate(names):
        shape, dtype = _shape_dtype(entry)
        target[f"{i:06d}"] = jax.ShapeDtypeStruct(shape, dtype, sharding=place(leaf, shape))
    try:
        with ocp.PyTreeCheckpointer() as ck:
            restored = ck.restore(
                os.path.abspath(arrays),
                args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
                ),
            )
    except Exception as e:  # every orbax failure, whatever its type
        raise ValueError(f"orbax could not restore checkpoint directory {path}: {type(e).__name__}: {e}") from e
    if not isinstance(restored, Mapping) or set(restored) != set(target):
        raise ValueError(f"orbax checkpoint {path} restored another tree than its header describes")
    out: dict[str, dict] = {"variables": {}, "opt_state": {}, "nnx_state": {}}
    for i, (part, leaf, entry) in enumerate(names):
        arr = restored[f"{i:06d}"]
        shape, dtype = _shape_dtype(entry)
        if tuple(arr.shape) != shape or jnp.dtype(arr.dtype) != dtype:
            raise ValueError(
                f"orbax checkpoint {path}: leaf {leaf} restored as {tuple(arr.shape)} {arr.dtype}, its header says "
                f"{shape} {dtype}"
            )
        out[part][leaf if part == "nnx_state" else tuple(leaf.split("/"))] = arr
    for part, table in (("variables", header["variables"]), ("opt_state", info["opt_state"])):
        for leaf, entry in table.items():
            if entry is None:
                out[part][tuple(leaf.split("/"))] = {}
    variables = traverse_util.unflatten_dict(out["variables"])
    opt = traverse_util.unflatten_dict(out["opt_state"]) if header["has_opt_state"] else None
    return variables, opt, out["nnx_state"] if "nnx_state" in info else None


def check_payload(info, bad: Callable[[str, str], None], *, nnx: bool = False) -> None:
    """Strict types of the header's ``payload.orbax`` entry (with ``nnx_state`` for an NNX module's checkpoint)."""
    keys = {"opt_state", "files", "nnx_state"} if nnx else {"opt_state", "files"}
    if not isinstance(info, dict) or set(info) != keys:
        bad("'payload.orbax'", f"must be an object with exactly {sorted(keys)}")
    if nnx and not (
        isinstance(info["nnx_state"], dict)
        and all(isinstance(e, list) and len(e) == 2 for e in info["nnx_state"].values())
    ):
        bad("'payload.orbax.nnx_state'", "must map variable paths to [shape, dtype]")
    table = info["opt_state"]
    if not isinstance(table, dict) or not all(e is None or is_shape_entry(e) for e in table.values()):
        bad("'payload.orbax.opt_state'", "must map leaf paths to [shape, dtype] or null")
    files = info["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) and len(v) == 64 for v in files.values()):
        bad("'payload.orbax.files'", "must map file names to SHA-256 hex digests")
