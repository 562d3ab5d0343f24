"""A ShrinkBench-style study on the digits data: six criteria x two scopes x four MAC budgets x seeds, fine-tuned.

Run the full study: ``python benchmarks/study_digits.py`` (writes its section of docs/results.md between
``<!-- BEGIN study_digits -->`` and ``<!-- END study_digits -->``, the figure docs/study_digits.png and the raw points
docs/study_digits.json). Smoke run: ``python benchmarks/study_digits.py --smoke --out DIR`` (1 seed, 1 budget, 2
criteria, a ResNet-8 on a 256-image subset at the digits' native 8x8 pixels, a few steps; the same files under
DIR/docs/; run in-process by tests/test_study.py). ``--smoke --models resnet20 vgg11`` runs the study's own models at
their input sizes instead, for the cost estimate below.

Following Blalock et al., "What is the State of Neural Network Pruning?" (MLSys 2020, ShrinkBench): several operating
points as a curve, mean and spread over seeds, magnitude and random baselines, and compression (parameters) and
speed-up (MACs) stated separately. For every model and seed a base network is trained on
`jaxprune.data.load_digits()` (1,437 train / 360 test images, 3 channels, at the model's input size) with
`jaxprune.train.fit` and `paper_sgd`.
Then every point (criterion, scope, budget) is:

1. a plan from `jaxprune.make_plan(target_macs=budget, max_ratio=0.9, scope=...)` on the base weights: the
   fewest filters removed that keep at most that fraction of the MACs (`scope="global"`: one ranking over the
   network, scores normalised as `NORMALIZE` says; `scope="layer"`: the smallest uniform ratio). Criteria: `l1`
   (Li et al. 2017), `l2`, `random` (the baseline, seeded), `fpgm` (He et al. 2019), `bn_scale` (Liu et al. 2017),
   `taylor` (Molchanov et al. 2017, `jaxprune.taylor_scores` on 256 training images, BN in training mode);
2. the model's `finetune_steps` SGD steps (batch 64, constant lr 0.01, momentum 0.9, weight decay 1e-4, fresh
   momentum) on the same batches for every point of a seed;
3. BN recalibration (adaptive BN, Li et al., "EagleEye", ECCV 2020): every BatchNorm's running mean and variance
   replaced by the statistics of 256 training images (drawn per seed) through the fine-tuned masked network, then
   test accuracy on all 360 test images. Without it a few steps at BN momentum 0.9 leave a third of the stale
   running averages of the unpruned network in place, and a pruned VGG-11 reads them: 13.9 % test accuracy at 50 %
   of its MACs after 11 steps, 97.8 % recalibrated (`MaskedTrainer.recalibrate`). Every point records both
   (`accuracy`, `accuracy_stale_bn`).

Fine-tuning runs on the masked original (`jaxprune.masked_forward`'s masks as traced inputs), so every point of a
model shares one compiled train step and one compiled evaluation: the masked model computes the pruned model's
function (tested: pruned = masked), its removed channels get zero gradients, and only weight decay moves their
weights, which no output reads. The script checks this once per model: the first point is also pruned physically
(`jaxprune.prune`) after fine-tuning, and its test logits must equal the masked ones within float32 error, its MACs
the plan's prediction exactly.

Budget (full study, defaults, `MODELS`): the issue allows 40 minutes of this 2-core machine. Measured quiet
(2026-12-02, load 1.0), one masked training step at batch 64 cost 0.54-0.58 s for ResNet-20 at 32x32, 0.106 s at
16x16, and 0.82 s for VGG-11 at 32x32; on the machine of the next run (same kind, load 1.5) the same steps took
0.18 s and 1.26 s, so the estimate's quiet figure is a lower bound and its at-load figure the one to plan with. A
point is its fine-tuning steps plus three evaluations of the 360 test images, a BN recalibration and a plan. At
32x32 everywhere, 240 points of one epoch each took 14-17 s apiece (about 70 minutes; a partial run of earlier
defaults). So: ResNet-20 reads the digits at 16x16 (their native 8x8 pixels upsampled twice instead of four times),
3 seeds x 7 epochs, 22 steps (one epoch) per point; VGG-11 stays at 32x32 (its five 2x2 pools need it), 1 seed x 6
epochs, 11 steps (half an epoch) per point (about 20 s a point: two seeds would not fit). 6 criteria x 2 scopes x 4
budgets = 48 points per seed, 192 in all. Deeper ResNets (32+) and VGG-13/16/19 are left out for time. Every run
records its wall time and load in its section of docs/results.md, and `estimate_full` predicts the full study from a
smoke run's measured costs (`--smoke --models resnet20 vgg11`), compiled work calibrated to `QUIET_RESNET20_STEP_S`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, machine_line, write_section

import jaxprune as jp
from jaxprune import train
from jaxprune.data import batches, load_digits

NAME = "study_digits"
CRITERIA = ("l1", "l2", "random", "fpgm", "bn_scale", "taylor")
SCOPES = ("layer", "global")
BUDGETS = (0.75, 0.5, 0.35, 0.25)  # fraction of the original MACs kept
#: `scope="global"` normalisation per criterion, each the one its paper (or Torch-Pruning's default) uses: L1/L2 per
#: weight (fan_in) for the norms, raw |gamma| for network slimming, the layer's L2 norm for Taylor (Molchanov et al.),
#: the mean for FPGM (distances grow with the layer's size), none for uniform random draws.
NORMALIZE = {"l1": "fan_in", "l2": "fan_in", "random": "none", "fpgm": "mean", "bn_scale": "none", "taylor": "l2"}
MAX_RATIO = 0.9
BATCH = 64
TAYLOR_IMAGES = 256
#: Training images (one batch, drawn per seed) whose statistics replace BN's running ones after fine-tuning.
RECAL_IMAGES = 256
FINETUNE_LR = 0.01
#: model -> training recipe, seeds, input size and fine-tuning steps per point (the full study). ResNet-20 reads the
#: digits at 16x16 (their native 8x8 upsampled; a quarter of the 32x32 MACs), VGG-11 at 32x32 (its five 2x2 pools
#: need 32). VGG-11's step costs 7x ResNet-20's at these sizes, so it gets one seed and half an epoch per point.
MODELS = {
    "resnet20": {"epochs": 7, "lr": 0.1, "weight_decay": 5e-4, "seeds": (0, 1, 2), "image_size": 16,
                 "finetune_steps": 22},  # one epoch of the 1,437 training images at batch 64
    "vgg11": {"epochs": 6, "lr": 0.05, "weight_decay": 5e-4, "seeds": (0,), "image_size": 32,
              "finetune_steps": 11},
}  # fmt: skip
LABEL_SMOOTHING = 0.1
CHANNELS = 3
#: Smoke-only models (not in the study, no estimate): the default smoke checks the script's plumbing with the
#: cheapest network that has every part the study's ResNet-20 has (stages, strided option-A shortcuts, BN).
SMOKE_MODELS = {
    "resnet8": lambda num_classes: jp.models.CifarResNet(depth=8, widths=(16, 32, 64), num_classes=num_classes)
}
SMOKE_RECIPE = {"epochs": 1, "lr": 0.1, "weight_decay": 5e-4, "seeds": (0,), "image_size": 8, "finetune_steps": 3}


def _input_shape(recipe: dict) -> tuple[int, int, int, int]:
    return (1, recipe["image_size"], recipe["image_size"], CHANNELS)


def _build(name: str, num_classes: int):
    if name in SMOKE_MODELS:
        return SMOKE_MODELS[name](num_classes)
    return getattr(jp.models, name)(num_classes=num_classes)


def _load() -> float:
    return os.getloadavg()[0]


def train_base(name: str, ds, *, seed: int, epochs: int, lr: float, weight_decay: float, init: str = "init"):
    """A trained base model: (model, variables, test accuracy, seconds, seconds per epoch after the first).

    `init="init"` (the study) compiles `model.init`; `"random"` (the ResNet-8 smoke) draws He-normal weights from the
    abstract shapes (`jaxprune.random_variables`), without that compile.
    """
    model = _build(name, ds.num_classes)
    t = time.perf_counter()
    make = jp.init_variables if init == "init" else jp.random_variables
    variables = make(model, seed=seed, input_shape=(1, *ds.x_train.shape[1:]))
    spe = train.steps_per_epoch(ds, BATCH)
    tx = train.paper_sgd(epochs=epochs, steps_per_epoch=spe, learning_rate=lr, nesterov=True, weight_decay=weight_decay)
    state = train.TrainState.create(model, variables, tx, seed=seed)
    state, hist = train.fit(
        state,
        ds,
        epochs=epochs,
        batch_size=BATCH,
        seed=seed,
        label_smoothing=LABEL_SMOOTHING,
        eval_every=epochs,
        progress=False,
    )
    seconds = time.perf_counter() - t
    later = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]
    return model, jax.device_get(state.variables), float(hist[-1]["test_accuracy"]), seconds, float(np.mean(later))


class MaskedTrainer:
    """One compiled masked train step, one masked evaluation and one BN recalibration for every point of a model."""

    def __init__(self, model):
        self.model = model
        self.tx = train.sgd(FINETUNE_LR)
        self.eval = jp.masked_forward(model, train=False)
        self.batch_stats = jp.masked_forward(model, train=True)  # (logits, updated running statistics)
        self.momentum = None  # BN's running-average momentum, read off the model by the first `recalibrate`

        @jax.jit
        def step(params, batch_stats, opt_state, masks, x, y):
            def loss_fn(p):
                logits, upd = model.apply(
                    {"params": p, "batch_stats": batch_stats}, x, train=True, masks=masks, mutable=["batch_stats"]
                )
                return train.cross_entropy_loss(logits, y, label_smoothing=LABEL_SMOOTHING), upd["batch_stats"]

            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), stats, opt_state, loss

        self.step = step

    def finetune(self, variables, masks, batches_list):
        params, stats = variables["params"], variables["batch_stats"]
        opt_state = self.tx.init(params)
        for xb, yb in batches_list:
            params, stats, opt_state, _ = self.step(params, stats, opt_state, masks, xb, yb)
        return {"params": params, "batch_stats": stats}

    def recalibrate(self, variables, masks, x):
        """`variables` with every BatchNorm's running mean and variance replaced by the statistics of the batch `x`
        (train mode, the masked network), parameters unchanged: adaptive BN (Li et al., "EagleEye", ECCV 2020).

        A pruned network's later layers see inputs whose statistics moved, and a few fine-tuning steps at momentum
        0.9 leave a third of the stale running averages in place (0.9^11 = 0.31): measured on VGG-11 at 50 % of its
        MACs (l1, layer scope), 11 steps gave 13.9 % test accuracy with the running averages and 97.8 % recalibrated.
        BN's update is ``running <- m * running + (1 - m) * batch``; from zero running statistics it returns
        ``(1 - m) * batch``. The first call reads `m` off the model (one pass from zeros, one from ones, the same
        batch: their difference is `m` in every entry, checked).
        """
        params, stats = variables["params"], variables["batch_stats"]
        zeros = jax.tree_util.tree_map(jnp.zeros_like, stats)
        _, from_zeros = self.batch_stats({"params": params, "batch_stats": zeros}, x, masks)
        if self.momentum is None:
            ones = jax.tree_util.tree_map(jnp.ones_like, stats)
            _, from_ones = self.batch_stats({"params": params, "batch_stats": ones}, x, masks)
            leaves = zip(jax.tree_util.tree_leaves(from_ones), jax.tree_util.tree_leaves(from_zeros), strict=True)
            diffs = np.concatenate([np.ravel(a - b) for a, b in leaves])
            m = float(np.median(diffs))
            if not 0.0 <= m < 1.0 or float(np.max(np.abs(diffs - m))) > 1e-5:
                raise ValueError(
                    f"BatchNorm running averages of {type(self.model).__name__} are not one momentum "
                    f"m * running + (1 - m) * batch (m spread {diffs.min():.6g}..{diffs.max():.6g})"
                )
            self.momentum = m
        new = jax.tree_util.tree_map(lambda a: a / (1.0 - self.momentum), from_zeros)
        return {"params": params, "batch_stats": new}

    def logits(self, variables, masks, x):
        return np.asarray(self.eval(variables, x, masks))


def _accuracy(logits, y) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def _draw(ds, n: int, stream) -> np.ndarray:
    """Indices of `n` distinct training images (all of them if fewer), drawn from the numpy RNG stream `stream`."""
    return np.random.default_rng(stream).choice(ds.x_train.shape[0], size=min(n, ds.x_train.shape[0]), replace=False)


def _finetune_batches(ds, *, seed: int, steps: int):
    """The same `steps` training batches for every point of a seed (epochs reshuffled with [seed, epoch])."""
    out, epoch = [], 0
    while len(out) < steps:
        out += list(batches(ds.x_train, ds.y_train, BATCH, shuffle=True, seed=np.random.default_rng([seed, epoch]),
                            drop_last=True))  # fmt: skip
        epoch += 1
    return [(jnp.asarray(x), jnp.asarray(y)) for x, y in out[:steps]]


def make_point_plan(model, variables, criterion: str, scope: str, budget: float, *, seed: int, taylor, input_shape):
    kw = {"target_macs": budget, "max_ratio": MAX_RATIO, "scope": scope, "input_shape": input_shape}
    if scope == "global":
        kw["normalize"] = NORMALIZE[criterion]
    if criterion == "taylor":
        return jp.make_plan(model, variables, scores=taylor, meta={"scores": "taylor"}, **kw)
    key = jax.random.key(seed) if criterion == "random" else None
    return jp.make_plan(model, variables, criterion=criterion, key=key, **kw)


def check_pruned_equals_masked(model, tuned, plan, masks, trainer, ds, *, input_shape) -> dict:
    """Prunes the fine-tuned masked weights physically: logits must match the masked ones, MACs the plan's."""
    small, small_vars = jp.prune(model, jax.device_get(tuned), plan)
    pruned = np.asarray(jax.jit(lambda v, x: small.apply(v, x, train=False))(small_vars, ds.x_test))
    masked = trainer.logits(tuned, masks, ds.x_test)
    scale = max(1.0, float(np.abs(masked).max()))
    err = float(np.abs(pruned - masked).max())
    macs = jp.count_macs(small, input_shape).macs
    return {
        "max_abs_diff": err,
        "tolerance": 1e-5 * scale,  # docs/design.md §4: max|d| <= 1e-5 * max(1, max|y|) in float32
        "same_predictions": bool(np.array_equal(pruned.argmax(-1), masked.argmax(-1))),
        "macs_pruned": int(macs),
        "macs_plan": int(plan.meta["kept_macs"]),
        "ok": err <= 1e-5 * scale and int(macs) == int(plan.meta["kept_macs"]),
    }


