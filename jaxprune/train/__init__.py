"""Training, fine-tuning and evaluation with optax, data parallel over every device; pruning a whole train state.

This module owns the training loop of the paper's recipe (docs/paper.md §7): SGD with momentum 0.9 and weight decay 1e-4
(added to the gradient, as PyTorch's `SGD(weight_decay=)` does, on every parameter), the learning rate divided by 10 at
50 % and 75 % of training, fine-tuning at a constant 0.001; softmax cross-entropy with optional label smoothing; the
`TrainState` pytree; `prune_state` (one call prunes params, batch statistics, optimizer state and model) and
`iterative_prune` (prune → fine-tune → prune …, per-round ratios or a named schedule, `SCHEDULES`). It is the only jaxprune module that imports optax, so it is not
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

**Multi-host** (TPU pods, several GPU hosts; docs/scaling.md): call ``jax.distributed.initialize()`` in every process
before anything else; `jax.devices()` is then the global device list and the mesh spans every host. By default every
process runs the same program on the same data (same seed, same order) and feeds its own slice of every global batch
(`shard_batch`). With ``per_process_data=True`` each process holds only its own shard, and global batch i is the
concatenation of every process's batch i (`shard_local_batch`; shard lengths are checked equal across processes
first). `prune_state` reads replicated leaves from a local shard, slices on the host and re-shards. Two processes
with two CPU devices each are tested against one process with four (tests/test_distributed.py).

**Determinism.** Epoch e is shuffled with ``np.random.default_rng([seed, e])`` and step s augments with
``jax.random.fold_in(state.rng, s)``, so the data a step sees depends only on (seed, step): a run resumed from a
checkpoint at any step continues bit-identically on CPU.

**Users' own modules.** ``TrainState.create(module, tx)`` takes an `nnx.Module`, ``TrainState.create(model, tx,
state=state)`` an `eqx.Module` with its `eqx.nn.State`; every function here then takes the state, and
``state.to_model()`` gives the trained module back (the one given is never mutated). The call convention, the data
layout and what rides where: `jaxprune.train.user` (docs/design.md §6).

The package is split by decision: `optim` (the optimizer and schedule), `state` (`TrainState`), `steps` (the loss and
the jitted steps), `parallel` (meshes and placement), `loop` (`evaluate`, `fit`, `finetune`), `pruning`
(`prune_state`, `iterative_prune`) and `user` (the NNX and Equinox adapters); every public name is importable from
``jaxprune.train``.
"""

from __future__ import annotations

from jaxprune.train.loop import evaluate, finetune, fit
from jaxprune.train.optim import paper_sgd, sgd, step_schedule, steps_per_epoch
from jaxprune.train.parallel import DATA_AXIS as DATA_AXIS
from jaxprune.train.parallel import check_per_process_lengths, data_mesh, shard_batch, shard_local_batch
from jaxprune.train.pruning import SCHEDULES, NothingPrunedWarning, iterative_prune, prune_state, schedule_ratios
from jaxprune.train.state import TrainState
from jaxprune.train.steps import AUGMENTATIONS, cross_entropy_loss, eval_step, train_step

__all__ = [
    "AUGMENTATIONS",
    "SCHEDULES",
    "NothingPrunedWarning",
    "TrainState",
    "check_per_process_lengths",
    "cross_entropy_loss",
    "data_mesh",
    "eval_step",
    "evaluate",
    "finetune",
    "fit",
    "iterative_prune",
    "paper_sgd",
    "prune_state",
    "schedule_ratios",
    "sgd",
    "shard_batch",
    "shard_local_batch",
    "step_schedule",
    "steps_per_epoch",
    "train_step",
]
