"""Training, fine-tuning and evaluation with optax, data parallel over every device; pruning a whole train state.

This module owns the training loop of the paper's recipe (docs/paper.md §7): SGD with momentum 0.9 and weight decay 1e-4
(added to the gradient, as PyTorch's `SGD(weight_decay=)` does, on every parameter), the learning rate divided by 10 at
50 % and 75 % of training, fine-tuning at a constant 0.001; softmax cross-entropy with optional label smoothing; the
`TrainState` pytree; `prune_state` (one call prunes params, batch statistics, optimizer state and model) and
`iterative_prune` (prune → fine-tune → prune …). It is the only jaxprune module that imports optax, so it is not
imported by ``import jaxprune``: use ``from jaxprune import train``. It does not load data (`jaxprune.data`), decide
what to prune (`jaxprune.make_plan`) or write files (`jaxprune.checkpoint`).

**Data parallel.** `fit`, `finetune` and `evaluate` build a 1-D `jax.sharding.Mesh` over `jax.devices()` with axis
``"data"`` (or take yours: any mesh with a ``"data"`` axis). The train state is replicated (`NamedSharding(mesh, P())`),
each batch is split along its first axis over ``"data"``, and the jitted steps let XLA insert the gradient and
batch-norm all-reduces, so batch statistics and gradients are those of the global batch. The same code runs on one
CPU, several GPUs or a TPU slice. A training batch size that is not a multiple of the ``"data"`` axis size is an error
(padding would put fake examples into the batch-norm statistics); the last, partial batch of an epoch is dropped (the
order is reshuffled each epoch, so every example is seen). Evaluation counts every example: its final partial batch is
padded with masked-out examples (weight 0), so the evaluation batch size must be a multiple of the device count too.

**Multi-host** (TPU pods, several GPU hosts): call ``jax.distributed.initialize()`` in every process before anything
else; `jax.devices()` is then the global device list and the mesh spans every host. Every process runs the same
program on the same data (same seed, same order); each feeds its own slice of every global batch
(`jax.make_array_from_process_local_data`). `prune_state` gathers replicated leaves from a local shard, slices on the
host and re-shards. Not testable on one machine; the 4-device CPU test (``XLA_FLAGS=
--xla_force_host_platform_device_count=4``) checks the single-process path.

**Determinism.** Epoch e is shuffled with ``np.random.default_rng([seed, e])`` and step s augments with
``jax.random.fold_in(state.rng, s)``, so the data a step sees depends only on (seed, step): a run resumed from a
checkpoint at any step continues bit-identically on CPU.
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from jaxprune.checkpoint import host_array, host_tree
from jaxprune.data import augment_cifar, batches
from jaxprune.plan import PruningPlan
from jaxprune.strategies import make_plan
from jaxprune.surgery import prune, prune_like_params

__all__ = [
    "AUGMENTATIONS",
    "TrainState",
    "cross_entropy_loss",
    "data_mesh",
    "eval_step",
    "evaluate",
    "finetune",
    "fit",
    "iterative_prune",
    "paper_sgd",
    "prune_state",
    "sgd",
    "shard_batch",
    "step_schedule",
    "steps_per_epoch",
    "train_step",
]

#: Named augmentations `fit` accepts (besides a callable ``f(key, images) -> images``): ``"cifar"`` is the paper's
#: pad-4 random crop + horizontal flip; ``"crop"`` the crop alone (for digits, which a mirror would change).
AUGMENTATIONS = ("cifar", "crop")
DATA_AXIS = "data"


# ----------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------------
def _check_int(value, what: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _check_positive_float(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a float > 0, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite float > 0, got {value!r}")
    return value


def _check_unit(value, what: str, *, closed_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if closed_high else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{what} must be in [0, 1{']' if closed_high else ')'}, got {value!r}")
    return value


def _check_bool(value, what: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_tx(tx) -> None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"tx must be an optax GradientTransformation (init and update), got {type(tx).__name__}")


def _check_state(state) -> None:
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a jaxprune.train.TrainState, got {type(state).__name__}")


def _check_augment(augment):
    if augment is None or callable(augment) or augment in AUGMENTATIONS:
        return augment
    raise ValueError(f"augment must be None, one of {AUGMENTATIONS} or a callable f(key, images), got {augment!r}")


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
            from jaxprune.checkpoint import _check_variables

            _check_variables(model, {k: variables[k] for k in variables}, what="variables")
        params = _plain(variables["params"])
        return cls(
            params=params,
            batch_stats=_plain(variables.get("batch_stats", {})),
            opt_state=tx.init(params),
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


# ----------------------------------------------------------------------------------------------------------------------
# Loss and steps
# ----------------------------------------------------------------------------------------------------------------------
def cross_entropy_loss(logits, labels, *, label_smoothing: float = 0.0, mask=None):
    """Mean softmax cross-entropy against integer labels, optionally label-smoothed and masked.

    With smoothing e the target is ``(1 - e) * one_hot + e / num_classes``. With a mask (1 for real examples, 0 for
    padding) the mean is over the real examples.

    Args:
      logits: (N, num_classes).
      labels: (N,) integers in [0, num_classes).
      label_smoothing: In [0, 1).
      mask: Optional (N,) weights.

    Returns:
      A scalar.

    Example:
      >>> float(cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log(4)
      1.386294...
    """
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
    if mask is None:
        return jnp.mean(losses)
    mask = mask.astype(losses.dtype)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _augment(augment, key, images):
    if augment is None:
        return images
    if augment == "cifar":
        return augment_cifar(key, images)
    if augment == "crop":
        return augment_cifar(key, images, flip=False)
    return augment(key, images)


def _train_step(state: TrainState, images, labels, masks=None, *, label_smoothing: float = 0.0, augment=None):
    images = _augment(augment, jax.random.fold_in(state.rng, state.step), images)
    kwargs = {} if masks is None else {"masks": masks}

    def loss_fn(params):
        logits, updates = state.model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"], **kwargs
        )
        loss = cross_entropy_loss(logits, labels, label_smoothing=label_smoothing)
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)
    return new_state, {"loss": loss, "accuracy": accuracy}


def _eval_step(state: TrainState, images, labels, mask=None):
    logits = state.model.apply(state.variables, images, train=False)
    num_classes = logits.shape[-1]
    losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, num_classes, dtype=logits.dtype))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.float32)
    mask = mask.astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


#: One jitted SGD step: ``train_step(state, images, labels, masks=None, *, label_smoothing=0.0, augment=None)``
#: returns ``(new_state, {"loss", "accuracy"})`` (batch means; the loss is the label-smoothed cross-entropy without the
#: weight-decay term, which lives in the optimizer). Batch norm runs in training mode and its running statistics are
#: updated. `masks` (group name -> 0/1 vector, traced) trains the masked original model (docs/design.md §4).
#: `label_smoothing` and `augment` are static. It computes wherever its inputs live; `fit` places them on the mesh.
train_step = jax.jit(_train_step, static_argnames=("label_smoothing", "augment"))

#: One jitted evaluation step: ``eval_step(state, images, labels, mask=None)`` returns sums over the (masked)
#: batch, ``{"loss_sum", "correct", "count"}``, with batch norm on its running statistics.
eval_step = jax.jit(_eval_step)

_MESH_STEPS: dict[Any, tuple[Callable, Callable]] = {}


def _mesh_steps(mesh: Mesh):
    """Steps whose outputs are pinned replicated on `mesh` (inputs: state replicated, batch split over "data")."""
    if mesh not in _MESH_STEPS:
        rep = NamedSharding(mesh, PartitionSpec())
        _MESH_STEPS[mesh] = (
            jax.jit(_train_step, static_argnames=("label_smoothing", "augment"), out_shardings=rep),
            jax.jit(_eval_step, out_shardings=rep),
        )
    return _MESH_STEPS[mesh]


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


# ----------------------------------------------------------------------------------------------------------------------
# Data handling
# ----------------------------------------------------------------------------------------------------------------------
def _unpack(data):
    """(x_train, y_train, x_test, y_test), the test pair possibly None."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return data.x_train, data.y_train, getattr(data, "x_test", None), getattr(data, "y_test", None)
    if isinstance(data, tuple | list) and len(data) in (2, 4):
        return (*data, None, None) if len(data) == 2 else tuple(data)
    raise TypeError(
        "data must be a jaxprune.data.Dataset (x_train, y_train, x_test, y_test) or a tuple (x_train, y_train[, "
        f"x_test, y_test]), got {type(data).__name__}"
    )


def _check_xy(x, y, what: str, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"{what} images must be 4-D (N, H, W, C), got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what} labels must be 1-D with one label per image ({x.shape[0]}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{what} labels must be integers, got dtype {y.dtype}")
    if num_classes is not None and y.size:
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            raise ValueError(
                f"{what} label {int(y[bad[0]])} at index {int(bad[0])} is outside [0, {num_classes}) for a model with "
                f"{num_classes} classes"
            )
    return x, y.astype(np.int32)


def _num_classes(model) -> int | None:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, numbers.Integral) else None


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------
def evaluate(state: TrainState, images, labels, *, batch_size: int = 256, mesh: Mesh | None = None) -> dict[str, float]:
    """Test loss and accuracy over every example, data parallel; the last partial batch is padded and masked out.

    Args:
      state: A `TrainState`.
      images: (N, H, W, C) array, N >= 1.
      labels: (N,) integers in [0, num_classes).
      batch_size: Evaluation batch, a multiple of the mesh's ``"data"`` size.
      mesh: Default `data_mesh()`.

    Returns:
      ``{"loss": mean cross-entropy, "accuracy": fraction correct, "count": N}`` as Python numbers.

    Raises:
      TypeError: a state that is not a `TrainState`, integer-less labels.
      ValueError: bad shapes, labels out of range, no examples, batch size < 1 or not divisible by the devices.
    """
    _check_state(state)
    mesh = _check_mesh(mesh)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    _check_batch_divisible(batch_size, mesh, "batch_size")
    x, y = _check_xy(images, labels, "evaluation", _num_classes(state.model))
    if x.shape[0] == 0:
        raise ValueError("evaluate needs at least one example")
    state = _replicate(state, mesh)
    _, step = _mesh_steps(mesh)
    sums = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        mask = np.ones(batch_size, np.float32)
        if xb.shape[0] < batch_size:  # pad with masked-out copies of zeros: fixed shapes, one compile
            pad = batch_size - xb.shape[0]
            mask[xb.shape[0] :] = 0
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        sums.append(step(state, shard_batch(mesh, xb), shard_batch(mesh, yb), shard_batch(mesh, mask)))
    sums = host_tree(sums)  # replicated outputs: read from a local shard, also with several processes
    total = {k: float(np.sum([s[k] for s in sums], dtype=np.float64)) for k in ("loss_sum", "correct", "count")}
    return {
        "loss": total["loss_sum"] / total["count"],
        "accuracy": total["correct"] / total["count"],
        "count": int(total["count"]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Training loops
# ----------------------------------------------------------------------------------------------------------------------
def fit(
    state: TrainState,
    data,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    augment=None,
    label_smoothing: float = 0.0,
    eval_batch_size: int | None = None,
    eval_every: int = 1,
    progress: bool = True,
    mesh: Mesh | None = None,
    callback: Callable[[TrainState, dict[str, Any]], None] | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains `epochs` epochs with `state.tx`, data parallel, with a progress bar; returns the new state and metrics.

    Epoch numbering continues from the state: training runs from ``state.step`` to the end of epoch
    ``state.step // steps_per_epoch + epochs`` (a state saved mid-epoch finishes that epoch first), shuffling epoch e
    with ``np.random.default_rng([seed, e])``. So a run split by a checkpoint (same `seed`, `batch_size` and `tx`)
    gives bit-identical results to an unbroken one on CPU.

    Args:
      state: A `TrainState`; its `tx` sets the optimizer and learning-rate schedule (`paper_sgd` for the paper's).
      data: A `jaxprune.data.Dataset`, or ``(x_train, y_train)`` / ``(x_train, y_train, x_test, y_test)`` arrays
        (images NHWC, labels integers in [0, num_classes)).
      epochs: Epochs to train, >= 1.
      batch_size: Global batch, a multiple of the mesh's ``"data"`` size; each epoch takes
        ``len(x_train) // batch_size`` full batches.
      seed: Data-order seed, an int >= 0.
      augment: None, ``"cifar"`` (pad-4 crop + flip, docs/paper.md §7), ``"crop"`` (no flip), or a hashable callable
        ``f(key, images) -> images`` traced inside the step.
      label_smoothing: In [0, 1).
      eval_batch_size: Default `batch_size`.
      eval_every: Evaluate on the test split every this many epochs (and after the last); 0 never.
      progress: Show a tqdm bar (epoch, loss, accuracy, images/s) on stderr.
      mesh: Default `data_mesh()` over every device.
      callback: Called as ``callback(state, record)`` after each epoch (e.g. to save a checkpoint).

    Returns:
      ``(state, history)``: the trained state (replicated on the mesh) and one dict per epoch with ``epoch``
      (1-based), ``step``, ``train_loss``, ``train_accuracy`` (means over the epoch's batches, in training mode),
      ``images_per_s`` and ``seconds`` (training only, compile included in the first epoch), and, when evaluated,
      ``test_loss`` and ``test_accuracy``.

    Raises:
      TypeError: a state that is not a `TrainState`, data of the wrong kind, options of the wrong kind.
      ValueError: epochs < 1, batch_size < 1 or not divisible by the device count, fewer training examples than a
        batch, labels outside the model's classes, label_smoothing outside [0, 1), an unknown augmentation.

    Example:
      >>> state = TrainState.create(model, variables, paper_sgd(epochs=12, steps_per_epoch=11))  # doctest: +SKIP
      >>> state, history = fit(state, load_digits(), epochs=12, batch_size=128)  # doctest: +SKIP
      >>> history[-1]["test_accuracy"]  # doctest: +SKIP
      0.99...
    """
    _check_state(state)
    epochs = _check_int(epochs, "epochs", minimum=1)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    augment = _check_augment(augment)
    label_smoothing = _check_unit(label_smoothing, "label_smoothing")
    eval_batch_size = (
        batch_size if eval_batch_size is None else _check_int(eval_batch_size, "eval_batch_size", minimum=1)
    )
    eval_every = _check_int(eval_every, "eval_every", minimum=0)
    progress = _check_bool(progress, "progress")
    mesh = _check_mesh(mesh)
    _check_batch_divisible(batch_size, mesh, "batch_size")
    _check_batch_divisible(eval_batch_size, mesh, "eval_batch_size")
    x_train, y_train, x_test, y_test = _unpack(data)
    num_classes = _num_classes(state.model)
    x_train, y_train = _check_xy(x_train, y_train, "training", num_classes)
    has_test = x_test is not None and y_test is not None and len(x_test) > 0
    if has_test:
        x_test, y_test = _check_xy(x_test, y_test, "test", num_classes)
    spe = steps_per_epoch(x_train.shape[0], batch_size)

    state = _replicate(state, mesh)
    step_fn, _ = _mesh_steps(mesh)
    start = int(host_array(state.step))
    first_epoch, offset = divmod(start, spe)
    history: list[dict[str, Any]] = []
    done = start
    bar = tqdm(total=epochs * spe - offset, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(first_epoch, first_epoch + epochs):
            t0 = time.perf_counter()
            skip = offset if epoch == first_epoch else 0
            order = np.random.default_rng([seed, epoch])
            it = batches(x_train, y_train, batch_size, shuffle=True, seed=order, drop_last=True)
            metrics = []
            for xb, yb in itertools.islice(it, skip, None):
                state, m = step_fn(
                    state,
                    shard_batch(mesh, xb),
                    shard_batch(mesh, yb),
                    label_smoothing=label_smoothing,
                    augment=augment,
                )
                metrics.append(m)
                bar.update(1)
            metrics = host_tree(metrics)  # waits for the epoch's last step
            seconds = time.perf_counter() - t0
            done += len(metrics)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": done,
                "train_loss": float(np.mean([m["loss"] for m in metrics])),
                "train_accuracy": float(np.mean([m["accuracy"] for m in metrics])),
                "images_per_s": len(metrics) * batch_size / seconds,
                "seconds": seconds,
            }
            last = epoch == first_epoch + epochs - 1
            if has_test and eval_every and ((epoch - first_epoch + 1) % eval_every == 0 or last):
                ev = evaluate(state, x_test, y_test, batch_size=eval_batch_size, mesh=mesh)
                record["test_loss"], record["test_accuracy"] = ev["loss"], ev["accuracy"]
            history.append(record)
            bar.set_description(f"epoch {epoch + 1}/{first_epoch + epochs}")
            post = {"loss": f"{record['train_loss']:.4f}", "acc": f"{record['train_accuracy']:.4f}"}
            if "test_accuracy" in record:
                post["test_acc"] = f"{record['test_accuracy']:.4f}"
            post["img/s"] = f"{record['images_per_s']:.0f}"
            bar.set_postfix(post)
            if callback is not None:
                callback(state, record)
    finally:
        bar.close()
    return state, history


def _same_structure(a, b) -> str | None:
    """None if two optimizer states have the same tree structure and leaf shapes, else a description of the first
    difference."""
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        return f"tree structures differ: {ta} vs {tb}"
    for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True):
        if tuple(np.shape(x)) != tuple(np.shape(y)):
            return f"leaf {jax.tree_util.keystr(p)} has shape {np.shape(x)} vs {np.shape(y)}"
    return None


def finetune(
    state: TrainState,
    data,
    *,
    epochs: int,
    lr: float | None = None,
    tx: optax.GradientTransformation | None = None,
    keep_optimizer_state: bool = True,
    batch_size: int = 128,
    **fit_kwargs,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Retrains (a pruned) state at the paper's constant fine-tuning rate: docs/paper.md §7 (lr 0.001, same optimizer).

    The optimizer becomes `tx`, by default ``sgd(lr)`` (momentum 0.9, weight decay 1e-4, constant rate). With
    `keep_optimizer_state` the state's optimizer state is carried over as it is (after `prune_state` it is already
    sliced to the pruned widths); that needs the new optimizer's state to have the same structure, which holds for
    every `sgd`/`paper_sgd` state. The step count, and so the data order, continues.

    Args:
      state: A `TrainState`.
      data: As in `fit`.
      epochs: >= 1.
      lr: Constant learning rate > 0 (default 0.001); not allowed together with `tx`.
      tx: Another optax transformation to fine-tune with.
      keep_optimizer_state: Carry the optimizer state (momentum) instead of starting it fresh.
      batch_size: As in `fit`.
      **fit_kwargs: `seed`, `augment`, `label_smoothing`, `eval_batch_size`, `eval_every`, `progress`, `mesh`,
        `callback`, as in `fit`.

    Returns:
      ``(state, history)`` as `fit`.

    Raises:
      ValueError: lr <= 0, epochs < 1, both `lr` and `tx` given, or `keep_optimizer_state` with an optimizer state
        that does not fit the new optimizer (names the difference); and everything `fit` raises.
      TypeError: `tx` not an optax transformation.
    """
    _check_state(state)
    epochs = _check_int(epochs, "epochs", minimum=1)
    keep_optimizer_state = _check_bool(keep_optimizer_state, "keep_optimizer_state")
    if tx is not None and lr is not None:
        raise ValueError("finetune takes lr= or tx=, not both (the lr of a given tx is its own)")
    if tx is None:
        tx = sgd(0.001 if lr is None else _check_positive_float(lr, "lr"))
    _check_tx(tx)
    if keep_optimizer_state:
        fresh = jax.eval_shape(tx.init, state.params)
        diff = _same_structure(fresh, state.opt_state)
        if diff is not None:
            raise ValueError(
                "keep_optimizer_state=True, but the state's optimizer state does not fit the fine-tuning optimizer "
                f"({diff}); pass keep_optimizer_state=False to start it fresh, or a tx of the same structure"
            )
        opt_state = state.opt_state
    else:
        opt_state = tx.init(state.params)
    state = state.replace(tx=tx, opt_state=opt_state)
    return fit(state, data, epochs=epochs, batch_size=batch_size, **fit_kwargs)


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
    """Prune → fine-tune → prune …: one round per schedule entry, carrying the optimizer state (docs/paper.md §7).

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
