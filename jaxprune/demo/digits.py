"""Training and fine-tuning on the digits data with a checkpoint after every epoch, and their `Recipe`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxprune.demo._common import (
    CHECKPOINT_FILE,
    _check_choice,
    _check_int,
    _check_positive,
    _describe,
    _json_ready,
    _load_checkpoint,
    _one_line_text,
    _quiet_log,
    output_folder,
)

# ----------------------------------------------------------------------------------------------------------------------
# Training on the digits data, with a checkpoint after every epoch
# ----------------------------------------------------------------------------------------------------------------------
#: Zoo models the digits pipeline trains: the CIFAR-size ones (32x32x3 inputs). VGG is about 8x the MACs of ResNet-20.
DIGITS_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg11", "vgg13", "vgg16", "vgg19")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Settings of the digits pipeline (`run_demo`, `train_to_folder`, `finetune_to_folder`).

    Attributes:
      epochs: Training epochs (`jaxprune.train.paper_sgd`: lr divided by 10 at 50 % and 75 %).
      batch_size: Training batch. 16: on a 2-core CPU a ResNet-20 training step costs about 10 ms of CPU per image
        at batch 16 against 15 ms at batch 64 (its activations stay in cache; measured in docs/benchmarks.md).
      lr: Initial training learning rate.
      augment: `jaxprune.train.fit` augmentation (None, ``"crop"``; digits must not be mirrored).
      nesterov: Nesterov momentum (`jaxprune.train.paper_sgd`).
      weight_decay: Coupled weight decay (the paper's is 1e-4; 5e-4 trains the small digits set better).
      label_smoothing: `jaxprune.train.fit` label smoothing.
      finetune_epochs: Fine-tuning epochs after pruning.
      finetune_lr: Initial fine-tuning learning rate, divided by 10 at 50 % and 75 % of the fine-tuning (the paper
        retrains at a constant 0.001 for 40 epochs; a few epochs need a larger rate that then decays).
      scan_images: Training images the sensitivity scan evaluates (the test split is kept for the report).
      scan_ratios: Ratios of the sensitivity scan.
      target_macs: MACs budget (fraction of the original) for `suggest_ratios`' budget mode, the default way.
      tolerance: Allowed single-layer accuracy drop for `suggest_ratios`' tolerance mode (the paper's way).
      latency_batch_sizes: Batch sizes timed.
      latency_repeats: Timed calls per model and batch size.
      eval_batch_size: Test batch of every evaluation, `jaxprune.train.fit`'s after each epoch and the final ones:
        one size means one compiled evaluation step per model (120 splits the 360 test images into 3 full batches).
    """

    epochs: int = 4
    batch_size: int = 16
    lr: float = 0.05
    augment: str | None = None
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    finetune_epochs: int = 2
    finetune_lr: float = 0.02
    scan_images: int = 256
    scan_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    target_macs: float = 0.6
    tolerance: float = 0.02
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20
    eval_batch_size: int = 120

    def training(self, seed: int) -> dict[str, Any]:
        """The part of the recipe a trained checkpoint must match to be reused or resumed (JSON-ready)."""
        return {
            "data": "digits",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "augment": self.augment,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "label_smoothing": self.label_smoothing,
            "seed": seed,
        }


#: `run_demo`'s default recipe (its CPU and wall seconds from a cold start: docs/benchmarks.md).
FULL_RECIPE = Recipe()
#: `run_demo(quick=True)`: the same pipeline, shorter (CI): two epochs of 89 steps train ResNet-20 to about 97 % test
#: accuracy on the digits, as four epochs of 22 steps at batch 64 did, in about half the CPU time.
QUICK_RECIPE = Recipe(
    epochs=2,
    finetune_epochs=1,
    scan_images=128,
    scan_ratios=(0.25, 0.5, 0.75),
    latency_batch_sizes=(1, 32),
    latency_repeats=5,
)


def _digits_model(name: str):
    from jaxprune import models

    if not isinstance(name, str):
        raise TypeError(f"model must be a zoo model name (str), got {type(name).__name__}")
    if name in models.available() and name not in DIGITS_MODELS:
        raise ValueError(
            f"model {name!r} is an ImageNet model (224x224 inputs); the digits pipeline trains the CIFAR-size models: "
            f"{', '.join(DIGITS_MODELS)}"
        )
    return models.get(_check_choice(name, "model", DIGITS_MODELS))


