"""The paper's optimizer (docs/paper.md §7): SGD with momentum and coupled weight decay, the step schedule."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import optax

from jaxprune.train._checks import _check_bool, _check_int, _check_positive_float, _check_unit


# ----------------------------------------------------------------------------------------------------------------------
# Optimizers (docs/paper.md §7)
# ----------------------------------------------------------------------------------------------------------------------
def step_schedule(
    learning_rate: float, total_steps: int, *, boundaries: Sequence[float] = (0.5, 0.75), factor: float = 0.1
) -> optax.Schedule:
    """The paper's step schedule: `learning_rate`, multiplied by `factor` at each fraction of training in `boundaries`.

    The reference recipe (docs/paper.md §7): lr 0.1 divided by 10 at epochs 80 and 120 of 160, i.e. at 50 % and 75 %.
    A boundary at fraction b takes effect from step ``round(b * total_steps)``.

    Args:
      learning_rate: Initial learning rate, > 0.
      total_steps: Steps of the whole run, >= 1.
      boundaries: Strictly increasing fractions in (0, 1).
      factor: Multiplier applied at each boundary, in (0, 1].

    Returns:
      An optax schedule (step -> learning rate).

    Raises:
      ValueError: learning_rate <= 0, total_steps < 1, boundaries not strictly increasing in (0, 1), factor outside
        (0, 1].
      TypeError: arguments of the wrong kind.

    Example:
      >>> s = step_schedule(0.1, 100)
      >>> [round(float(s(i)), 6) for i in (0, 49, 50, 74, 75, 99)]
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    """
    learning_rate = _check_positive_float(learning_rate, "learning_rate")
    total_steps = _check_int(total_steps, "total_steps", minimum=1)
    factor = _check_positive_float(factor, "factor")
    if factor > 1:
        raise ValueError(f"factor must be in (0, 1], got {factor}")
    bounds = [float(b) for b in boundaries]
    if any(not 0 < b < 1 for b in bounds) or any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds)):
        raise ValueError(f"boundaries must be strictly increasing fractions in (0, 1), got {tuple(boundaries)!r}")
    steps: dict[int, float] = {}
    for b in bounds:
        s = max(1, round(b * total_steps))
        steps[s] = steps.get(s, 1.0) * factor
    return optax.piecewise_constant_schedule(learning_rate, steps)


def sgd(
    learning_rate: float | optax.Schedule = 0.1,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay, as the paper's (PyTorch) recipe: docs/paper.md §7.

    ``chain(add_decayed_weights(weight_decay), trace(momentum, nesterov), scale_by_learning_rate(schedule))``: the
    decay is added to the gradient of every parameter before momentum, like ``torch.optim.SGD(weight_decay=)``. A
    constant learning rate is wrapped in a constant schedule, so every state this function makes has the same
    structure: `finetune` can swap the training schedule for a constant rate and keep the momentum.

    Args:
      learning_rate: A float > 0 or an optax schedule (step -> rate).
      momentum: In [0, 1).
      nesterov: Nesterov momentum.
      weight_decay: >= 0.

    Returns:
      An optax GradientTransformation (its `update` needs `params`).

    Raises:
      ValueError: learning_rate <= 0, momentum outside [0, 1), weight_decay < 0.
      TypeError: arguments of the wrong kind.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = sgd(0.1)
      >>> [type(s).__name__ for s in tx.init({"w": jnp.zeros(2)})]
      ['EmptyState', 'TraceState', 'ScaleByScheduleState']
    """
    if callable(learning_rate):
        schedule = learning_rate
    else:
        schedule = optax.constant_schedule(_check_positive_float(learning_rate, "learning_rate"))
    momentum = _check_unit(momentum, "momentum")
    nesterov = _check_bool(nesterov, "nesterov")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
        raise TypeError(f"weight_decay must be a float >= 0, got {type(weight_decay).__name__} {weight_decay!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return optax.chain(
        optax.add_decayed_weights(float(weight_decay)),
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(schedule),
    )


def paper_sgd(
    *,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
    boundaries: Sequence[float] = (0.5, 0.75),
) -> optax.GradientTransformation:
    """The baseline training optimizer of docs/paper.md §7: `sgd` with `step_schedule` over ``epochs * steps_per_epoch``.

    Args:
      epochs: Epochs of the whole run, >= 1.
      steps_per_epoch: From `steps_per_epoch(n_train, batch_size)`, >= 1.
      learning_rate: Initial rate (0.1 in the paper), > 0; divided by 10 at each boundary.
      momentum, nesterov, weight_decay: As in `sgd`.
      boundaries: As in `step_schedule`.

    Returns:
      An optax GradientTransformation.

    Raises:
      ValueError: epochs < 1, steps_per_epoch < 1, learning_rate <= 0, or a bad option (see `sgd`).

    Example:
      >>> tx = paper_sgd(epochs=12, steps_per_epoch=22)
    """
    epochs = _check_int(epochs, "epochs", minimum=1)
    steps_per_epoch = _check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    schedule = step_schedule(learning_rate, epochs * steps_per_epoch, boundaries=boundaries)
    return sgd(schedule, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def steps_per_epoch(num_examples, batch_size: int) -> int:
    """Training steps in one epoch: ``num_examples // batch_size`` (the last partial batch is dropped).

    Args:
      num_examples: An int, or a data set (anything with `x_train`) whose training split is counted.
      batch_size: >= 1.

    Raises:
      ValueError: batch_size < 1, or fewer examples than one batch.

    Example:
      >>> steps_per_epoch(1437, 64)
      22
    """
    if hasattr(num_examples, "x_train"):
        num_examples = len(num_examples.x_train)
    n = _check_int(num_examples, "num_examples", minimum=0)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    if n < batch_size:
        raise ValueError(f"{n} training examples do not fill one batch of {batch_size}; use batch_size <= {n}")
    return n // batch_size
