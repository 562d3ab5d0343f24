"""The training loops: `evaluate`, `fit` and `finetune`."""

from __future__ import annotations

import itertools
import numbers
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from jaxprune import _interrupt
from jaxprune._trees import host_array, host_tree
from jaxprune.data import batches
from jaxprune.train._checks import _check_bool, _check_int, _check_positive_float, _check_tx, _check_unit
from jaxprune.train.optim import sgd, steps_per_epoch
from jaxprune.train.parallel import _check_batch_divisible, _check_mesh, _placement, _replicate
from jaxprune.train.state import TrainState, _check_state, init_opt_state
from jaxprune.train.steps import _check_augment, _mesh_steps
from jaxprune.train.user import is_user_model


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


def _check_xy(x, y, what: str, num_classes: int | None, *, model=None) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of images and int32 labels. Zoo and Linen models take NHWC images; a user's NNX or Equinox module
    takes its data as it is given, examples first (`jaxprune.train.user`)."""
    x, y = np.asarray(x), np.asarray(y)
    if is_user_model(model):
        if x.ndim < 1:
            raise ValueError(f"{what} inputs must have the examples on their first axis, got shape {x.shape}")
    elif x.ndim != 4:
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


def _check_augment_layout(augment, model, x) -> None:
    """The ``"cifar"`` / ``"crop"`` augmentations pad and crop NHWC images: refused where the data is not that.

    Raises:
      ValueError: a named augmentation for an Equinox module (one example per row as it takes it, e.g. CHW) or for
        training inputs that are not 4-D.
    """
    if not isinstance(augment, str):
        return
    if is_user_model(model) and not model.nhwc:
        raise ValueError(
            f"augment={augment!r} pads and crops NHWC images (N, H, W, C), but the {model.kind} module takes its data "
            f"{model.layout}; pass augment=None or a callable f(key, images) that augments that layout"
        )
    if x.ndim != 4:
        raise ValueError(
            f"augment={augment!r} pads and crops NHWC images (N, H, W, C), got training inputs of shape {x.shape}; "
            "pass augment=None or a callable f(key, images)"
        )


def _num_classes(model, state=None, x=None, what: str = "training") -> int | None:
    """The model's number of classes: a zoo model's field; for a user's NNX or Equinox module the last axis of its
    logits on one example of `x`, read abstractly (`jax.eval_shape`), so that labels out of range are refused before
    training (one-hot of such a label is silently all zeros).

    Raises:
      ValueError: a user's module that fails on one example of `x` (names its shape and the module's error).
    """
    if is_user_model(model) and state is not None and x is not None:
        x1 = np.asarray(x)[:1]
        if x1.ndim < 1 or x1.shape[0] == 0:
            return None
        try:
            out = jax.eval_shape(lambda v, xb: model.apply(v, xb), state.variables, x1)
        except Exception as err:  # the user's module failing on the data: said with the shape it was given
            first = str(err).splitlines()[0][:300] if str(err) else ""
            raise ValueError(
                f"the {model.kind} module fails on one {what} example of shape {x1.shape} ({type(err).__name__}: "
                f"{first}); the data reaches it as given, examples first, {model.layout} (jaxprune.train.user)"
            ) from err
        shape = getattr(out, "shape", None)
        return int(shape[-1]) if shape is not None and len(shape) == 2 else None
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, numbers.Integral) else None


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------
def evaluate(
    state: TrainState,
    images,
    labels,
    *,
    batch_size: int = 256,
    mesh: Mesh | None = None,
    per_process_data: bool = False,
) -> dict[str, float]:
    """Test loss and accuracy over every example, data parallel; the last partial batch is padded and masked out.

    Args:
      state: A `TrainState`.
      images: (N, H, W, C) array, N >= 1 (for a user's NNX or Equinox module: (N, ...) as the module takes its
        data, `jaxprune.train.user`).
      labels: (N,) integers in [0, num_classes).
      batch_size: Evaluation batch, a multiple of the mesh's ``"data"`` size.
      mesh: Default `data_mesh()`.
      per_process_data: `images`/`labels` are this process's own shard (docs/scaling.md); the result covers every
        process's examples. Needs `jax.distributed` initialised and shards of equal length.

    Returns:
      ``{"loss": mean cross-entropy, "accuracy": fraction correct, "count": N}`` as Python numbers (N summed over
      processes with `per_process_data`).

    Raises:
      TypeError: a state that is not a `TrainState`, integer-less labels.
      ValueError: bad shapes, labels out of range, no examples, batch size < 1 or not divisible by the devices;
        with `per_process_data`, `jax.distributed` not initialised or shards of different lengths (names them).
    """
    _check_state(state)
    mesh = _check_mesh(mesh)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    _check_batch_divisible(batch_size, mesh, "batch_size")
    per_process_data = _check_bool(per_process_data, "per_process_data")
    x, y = _check_xy(
        images, labels, "evaluation", _num_classes(state.model, state, images, "evaluation"), model=state.model
    )
    if x.shape[0] == 0:
        raise ValueError("evaluate needs at least one example")
    batch_size, place = _placement(mesh, batch_size, per_process_data, {"evaluation examples": x.shape[0]})
    # The step reads the model and its variables only: without the optimizer (static `tx` included) one compiled
    # step serves a model whatever it is trained or fine-tuned with, and the optimizer state is not copied.
    state = _replicate(state.replace(opt_state=None, tx=None), mesh)
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
        sums.append(step(state, place(xb), place(yb), place(mask)))
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
    per_process_data: bool = False,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains `epochs` epochs with `state.tx`, data parallel, with a progress bar; returns the new state and metrics.

    Epoch numbering continues from the state: training runs from ``state.step`` to the end of epoch
    ``state.step // steps_per_epoch + epochs`` (a state saved mid-epoch finishes that epoch first), shuffling epoch e
    with ``np.random.default_rng([seed, e])``. So a run split by a checkpoint (same `seed`, `batch_size` and `tx`)
    gives bit-identical results to an unbroken one on CPU.

    Args:
      state: A `TrainState`; its `tx` sets the optimizer and learning-rate schedule (`paper_sgd` for the paper's).
      data: A `jaxprune.data.Dataset`, or ``(x_train, y_train)`` / ``(x_train, y_train, x_test, y_test)`` arrays
        (images NHWC, labels integers in [0, num_classes); a user's NNX or Equinox module takes its data as it is
        given, examples first: `jaxprune.train.user`).
      epochs: Epochs to train, >= 1.
      batch_size: Global batch, a multiple of the mesh's ``"data"`` size; each epoch takes
        ``len(x_train) // batch_size`` full batches.
      seed: Data-order seed, an int >= 0.
      augment: None, ``"cifar"`` (pad-4 crop + flip, docs/paper.md §7), ``"crop"`` (no flip), or a hashable callable
        ``f(key, images) -> images`` traced inside the step. The named ones need NHWC images (refused for an
        Equinox module's per-example layout).
      label_smoothing: In [0, 1).
      eval_batch_size: Default `batch_size`.
      eval_every: Evaluate on the test split every this many epochs (and after the last); 0 never.
      progress: Show a tqdm bar (epoch, loss, accuracy, images/s) on stderr.
      mesh: Default `data_mesh()` over every device.
      callback: Called as ``callback(state, record)`` after each epoch (e.g. to save a checkpoint).
      per_process_data: `data` is this process's own shard (docs/scaling.md): each process shuffles its shard as
        above and global batch i is the concatenation, in process order, of every process's batch i of
        ``batch_size / jax.process_count()`` rows. Needs `jax.distributed` initialised and shards of equal length
        (checked across processes first). Default False: every process holds the same data.

    Returns:
      ``(state, history)``: the trained state (replicated on the mesh) and one dict per epoch with ``epoch``
      (1-based), ``step``, ``train_loss``, ``train_accuracy`` (means over the epoch's batches, in training mode),
      ``images_per_s`` and ``seconds`` (training only, compile included in the first epoch), and, when evaluated,
      ``test_loss`` and ``test_accuracy``.

    Raises:
      TypeError: a state that is not a `TrainState`, data of the wrong kind, options of the wrong kind.
      ValueError: epochs < 1, batch_size < 1 or not divisible by the device count, fewer training examples than a
        batch, labels outside the model's classes, label_smoothing outside [0, 1), an unknown augmentation, a named
        augmentation on data it cannot crop (an Equinox module's per-example layout, inputs that are not 4-D); with
        `per_process_data`, `jax.distributed` not initialised or shards of different lengths (names them).

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
    num_classes = _num_classes(state.model, state, x_train)
    x_train, y_train = _check_xy(x_train, y_train, "training", num_classes, model=state.model)
    _check_augment_layout(augment, state.model, x_train)
    has_test = x_test is not None and y_test is not None and len(x_test) > 0
    if has_test:
        x_test, y_test = _check_xy(x_test, y_test, "test", num_classes, model=state.model)
    per_process_data = _check_bool(per_process_data, "per_process_data")
    lengths = {"training examples": x_train.shape[0], "test examples": len(x_test) if has_test else 0}
    local_batch, place = _placement(mesh, batch_size, per_process_data, lengths)
    spe = steps_per_epoch(x_train.shape[0], local_batch)

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
            it = batches(x_train, y_train, local_batch, shuffle=True, seed=order, drop_last=True)
            metrics = []
            for xb, yb in itertools.islice(it, skip, None):
                _interrupt.check()  # a Ctrl-C the command line saw and Python swallowed (jaxprune._interrupt)
                state, m = step_fn(
                    state,
                    place(xb),
                    place(yb),
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
                ev = evaluate(
                    state, x_test, y_test, batch_size=eval_batch_size, mesh=mesh, per_process_data=per_process_data
                )
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
        `callback`, `per_process_data`, as in `fit`.

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
        opt_state = init_opt_state(tx, state.params)
    state = state.replace(tx=tx, opt_state=opt_state)
    return fit(state, data, epochs=epochs, batch_size=batch_size, **fit_kwargs)
