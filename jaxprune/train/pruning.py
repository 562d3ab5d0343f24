"""Pruning a whole train state (`prune_state`) and prune → fine-tune rounds (`iterative_prune`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune._trees import host_tree
from jaxprune.plan import PruningPlan
from jaxprune.strategies import make_plan
from jaxprune.surgery import prune, prune_like_params
from jaxprune.train._checks import _check_int, _check_positive_float
from jaxprune.train.loop import finetune
from jaxprune.train.optim import sgd
from jaxprune.train.state import TrainState, _check_state


# ----------------------------------------------------------------------------------------------------------------------
# Pruning train states
# ----------------------------------------------------------------------------------------------------------------------
def _put_like(new, old):
    """`new` (host numpy) placed as `old` was: same sharding if it still divides the shape, else replicated."""
    if not isinstance(old, jax.Array):
        return new
    if isinstance(new, jax.Array):
        return new
    sharding = old.sharding
    try:
        return jax.make_array_from_callback(new.shape, sharding, lambda idx: new[idx])
    except ValueError:
        # A sharded axis that no longer divides (e.g. a channel axis): replicate over the same devices.
        if isinstance(sharding, NamedSharding):
            rep = NamedSharding(sharding.mesh, PartitionSpec())
        else:
            rep = NamedSharding(
                Mesh(np.asarray(sorted(sharding.device_set, key=lambda d: d.id)), ("d",)), PartitionSpec()
            )
        return jax.make_array_from_callback(new.shape, rep, lambda idx: new[idx])


def prune_state(state: TrainState, plan: PruningPlan) -> TrainState:
    """Prunes a whole train state: params, batch statistics, optimizer state and model, in one call (paper §3).

    Gathers every array to the host (replicated or sharded, one process or many), slices it with
    `jaxprune.prune` / `jaxprune.prune_like_params`, and puts each leaf back on the sharding it had (replicated if that
    sharding no longer divides the new shape). The step and PRNG key are kept, so training continues where it was.

    Args:
      state: A `TrainState` of a zoo model.
      plan: A `PruningPlan` for `state.model` (from `jaxprune.make_plan` or a preset).

    Returns:
      A new `TrainState` whose model is ``state.model.with_widths(plan.new_widths)``.

    Raises:
      TypeError: a state that is not a `TrainState`, a plan that is not a `PruningPlan`.
      ValueError: a plan that does not match the model (unknown group, wrong width), or an optimizer-state leaf that
        mirrors no parameter.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune.train import TrainState, sgd
      >>> m = jp.models.resnet20()
      >>> s = TrainState.create(m, jp.random_variables(m), sgd(0.1))
      >>> s2 = prune_state(s, jp.make_plan(m, s.variables, prune_ratio={"stage1": 0.5}))
      >>> s2.model.widths[:3], s2.opt_state[1].trace["stage1_block1_conv2"]["kernel"].shape
      ((8, 8, 8), (3, 3, 8, 16))
    """
    _check_state(state)
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a jaxprune.PruningPlan, got {type(plan).__name__}")
    host_vars = host_tree(state.variables)
    new_model, new_vars = prune(state.model, host_vars, plan)
    new_opt = prune_like_params(host_tree(state.opt_state), state.model, plan, params=host_vars["params"])
    return state.replace(
        model=new_model,
        params=jax.tree_util.tree_map(_put_like, new_vars["params"], state.params),
        batch_stats=jax.tree_util.tree_map(_put_like, new_vars.get("batch_stats", {}), state.batch_stats),
        opt_state=jax.tree_util.tree_map(_put_like, new_opt, state.opt_state),
    )


def iterative_prune(
    state: TrainState,
    data,
    schedule: Sequence[Any],
    *,
    epochs_per_round: int | Sequence[int] = 1,
    lr: float | None = None,
    tx: optax.GradientTransformation | None = None,
    strategy: str = "independent",
    criterion: str = "l1",
    key=None,
    skip: Sequence[str] = (),
    round_to: int = 1,
    min_keep: int = 1,
    batch_size: int = 128,
    **fit_kwargs,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Prune → fine-tune → prune …: one round per schedule entry, carrying the optimizer state (paper.md §7).

    Round r makes a plan on the current (already pruned) model with ``prune_ratio=schedule[r]`` — a fraction of the
    *current* filters, a float or a {group or stage: ratio} mapping as `jaxprune.make_plan` takes — prunes the whole
    state with `prune_state` (momentum sliced like the parameters) and fine-tunes it with `finetune` for
    `epochs_per_round` epochs, keeping the optimizer state. E.g. ``schedule=(0.2, 0.2, 0.2)`` leaves about
    0.8³ ≈ 51 % of each reached group's filters (floor rounding per round).

    Args:
      state: A trained `TrainState`.
      data: As in `fit`.
      schedule: Non-empty sequence of `prune_ratio` values, one per round.
      epochs_per_round: Fine-tuning epochs after each pruning, an int >= 1 or one per round.
      lr: Constant fine-tuning rate > 0 (default 0.001, the paper's); not allowed together with `tx`.
      tx: Fine-tuning optimizer (default ``sgd(lr)``); its state must have the structure of the state's.
      strategy, criterion, key, skip, round_to, min_keep: As in `jaxprune.make_plan` (`key` for ``"random"``; each
        round folds in its round number).
      batch_size: As in `fit`.
      **fit_kwargs: As in `finetune`.

    Returns:
      ``(state, rounds)``: the final state and one dict per round with ``round`` (1-based), ``prune_ratio``,
      ``plan`` (the round's `PruningPlan`; ``[r["plan"] for r in rounds]`` is the plan history a checkpoint stores),
      ``widths`` (group widths after pruning) and ``history`` (the fine-tuning epochs, as `fit` returns).

    Raises:
      ValueError: an empty schedule, epochs per round < 1 or a list of the wrong length, lr <= 0, both `lr` and
        `tx`, or anything `make_plan`, `prune_state` or `finetune` raises.
      TypeError: a schedule that is not a sequence, or options of the wrong kind.
    """
    _check_state(state)
    if isinstance(schedule, str | Mapping) or not isinstance(schedule, Sequence):
        raise TypeError(
            f"schedule must be a sequence of prune ratios (one per round), got {type(schedule).__name__}; wrap a "
            "single ratio in a list"
        )
    if len(schedule) == 0:
        raise ValueError("schedule must have at least one round")
    if isinstance(epochs_per_round, Sequence):
        epochs = [_check_int(e, f"epochs_per_round[{i}]", minimum=1) for i, e in enumerate(epochs_per_round)]
        if len(epochs) != len(schedule):
            raise ValueError(
                f"epochs_per_round has {len(epochs)} entries but the schedule has {len(schedule)} rounds; give one "
                "per round or a single int"
            )
    else:
        epochs = [_check_int(epochs_per_round, "epochs_per_round", minimum=1)] * len(schedule)
    if tx is not None and lr is not None:
        raise ValueError("iterative_prune takes lr= or tx=, not both (the lr of a given tx is its own)")
    if tx is None:
        tx = sgd(0.001 if lr is None else _check_positive_float(lr, "lr"))
    rounds = []
    for r, ratio in enumerate(schedule):
        plan = make_plan(
            state.model,
            host_tree(state.variables),
            prune_ratio=ratio,
            strategy=strategy,
            criterion=criterion,
            key=None if key is None else jax.random.fold_in(key, r),
            skip=skip,
            round_to=round_to,
            min_keep=min_keep,
        )
        state = prune_state(state, plan)
        state, history = finetune(state, data, epochs=epochs[r], tx=tx, batch_size=batch_size, **fit_kwargs)
        widths = state.model.group_widths() if callable(getattr(state.model, "group_widths", None)) else {}
        rounds.append({"round": r + 1, "prune_ratio": ratio, "plan": plan, "widths": widths, "history": history})
    return state, rounds