def _digits(image_size: int, n_train: int | None):
    ds = load_digits(image_size=image_size)
    if n_train is not None:
        ds = dataclasses.replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train])
    return ds


def run(cfg: dict, *, log=print) -> dict:
    out = {"config": cfg, "machine": machine_line(), "load_start": _load(), "bases": [], "points": [], "checks": {}}
    t_all = time.perf_counter()
    for name in cfg["models"]:
        recipe = cfg["recipes"][name]
        shape = _input_shape(recipe)
        ds = _digits(shape[1], cfg["n_train"])
        trainer = None
        for seed in recipe["seeds"]:
            model, base, acc, secs, per_epoch = train_base(
                name,
                ds,
                seed=seed,
                epochs=recipe["epochs"],
                lr=recipe["lr"],
                weight_decay=recipe["weight_decay"],
                init=cfg.get("init", "init"),  # the full study's configuration has no key: model.init
            )
            total = jp.count_macs(model, shape)
            out["bases"].append(
                {"model": name, "seed": seed, "accuracy": acc, "seconds": secs, "seconds_per_epoch": per_epoch,
                 "epochs": recipe["epochs"], "macs": total.macs, "params": total.params, "load": _load()}
            )  # fmt: skip
            log(f"{name} seed {seed}: base accuracy {acc:.4f} in {secs:.1f} s ({per_epoch:.2f} s/epoch)")
            if trainer is None or trainer.model != model:
                trainer = MaskedTrainer(model)
            fb = _finetune_batches(ds, seed=seed, steps=recipe["finetune_steps"])
            pick = _draw(ds, TAYLOR_IMAGES, [seed, 99])
            recal_x = jnp.asarray(ds.x_train[_draw(ds, RECAL_IMAGES, [seed, 98])])
            taylor = None
            if "taylor" in cfg["criteria"]:
                taylor = jp.taylor_scores(model, base, ds.x_train[pick], ds.y_train[pick], train=True)
            for criterion in cfg["criteria"]:
                for scope in cfg["scopes"]:
                    for budget in cfg["budgets"]:
                        t = time.perf_counter()
                        plan = make_point_plan(
                            model, base, criterion, scope, budget, seed=seed, taylor=taylor, input_shape=shape
                        )
                        masks = {k: jnp.asarray(v) for k, v in jp.plan_masks(model, plan).items()}
                        kept = jp.count_macs(model.with_widths(plan.new_widths), shape)
                        t_plan = time.perf_counter() - t
                        before = _accuracy(trainer.logits(base, masks, ds.x_test), ds.y_test)
                        t_eval = time.perf_counter() - t - t_plan
                        tuned = jax.block_until_ready(trainer.finetune(base, masks, fb))
                        t_ft = time.perf_counter() - t - t_plan - t_eval
                        stale = _accuracy(trainer.logits(tuned, masks, ds.x_test), ds.y_test)
                        t_recal = time.perf_counter()
                        tuned = jax.block_until_ready(trainer.recalibrate(tuned, masks, recal_x))
                        t_recal = time.perf_counter() - t_recal
                        after = _accuracy(trainer.logits(tuned, masks, ds.x_test), ds.y_test)
                        point = {
                            "model": name,
                            "seed": seed,
                            "criterion": criterion,
                            "scope": scope,
                            "budget": budget,
                            "macs_kept": kept.macs / total.macs,
                            "params_kept": kept.params / total.params,
                            "accuracy_pruned": before,
                            "accuracy": after,
                            "accuracy_stale_bn": stale,
                            "seconds": time.perf_counter() - t,
                            "seconds_plan": t_plan,
                            "seconds_eval": t_eval,
                            "seconds_finetune": t_ft,
                            "seconds_recalibrate": t_recal,
                        }
                        out["points"].append(point)
                        log(
                            f"  {criterion:8s} {scope:6s} MACs {budget:.2f} -> {point['macs_kept']:.3f}, params "
                            f"{point['params_kept']:.3f}: {before:.4f} -> {after:.4f} (stale BN {stale:.4f}; {point['seconds']:.1f} s)"
                        )
                        if name not in out["checks"]:
                            out["checks"][name] = check_pruned_equals_masked(
                                model, tuned, plan, masks, trainer, ds, input_shape=shape
                            )
                            log(f"  pruned = masked check: {out['checks'][name]}")
    out["seconds"] = time.perf_counter() - t_all
    out["load_end"] = _load()
    out["estimate"] = estimate_full(out)
    return out