def _check_digits_model(model) -> None:
    from jaxprune import models

    shape = models.default_input_shape(model)
    if shape[1:] != (32, 32, 3) or getattr(model, "num_classes", None) != 10:
        raise ValueError(
            f"{_describe(model)} takes {shape[1:]} inputs and {getattr(model, 'num_classes', '?')} classes; the digits "
            "data are 32x32x3 images of 10 classes"
        )


def _init_variables(model, seed: int):
    """`jaxprune.init_variables`, compiled on CPU with XLA's backend (LLVM) optimizations off.

    The init runs once and its compiled program is mostly the random initializers' kernels (the forward it traces is
    dead code): optimized, compiling it was the largest single cost of a cold ``demo --quick`` (about 14 s of CPU
    for ResNet-20, more than a training step's compile); unoptimized it takes about 3 s. The values agree with the
    optimized program's to within 1 ulp (measured max |difference| 6e-8).
    """
    import jax
    import jax.numpy as jnp

    from jaxprune import models
    from jaxprune.utils import init_variables

    if jax.default_backend() != "cpu":
        return init_variables(model, seed=seed)
    x = jnp.zeros(models.default_input_shape(model), jnp.float32)
    lowered = jax.jit(lambda k: model.init(k, x, train=False)).lower(jax.random.key(seed))
    v = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(seed))
    return _plain(v)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _load_data():
    from jaxprune.data import load_digits

    return load_digits()


