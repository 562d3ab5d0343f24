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
      model: The Flax module (static); for a user's NNX or Equinox module its adapter
        (`jaxprune.train.user.NNXModel` / `EqxModel`), whose `to_model` gives the module back.
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
    def create(
        cls,
        model,
        variables: Mapping[str, Any] | None = None,
        tx: optax.GradientTransformation | None = None,
        *,
        seed: int = 0,
        state=None,
        example_input=None,
    ):
        """A fresh state at step 0: `tx` initialized on the model's params.

        A zoo model (or a `TracedModel`, a Linen module) comes with its variables: ``create(model, variables, tx)``.
        A user's NNX module carries its own: ``create(module, tx)`` (params: its `nnx.Param` s; ``batch_stats``:
        everything else it carries, BatchStat, RNG state, custom Variables). An Equinox module comes with its
        `eqx.nn.State` when it holds one: ``create(model, tx, state=state)`` (params: its inexact arrays;
        ``batch_stats``: the state's entries). Both are wrapped in an adapter (`jaxprune.train.user`, whose module
        docstring gives the call convention and data layout); the module given is never mutated, and
        `TrainState.to_model` returns the trained one.

        Args:
          model: A Flax module called as ``model.apply(variables, x, train=...)`` (a zoo model, usually), an
            `nnx.Module` or an `eqx.Module`.
          variables: ``{"params": ..., "batch_stats": ...}``; for zoo models the shapes are checked against it. Not
            for NNX and Equinox modules.
          tx: An optax GradientTransformation (`sgd`, `paper_sgd`, `optax.adamw(...)`, ...).
          seed: Seeds the state's PRNG key, an int >= 0.
          state: Equinox only: the module's `eqx.nn.State` (needed when it holds one, e.g. a BatchNorm's).
          example_input: NNX and Equinox only: an input the module is called with (an NNX batch; one Equinox example,
            ``(C, H, W)`` for `eqx.nn.Conv2d`), which `prune_state` traces the module with. Not needed when
            `jaxprune.make_plan` traced this module object (its example is reused) or when `prune_state` gets one.

        Returns:
          A `TrainState`.

        Raises:
          TypeError: `variables` not a mapping with ``params``, or given with an NNX or Equinox module; `tx` not an
            optax transformation, `seed` not an int; `state` / `example_input` for a zoo or Linen model, `state` for
            an NNX module.
          ValueError: `seed` < 0, or variables that do not match the zoo model (names the leaf); an Equinox module
            holding state without `state`, or a state of another module (names the entry).

        Example:
          >>> import jaxprune as jp
          >>> from jaxprune.train import sgd
          >>> m = jp.models.resnet20()
          >>> s = TrainState.create(m, jp.random_variables(m), sgd(0.1))
          >>> int(s.step)
          0
        """
        from jaxprune._detect import is_eqx_module, is_nnx_module

        if is_nnx_module(model) or is_eqx_module(model):
            from jaxprune.train import user

            kind = "an NNX" if is_nnx_module(model) else "an Equinox"
            if (
                tx is None
                and callable(getattr(variables, "init", None))
                and callable(getattr(variables, "update", None))
            ):
                variables, tx = None, variables  # create(module, tx)
            if variables is not None:
                how = (
                    "TrainState.create(module, tx)" if kind == "an NNX" else "TrainState.create(model, tx, state=state)"
                )
                raise TypeError(
                    f"TrainState.create: {kind} module carries its own parameters, so variables are not allowed "
                    f"(got {type(variables).__name__}); call {how}"
                )
            _check_tx(tx)
            seed = _check_int(seed, "seed", minimum=0)
            adapter, params, mutable = user.wrap(
                model, state=state, example_input=example_input, what="TrainState.create"
            )
            return cls(
                params=params,
                batch_stats=mutable,
                opt_state=init_opt_state(tx, params),
                step=jnp.zeros((), jnp.int32),
                rng=jax.random.key(seed),
                model=adapter,
                tx=tx,
            )
        if state is not None or example_input is not None:
            raise TypeError(
                "TrainState.create: state= and example_input= are for an nnx.Module or eqx.Module, got a "
                f"{type(model).__name__}"
            )
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

    def to_model(self):
        """The trained model, as the user gave it: a new NNX module holding the trained values (the module given to
        `create` is untouched), the Equinox ``(model, state)`` (state None for a module without one), or
        ``(model, variables)`` for a zoo model, a `TracedModel` or a Linen module.

        Example:
          >>> import jaxprune as jp
          >>> from jaxprune.train import sgd
          >>> m = jp.models.resnet20()
          >>> model, variables = TrainState.create(m, jp.random_variables(m), sgd(0.1)).to_model()
          >>> model is m, sorted(variables)
          (True, ['batch_stats', 'params'])
        """
        from jaxprune.train.user import is_user_model

        if is_user_model(self.model):
            return self.model.export(self.params, self.batch_stats)
        return self.model, self.variables

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
