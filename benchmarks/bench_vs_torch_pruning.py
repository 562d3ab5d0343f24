"""jaxprune against Torch-Pruning on the paper's VGG-16-A and ResNet-56-B, from the same weights (issue 9).

Run: ``python benchmarks/bench_vs_torch_pruning.py`` (writes its section of docs/benchmarks.md; ``--no-write`` prints
only, ``--quick`` for few repeats). Needs the ``bench`` extra: ``pip install torch==2.13.0 torch-pruning==1.6.1``
(exactly torch 2.13.0: on this machine it resolves to a CPU build; other versions pull several GB of CUDA). Without
them it prints one line saying why it skipped and exits 0 (``JAXPRUNE_BENCH_NO_TORCH=1`` forces that path).

What it does, per network:

1. Builds the same network in torch (NCHW, OIHW kernels; VGG: bias-free 3x3 convs + BN + ReLU, 2x2 max-pools after
   conv 2, 4, 7, 10, a final 2x2 average pool, Linear-BN1d-ReLU-Linear; ResNet-56: option-A shortcuts that subsample
   and zero-pad the new channels at the end, as `jaxprune.models.CifarResNet`) and copies jaxprune's seeded random
   weights into it (HWIO -> OIHW, (in, out) -> (out, in), BN scale/bias/mean/var).
2. Prunes with the preset in jaxprune (`jaxprune.preset` + `jaxprune.prune`) and with Torch-Pruning's `MetaPruner`
   using the paper's criterion, ``MagnitudeImportance(p=1, group_reduction="first", normalizer=None)`` (per-filter L1
   of the pruned conv alone; the default group-normalised importance agrees on only 62-75 % of filters,
   docs/perf-notes.md surprise 3) and, per layer, the preset's ratio written as the exact kept count
   (1 - kept / width, exact in binary for these widths); every other layer is in ``ignored_layers``.
3. Checks: kept filters identical per pruned layer (recovered from the pruned torch weights), logits of the two
   pruned networks within 1e-4 * max(1, max|logit|).
4. Times the prune in both tools, ``gc.collect()`` before each repetition (Torch-Pruning's step times turn bimodal
   otherwise): jaxprune = preset (score + select) + surgery until the arrays are ready; Torch-Pruning = pruner
   construction (dependency graph) + ``step()`` on a fresh deep copy (the copy is not timed). Target: jaxprune's
   VGG-16-A prune >= 4x faster.
5. Latency ratio pruned / original: torch eager (``inference_mode``, eval) beside jaxprune's jitted forward, batch 1
   and 64, each interleaved.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, median_ms, write_section

import jaxprune as jp
from jaxprune import models

SKIP_ENV = "JAXPRUNE_BENCH_NO_TORCH"
TORCH_VERSION = "2.13.0"
TP_VERSION = "1.6.1"
IMAGE = (32, 32, 3)
BATCHES = (1, 64)


def import_torch(environ=None):
    """(torch, torch_pruning) modules, or a one-line reason why the comparison cannot run.

    Args:
      environ: Environment mapping to read `SKIP_ENV` from (default `os.environ`).

    Returns:
      ``(torch, torch_pruning)``, or a str: the reason to skip.
    """
    environ = os.environ if environ is None else environ
    hint = f"pip install torch=={TORCH_VERSION} torch-pruning=={TP_VERSION} (the 'bench' extra)"
    if environ.get(SKIP_ENV, "") not in ("", "0"):
        return f"torch comparison disabled by {SKIP_ENV}={environ[SKIP_ENV]}; unset it and {hint}"
    try:
        import torch
    except ImportError:
        return f"torch is not installed; {hint}"
    try:
        import torch_pruning
    except ImportError:
        return f"torch-pruning is not installed; {hint}"
    return torch, torch_pruning


def tp_version() -> str:
    """torch-pruning's installed version (its ``__version__`` string lags the release: 1.6.1 says 1.6.0)."""
    from importlib.metadata import version

    return version("torch-pruning")


# -- the torch networks ------------------------------------------------------------------------------------------------