def _train_with_checkpoints(
    folder: Path,
    model,
    data,
    recipe: Recipe,
    *,
    seed: int,
    progress: bool,
    log,
    on_mismatch: str,
):
    """Trains `model` from scratch, or resumes / reuses the checkpoint in `folder` if it was made by the same recipe.

    A checkpoint is written after every epoch (atomically), with the recipe, the epochs done and the history in its
    metadata, so an interrupted run (Ctrl-C) leaves the last complete epoch and the same call resumes from it.

    Returns:
      ``(state, history, status)`` with status ``trained``, ``resumed`` or ``reused``.
    """
    from jaxprune import train
    from jaxprune.checkpoint import load_checkpoint, save_checkpoint

    path = folder / CHECKPOINT_FILE
    spe = train.steps_per_epoch(data, recipe.batch_size)
    tx = train.paper_sgd(
        epochs=recipe.epochs,
        steps_per_epoch=spe,
        learning_rate=recipe.lr,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    wanted = _json_ready(recipe.training(seed))
    state, history, status = None, [], "trained"
    if path.exists():
        reason = None
        try:
            ckpt = load_checkpoint(path, model=model, tx=tx)
            info = ckpt.metadata.get("training", {})
            if info.get("recipe") != wanted:
                reason = f"it was trained with {info.get('recipe')}, this run asks for {wanted}"
            elif ckpt.step % spe:
                reason = f"its step {ckpt.step} is not at the end of an epoch"
        except ValueError as e:
            reason = _one_line_text(e)
        if reason is None:
            state, history = ckpt.train_state(), list(info.get("history", []))
            done = ckpt.step // spe
            status = "reused" if done >= recipe.epochs else "resumed"
            log(
                f"  {status} {path} ({done}/{recipe.epochs} epochs"
                + (f", test accuracy {history[-1]['test_accuracy']:.4f})" if history and status == "reused" else ")")
            )
        elif on_mismatch == "error":
            raise FileExistsError(
                f"--out {str(folder)!r} already holds a checkpoint this run cannot continue ({reason}); choose "
                "another --out or remove it"
            )
        else:
            log(f"  not reusing {path}: {reason}; training from scratch")
    if state is None:
        state = train.TrainState.create(model, _init_variables(model, seed), tx, seed=seed)
    done = int(state.step) // spe
    if done >= recipe.epochs:
        return state, history, status

    def save(st, record):
        history.append(_json_ready(record))
        k = record["step"] // spe
        meta = {"training": {"recipe": wanted, "epochs_done": k, "complete": k >= recipe.epochs, "history": history}}
        save_checkpoint(path, st, metadata=meta)

    try:
        state, _ = train.fit(
            state,
            data,
            epochs=recipe.epochs - done,
            **_fit_options(recipe, seed=seed, progress=progress, callback=save),
        )
    except KeyboardInterrupt:
        k = history[-1]["epoch"] if history else done
        where = f"{path} holds epoch {k}/{recipe.epochs}" if path.exists() else "no checkpoint was written yet"
        log(f"\ninterrupted: {where}; run the same command again to resume")
        raise
    return state, history, status


def _fit_options(recipe: Recipe, *, seed: int, progress, callback) -> dict:
    """The `train.fit` / `train.finetune` keywords a recipe sets, shared by training and fine-tuning."""
    return {
        "batch_size": recipe.batch_size,
        "eval_batch_size": recipe.eval_batch_size,
        "seed": seed,
        "augment": recipe.augment,
        "label_smoothing": recipe.label_smoothing,
        "progress": progress,
        "callback": callback,
    }


def _finetune_tx(lr: float, epochs: int, steps_per_epoch: int, recipe: Recipe):
    """The fine-tuning optimizer: the training one (`jaxprune.train.sgd`) with `lr` divided by 10 at 50 % and 75 %."""
    from jaxprune import train

    schedule = train.step_schedule(lr, epochs * steps_per_epoch)
    return train.sgd(schedule, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)


@dataclasses.dataclass(frozen=True, eq=False)
class StepOutcome:
    """What `train_to_folder`, `finetune_to_folder` and `sensitivity_from_checkpoint` did.

    Attributes:
      text: The summary the CLI prints.
      files: Name -> path of every file written.
      numbers: The figures of the summary (accuracies, epochs, ...), JSON-ready.
      result: The main object produced (a `jaxprune.train.TrainState`, or a `SensitivityResult`).
    """

    text: str
    files: Mapping[str, Path]
    numbers: Mapping[str, Any]
    result: Any = None


def train_to_folder(
    out: str | os.PathLike,
    *,
    model: str = "resnet20",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> StepOutcome:
    """Trains a zoo model on the digits data with the paper's recipe; a checkpoint after every epoch (docs/paper.md §7).

    SGD with momentum 0.9 and weight decay 1e-4, lr divided by 10 at 50 % and 75 % of training
    (`jaxprune.train.paper_sgd`). ``out/checkpoint.ckpt`` is rewritten atomically after each epoch: Ctrl-C leaves
    the last complete epoch, and calling again with the same arguments resumes from it (bit-identical on CPU).

    Args:
      out: Checkpoint folder (created).
      model: One of `DIGITS_MODELS`.
      epochs: Default `FULL_RECIPE.epochs`.
      lr: Initial learning rate; default `FULL_RECIPE.lr`.
      batch_size: Default `FULL_RECIPE.batch_size`.
      seed: Initialization and data-order seed.
      progress: Show a progress bar.
      log: ``log(str)`` for status lines (e.g. `print`); default silent.

    Returns:
      A `StepOutcome` whose `result` is the trained `jaxprune.train.TrainState`.

    Raises:
      ValueError: unknown or ImageNet model, epochs/batch size < 1, lr <= 0.
      FileExistsError: `out` is a file, or holds a checkpoint of another model or recipe.
      KeyboardInterrupt: interrupted; the checkpoint of the last complete epoch stays.
    """
    from jaxprune import train

    log = log or _quiet_log
    m = _digits_model(model)
    recipe = dataclasses.replace(
        FULL_RECIPE,
        epochs=FULL_RECIPE.epochs if epochs is None else _check_int(epochs, "epochs", minimum=1),
        lr=FULL_RECIPE.lr if lr is None else _check_positive(lr, "lr"),
        batch_size=FULL_RECIPE.batch_size if batch_size is None else _check_int(batch_size, "batch size", minimum=1),
    )
    seed = _check_int(seed, "seed", minimum=0)
    folder = output_folder(out, what="--out")
    data = _load_data()
    log(
        f"training {_describe(m)} on digits ({len(data.x_train)} train / {len(data.x_test)} test images), {recipe.epochs} epochs"
    )
    state, _, status = _train_with_checkpoints(
        folder, m, data, recipe, seed=seed, progress=progress, log=log, on_mismatch="error"
    )
    ev = train.evaluate(state, data.x_test, data.y_test, batch_size=recipe.eval_batch_size)
    path = folder / CHECKPOINT_FILE
    nums = {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"], "epochs": recipe.epochs, "status": status}
    text = (
        f"{_describe(m)}: test accuracy {ev['accuracy']:.4f} (loss {ev['loss']:.4f}) after {recipe.epochs} epochs "
        f"({status})\nwrote {path}"
    )
    return StepOutcome(text=text, files={"checkpoint": path}, numbers=nums, result=state)


def finetune_to_folder(
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> StepOutcome:
    """Fine-tunes a checkpoint's (pruned) model on the digits data (docs/paper.md §7: retraining after pruning).

    The paper retrains pruned networks at a constant lr of 0.001 for 40 epochs; on the digits data a few epochs at
    `Recipe.finetune_lr`, divided by 10 at 50 % and 75 % of the fine-tuning, recover the accuracy (same SGD as
    training, fresh optimizer state). The plan history of the checkpoint is kept, and ``out/checkpoint.ckpt`` is
    rewritten after every epoch.

    Args:
      out: Checkpoint folder for the fine-tuned model (may be the source folder).
      checkpoint: The checkpoint folder (or file) to start from.
      epochs: Default `FULL_RECIPE.finetune_epochs`.
      lr: Initial learning rate (then divided by 10 at 50 % and 75 %); default `FULL_RECIPE.finetune_lr`.
      batch_size: Default `FULL_RECIPE.batch_size`.
      seed: Data-order seed.
      progress: Show a progress bar.
      log: ``log(str)`` for status lines; default silent.

    Returns:
      A `StepOutcome` with the accuracies before and after; `result` is the fine-tuned train state.

    Raises:
      FileNotFoundError: the checkpoint folder does not exist.
      ValueError: not a jaxprune checkpoint, a model that does not take the digits data, epochs < 1, lr <= 0.
      FileExistsError: `out` is a file.
    """
    from jaxprune import train
    from jaxprune.checkpoint import save_checkpoint

    log = log or _quiet_log
    epochs = FULL_RECIPE.finetune_epochs if epochs is None else _check_int(epochs, "epochs", minimum=1)
    lr = FULL_RECIPE.finetune_lr if lr is None else _check_positive(lr, "lr")
    batch_size = FULL_RECIPE.batch_size if batch_size is None else _check_int(batch_size, "batch size", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    m, variables, ckpt = _load_checkpoint(checkpoint)
    _check_digits_model(m)
    folder = output_folder(out, what="--out")
    data = _load_data()
    tx = _finetune_tx(lr, epochs, train.steps_per_epoch(data, batch_size), FULL_RECIPE)
    state = train.TrainState.create(m, variables, tx, seed=seed)
    before = train.evaluate(state, data.x_test, data.y_test, batch_size=FULL_RECIPE.eval_batch_size)
    log(f"fine-tuning {_describe(m)} from {os.fspath(checkpoint)}: test accuracy {before['accuracy']:.4f} before")
    path = folder / CHECKPOINT_FILE
    history: list[dict[str, Any]] = []

    def save(st, record):
        history.append(_json_ready(record))
        meta = {**ckpt.metadata, "finetuning": {"lr": lr, "epochs": epochs, "history": history}}
        save_checkpoint(path, st, plans=ckpt.plans, metadata=meta)

    try:
        state, _ = train.finetune(
            state,
            data,
            epochs=epochs,
            tx=tx,
            keep_optimizer_state=False,
            batch_size=batch_size,
            eval_batch_size=FULL_RECIPE.eval_batch_size,
            seed=seed,
            label_smoothing=FULL_RECIPE.label_smoothing,
            progress=progress,
            callback=save,
        )
    except KeyboardInterrupt:
        log(f"\ninterrupted: {path} holds the last complete epoch" if history else "\ninterrupted before epoch 1 ended")
        raise
    after = train.evaluate(state, data.x_test, data.y_test, batch_size=FULL_RECIPE.eval_batch_size)
    nums = {"test_accuracy_before": before["accuracy"], "test_accuracy": after["accuracy"], "epochs": epochs}
    text = (
        f"{_describe(m)}: test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} after {epochs} "
        f"fine-tuning epochs from lr {lr:g}\nwrote {path}"
    )
    return StepOutcome(text=text, files={"checkpoint": path}, numbers=nums, result=state)
