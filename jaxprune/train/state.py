"""`TrainState`: everything a training run carries, as one pytree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxprune._trees import check_variables
from jaxprune.train._checks import _check_int, _check_tx


# ----------------------------------------------------------------------------------------------------------------------
# Train state
# ----------------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything a training run carries, as one pytree: arrays are leaves, the model and optimizer are static.

    Build it with `TrainState.create`. It is a `flax.struct.dataclass`: `jax.jit`, `jax.device_put` and
    `jax.tree.map` see `params`, `batch_stats`, `opt_state`, `step` and `rng`; `model` and `tx` are part of the
    tree structure (so a pruned model or another optimizer means another compiled step). `replace(...)` returns a
    copy with fields changed.

    Attributes:
      params: The model's ``params`` collection.
      batch_stats: The ``batch_stats`` collection ({} for a model without batch norm).
      opt_state: The optax state of `tx` for `params`.
      step: Training steps taken, an int32 scalar array.
      rng: A typed PRNG key; step s uses ``fold_in(rng, s)`` (augmentation).
      model: The Flax module (static).
      tx: The optax GradientTransformation (static).
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    model: Any = flax.struct.field(pytree_node=False)
    tx: Any = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, model, variables: Mapping[str, Any], tx: optax.GradientTransformation, *, seed: int = 0):
        """A fresh state at step 0: `tx` initialized on the variables' params.

        Args:
          model: A Flax module called as ``model.apply(variables, x, train=...)`` (a zoo model, usually).
          variables: ``{"params": ..., "batch_stats": ...}``; for zoo models the shapes are checked against it.
          tx: An optax GradientTransformation (`sgd`, `paper_sgd`, `optax.adamw(...)`, ...).
          seed: Seeds the state's PRNG key, an int >= 0.

        Returns:
          A `TrainState`.

        Raises:
          TypeError: `variables` not a mapping with ``params``, `tx` not an optax transformation, `seed` not an int.
          ValueError: `seed` < 0, or variables that do not match the zoo model (names the leaf).

        Example:
          >>> import jaxprune as jp
          >>> from jaxprune.train import sgd
          >>> m = jp.models.resnet20()
          >>> s = TrainState.create(m, jp.random_variables(m), sgd(0.1))
          >>> int(s.step)
          0
        """
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise TypeError(
                f"variables must be a mapping with a 'params' entry (and 'batch_stats'), got {type(variables).__name__}"
            )
        _check_tx(tx)
        seed = _check_int(seed, "seed", minimum=0)
        if callable(getattr(model, "config", None)):
            check_variables(model, {k: variables[k] for k in variables}, what="variables")
        params = _plain(variables["params"])
        return cls(
            params=params,
            batch_stats=_plain(variables.get("batch_stats", {})),
            opt_state=init_opt_state(tx, params),
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.key(seed),
            model=model,
            tx=tx,
        )

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": ..., "batch_stats": ...}``, ready for ``model.apply``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def init_opt_state(tx, params):
    """``tx.init(params)`` as one jitted call: eagerly, each leaf's zeros would compile on their own (one XLA compile
    per distinct leaf shape, about 20 for a ResNet-20 and its pruned copy)."""
    return jax.jit(tx.init)(params)


def _check_state(state) -> None:
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a jaxprune.train.TrainState, got {type(state).__name__}")