def torch_vgg(torch, model: models.VGG):
    """A torch VGG with jaxprune's layer names (conv{i}, bn{i}, fc1, bn_fc1, fc2) and layout."""
    nn = torch.nn
    if model.flatten_repeat != 1:
        raise ValueError(f"the torch VGG here assumes a 1x1 map before fc1 (32x32 input), got {model.image_size}")

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            cin = model.in_channels
            self.order = []
            for i, w in enumerate(model.widths, start=1):
                setattr(self, f"conv{i}", nn.Conv2d(cin, w, 3, padding=1, bias=False))
                setattr(self, f"bn{i}", nn.BatchNorm2d(w, eps=1e-5, momentum=0.1))
                cin = w
            self.fc1 = nn.Linear(cin * model.flatten_repeat, model.fc_width)
            self.bn_fc1 = nn.BatchNorm1d(model.fc_width, eps=1e-5, momentum=0.1)
            self.fc2 = nn.Linear(model.fc_width, model.num_classes)

        def forward(self, x):
            f = torch.nn.functional
            for i in range(1, len(model.widths) + 1):
                x = f.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
                if i in model.pool_after:
                    x = f.max_pool2d(x, 2, 2)
            x = f.avg_pool2d(x, 2, 2)
            # jaxprune flattens channel-last; at a 1x1 map (32x32 input) that is torch's flatten.
            x = torch.flatten(x, 1)
            return self.fc2(f.relu(self.bn_fc1(self.fc1(x))))

    return VGG()


