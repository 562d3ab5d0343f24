"""Variables pytrees on the host: reading arrays back whatever their sharding, putting slices back where their
sources lived, and checking them against a model.

Shared by `jaxprune.checkpoint` (saving and loading) and `jaxprune.train` (pruning a sharded train state), which
must not import each other, and by `jaxprune.surgery` and the Equinox adapter (`placement`): this module imports
none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def host_array(x) -> Any:
    """One leaf as a host numpy array, whatever its sharding; non-array leaves are returned unchanged.

    Fully addressable arrays are copied with `np.asarray`; a replicated array that spans several processes is read
    from a local shard; any other multi-process array is gathered with
    `jax.experimental.multihost_utils.process_allgather` (a collective: every process must call). Typed PRNG keys come
    back as their raw key data (`jax.random.key_data`).
    """
    if isinstance(x, jax.Array):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def placement(leaf: jax.Array):
    """Where a host slice of `leaf` goes back with `jax.device_put`: its sharding if `leaf` is committed to a device,
    else None (the default device, uncommitted, as `jax.numpy` makes arrays).

    jit keys its compiled programs on whether each argument is committed: slices committed beside untouched
    uncommitted leaves made the first training step after pruning compile twice (once for that mix, once for the
    step's own committed outputs).
    """
    return leaf.sharding if leaf.committed else None


def host_tree(tree) -> Any:
    """`host_array` over every leaf of a pytree (same structure)."""
    return jax.tree_util.tree_map(host_array, tree)


def plain_dict(tree):
    """Nested mappings (FrozenDicts included) as nested plain dicts with str keys; other leaves unchanged."""
    if isinstance(tree, Mapping):
        return {str(k): plain_dict(v) for k, v in tree.items()}
    return tree


def model_name(model) -> str:
    """A zoo model's short name from its config, e.g. ``resnet_cifar-20``; other models' class name."""
    if not callable(getattr(model, "config", None)):
        return type(model).__name__
    cfg = model.config()
    depth = cfg.get("depth")
    return f"{cfg.get('family')}{'-' + str(depth) if depth else ''}"


def check_variables(model, variables: Mapping[str, Any], *, what: str) -> None:
    """Raises ValueError naming the first missing, unexpected or wrongly shaped leaf of `variables` for `model`."""
    from jaxprune.utils import abstract_variables

    own = getattr(model, "abstract_variables", None)  # a traced model knows its variables
    expected = traverse_util.flatten_dict(plain_dict(own() if callable(own) else abstract_variables(model)))
    found = traverse_util.flatten_dict(plain_dict(variables)) if variables else {}
    missing = sorted("/".join(p) for p in set(expected) - set(found))
    extra = sorted("/".join(p) for p in set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{what} do not match the model {model_name(model)}: missing leaves {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected leaves {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for p in sorted(expected):
        want, got = tuple(expected[p].shape), tuple(np.shape(found[p]))
        if want != got:
            raise ValueError(
                f"{what} do not match the model {model_name(model)}: leaf {'/'.join(p)} has shape {got}, the "
                f"model's widths need {want}"
            )


def dtype_name(v) -> str:
    """The dtype name a checkpoint's leaf table records."""
    return jnp.dtype(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype).name


def rng_header(rng) -> dict[str, Any] | None:
    """A PRNG key as checkpoint header data: ``{"impl": the key's implementation or None, "data": key data}``."""
    if rng is None:
        return None
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return {"impl": str(jax.random.key_impl(rng)), "data": host_array(rng).tolist()}
    arr = np.asarray(host_array(rng))
    if arr.dtype != np.uint32:
        raise TypeError(f"rng must be a typed PRNG key or raw uint32 key data, got dtype {arr.dtype}")
    return {"impl": None, "data": arr.tolist()}


def rng_from_header(info, path: str):
    """The PRNG key `rng_header` recorded (None for None).

    Raises:
      ValueError: data that makes no key (ragged, an unknown implementation, data of another key shape); names `path`.
    """
    if info is None:
        return None
    impl = info["impl"]
    try:
        data = np.asarray(info["data"], np.uint32)
        return jax.random.wrap_key_data(data, impl=impl) if impl else jnp.asarray(data)
    except Exception as e:  # ragged data, an unknown impl, data of another key shape
        raise ValueError(
            f"checkpoint {path} has a malformed header: 'rng' does not make a PRNG key ({type(e).__name__}: {e})"
        ) from e


def checked_metadata(metadata) -> dict[str, Any]:
    """A checkpoint's metadata as a dict, its keys checked to be str at every depth (TypeError naming the key)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"checkpoint metadata must be a mapping with str keys, got {type(metadata).__name__}")

    def check(value, where: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(
                        f"checkpoint metadata keys must be str (JSON objects have str keys): {where} has key {k!r} "
                        f"({type(k).__name__})"
                    )
                check(v, f"{where}[{k!r}]")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")

    check(metadata, "metadata")
    return dict(metadata)


def is_shape_entry(entry) -> bool:
    """A checkpoint header's ``[shape, dtype]`` entry: a list of non-negative ints and a dtype name."""
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], list)
        and all(type(d) is int and d >= 0 for d in entry[0])
        and isinstance(entry[1], str)
    )
