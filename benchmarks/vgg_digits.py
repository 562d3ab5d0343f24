"""VGG-16 trained on the digits data, pruned with the paper's `vgg16-A` preset, fine-tuned (issue 9).

Run: ``python benchmarks/vgg_digits.py`` (a few minutes on 2 cores; writes its section of docs/results.md;
``--no-write`` to only print). Options: ``--epochs``, ``--batch-size``, ``--lr``, ``--weight-decay``,
``--label-smoothing``, ``--finetune-epochs``, ``--finetune-lr``, ``--seed``.

The paper's VGG-16 (CIFAR layout, BN; paper §4.1) is usable on this CPU since the default conv path computes the
2x2-spatial conv11-13 as im2col + matmul (`jaxprune.models.layers`). Steps:

1. Train on `jaxprune.data.load_digits()` (1,437 train / 360 test real 8x8 digits upsampled to 32x32x3) with
   `jaxprune.train.fit` and `paper_sgd` (SGD, Nesterov momentum 0.9, lr divided by 10 at 50 % and 75 %).
2. Prune with ``jaxprune.preset("vgg16-A", ...)`` (50 % of conv1 and conv8-conv13, paper Table 1: 34.2 % fewer MACs,
   64.0 % fewer parameters) through `jaxprune.train.prune_state` (weights, BN statistics, momentum); test accuracy
   before retraining.
3. Fine-tune with `jaxprune.train.finetune` at a constant rate, momentum carried; test accuracy after.
4. Inference latency of the trained original and the pruned model (`jaxprune.compare_latency`, batch 1 and 64).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section

import jaxprune as jp
from jaxprune import train
from jaxprune.data import load_digits

DEFAULTS = {
    "epochs": 12,
    "batch_size": 64,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "finetune_epochs": 4,
    "finetune_lr": 0.01,
    "seed": 0,
    "latency_repeats": 10,
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    for k in ("epochs", "batch_size", "finetune_epochs", "latency_repeats"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    load = [os.getloadavg()[0]]

    data = load_digits()
    model = jp.models.vgg16(num_classes=data.num_classes)
    t0 = time.perf_counter()
    variables = jp.init_variables(model, seed=args.seed)
    spe = train.steps_per_epoch(data, args.batch_size)
    tx = train.paper_sgd(
        epochs=args.epochs,
        steps_per_epoch=spe,
        learning_rate=args.lr,
        nesterov=True,
        weight_decay=args.weight_decay,
    )
    state = train.TrainState.create(model, variables, tx, seed=args.seed)
    state, history = train.fit(
        state,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
        eval_every=max(1, args.epochs // 4),
    )
    t_train = time.perf_counter() - t0
    acc = history[-1]["test_accuracy"]
    print(f"trained: test accuracy {acc:.4f} in {t_train:.1f} s", flush=True)

    t = time.perf_counter()
    plan = jp.preset("vgg16-A", state.model, state.variables)
    pruned = train.prune_state(state, plan)
    t_prune = time.perf_counter() - t
    acc_pruned = train.evaluate(pruned, data.x_test, data.y_test, batch_size=args.batch_size)["accuracy"]
    # The masking reference (docs/design.md §4): the unpruned network with the removed channels zeroed after BN. Its
    # accuracy equals the pruned network's, so what pruning does to accuracy is the pruning, not the surgery.
    fwd = jp.masked_forward(state.model)
    masks = jp.plan_masks(state.model, plan)
    host_vars = jax.device_get(state.variables)
    logits = np.concatenate(
        [np.asarray(fwd(host_vars, data.x_test[i : i + 120], masks)) for i in range(0, len(data.x_test), 120)]
    )
    acc_masked = float(np.mean(logits.argmax(-1) == data.y_test))
    print(
        f"pruned with vgg16-A: test accuracy {acc_pruned:.4f} before fine-tuning (masked reference {acc_masked:.4f})",
        flush=True,
    )
    t = time.perf_counter()
    tuned, ft_history = train.finetune(
        pruned,
        data,
        epochs=args.finetune_epochs,
        lr=args.finetune_lr,
        batch_size=args.batch_size,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
    )
    t_ft = time.perf_counter() - t
    acc_tuned = ft_history[-1]["test_accuracy"]
    print(f"fine-tuned: test accuracy {acc_tuned:.4f} after {args.finetune_epochs} epochs", flush=True)

    before = jp.count_macs(state.model, (1, 32, 32, 3))
    after = jp.count_macs(tuned.model, (1, 32, 32, 3))
    lat = jp.compare_latency(
        state.model,
        jax.device_get(state.variables),
        tuned.model,
        jax.device_get(tuned.variables),
        (32, 32, 3),
        batch_sizes=(1, 64),
        repeats=args.latency_repeats,
    )
    print(lat, flush=True)
    load.append(os.getloadavg()[0])
    r = dict(
        acc=acc,
        acc_pruned=acc_pruned,
        acc_masked=acc_masked,
        acc_tuned=acc_tuned,
        history=history,
        ft_history=ft_history,
        t_train=t_train,
        t_prune=t_prune,
        t_ft=t_ft,
        plan=plan,
        before=before,
        after=after,
        latency=lat,
        load=load,
    )
    text = report(args, r)
    print(text)
    if not args.no_write:
        write_section("vgg_digits", text, file="docs/results.md")
    return r


def report(args, r) -> str:
    cmd = "python benchmarks/vgg_digits.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in DEFAULTS and v != DEFAULTS[k]
    )
    rows = "\n".join(
        f"| {e['epoch']} | {e['seconds']:.1f} | {e['train_loss']:.4f} | {e['train_accuracy']:.4f} | "
        + (f"{e['test_accuracy']:.4f} |" if "test_accuracy" in e else " |")
        for e in r["history"]
    )
    ft = "\n".join(
        f"| {e['epoch']} | {e['seconds']:.1f} | {e['train_loss']:.4f} | {e['test_accuracy']:.4f} |"
        for e in r["ft_history"]
    )
    b, a, lat = r["before"], r["after"], r["latency"]
    widths = r["plan"].new_widths
    pruned_layers = ", ".join(f"{g} {r['plan'].widths[g]} -> {widths[g]}" for g in r["plan"].keep)
    lat_rows = "\n".join(
        f"| {bs} | {lat.before.median_ms(bs):.2f} | {lat.after.median_ms(bs):.2f} | {lat.latency_ratio(bs):.3f} | "
        f"{lat.mac_ratio:.3f} |"
        for bs in lat.before.batch_sizes
    )
    return f"""## VGG-16 on the digits data, pruned with `vgg16-A` and fine-tuned (`benchmarks/vgg_digits.py`)