#: Seconds per masked ResNet-20 training step (batch 64, 16x16x3, `MaskedTrainer.step`) on this 2-core CPU when
#: quiet: 0.106 s wall (0.164 s of CPU), measured 2026-12-02 at load average 1.0 (at 32x32: 0.54-0.58 s). The
#: estimate's calibration of compute time.
QUIET_RESNET20_STEP_S = 0.106


def estimate_full(out: dict) -> dict:
    """The full study's cost from this run's measured costs, per model.

    Points: the median plan time, three evaluations at the median evaluation time, the median BN recalibration and
    the model's `finetune_steps` (`MODELS`) at the median time per fine-tuning step (the first point of a model
    excluded: it compiles). Base training: epochs x steps per epoch at the same time per step (`fit`'s step does the
    same work without masks) plus, per seed, the measured overhead of `init_variables`, compiles and evaluation (this
    run's base time less its steps).

    Two figures: at this run's speed, and on a quiet machine. For the quiet one, compiled work (steps, evaluations)
    is scaled by `QUIET_RESNET20_STEP_S` / this run's ResNet-20 step time (a loaded machine slows XLA's threads far
    more than the load average says), host work (plans, overhead) by 2 / max(2, load average); without ResNet-20 in
    the run, both by the load average. Smoke-only models (`SMOKE_MODELS`) are not in the study and get no estimate.
    """
    load = max(2.0, float(np.mean([out["load_start"], out["load_end"]])))
    host = 2.0 / load
    spe = 1437 // BATCH
    per_model = {}
    for name in dict.fromkeys(b["model"] for b in out["bases"] if b["model"] in MODELS):
        pts = [p for p in out["points"] if p["model"] == name]
        later = pts[1:] if len(pts) > 1 else pts
        plan_s = float(np.median([p["seconds_plan"] for p in later]))
        eval_s = float(np.median([p["seconds_eval"] for p in later]))
        steps = out["config"]["recipes"][name]["finetune_steps"]  # this run's, per point
        step_s = float(np.median([p["seconds_finetune"] for p in later])) / steps
        recal_s = float(np.median([p["seconds_recalibrate"] for p in later]))
        bases = [b for b in out["bases"] if b["model"] == name]
        n_steps_run = [b["epochs"] * (out["config"]["n_train"] or 1437) // BATCH for b in bases]
        overhead = float(np.mean([b["seconds"] - n * step_s for b, n in zip(bases, n_steps_run, strict=True)]))
        per_model[name] = {
            "step_s": step_s,
            "eval_s": eval_s,
            "plan_s": plan_s,
            "recalibrate_s": recal_s,
            "base_overhead_s": max(overhead, 0.0),
            "points": len(MODELS[name]["seeds"]) * len(CRITERIA) * len(SCOPES) * len(BUDGETS),
        }
    compute = (QUIET_RESNET20_STEP_S / per_model["resnet20"]["step_s"]) if "resnet20" in per_model else host

    def cost(v, name, c, h):
        full = MODELS[name]
        base = len(full["seeds"]) * (full["epochs"] * spe * v["step_s"] * c + v["base_overhead_s"] * h)
        per_point = 3 * v["eval_s"] + v["recalibrate_s"] + full["finetune_steps"] * v["step_s"]
        points = v["points"] * (v["plan_s"] * h + per_point * c)
        return base, points

    for name, v in per_model.items():
        v["base_s"], v["points_s"] = cost(v, name, 1.0, 1.0)
        v["base_s_quiet"], v["points_s_quiet"] = cost(v, name, compute, host)
    return {
        "load": load,
        "compute_scale": compute,
        "host_scale": host,
        "per_model": per_model,
        "total_minutes_at_load": sum(v["base_s"] + v["points_s"] for v in per_model.values()) / 60,
        "total_minutes_quiet": sum(v["base_s_quiet"] + v["points_s_quiet"] for v in per_model.values()) / 60,
    }


# -- report ------------------------------------------------------------------------------------------------------------


def _stats(vals):
    vals = np.asarray(vals, dtype=np.float64)
    spread = float(np.std(vals, ddof=1)) if vals.size > 1 else None
    return float(vals.mean()), spread


def _pm(vals, scale=100.0, digits=2):
    m, s = _stats(vals)
    return f"{scale * m:.{digits}f}" if s is None else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def summarize(out: dict) -> list[dict]:
    """One row per (model, scope, criterion, budget): mean and spread over seeds."""
    rows = []
    cfg = out["config"]
    for name in cfg["models"]:
        for scope in cfg["scopes"]:
            for criterion in cfg["criteria"]:
                for budget in cfg["budgets"]:
                    pts = [
                        p
                        for p in out["points"]
                        if (p["model"], p["scope"], p["criterion"], p["budget"]) == (name, scope, criterion, budget)
                    ]
                    rows.append(
                        {
                            "model": name,
                            "scope": scope,
                            "criterion": criterion,
                            "budget": budget,
                            "n": len(pts),
                            "accuracy": _stats([p["accuracy"] for p in pts]),
                            "accuracy_pruned": _stats([p["accuracy_pruned"] for p in pts]),
                            "macs_kept": _stats([p["macs_kept"] for p in pts]),
                            "params_kept": _stats([p["params_kept"] for p in pts]),
                            "raw": pts,
                        }
                    )
    return rows


def figure(out: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = out["config"]
    models, scopes = cfg["models"], cfg["scopes"]
    fig, axes = plt.subplots(len(models), len(scopes), figsize=(5.2 * len(scopes), 3.8 * len(models)), squeeze=False)
    for i, name in enumerate(models):
        base = _stats([b["accuracy"] for b in out["bases"] if b["model"] == name])[0]
        for j, scope in enumerate(scopes):
            ax = axes[i][j]
            for criterion in cfg["criteria"]:
                rs = [r for r in rows if (r["model"], r["scope"], r["criterion"]) == (name, scope, criterion)]
                x = [r["macs_kept"][0] for r in rs]
                y = [100 * r["accuracy"][0] for r in rs]
                e = [100 * (r["accuracy"][1] or 0.0) for r in rs]
                style = (
                    {"color": "black", "linestyle": "--", "marker": "x"} if criterion == "random" else {"marker": "o"}
                )
                ax.errorbar(x, y, yerr=e, capsize=3, label=criterion, **style)
            ax.axhline(100 * base, color="grey", linewidth=0.8, linestyle=":", label="unpruned")
            size = cfg["recipes"][name]["image_size"]
            ax.set_title(f"{name} ({size}x{size} input), scope={scope}")
            ax.set_xlabel("fraction of MACs kept")
            ax.set_ylabel("test accuracy after fine-tuning (%)")
            ax.set_xlim(1.0, max(0.0, min(cfg["budgets"]) - 0.1))  # inverted: fewer MACs to the right
            ax.ticklabel_format(useOffset=False)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    steps = ", ".join(f"{m} {cfg['recipes'][m]['finetune_steps']}" for m in models)
    fig.suptitle(f"digits: mean ± sd over seeds; fine-tuning steps per point: {steps}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_point(cfg: dict, rows: list[dict], cell) -> list[str]:
    """One table line per (model, scope, criterion): `cell(row)` for each budget's summary row."""
    lines = []
    for name in cfg["models"]:
        for scope in cfg["scopes"]:
            for criterion in cfg["criteria"]:
                rs = [r for r in rows if (r["model"], r["scope"], r["criterion"]) == (name, scope, criterion)]
                lines.append(f"| {name} | {scope} | `{criterion}` | " + " | ".join(cell(r) for r in rs) + " |")
    return lines


def report(out: dict, rows: list[dict], *, command: str, figure_name: str) -> str:
    cfg = out["config"]
    est = out["estimate"]
    lines = [
        "## ShrinkBench-style study on the digits data (`benchmarks/study_digits.py`)",
        "",
        f"Command: `{command}`. Machine: {out['machine']}; load average {out['load_start']:.1f} at the start, "
        f"{out['load_end']:.1f} at the end; {out['seconds'] / 60:.1f} min in all"
        f"{' (SMOKE RUN: not a result)' if cfg['smoke'] else ''}.",
        "",
        "Each point: a plan from `make_plan(target_macs=budget, max_ratio=0.9, scope=...)` on the trained base "
        f"network, then the model's fine-tuning steps (table below; batch {BATCH}, lr {FINETUNE_LR}, momentum 0.9, "
        "weight decay 1e-4) on the masked original (one compile for every point; pruned = masked is checked below), "
        f"then BN recalibration (every running mean and variance from {RECAL_IMAGES} training images through the "
        "fine-tuned masked network: adaptive BN, Li et al. ECCV 2020) and test accuracy on all 360 test images. "
        "The same batches for every point of a seed. Global scope "
        "normalisation: " + ", ".join(f"`{c}` {NORMALIZE[c]}" for c in cfg["criteria"]) + ". Spread: sample "
        "standard deviation over seeds (none shown with one seed). `random` is the baseline on every curve.",
        "",
        "Base networks (`jaxprune.train.fit`, `paper_sgd` with Nesterov, batch 64, label smoothing 0.1, no "
        "augmentation):",
        "",
        "| model | input | seeds | epochs | lr | fine-tuning steps per point | test accuracy % | MACs | params |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in cfg["models"]:
        bs = [b for b in out["bases"] if b["model"] == name]
        r = cfg["recipes"][name]
        lines.append(
            f"| {name} | {r['image_size']}x{r['image_size']} | {', '.join(str(b['seed']) for b in bs)} | "
            f"{r['epochs']} | {r['lr']} | {r['finetune_steps']} | {_pm([b['accuracy'] for b in bs])} | "
            f"{bs[0]['macs']:,} | {bs[0]['params']:,} |"
        )
    head = " | ".join(f"{b:.0%} MACs" for b in cfg["budgets"])
    lines += [
        "",
        "Test accuracy (%) after fine-tuning, mean ± sd over seeds, by the fraction of MACs kept:",
        "",
        f"| model | scope | criterion | {head} |",
        "|---|---|---|" + "---:|" * len(cfg["budgets"]),
    ]
    lines += _by_point(cfg, rows, lambda r: _pm([p["accuracy"] for p in r["raw"]]))
    lines += [
        "",
        "Speed-up (original MACs / kept MACs) and compression (original params / kept params, every `params` leaf), "
        "reported separately, mean over seeds; the same MAC target gives different parameter counts by scope and "
        "criterion (global ranking prunes where the parameters are):",
        "",
        f"| model | scope | criterion | {head} |",
        "|---|---|---|" + "---:|" * len(cfg["budgets"]),
    ]
    lines += _by_point(cfg, rows, lambda r: f"{1 / r['macs_kept'][0]:.2f}x / {1 / r['params_kept'][0]:.2f}x")
    lines += ["", "Cells: speed-up / compression.", ""]
    lines += [
        "What the recalibration does: test accuracy (%) after fine-tuning with the running BN statistics the steps "
        "left (stale) and recalibrated, mean over every point of a model and budget (all criteria, scopes, seeds):",
        "",
        f"| model | | {head} |",
        "|---|---|" + "---:|" * len(cfg["budgets"]),
    ]
    for name in cfg["models"]:
        for key, label in (("accuracy_stale_bn", "stale BN"), ("accuracy", "recalibrated")):
            cells = [
                f"{100 * np.mean([p[key] for p in out['points'] if p['model'] == name and p['budget'] == b]):.2f}"
                for b in cfg["budgets"]
            ]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    checks = "; ".join(
        f"{n}: max |logits pruned - masked| {c['max_abs_diff']:.2e} (tolerance {c['tolerance']:.1e}), same "
        f"predictions {c['same_predictions']}, MACs {c['macs_pruned']:,} = plan {c['macs_plan']:,}"
        for n, c in out["checks"].items()
    )
    estimate = (
        f"estimate of the full study from its measured costs: {est['total_minutes_at_load']:.1f} min at load "
        f"{est['load']:.1f}, {est['total_minutes_quiet']:.1f} min scaled to a quiet machine"
        if est["per_model"]
        else "no model of the full study in this run, so no estimate of it"
    )
    lines += [
        f"Pruned = masked, checked on the first point of each model after fine-tuning: {checks}.",
        "",
        f"![accuracy vs MAC fraction]({figure_name})",
        "",
        f"Cost: {out['seconds'] / 60:.1f} min for this run; {estimate}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="1 seed, 1 budget, 2 criteria, a few steps")
    ap.add_argument("--out", type=Path, default=None, help="write docs/... under this folder instead of the repository")
    ap.add_argument(
        "--models", nargs="+", default=None, choices=sorted(MODELS) + sorted(SMOKE_MODELS), help="resnet8: --smoke only"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        models = args.models or ["resnet8"]
        cfg = {
            "smoke": True,
            "models": models,
            # The study's models keep their input sizes (their costs feed the estimate); ResNet-8 runs at 8x8.
            "recipes": {
                m: {**MODELS[m], "epochs": 1, "seeds": (0,), "finetune_steps": 3} if m in MODELS else SMOKE_RECIPE
                for m in models
            },
            "criteria": ("random", "taylor"),
            "scopes": SCOPES,
            "budgets": (0.5,),
            "n_train": 256,
            "init": "random" if set(models) <= set(SMOKE_MODELS) else "init",
        }
    else:
        if set(args.models or ()) & set(SMOKE_MODELS):
            ap.error(f"{sorted(SMOKE_MODELS)} run with --smoke only; the study's models are {sorted(MODELS)}")
        models = args.models or list(MODELS)
        cfg = {
            "smoke": False,
            "models": models,
            "recipes": {m: MODELS[m] for m in models},
            "criteria": CRITERIA,
            "scopes": SCOPES,
            "budgets": BUDGETS,
            "n_train": None,
        }
    out = run(cfg)
    rows = summarize(out)
    top = args.out or ROOT  # --out DIR mirrors the repository: DIR/docs/...
    results = top / "docs/results.md"
    fig_path = top / "docs/study_digits.png"
    json_path = top / "docs/study_digits.json"
    command = "python benchmarks/study_digits.py" + (" --smoke" if args.smoke else "")
    if args.models:
        command += " --models " + " ".join(args.models)
    figure(out, rows, fig_path)
    write_section(
        NAME, report(out, rows, command=command, figure_name=fig_path.name), file=str(results), title="Results"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=1, default=list) + "\n")
    print(f"wrote {results}, {fig_path}, {json_path}")
    est = out["estimate"]
    print(json.dumps(est["per_model"], indent=1))
    print(
        f"estimated full study: {est['total_minutes_at_load']:.1f} min at load {est['load']:.1f}, "
        f"{est['total_minutes_quiet']:.1f} min on a quiet machine"
    )
    return out


if __name__ == "__main__":
    main()
