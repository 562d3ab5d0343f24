"""Checkpoints: one self-describing file holding a (possibly pruned) model, its variables and its training state.

This module owns the checkpoint file format, its atomic writing and its validated loading. A checkpoint records the
model configuration (`model.config()`, so a pruned model comes back at its reduced widths through
`jaxprune.models.from_config` with no user code), the plan history that led to it, the variables, the optimizer state,
the step and the PRNG key. It does not train (`jaxprune.train`), decide or slice anything, and it never pickles: the
arrays are a `flax.serialization` msgpack payload and everything else is JSON.

File layout (format version 2)::

    JAXPRUNE-CHECKPOINT\n                 magic line
    {"format": "jaxprune.checkpoint", "version": 2, "model": {...}, "plans": [...], "step": ..., "rng": ...,
     "variables": {leaf path: [shape, dtype]}, "payload": {"bytes": N}, ...}\n   one line of JSON
    sha256:<64 hex digits>\n             SHA-256 of the magic line, the header line and the payload
    <N bytes of msgpack>                  {"variables": ..., "opt_state": ...}

`head -2` shows what a checkpoint holds. One digest covers the header and the payload, so any changed, missing or
added byte (a flipped step, a swapped header, a truncated payload) is a `ValueError` naming the file, never a load
of other values; the digest is checked before anything in the header is used beyond the payload's length. (It
detects damage and edits, not a forger who recomputes it: it is not a signature.) After the digest, every header
field is checked strictly (types, ranges, the leaf table against the arrays), so even a consistent but malformed file
is a `ValueError`. Version 1 files (a digest of the payload only) still load, with the same strict checks.

Writes go to a temporary file in the same folder that is `os.replace`-d over the target only once complete, so a
crash mid-save leaves the previous checkpoint intact; temporary files left by killed saves are removed by the next
save into the folder (`jaxprune._atomic`).

Sharded and multi-host arrays: ``save_checkpoint(path, ..., format="orbax")`` writes an orbax directory instead (the
same header, covering a SHA-256 of every file orbax wrote; see `jaxprune._orbax`), which `load_checkpoint` reads
back onto any sharding; the header's shapes are checked against the rebuilt model before orbax restores an array.

Multi-host, single file: `save_checkpoint` must be called by every process (it gathers arrays that are not fully addressable);
only process 0 writes. `load_checkpoint` reads on every process and returns host-local arrays; place them with
`jaxprune.train` (its `fit` replicates the state over the mesh).

Optimizer states are optax pytrees of functions and arrays; only their arrays are stored. Give `load_checkpoint` the
same optax transformation (`tx=`) to get the optimizer state back in its own structure, checked leaf by leaf.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from jaxprune import models as _models
from jaxprune._atomic import atomic_write
from jaxprune._detect import is_nnx_module
from jaxprune._trees import check_variables as _check_variables
from jaxprune._trees import checked_metadata as _checked_metadata
from jaxprune._trees import dtype_name as _dtype_name
from jaxprune._trees import host_array, host_tree
from jaxprune._trees import plain_dict as _plain_dict
from jaxprune._trees import rng_from_header as _rng_from_header
from jaxprune._trees import rng_header as _rng_header
from jaxprune.plan import PruningPlan, model_fingerprint, strict_json_loads

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "Checkpoint",
    "host_array",
    "host_tree",
    "load_checkpoint",
    "read_checkpoint_header",
    "restore_opt_state",
    "save_checkpoint",
]

#: The format version this jaxprune writes; it also reads the versions in `_READABLE_VERSIONS`.
CHECKPOINT_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_MAGIC = b"JAXPRUNE-CHECKPOINT\n"
_DIGEST_PREFIX = b"sha256:"
_DIGEST_LINE_BYTES = len(_DIGEST_PREFIX) + 64 + 1
_FORMAT = "jaxprune.checkpoint"
# The header is one JSON line; bounding how far we look for its end keeps a garbage file from being read whole.
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------------------------
# The loaded object
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What `load_checkpoint` returns.

    Attributes:
      model: The model rebuilt from the stored config (at its stored, possibly pruned, widths).
      variables: ``{"params": ..., "batch_stats": ...}`` as jax arrays, shapes checked against `model`.
      opt_state: The optimizer state restored into the structure of the `tx` given to `load_checkpoint`, or None
        when no `tx` was given or none was saved.
      raw_opt_state: The stored optimizer state as nested dicts of arrays (`flax.serialization.to_state_dict`
        form), or None when none was saved.
      step: The training step.
      rng: The PRNG key (a typed key array), or None when none was saved.
      plans: The plan history, oldest first (each plan applies to the model the previous one produced).
      metadata: The free-form JSON metadata given to `save_checkpoint`.
      header: The whole JSON header as read.
      tx: The optax transformation given to `load_checkpoint`, if any.
      optimizer: An NNX checkpoint loaded with `tx`: the `nnx.Optimizer` of `model` with its saved step and optax
        state (`opt_state` is then None); else None.
    """

    model: Any
    variables: dict[str, Any]
    opt_state: Any
    raw_opt_state: Any
    step: int
    rng: Any
    plans: tuple[PruningPlan, ...]
    metadata: dict[str, Any]
    header: dict[str, Any]
    tx: Any = None
    optimizer: Any = None

    def train_state(self, tx=None):
        """A `jaxprune.train.TrainState` continuing exactly where the saved one stopped.

        Args:
          tx: The optax transformation the state was trained with (same structure as when saved). Defaults to the
            `tx` given to `load_checkpoint`.

        Returns:
          A `TrainState` with this checkpoint's model, variables, optimizer state, step and PRNG key.

        Raises:
          ValueError: no `tx` given here or at load time, no optimizer state saved, or a saved state that does not
            fit `tx` (names the first differing leaf).
        """
        from jaxprune.train import TrainState  # optax lives there; only imported when a train state is wanted

        if is_nnx_module(self.model):
            raise TypeError("an NNX checkpoint has no train state: train ck.model with ck.optimizer (load with tx=)")
        tx = self.tx if tx is None else tx
        if tx is None:
            raise ValueError("train_state needs the optax transformation the state was trained with: pass tx=")
        if self.raw_opt_state is None:
            raise ValueError("this checkpoint holds no optimizer state; build a new state with TrainState.create")
        opt_state = self.opt_state if (self.opt_state is not None and tx is self.tx) else None
        if opt_state is None:
            opt_state = restore_opt_state(self.raw_opt_state, tx, self.variables["params"])
        rng = self.rng if self.rng is not None else jax.random.key(0)
        return TrainState(
            params=self.variables["params"],
            batch_stats=self.variables.get("batch_stats", {}),
            opt_state=opt_state,
            step=jnp.asarray(self.step, jnp.int32),
            rng=rng,
            model=self.model,
            tx=tx,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------
def _is_train_state(obj) -> bool:
    return all(hasattr(obj, a) for a in ("model", "params", "batch_stats", "opt_state", "step", "rng"))


def _leaf_table(variables: Mapping[str, Any]) -> dict[str, list]:
    flat = traverse_util.flatten_dict(_plain_dict(variables))
    return {"/".join(p): [list(np.shape(v)), _dtype_name(v)] for p, v in sorted(flat.items())}


def _write_chunks(f, data: bytes) -> None:
    """Writes `data` in chunks (the step a crash can interrupt; tests make it raise midway)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def _atomic_write_bytes(path: str, parts: Sequence[bytes]) -> None:
    with atomic_write(path, suffix=".ckpt") as f:
        for part in parts:
            _write_chunks(f, part)


def save_checkpoint(
    path: str | os.PathLike,
    model_or_state,
    variables: Mapping[str, Any] | None = None,
    *,
    opt_state=None,
    step: int | None = None,
    rng=None,
    plans: Sequence[PruningPlan] = (),
    metadata: Mapping[str, Any] | None = None,
    format: str = "file",
    optimizer=None,
    example_input=None,
) -> None:
    """Writes a checkpoint atomically: a crash at any point leaves the previous file at `path` intact.

    Either pass a train state (anything with `model`, `params`, `batch_stats`, `opt_state`, `step`, `rng`, such as
    `jaxprune.train.TrainState`) alone, or a model and its variables with the optional keyword parts, or a Flax NNX
    module alone: ``save_checkpoint(path, module, optimizer=opt, plans=[plan])``, read back by ``load_checkpoint(path,
    model=nnx.eval_shape(lambda: MyModule(rngs=nnx.Rngs(0))), tx=tx)`` (`jaxprune._user_checkpoint`).

    Args:
      path: The file to write (its folder must exist). Conventionally ``*.ckpt``.
      model_or_state: A zoo model (anything with `config()` that `jaxprune.models.from_config` rebuilds), a user's
        own model with `channel_groups()` and `with_widths()` (a `jaxprune.trace_model`; the checkpoint keeps its
        fingerprint and `plans`, and `load_checkpoint(..., model=the unpruned model)` rebuilds it), or a train state.
      variables: ``{"params": ..., "batch_stats": ...}`` when a model is given; must be None with a train state.
      opt_state: An optax state to store (model form only).
      step: The training step (model form only; default 0).
      rng: A PRNG key, typed or raw uint32 (model form only).
      plans: The plan history that produced the model, oldest first (paper §3: the record of what was pruned).
      metadata: Free-form JSON-serializable information (accuracies, command line...).
      format: ``"file"`` (one file; arrays gathered to the host) or ``"orbax"`` (a directory written by
        orbax-checkpoint, for sharded and multi-host arrays: every process calls, each writes its shards; layout in
        `jaxprune._orbax`). Both are read by `load_checkpoint`.
      optimizer: NNX only: the module's `nnx.Optimizer` (step and optax state; `step` defaults to its step).
      example_input: NNX only: an input (or `jax.ShapeDtypeStruct`) to trace the module with; not needed for a module
        that `make_plan` traced, `prune` returned or `load_checkpoint` loaded.

    Raises:
      TypeError: a model without `config()`, a non-mapping `variables`, keyword parts given with a train state,
        plans that are not `PruningPlan`s, or metadata that is not JSON-serializable; NNX: variables or `opt_state`.
      ValueError: variables that do not match the model (names the leaf, expected vs found shape), or a plan history
        whose last plan does not end at the model's widths; NNX: no trace and no `example_input`, or an optimizer
        whose state does not fit the module (names the leaf).
      FileNotFoundError: the folder of `path` does not exist.

    Example:
      >>> import jaxprune as jp, tempfile, os
      >>> m = jp.models.resnet20()
      >>> v = jp.random_variables(m)
      >>> m2, v2 = jp.prune(m, v, jp.make_plan(m, v, prune_ratio={"stage1": 0.5}))
      >>> path = os.path.join(tempfile.mkdtemp(), "pruned.ckpt")
      >>> jp.save_checkpoint(path, m2, v2)
      >>> jp.load_checkpoint(path).model.widths[:3]
      (8, 8, 8)
    """
    if format not in ("file", "orbax"):
        raise ValueError(f"unknown checkpoint format {format!r}; valid formats: 'file', 'orbax'")
    nnx_entry = nnx_state = None
    if is_nnx_module(model_or_state) or optimizer is not None or example_input is not None:
        from jaxprune import _user_checkpoint

        model, variables, nnx_entry, nnx_state, opt_state, step = _user_checkpoint.nnx_save_parts(
            model_or_state,
            variables,
            opt_state,
            optimizer=optimizer,
            example_input=example_input,
            step=step,
        )
    elif _is_train_state(model_or_state):
        if variables is not None or opt_state is not None or step is not None or rng is not None:
            raise TypeError(
                "save_checkpoint got a train state and also variables/opt_state/step/rng; a train state carries "
                "those itself, pass it alone"
            )
        state = model_or_state
        model = state.model
        if type(model).__module__ == "jaxprune.train.user":  # a user's NNX / Equinox module in a train state
            raise TypeError(
                f"save_checkpoint: this train state holds a user's {model.kind} module; save the module itself: "
                "save_checkpoint(path, state.to_model(), ...) (an NNX module: with optimizer= / example_input=)"
            )
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        opt_state, step, rng = state.opt_state, state.step, state.rng
    else:
        model = model_or_state
        if not isinstance(variables, Mapping):
            raise TypeError(
                f"save_checkpoint needs the model's variables as a mapping ('params', 'batch_stats'), got "
                f"{type(variables).__name__}"
            )
    zoo = callable(getattr(model, "config", None))
    if not zoo and not (
        callable(getattr(model, "channel_groups", None)) and callable(getattr(model, "with_widths", None))
    ):
        raise TypeError(
            f"{type(model).__name__} has neither config() (a zoo model, jaxprune.models) nor channel_groups() and "
            "with_widths() (a traced model, jaxprune.trace_model); a checkpoint cannot say how to rebuild it"
        )
    step = 0 if step is None else _checked_step(step)
    plans = tuple(plans)
    for i, p in enumerate(plans):
        if not isinstance(p, PruningPlan):
            raise TypeError(f"plans[{i}] must be a jaxprune.PruningPlan, got {type(p).__name__}")
    config = model.config() if zoo else None
    rebuilt = _models.from_config(config) if zoo else model
    if format == "orbax":
        _save_orbax(
            os.fspath(path), rebuilt, config, variables, opt_state, step, rng, plans, metadata, nnx_entry, nnx_state
        )
        return
    host_vars = {str(k): host_tree(_plain_dict(v)) for k, v in variables.items()}
    _check_variables(rebuilt, host_vars, what="variables to save")
    _check_plan_history(rebuilt, plans)

    body = {"variables": serialization.to_state_dict(host_vars)}
    if opt_state is not None:
        body["opt_state"] = serialization.to_state_dict(host_tree(opt_state))
    if nnx_entry is not None:
        body["nnx_state"] = host_tree(nnx_state)
    payload = serialization.msgpack_serialize(body)
    header = {
        **_header_base(config, rebuilt, host_vars, plans, step, rng, opt_state, metadata),
        "variables": _leaf_table(host_vars),
        "payload": {"bytes": len(payload)},
        **({"nnx": nnx_entry} if nnx_entry is not None else {}),
    }
    header_bytes, digest_line = _encode_header(header, payload)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write checkpoint {path}: folder {folder} does not exist")
    if jax.process_index() == 0:  # every process gathered above; one writes
        _atomic_write_bytes(path, (_MAGIC, header_bytes, digest_line, payload))
    if jax.process_count() > 1:  # no process returns (and reads the file) before process 0 has written it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxprune.save_checkpoint {path}")


#: Steps are stored as int32 in a train state (`jaxprune.train.TrainState`).
_MAX_STEP = 2**31 - 1


def _checked_step(step) -> int:
    arr = np.asarray(host_array(step))
    if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"step must be an int (not a bool or float), got {type(step).__name__} {step!r}")
    value = int(arr)
    if not 0 <= value <= _MAX_STEP:
        raise ValueError(f"step must be >= 0 and <= {_MAX_STEP}, got {value}")
    return value


def _header_base(config, rebuilt, variables, plans, step, rng, opt_state, metadata) -> dict[str, Any]:
    """The header entries both formats share (all but the leaf table and the payload)."""
    return {
        "format": _FORMAT,
        "version": CHECKPOINT_FORMAT_VERSION,
        "model": config,
        "plans": [p.to_dict() for p in plans],
        "step": step,
        "rng": _rng_header(rng),
        "has_opt_state": opt_state is not None,
        "metadata": _checked_metadata(metadata),
        "made_for": None if config is not None else model_fingerprint(rebuilt, variables),
    }


def _encode_header(header: Mapping[str, Any], payload: bytes = b"") -> tuple[bytes, bytes]:
    """The header line and the digest line (over magic, header line and `payload`)."""
    try:
        line = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8") + b"\n"
    except TypeError as e:
        raise TypeError(f"checkpoint metadata must be JSON-serializable: {e}") from e
    except ValueError as e:  # allow_nan=False
        raise ValueError(f"checkpoint metadata must not hold NaN or infinity (JSON has no such numbers): {e}") from e
    return line, _DIGEST_PREFIX + _digest(_MAGIC, line, payload).encode("ascii") + b"\n"


def _save_orbax(path, rebuilt, config, variables, opt_state, step, rng, plans, metadata, nnx_entry, nnx_state) -> None:
    from jaxprune import _orbax

    plain = {str(k): _plain_dict(v) for k, v in variables.items()}
    _check_variables(rebuilt, plain, what="variables to save")
    _check_plan_history(rebuilt, plans)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write checkpoint {path}: folder {folder} does not exist")
    if os.path.lexists(path) and not _orbax.is_orbax_dir(path):
        raise FileExistsError(f"cannot write orbax checkpoint {path}: it exists and is not a jaxprune orbax directory")
    header = _header_base(config, rebuilt, plain, plans, step, rng, opt_state, metadata)
    header.update({"nnx": nnx_entry} if nnx_entry is not None else {})
    _encode_header({**header, "variables": {}, "payload": {}})  # metadata errors before any file is written

    def encode(full: Mapping[str, Any]) -> bytes:
        line, digest = _encode_header(full)
        return _MAGIC + line + digest

    opt = serialization.to_state_dict(opt_state) if opt_state is not None else None
    _orbax.write(path, header, plain, opt, encode=encode, nnx_state=nnx_state)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------
def _read_header(f, path: str) -> tuple[dict[str, Any], bytes]:
    """The parsed header (format and version checked, nothing else yet) and its raw line."""
    magic = f.read(len(_MAGIC))
    if magic != _MAGIC:
        raise ValueError(f"{path} is not a jaxprune checkpoint (it does not start with {_MAGIC!r})")
    line = f.readline(_MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise ValueError(f"checkpoint {path} is truncated or corrupted: its JSON header line never ends")
    try:
        header = strict_json_loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"checkpoint {path} is corrupted: its JSON header does not parse ({e})") from e
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} is corrupted: its header is not a {_FORMAT!r} header")
    version = header.get("version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this jaxprune reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))} (a newer jaxprune wrote it, or the file is damaged)"
        )
    return header, line


_HEADER_KEYS = (
    "format",
    "version",
    "model",
    "plans",
    "step",
    "rng",
    "has_opt_state",
    "variables",
    "metadata",
    "payload",
)


def _is_int(v, minimum: int = 0, maximum: int | None = None) -> bool:
    return type(v) is int and v >= minimum and (maximum is None or v <= maximum)


def _key_data_ok(data, depth: int = 0) -> bool:
    if type(data) is list and depth < 8:
        return bool(data) and all(_key_data_ok(d, depth + 1) for d in data)
    return depth > 0 and _is_int(data, 0, 2**32 - 1)


def _check_header(header: Mapping[str, Any], path: str, *, orbax: bool = False) -> None:
    """Strict types of every header field (after the digest: a consistent file can still be malformed)."""

    def bad(field: str, what: str):
        raise ValueError(f"checkpoint {path} has a malformed header: {field} {what}")

    keys = _HEADER_KEYS + (("made_for",) if header.get("version", 1) >= 2 else ())
    keys += ("nnx",) if "nnx" in header and header.get("version", 1) >= 2 else ()
    for key in keys:
        if key not in header:
            raise ValueError(f"checkpoint {path} is corrupted: its header has no {key!r} entry")
    extra = sorted(set(header) - set(keys))
    if extra:
        bad("entries", f"{extra} are unknown")
    user_model = header.get("made_for") is not None
    if user_model:
        fp = header["made_for"]
        if header["model"] is not None or not isinstance(fp, dict) or not isinstance(fp.get("groups"), dict):
            bad("'made_for'", "must be null with a model config, or a model fingerprint without one")
    elif not isinstance(header["model"], dict):
        bad("'model'", "must be an object (a model config)")
    if "nnx" in keys:
        if not user_model:
            bad("'nnx'", "must come with a model fingerprint ('made_for')")
        from jaxprune import _user_checkpoint

        _user_checkpoint.check_entry(header["nnx"], bad)
    if not isinstance(header["plans"], list) or not all(isinstance(p, dict) for p in header["plans"]):
        bad("'plans'", "must be a list of plan objects")
    if not _is_int(header["step"], 0, _MAX_STEP):
        bad("'step'", f"must be an int in [0, {_MAX_STEP}], got {header['step']!r}")
    rng = header["rng"]
    if rng is not None:
        if not isinstance(rng, dict) or set(rng) != {"impl", "data"}:
            bad("'rng'", "must be null or an object with exactly 'impl' and 'data'")
        if rng["impl"] is not None and not isinstance(rng["impl"], str):
            bad("'rng.impl'", f"must be null or a str, got {rng['impl']!r}")
        if not _key_data_ok(rng["data"]):
            bad("'rng.data'", "must be a (nested) list of uint32 ints")
    if type(header["has_opt_state"]) is not bool:
        bad("'has_opt_state'", f"must be true or false, got {header['has_opt_state']!r}")
    table = header["variables"]
    if not isinstance(table, dict):
        bad("'variables'", "must be an object {leaf path: [shape, dtype]}")
    for leaf, entry in table.items():
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], list)
            or not all(_is_int(d) for d in entry[0])
            or not isinstance(entry[1], str)
        ):
            bad(f"'variables[{leaf!r}]'", f"must be [shape (list of ints >= 0), dtype (str)], got {entry!r}")
    if not isinstance(header["metadata"], dict):
        bad("'metadata'", "must be an object")
    info = header["payload"]
    if orbax:
        if not isinstance(info, dict) or set(info) != {"orbax"}:
            bad("'payload'", "must be an object with exactly ['orbax'] in an orbax directory")
        from jaxprune import _orbax

        _orbax.check_payload(info["orbax"], bad, nnx="nnx" in keys)
        return
    keys = {"bytes", "sha256"} if header["version"] == 1 else {"bytes"}
    if not isinstance(info, dict) or set(info) != keys:
        bad("'payload'", f"must be an object with exactly {sorted(keys)}")
    if not _is_int(info["bytes"]):
        bad("'payload.bytes'", f"must be an int >= 0, got {info['bytes']!r}")
    if header["version"] == 1 and not (isinstance(info["sha256"], str) and len(info["sha256"]) == 64):
        bad("'payload.sha256'", "must be 64 hex digits")


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint (model config, plans, step, leaf shapes, metadata) without reading the arrays.

    `path` is a checkpoint file or a ``format="orbax"`` directory.

    The header's fields are checked strictly, but not against the file's digest (that needs the whole file):
    `load_checkpoint` checks it.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a jaxprune checkpoint, an unparsable or malformed header, or an unknown format version.
    """
    from jaxprune import _orbax

    path = os.fspath(path)
    if _orbax.is_orbax_dir(path):  # format="orbax": the header file is covered by its own digest, checked here
        return _read_orbax_header(path)
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    _check_header(header, path)
    return header


def _read_verified(path: str) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a checkpoint file, after checking its length and digest."""
    with open(path, "rb") as f:
        header, line = _read_header(f, path)
        info = header.get("payload")
        size = info.get("bytes") if isinstance(info, dict) else None
        if not _is_int(size):
            raise ValueError(f"checkpoint {path} is corrupted: its header's payload entry is malformed")
        digest_line = f.readline(_DIGEST_LINE_BYTES) if header["version"] >= 2 else b""
        offset = f.tell()
        remaining = os.fstat(f.fileno()).st_size - offset
        if remaining != size:
            raise ValueError(
                f"checkpoint {path} is truncated or has trailing bytes: the payload is {remaining} bytes after the "
                f"header ({offset} bytes), the header says {size}"
            )
        payload = f.read(size)
    if len(payload) != size:  # the file changed while being read
        raise ValueError(f"checkpoint {path} is truncated: read {len(payload)} of {size} payload bytes")
    if header["version"] >= 2:
        digest = _digest(_MAGIC, line, payload)
        if digest_line != _DIGEST_PREFIX + digest.encode("ascii") + b"\n":
            raise ValueError(
                f"checkpoint {path} is corrupted or was modified: its SHA-256 over header and payload is {digest}, "
                f"the file records {digest_line[:80]!r}"
            )
    else:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != info.get("sha256"):
            raise ValueError(f"checkpoint {path} is corrupted: payload SHA-256 {digest} differs from the header's")
    _check_header(header, path)
    return header, payload


def _read_orbax_header(path: str) -> dict[str, Any]:
    from jaxprune import _orbax

    with open(os.path.join(path, _orbax.HEADER_FILE), "rb") as f:
        header, line = _read_header(f, path)
        digest_line = f.readline(_DIGEST_LINE_BYTES)
        trailing = f.read(1)
    if header["version"] < 2 or trailing or digest_line != _DIGEST_PREFIX + _digest(_MAGIC, line).encode() + b"\n":
        raise ValueError(f"orbax checkpoint {path} is corrupted or was modified: its header's SHA-256 does not match")
    _check_header(header, path, orbax=True)
    return header


def _check_leaf_table(path: str, table: Mapping[str, Any], variables: Mapping[str, Any]) -> None:
    flat = traverse_util.flatten_dict(variables) if variables else {}
    found = {"/".join(p): [list(np.shape(v)), _dtype_name(v)] for p, v in flat.items()}
    if set(found) != set(table):
        diff = sorted(set(found) ^ set(table))
        raise ValueError(f"checkpoint {path} is corrupted: its header's leaf table and its arrays differ at {diff[:5]}")
    for leaf in sorted(table):
        if found[leaf] != table[leaf]:
            raise ValueError(
                f"checkpoint {path} is corrupted: leaf {leaf} is {found[leaf]} in the payload, the header says "
                f"{table[leaf]}"
            )


def _config_diff(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            diffs = [
                f"{key}[{i}]: checkpoint {x}, expected {y}" for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y
            ]
            out.append("; ".join(diffs[:6]) + (f"; ... ({len(diffs)} entries differ)" if len(diffs) > 6 else ""))
        else:
            out.append(f"{key}: checkpoint {a!r}, expected {b!r}")
    return out


def _check_plan_history(model, plans: Sequence[PruningPlan]) -> None:
    if not plans:
        return
    widths = {g.name: int(g.width) for g in model.channel_groups()}
    for name, kept in plans[-1].new_widths.items():
        if name not in widths:
            raise ValueError(f"the last plan names group {name!r}, which the model does not have")
        if widths[name] != kept:
            raise ValueError(
                f"the plan history does not end at the model's widths: the last plan leaves group {name!r} with "
                f"{kept} filters, the model has {widths[name]}"
            )


def restore_opt_state(raw, tx, params):
    """Rebuilds an optax state of `tx`'s structure from its stored state-dict form, checking every leaf's shape.

    Raises:
      ValueError: the stored state's structure or a leaf's shape differs from what `tx.init(params)` gives.
    """
    if not callable(getattr(tx, "init", None)):
        raise TypeError(f"tx must be an optax GradientTransformation, got {type(tx).__name__}")
    target = jax.eval_shape(tx.init, params)
    try:
        restored = serialization.from_state_dict(target, raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"the checkpoint's optimizer state does not fit the given tx (different optimizer or chain?): {e}"
        ) from e
    want = jax.tree_util.tree_leaves_with_path(target)
    got = jax.tree_util.tree_leaves(restored)
    if len(want) != len(got):
        raise ValueError(
            f"the checkpoint's optimizer state has {len(got)} arrays, the given tx needs {len(want)} (different "
            "optimizer?)"
        )
    leaves = []
    for (p, w), g in zip(want, got, strict=True):
        g = np.asarray(g)
        if tuple(w.shape) != g.shape:
            raise ValueError(
                f"optimizer-state leaf {jax.tree_util.keystr(p)} has shape {g.shape} in the checkpoint, the given tx "
                f"and params need {tuple(w.shape)}"
            )
        leaves.append(jnp.asarray(g, dtype=w.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves)


def load_checkpoint(path: str | os.PathLike, *, model=None, tx=None, sharding=None, wrt=None) -> Checkpoint:
    """Loads a checkpoint into the model its config describes: a pruned one comes back at its reduced widths.

    Everything is checked before anything is returned: magic, format version, payload length and SHA-256, the model
    config, every variable's shape against the rebuilt model, the plan history against its widths, and (with
    `tx`) the optimizer state against `tx.init(params)`. Any failure raises; nothing is half loaded.

    Args:
      path: A file written by `save_checkpoint`.
      model: For a zoo model's checkpoint, if given, the model the caller expects; a checkpoint of another family,
        depth, number of classes or other widths is an error that lists each difference. For a user model's
        checkpoint (no config), required: the unpruned model the stored plans were made for (they are replayed on
        it, each checked against the model it was made for). For an NNX module's checkpoint: the unpruned module
        of the same class, concrete or abstract (``nnx.eval_shape(lambda: MyModule(rngs=nnx.Rngs(0)))``);
        `Checkpoint.model` is then a new module of that class at the saved widths holding the saved state.
      tx: The optax transformation the optimizer state belongs to; with it `Checkpoint.opt_state` is that state
        (for an NNX module, `Checkpoint.optimizer` is an `nnx.Optimizer` of the loaded module holding it).
      sharding: For an orbax directory: where the arrays go, a `jax.sharding.Sharding` for all or a callable
        ``(leaf path, shape) -> Sharding``; default the first device. (A single file gives host arrays.)
      wrt: NNX only: the variable filter the saved `nnx.Optimizer` was built with (default `nnx.Param`).

    Returns:
      A `Checkpoint`.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a checkpoint, truncated or corrupted (length or checksum), an unknown format version, a config
        that rebuilds no model, a model other than `model` (lists the differences), variables or an optimizer state
        that do not match (names the leaf and both shapes); an NNX module of another class or widths (names it).

    Example:
      >>> ckpt = load_checkpoint("pruned.ckpt")  # doctest: +SKIP
      >>> logits = ckpt.model.apply(ckpt.variables, x, train=False)  # doctest: +SKIP
    """
    from jaxprune import _orbax

    path = os.fspath(path)
    orbax = _orbax.is_orbax_dir(path)
    if orbax:
        header = _read_orbax_header(path)
    else:
        header, payload = _read_verified(path)
    nnx_entry = header.get("nnx")
    if header["model"] is None:  # a user's model: the plans replayed on the unpruned one (an NNX module: its trace)
        from jaxprune import _user_checkpoint

        stored_model, traced_like = _user_checkpoint.replay(path, header, model, wrt=wrt)
    else:
        if wrt is not None:
            raise TypeError("load_checkpoint: wrt= is for a checkpoint of an NNX module and its nnx.Optimizer")
        try:
            stored_model = _models.from_config(header["model"])
        except Exception as e:  # any config that builds no model is a bad file, whatever the error
            raise ValueError(f"checkpoint {path} stores a model config that builds no model: {e}") from e
    if model is not None and header["model"] is not None:
        if not callable(getattr(model, "config", None)):
            raise TypeError(f"model must be a zoo model with config(), got {type(model).__name__}")
        diff = _config_diff(stored_model.config(), model.config())
        if diff:
            raise ValueError(f"checkpoint {path} holds a different model than expected: " + "; ".join(diff))
    if orbax:
        # Every shape is checked against the rebuilt model before orbax reads an array.
        shapes = {
            tuple(k.split("/")): jax.ShapeDtypeStruct(tuple(e[0]), jnp.dtype(e[1]))
            for k, e in header["variables"].items()
        }
        _check_variables(stored_model, traverse_util.unflatten_dict(shapes), what=f"variables in checkpoint {path}")
        variables, raw, nnx_state = _orbax.read(path, header, sharding=sharding)
        body = {"variables": variables, **({"opt_state": raw} if raw is not None else {})}
        body.update({"nnx_state": nnx_state} if nnx_state is not None else {})
    else:
        try:
            body = serialization.msgpack_restore(payload)
        except Exception as e:  # a valid digest makes this very unlikely; any decoder error means a bad file
            raise ValueError(
                f"checkpoint {path} is corrupted: its payload does not decode ({type(e).__name__}: {e})"
            ) from e
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("variables"), dict)
            or set(body) - {"variables", "opt_state", "nnx_state"}
            or ("nnx_state" in body) != (nnx_entry is not None)
        ):
            raise ValueError(f"checkpoint {path} is corrupted: its payload holds no variables")

    variables = _plain_dict(body["variables"])
    _check_leaf_table(path, header["variables"], variables)
    _check_variables(stored_model, variables, what=f"variables in checkpoint {path}")
    variables = jax.tree_util.tree_map(jnp.asarray, variables)

    try:
        plans = tuple(PruningPlan.from_dict(p) for p in header["plans"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"checkpoint {path} has a malformed plan history: {e}") from e
    _check_plan_history(stored_model, plans)

    raw_opt = body.get("opt_state")
    if header["has_opt_state"] != (raw_opt is not None):
        raise ValueError(f"checkpoint {path} is corrupted: header and payload disagree on the optimizer state")
    opt_state = optimizer = None
    if nnx_entry is not None:  # the module of the user's class holding the stored state, and its optimizer
        stored_model, optimizer = _user_checkpoint.load_nnx(
            path, nnx_entry, model, traced_like, stored_model, variables, body["nnx_state"], raw_opt, tx=tx, wrt=wrt
        )
    elif tx is not None and raw_opt is not None:
        opt_state = restore_opt_state(raw_opt, tx, variables["params"])

    return Checkpoint(
        model=stored_model,
        variables=variables,
        opt_state=opt_state,
        raw_opt_state=raw_opt,
        step=header["step"],
        rng=_rng_from_header(header["rng"], path),
        plans=plans,
        metadata=dict(header["metadata"]),
        header=header,
        tx=tx,
        optimizer=optimizer,
    )