Command: `{cmd}` ({machine_line()}; load average {r["load"][0]:.1f} at the start, {r["load"][1]:.1f} at the end: the
machine is shared, so times are upper bounds).

The paper's CIFAR VGG-16 with BN (§4.1; 13 bias-free 3x3 convs, Linear-BN-ReLU-Linear) on
`jaxprune.data.load_digits()` (1,437 train / 360 test real 8x8 digits upsampled to 32x32x3, normalized),
`jaxprune.train.fit` with `paper_sgd`: SGD with Nesterov momentum 0.9, batch {args.batch_size}, lr {args.lr} divided
by 10 at 50 % and 75 % of {args.epochs} epochs, weight decay {args.weight_decay:g}, label smoothing
{args.label_smoothing}, no augmentation; default conv path (`conv_impl='auto'`: conv1 and the 2x2-spatial conv11-13 as
im2col + matmul). Training took {r["t_train"]:.0f} s (compiles included).

| | test accuracy | MACs (conv + FC) | params (all leaves) |
|---|---:|---:|---:|
| VGG-16, trained | **{100 * r["acc"]:.2f} %** | {b.macs:,} | {b.params:,} |
| VGG-16-A, pruned, before fine-tuning | {100 * r["acc_pruned"]:.2f} % | {a.macs:,} | {a.params:,} |
| VGG-16-A, fine-tuned {args.finetune_epochs} epochs at lr {args.finetune_lr} | **{100 * r["acc_tuned"]:.2f} %** | {a.macs:,} | {a.params:,} |

Pruned by `jaxprune.preset("vgg16-A", ...)` (paper Table 1: 50 % of conv1 and conv8-conv13, smallest L1 per filter):
{pruned_layers}; {100 * (1 - a.macs / b.macs):.2f} % fewer MACs, {100 * (1 - a.params_no_bn / b.params_no_bn):.2f} %
fewer conv + FC parameters (the paper: 34.2 % and 64.0 %). `prune_state` (weights, BN statistics, momentum) took
{1e3 * r["t_prune"]:.0f} ms; fine-tuning {r["t_ft"]:.0f} s. Accuracy change after fine-tuning:
{100 * (r["acc_tuned"] - r["acc"]):+.2f} points (the paper, on CIFAR-10: 93.25 % -> 93.40 %). Right after pruning,
before any retraining, the network is {"at chance (10 classes: 10 %)" if r["acc_pruned"] < 0.15 else "degraded"};
the masking reference (the unpruned network with the removed channels' post-BN outputs zeroed, docs/design.md §4) scores
{100 * r["acc_masked"]:.2f} %, so that is what removing these filters does, BN shifts included, in seven layers at once,
not the surgery. The paper retrains VGG-16-A too; here {len(r["ft_history"])} epochs of fine-tuning
{"restore the unpruned accuracy" if r["acc_tuned"] >= r["acc"] - 0.005 else "recover most of it"} (test accuracy
after the first: {100 * r["ft_history"][0]["test_accuracy"]:.2f} %).

Training (test accuracy evaluated every {max(1, args.epochs // 4)} epochs and after the last):

| epoch | seconds | train loss | train acc | test acc |
|---:|---:|---:|---:|---:|
{rows}

Fine-tuning:

| epoch | seconds | train loss | test acc |
|---:|---:|---:|---:|
{ft}

Inference latency of the trained models (`jaxprune.compare_latency`, medians of {args.latency_repeats}, interleaved):

| batch | VGG-16 ms | VGG-16-A ms | latency ratio | MAC ratio |
|---:|---:|---:|---:|---:|
{lat_rows}
"""


if __name__ == "__main__":
    main()
