"""The loss and the jitted train and evaluation steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.data import augment_cifar
from jaxprune.train.state import TrainState

#: pad-4 random crop + horizontal flip; ``"crop"`` the crop alone (for digits, which a mirror would change).
AUGMENTATIONS = ("cifar", "crop")
DATA_AXIS = "data"


def _check_augment(augment):
    if augment is None or callable(augment) or augment in AUGMENTATIONS:
        return augment
    raise ValueError(f"augment must be None, one of {AUGMENTATIONS} or a callable f(key, images), got {augment!r}")


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
    step_key = jax.random.fold_in(state.rng, state.step)
    images = _augment(augment, step_key, images)
    kwargs = {} if masks is None else {"masks": masks}
    streams = getattr(state.model, "train_rngs", ())
    if streams:  # a traced model drawing randomness (dropout): one key per stream, per step
        kwargs["rngs"] = {name: jax.random.fold_in(step_key, i + 1) for i, name in enumerate(streams)}

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
