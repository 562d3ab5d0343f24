"""Pruning a whole train state (`prune_state`) and prune → fine-tune rounds (`iterative_prune`, `SCHEDULES`)."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune._trees import host_tree
from jaxprune.flops import count_macs
from jaxprune.plan import PruningPlan
from jaxprune.strategies import balanced_kept_count, kept_count, make_plan, resolve_ratios
from jaxprune.surgery import prune, prune_like_params
from jaxprune.train import user
from jaxprune.train._checks import _check_int, _check_positive_float
from jaxprune.train.loop import _unpack, finetune
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


def _host_keep_keys(tree):
    """`host_tree`, typed PRNG keys (an NNX module's `nnx.Rngs` state) kept as they are."""

    def one(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return a
        return host_tree(a)

    return jax.tree_util.tree_map(one, tree)


def _prune_user_state(state: TrainState, plan: PruningPlan, example, exported=None) -> TrainState:
    params, stats, opt = _host_keep_keys(state.params), _host_keep_keys(state.batch_stats), host_tree(state.opt_state)
    model, new_params, new_stats, new_opt = user.prune_user(
        state.model, params, stats, opt, plan, example, exported=exported
    )
    return state.replace(
        model=model,
        params=jax.tree_util.tree_map(_put_like, new_params, state.params),
        batch_stats=jax.tree_util.tree_map(_put_like, new_stats, state.batch_stats),
        opt_state=jax.tree_util.tree_map(_put_like, new_opt, state.opt_state),
    )


def prune_state(state: TrainState, plan: PruningPlan, *, example_input=None) -> TrainState:
    """Prunes a whole train state: params, batch statistics, optimizer state and model, in one call (paper §3).

    Gathers every array to the host (replicated or sharded, one process or many), slices it with
    `jaxprune.prune` / `jaxprune.prune_like_params`, and puts each leaf back on the sharding it had (replicated if that
    sharding no longer divides the new shape). The step and PRNG key are kept, so training continues where it was.

    A state of a user's NNX or Equinox module (`jaxprune.train.user`) is pruned through its module: the trained
    module (`TrainState.to_model`) is pruned with `jaxprune.prune` (the user's classes at the pruned widths, every
    size attribute updated, BatchNorm state and custom variables sliced) and the optimizer state with
    `jaxprune.prune_like_params`; the plan is one `jaxprune.make_plan` made for the module (``make_plan(module, ...,
    example_input=x)``, on the module given to `TrainState.create` or an exported one).

    Args:
      state: A `TrainState`.
      plan: A `PruningPlan` for `state.model` (from `jaxprune.make_plan` or a preset).
      example_input: NNX and Equinox only: an input to trace the module with (an NNX batch, one Equinox example);
        default the one the state's adapter knows (from `TrainState.create`, or `make_plan`'s trace of the module
        given to it).

    Returns:
      A new `TrainState` whose model is ``state.model.with_widths(plan.new_widths)`` (a user's module: the adapter of
      the pruned module).

    Raises:
      TypeError: a state that is not a `TrainState`, a plan that is not a `PruningPlan`, `example_input` for a zoo
        model.
      ValueError: a plan that does not match the model (unknown group, wrong width: a plan of another module), or an
        optimizer-state leaf that mirrors no parameter; a user's module whose example input is unknown (says to pass
        ``example_input=``).

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
    if user.is_user_model(state.model):
        return _prune_user_state(state, plan, user.example_of(state.model, example_input, what="prune_state"))
    if example_input is not None:
        raise TypeError("prune_state: example_input= is for a state of an NNX or Equinox module")
    host_vars = host_tree(state.variables)
    new_model, new_vars = prune(state.model, host_vars, plan)
    new_opt = prune_like_params(host_tree(state.opt_state), state.model, plan, params=host_vars["params"])
    return state.replace(
        model=new_model,
        params=jax.tree_util.tree_map(_put_like, new_vars["params"], state.params),
        batch_stats=jax.tree_util.tree_map(_put_like, new_vars.get("batch_stats", {}), state.batch_stats),
        opt_state=jax.tree_util.tree_map(_put_like, new_opt, state.opt_state),
    )


#: Named schedules of `iterative_prune` (see `schedule_ratios`).
SCHEDULES = ("linear", "geometric")


class NothingPrunedWarning(UserWarning):
    """An `iterative_prune` round removed no filter (its target count equals the current width in every group)."""


def _check_final_ratio(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a float in [0, 1), got {type(v).__name__} {v!r}")
    v = float(v)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (the fraction of the original filters removed), got {v!r}")
    return v


def schedule_ratios(name: str, final_ratio: float, steps: int) -> tuple[float, ...]:
    """The cumulative ratios r_1 … r_steps of a named schedule: r_k is the fraction of the ORIGINAL width removed
    after step k, and r_steps is exactly `final_ratio`.

    * ``linear``: r_k = final_ratio · k / steps (the same number of filters removed per step, up to flooring).
    * ``geometric``: 1 - r_k = (1 - final_ratio)^(k / steps), so every step keeps the same fraction of what is left
      (Han et al. 2015's iterative pruning; Zhu & Gupta 2017's schedule is another choice of the same kind).

    Args:
      name: One of `SCHEDULES`.
      final_ratio: In [0, 1).
      steps: Number of steps, >= 1.

    Raises:
      ValueError: an unknown name, `steps` < 1, `final_ratio` outside [0, 1).
      TypeError: a non-int `steps`, a non-real `final_ratio`.

    Example:
      >>> schedule_ratios("linear", 0.75, 3)
      (0.25, 0.5, 0.75)
      >>> [round(r, 4) for r in schedule_ratios("geometric", 0.75, 2)]
      [0.5, 0.75]
    """
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)} (or a sequence of per-round ratios)"
        )
    steps = _check_int(steps, "steps", minimum=1)
    final = _check_final_ratio(final_ratio, "final_ratio")
    if name == "linear":
        out = [final * k / steps for k in range(1, steps)]
    else:
        out = [1.0 - (1.0 - final) ** (k / steps) for k in range(1, steps)]
    return (*out, final)


def _macs(model, input_shape) -> tuple[int, int]:
    r = count_macs(model, input_shape)
    return int(r.macs), int(r.params)


def iterative_prune(
    state: TrainState,
    data,
    schedule: str | Sequence[Any],
    *,
    final_ratio: float | Mapping[str, float] | None = None,
    steps: int | None = None,
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
    """Prune → fine-tune → prune …, carrying the optimizer state (docs/paper.md §7): per-round ratios or a named schedule.

    **Per-round ratios** (`schedule` a sequence): round r makes a plan on the current (already pruned) model with
    ``prune_ratio=schedule[r]`` — a fraction of the *current* filters, a float or a {group or stage: ratio} mapping
    as `jaxprune.make_plan` takes. E.g. ``schedule=(0.2, 0.2, 0.2)`` leaves about 0.8³ ≈ 51 % of each reached
    group's filters (floor rounding per round).

    **Named schedule** (`schedule` one of `SCHEDULES`, with `final_ratio` and `steps`): ratios are fractions of the
    *original* widths (those of `state.model` at the call). After step k every reached group g has exactly
    ``kept_count(original_width_g, r_k, round_to=round_to, min_keep=min_keep)`` filters, with r_k the cumulative
    ratio of `schedule_ratios` (r_steps = `final_ratio`), so the last step lands on the same widths as one-shot
    ``make_plan(prune_ratio=final_ratio)``. Each step removes the lowest-scoring filters of the current model (by
    `criterion`, on the fine-tuned weights) down to that count. `final_ratio` may be a {group or stage: ratio}
    mapping (each group its own r_k).

    Every round prunes the whole state with `prune_state` (momentum sliced like the parameters), then fine-tunes it
    with `finetune` for its `epochs_per_round` epochs (the fine-tune budget, also spent in a round that pruned
    nothing). A round that removes no filter (small groups under a gentle schedule: kept_count floors) is recorded
    (``pruned_nothing``) and warned about with a `NothingPrunedWarning`.

    A state of a user's NNX or Equinox module is planned on its module's trace (exported and traced each round on
    one example of the training inputs: ``x[:1]`` for NNX, ``x[0]`` for Equinox) and pruned as `prune_state` prunes
    it; ``widths`` and the MACs are those of the trace.

    Args:
      state: A trained `TrainState`.
      data: As in `fit`; MACs are counted per image of the training images' shape.
      schedule: A non-empty sequence of per-round `prune_ratio` values, or a name in `SCHEDULES`.
      final_ratio: For a named schedule: the fraction of each reached group's original filters removed after the
        last step, in [0, 1) (float or mapping, as `prune_ratio`).
      steps: For a named schedule: the number of rounds, >= 1.
      epochs_per_round: Fine-tuning epochs after each pruning, an int >= 1 or one per round.
      lr: Constant fine-tuning rate > 0 (default 0.001, the paper's); not allowed together with `tx`.
      tx: Fine-tuning optimizer (default ``sgd(lr)``); its state must have the structure of the state's.
      strategy, criterion, key, skip, round_to, min_keep: As in `jaxprune.make_plan` (`key` for ``"random"``; each
        round folds in its round number).
      batch_size: As in `fit`.
      **fit_kwargs: As in `finetune`.

    Returns:
      ``(state, rounds)``: the final state and one dict per round with ``round`` (1-based), ``prune_ratio`` (what the
      round's `make_plan` got: the schedule entry, or for a named schedule the {group: ratio of the current width}
      that yields the target counts), ``target_ratio`` (r_k of a named schedule, a {group: r_k} for a mapping `final_ratio`, else None), ``plan`` (the round's
      `PruningPlan`; ``[r["plan"] for r in rounds]`` is the plan history a checkpoint stores), ``removed``
      ({group: filters removed this round}, only groups that lost some), ``pruned_nothing`` (bool), ``widths``
      (group widths after pruning), ``macs_before`` / ``macs_after`` and ``params_before`` / ``params_after``
      (`jaxprune.count_macs` per image before and after the round's pruning) and ``history`` (the fine-tuning
      epochs, as `fit` returns).

    Raises:
      ValueError: an empty schedule, an unknown schedule name, a named schedule without `final_ratio` or `steps`
        (or per-round ratios with them), steps < 1, `final_ratio` outside [0, 1), epochs per round < 1 or a list of
        the wrong length, lr <= 0, both `lr` and `tx`, or anything `make_plan`, `prune_state` or `finetune` raises.
      TypeError: a schedule that is neither a name nor a sequence, or options of the wrong kind.
    """
    _check_state(state)
    named = isinstance(schedule, str)
    if named:
        if final_ratio is None or steps is None:
            raise ValueError(
                f"schedule {schedule!r} needs final_ratio= (fraction of the original filters removed at the end, in "
                "[0, 1)) and steps= (the number of rounds, >= 1)"
            )
        if isinstance(final_ratio, Mapping):
            for name, v in final_ratio.items():
                _check_final_ratio(v, f"final_ratio[{name!r}]")
            targets = schedule_ratios(schedule, 0.0, steps)  # validates the name and steps
        else:
            targets = schedule_ratios(schedule, final_ratio, steps)
        n_rounds = len(targets)
    else:
        if isinstance(schedule, Mapping) or not isinstance(schedule, Sequence):
            raise TypeError(
                f"schedule must be a sequence of prune ratios (one per round) or one of {', '.join(SCHEDULES)}, got "
                f"{type(schedule).__name__}; wrap a single ratio in a list"
            )
        if len(schedule) == 0:
            raise ValueError("schedule must have at least one round")
        if final_ratio is not None or steps is not None:
            raise ValueError(
                "final_ratio= and steps= go with a named schedule (one of "
                f"{', '.join(SCHEDULES)}); a sequence of per-round ratios already fixes both"
            )
        n_rounds = len(schedule)
    if isinstance(epochs_per_round, Sequence):
        epochs = [_check_int(e, f"epochs_per_round[{i}]", minimum=1) for i, e in enumerate(epochs_per_round)]
        if len(epochs) != n_rounds:
            raise ValueError(
                f"epochs_per_round has {len(epochs)} entries but the schedule has {n_rounds} rounds; give one "
                "per round or a single int"
            )
    else:
        epochs = [_check_int(epochs_per_round, "epochs_per_round", minimum=1)] * n_rounds
    if tx is not None and lr is not None:
        raise ValueError("iterative_prune takes lr= or tx=, not both (the lr of a given tx is its own)")
    if tx is None:
        tx = sgd(0.001 if lr is None else _check_positive_float(lr, "lr"))
    x_train = np.asarray(_unpack(data)[0])
    mine = user.is_user_model(state.model)
    if mine:  # a user's module: planned on its trace, counted per example of the training inputs
        example = user.example_from(state.model, x_train)
        input_shape = example
    else:
        if x_train.ndim != 4:
            raise ValueError(f"training images must be 4-D (N, H, W, C), got shape {x_train.shape}")
        example, input_shape = None, (1, *x_train.shape[1:])

    def plan_target(state):
        """(model make_plan takes, its variables, the exported user module for prune_state or None)."""
        if not mine:
            return state.model, host_tree(state.variables), None
        exported = user.prunable(state.model, state.params, state.batch_stats, example)
        return exported[2], exported[3], exported

    plan_model, plan_vars, exported = plan_target(state)
    if named:
        finals = resolve_ratios(plan_model, final_ratio, skip=skip)
        originals = {g.name: g for g in plan_model.channel_groups() if g.name in finals}
        original = {n: g.width for n, g in originals.items()}
        if isinstance(final_ratio, Mapping):  # each group its own schedule
            per_group = {n: schedule_ratios(schedule, r, steps) for n, r in finals.items()}
        else:
            per_group = dict.fromkeys(finals, targets)
    rounds = []
    for r in range(n_rounds):
        if r:
            plan_model, plan_vars, exported = plan_target(state)
        current = {g.name: g.width for g in plan_model.channel_groups()}
        if named:
            counts = {
                n: kept_count(original[n], per_group[n][r], round_to=round_to, min_keep=min_keep)
                if originals[n].blocks == 1  # a group in blocks (GroupNorm groups): the same count in each
                else balanced_kept_count(originals[n], per_group[n][r], round_to=round_to, min_keep=min_keep)
                for n in original
            }
            # counts[n] <= current[n] (kept_count is monotone in the ratio); this ratio of the current width keeps
            # exactly counts[n] (kept_count snaps float error), with no further rounding.
            ratio = {n: (current[n] - counts[n]) / current[n] for n in original}
            plan_round_to, plan_min_keep, plan_skip = 1, 1, ()
        else:
            ratio = schedule[r]
            plan_round_to, plan_min_keep, plan_skip = round_to, min_keep, skip
        plan = make_plan(
            plan_model,
            plan_vars,
            prune_ratio=ratio,
            strategy=strategy,
            criterion=criterion,
            key=None if key is None else jax.random.fold_in(key, r),
            skip=plan_skip,
            round_to=plan_round_to,
            min_keep=plan_min_keep,
        )
        if named:  # the contract (a group at ratio 0 is left out of the plan); a mismatch would be a bug
            got = {n: len(plan.keep[n]) if n in plan.keep else current[n] for n in counts}
            if got != counts:
                raise RuntimeError(f"iterative_prune round {r + 1}: planned counts {got} differ from targets {counts}")
        macs_before, params_before = _macs(plan_model, input_shape)
        removed = {n: plan.widths[n] - len(k) for n, k in plan.keep.items() if len(k) < plan.widths[n]}
        if mine:
            state = _prune_user_state(state, plan, example, exported=exported)
            pruned_model = plan_model.with_widths({n: len(k) for n, k in plan.keep.items() if len(k) < plan.widths[n]})
        else:
            state = prune_state(state, plan)
            pruned_model = state.model
        macs_after, params_after = _macs(pruned_model, input_shape)
        if named:
            target = {n: per_group[n][r] for n in original} if isinstance(final_ratio, Mapping) else targets[r]
        else:
            target = None
        if not removed:
            what = f"target ratio {target!r} of the original widths" if named else f"prune_ratio {ratio!r}"
            warnings.warn(
                f"iterative_prune round {r + 1}/{n_rounds} ({what}) removed no filter: every reached group already "
                "has its target count (kept_count floors; use fewer steps or a larger ratio); fine-tuning anyway",
                NothingPrunedWarning,
                stacklevel=2,
            )
        state, history = finetune(state, data, epochs=epochs[r], tx=tx, batch_size=batch_size, **fit_kwargs)
        widths = pruned_model.group_widths() if callable(getattr(pruned_model, "group_widths", None)) else {}
        rounds.append(
            {
                "round": r + 1,
                "prune_ratio": ratio,
                "target_ratio": target,
                "plan": plan,
                "removed": removed,
                "pruned_nothing": not removed,
                "widths": widths,
                "macs_before": macs_before,
                "macs_after": macs_after,
                "params_before": params_before,
                "params_after": params_after,
                "history": history,
            }
        )
    return state, rounds