def torch_resnet(torch, model: models.CifarResNet):
    """A torch CIFAR ResNet (option-A shortcuts) with jaxprune's layer names (stem, stage{s}_block{b}_conv1, ...)."""
    nn = torch.nn

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = []
            self.stem = nn.Conv2d(model.in_channels, model.stream_widths[0], 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(model.stream_widths[0])
            cin = model.stream_widths[0]
            for s, b, i in model._blocks():
                p = f"stage{s}_block{b}"
                out_w = model.stream_widths[s - 1]
                stride = 2 if (b == 1 and s > 1) else 1
                setattr(self, f"{p}_conv1", nn.Conv2d(cin, model.widths[i], 3, stride, 1, bias=False))
                setattr(self, f"{p}_bn1", nn.BatchNorm2d(model.widths[i]))
                setattr(self, f"{p}_conv2", nn.Conv2d(model.widths[i], out_w, 3, 1, 1, bias=False))
                setattr(self, f"{p}_bn2", nn.BatchNorm2d(out_w))
                self.blocks.append((p, stride, out_w - cin))
                cin = out_w
            self.fc = nn.Linear(cin, model.num_classes)

        def forward(self, x):
            f = torch.nn.functional
            x = f.relu(self.stem_bn(self.stem(x)))
            for p, stride, pad in self.blocks:
                y = f.relu(getattr(self, f"{p}_bn1")(getattr(self, f"{p}_conv1")(x)))
                y = getattr(self, f"{p}_bn2")(getattr(self, f"{p}_conv2")(y))
                s = x[:, :, ::stride, ::stride] if stride > 1 else x
                if pad:  # option A: zero channels appended at the end, as jaxprune's CifarResNet
                    s = f.pad(s, (0, 0, 0, 0, 0, pad))
                x = f.relu(y + s)
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def copy_weights(torch, net, variables) -> None:
    """jaxprune variables -> the torch network with the same layer names (HWIO -> OIHW, (in, out) -> (out, in))."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    with torch.no_grad():
        for name, leaves in params.items():
            mod = getattr(net, name)
            for leaf, value in leaves.items():
                a = np.asarray(value)
                if leaf == "kernel":
                    a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
                    target = mod.weight
                elif leaf == "scale":
                    target = mod.weight
                elif leaf == "bias":
                    target = mod.bias
                else:
                    raise ValueError(f"unexpected parameter {name}/{leaf}")
                if tuple(target.shape) != a.shape:
                    raise ValueError(f"{name}/{leaf}: torch shape {tuple(target.shape)} vs jaxprune {a.shape}")
                target.copy_(torch.from_numpy(np.array(a, dtype=np.float32)))
        for name, leaves in stats.items():
            mod = getattr(net, name)
            mod.running_mean.copy_(torch.from_numpy(np.array(leaves["mean"], dtype=np.float32)))
            mod.running_var.copy_(torch.from_numpy(np.array(leaves["var"], dtype=np.float32)))
    net.eval()


def weights(model):
    """jaxprune's seeded random variables; in a ResNet the residual branches' last BN scales x 0.2.

    With every BN scale ~ U(0.5, 1.5) the 27 residual additions of ResNet-56 grow the logits to ~1e6, where 1e-4
    means nothing; a trained ResNet's residual branches are small, and x 0.2 keeps the logits at ~4. Scoring reads
    the conv kernels only, so the kept filters do not depend on it.
    """
    v = jp.random_variables(model, seed=0)
    if isinstance(model, models.CifarResNet):
        params = dict(v["params"])
        for name in params:
            if name.endswith("_bn2"):
                params[name] = {**params[name], "scale": params[name]["scale"] * 0.2}
        v = {**v, "params": params}
    return v


# -- pruning in both tools ---------------------------------------------------------------------------------------------


def tp_prune(torch, tp, net, plan, example):
    """Torch-Pruning with the paper's criterion and the plan's exact per-layer counts; returns the pruned network."""
    ratios = {getattr(net, g): 1.0 - len(plan.keep[g]) / plan.widths[g] for g in plan.keep}
    ignored = [
        m
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and m not in ratios  # classifier, streams, unpruned convs
    ]
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        global_pruning=False,
    )
    pruner.step()
    return net


def kept_from_weights(orig_weight: np.ndarray, pruned_weight: np.ndarray) -> tuple[int, ...]:
    """Which original filters (dim 0) a pruned weight holds, in its order (exact row matches)."""
    index = {}
    for i, row in enumerate(orig_weight.reshape(orig_weight.shape[0], -1)):
        index.setdefault(row.tobytes(), []).append(i)
    out = []
    for row in pruned_weight.reshape(pruned_weight.shape[0], -1):
        hits = index.get(row.tobytes(), [])
        if len(hits) != 1:
            raise ValueError(f"a pruned filter matches {len(hits)} original filters, expected exactly 1")
        out.append(hits[0])
    return tuple(out)


def kept_filters_agree(model, net, pruned_net, plan) -> tuple[int, int]:
    """(filters both tools kept, filters jaxprune kept) over the plan's groups, from the pruned torch weights."""
    feeds = {}  # conv name -> the pruned group that feeds its input channels
    for g in model.channel_groups():
        for ref in g.consumers:
            if g.name in plan.keep and ref.axis == 2 and ref.path[-1] == "kernel":
                feeds[ref.path[1]] = g.name
    agree = total = 0
    for g, keep in plan.keep.items():
        w0 = getattr(net, g).weight.detach().numpy()
        w1 = getattr(pruned_net, g).weight.detach().numpy()
        if g in feeds:  # its input channels were pruned too: compare on the kept columns
            w0 = w0[:, list(plan.keep[feeds[g]])]
        tp_keep = kept_from_weights(w0, w1)
        agree += len(set(tp_keep) & set(keep))
        total += len(keep)
        if tp_keep != tuple(keep):
            print(
                f"  {g}: Torch-Pruning kept {len(tp_keep)} filters, jaxprune {len(keep)}; the sets differ", flush=True
            )
    return agree, total


# -- timing ------------------------------------------------------------------------------------------------------------


def time_prunes(torch, tp, name, model, variables, net, example, repeats):
    """Interleaved prune times (s) of both tools, gc.collect() before each."""
    t_jp, t_tp = [], []

    def jp_prune():
        plan = jp.preset(name, model, variables)
        return jax.block_until_ready(jp.prune(model, variables, plan)[1])

    plan = jp.preset(name, model, variables)
    for _ in range(2):  # warm-up: scoring's jitted kernels, torch's first trace
        jp_prune()
        tp_prune(torch, tp, copy.deepcopy(net), plan, example)
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        jp_prune()
        t_jp.append(time.perf_counter() - t)
        fresh = copy.deepcopy(net)
        gc.collect()
        t = time.perf_counter()
        tp_prune(torch, tp, fresh, plan, example)
        t_tp.append(time.perf_counter() - t)
    return t_jp, t_tp


def torch_latency(torch, nets: dict, batch: int, repeats: int) -> dict[str, float]:
    """Median ms of eager torch inference per network, interleaved."""
    x = torch.randn(batch, IMAGE[2], IMAGE[0], IMAGE[1])
    out = {k: [] for k in nets}
    with torch.inference_mode():
        for net in nets.values():
            for _ in range(3):
                net(x)
        for r in range(repeats):
            for k in list(nets) if r % 2 == 0 else reversed(list(nets)):
                t = time.perf_counter()
                nets[k](x)
                out[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in out.items()}


# -- main --------------------------------------------------------------------------------------------------------------


def run(torch, tp, repeats: int, lat_repeats: int) -> tuple[str, int]:
    load = [os.getloadavg()[0]]
    rows_prune, rows_lat, missed = [], [], 0
    checks = []
    for base, name, builder in (("vgg16", "vgg16-A", torch_vgg), ("resnet56", "resnet56-B", torch_resnet)):
        m = models.get(base)
        v = weights(m)
        net = builder(torch, m)
        copy_weights(torch, net, v)
        x_nhwc = np.asarray(jax.random.normal(jax.random.key(1), (8, *IMAGE)), np.float32)
        x_t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        example = torch.randn(1, IMAGE[2], IMAGE[0], IMAGE[1])

        # The unpruned networks agree first (the weights were copied right).
        with torch.inference_mode():
            y0_t = net(x_t).numpy()
        y0_j = np.asarray(m.apply(v, x_nhwc))
        d0 = float(np.max(np.abs(y0_t - y0_j)))

        plan = jp.preset(name, m, v)
        new_m, new_v = jp.prune(m, v, plan)
        pruned_net = tp_prune(torch, tp, copy.deepcopy(net), plan, example)
        agree, total = kept_filters_agree(m, net, pruned_net, plan)
        with torch.inference_mode():
            y_t = pruned_net(x_t).numpy()
        y_j = np.asarray(new_m.apply(new_v, x_nhwc))
        scale = max(1.0, float(np.max(np.abs(y_j))))
        d = float(np.max(np.abs(y_t - y_j)))
        ok_logits, ok_keep = d <= 1e-4 * scale, agree == total
        missed += (not ok_logits) + (not ok_keep)
        checks.append(
            f"| {name} | {agree:,} / {total:,} ({100 * agree / total:.1f} %) | {'yes' if ok_keep else '**no**'} | "
            f"{d0:.2e} | {d:.2e} (max abs logit {scale:.1f}) | {'yes' if ok_logits else '**no**'} |"
        )
        print(checks[-1], flush=True)

        t_jp, t_tp = time_prunes(torch, tp, name, m, v, net, example, repeats)
        speed = median_ms(t_tp) / median_ms(t_jp)
        target = ">= 4x" if name == "vgg16-A" else ""
        met = speed >= 4.0 if name == "vgg16-A" else None
        missed += met is False
        rows_prune.append(
            f"| {name} | {median_ms(t_jp):.2f} ({1e3 * min(t_jp):.2f}..{1e3 * max(t_jp):.2f}) | "
            f"{median_ms(t_tp):.2f} ({1e3 * min(t_tp):.2f}..{1e3 * max(t_tp):.2f}) | {speed:.1f}x | {target} | "
            f"{'' if met is None else ('yes' if met else '**no**')} |"
        )
        print(rows_prune[-1], flush=True)

        ours = jp.benchmark_many({"o": (m, v), "p": (new_m, new_v)}, IMAGE, batch_sizes=BATCHES, repeats=lat_repeats)
        mac_ratio = jp.count_macs(new_m, (1, *IMAGE)).macs / jp.count_macs(m, (1, *IMAGE)).macs
        for b in BATCHES:
            lat = torch_latency(torch, {"o": net, "p": pruned_net}, b, lat_repeats)
            jr = ours["p"].median_ms(b) / ours["o"].median_ms(b)
            rows_lat.append(
                f"| {name} | {b} | {mac_ratio:.3f} | {lat['o']:.2f} -> {lat['p']:.2f} | {lat['p'] / lat['o']:.3f} | "
                f"{ours['o'].median_ms(b):.2f} -> {ours['p'].median_ms(b):.2f} | {jr:.3f} |"
            )
            print(rows_lat[-1], flush=True)

    load.append(os.getloadavg()[0])
    lines = [
        "## jaxprune vs Torch-Pruning (`benchmarks/bench_vs_torch_pruning.py`)",
        "",
        f"Machine: {machine_line()}; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (shared "
        "machine: torch's OpenMP threads suffer most from other processes' load, so its absolute times and the "
        "prune-time spread are upper bounds there); "
        f"torch {torch.__version__}, torch-pruning {tp_version()} "
        f"({torch.get_num_threads()} threads). Same seeded random weights in both tools (jaxprune's, copied into an "
        "identical torch network; ResNet residual branches' last BN scales x 0.2 so that logits stay ~4); Torch-Pruning with `MagnitudeImportance(p=1, group_reduction='first', "
        "normalizer=None)` (the paper's per-filter L1) and the preset's per-layer kept counts.",
        "",
        "| preset | kept filters equal | met | unpruned max abs logit diff | pruned max abs logit diff | "
        "within 1e-4 x max(1, max abs logit) |",
        "|---|---|---|---|---|---|",
        *checks,
        "",
        f"Prune time, ms (median, min..max of {repeats}, interleaved, `gc.collect()` before each): jaxprune = "
        "`preset` (score + select) + `prune` (surgery) until the arrays are ready; Torch-Pruning = `MetaPruner` "
        "construction (dependency graph) + `step()` on a fresh deep copy (copy not timed).",
        "",
        "| preset | jaxprune ms | Torch-Pruning ms | jaxprune faster by | target | met |",
        "|---|---|---|---|---|---|",
        *rows_prune,
        "",
        f"Latency pruned / original (medians of {lat_repeats}, interleaved per tool): torch eager "
        "(`inference_mode`, eval) beside jaxprune's jitted forward (`conv_impl='auto'`). MACs = conv + dense "
        "multiply-accumulates (the paper's FLOP). ResNet-56-B's odd widths (6/22/57) are what Torch-Pruning "
        "produces too; on XLA:CPU they make the pruned ResNet no faster, and `preset(..., round_to=8)` is the fix "
        "(see the inference-latency section).",
        "",
        "| preset | batch | MAC ratio | torch ms | torch ratio | jaxprune ms | jaxprune ratio |",
        "|---|---|---|---|---|---|---|",
        *rows_lat,
    ]
    return "\n".join(lines), missed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="prune repetitions per tool (default 20)")
    ap.add_argument("--latency-repeats", type=int, default=20, help="timed forwards per model and batch (default 20)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions of everything: a smoke run")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    repeats, lat_repeats = (3, 3) if args.quick else (args.repeats, args.latency_repeats)
    if repeats < 1 or lat_repeats < 1:
        ap.error(f"--repeats and --latency-repeats must be >= 1, got {repeats} and {lat_repeats}")
    mods = import_torch()
    if isinstance(mods, str):
        print(f"bench_vs_torch_pruning: skipped: {mods}")
        return 0
    torch, tp = mods
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            ap.error(f"--torch-threads must be >= 1, got {args.torch_threads}")
        torch.set_num_threads(args.torch_threads)
    if torch.__version__.split("+")[0] != TORCH_VERSION or tp_version() != TP_VERSION:
        print(
            f"note: measured with torch {torch.__version__}, torch-pruning {tp_version()}; the bench extra pins "
            f"{TORCH_VERSION} and {TP_VERSION}",
            flush=True,
        )
    text, missed = run(torch, tp, repeats, lat_repeats)
    print(text)
    if not args.no_write:
        write_section("bench_vs_torch_pruning", text)
    print(f"targets missed: {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
