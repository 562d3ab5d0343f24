"""The demo's report: the before/after table (text and markdown) and ``report.md``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxprune._table import markdown_table


def _fmt_int(v: int) -> str:
    return f"{v:,}"


def _fmt_m(v: float) -> str:
    return f"{v / 1e6:,.2f} M"


def _change(before: float, after: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f} %" if before else ""


def _result_rows(n: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    b, a = n["before"], n["after"]
    rows = [("", "before", "after", "change")]
    rows.append(
        (
            "test accuracy",
            f"{100 * b['test_accuracy']:.2f} %",
            f"{100 * a['test_accuracy']:.2f} %",
            f"{100 * (a['test_accuracy'] - b['test_accuracy']):+.2f} pt",
        )
    )
    rows.append(("  right after pruning, no fine-tuning", "", f"{100 * a['test_accuracy_pruned']:.2f} %", ""))
    rows.append(("params", _fmt_int(b["params"]), _fmt_int(a["params"]), _change(b["params"], a["params"])))
    rows.append(
        ("MACs (conv + FC, the paper's FLOP)", _fmt_m(b["macs"]), _fmt_m(a["macs"]), _change(b["macs"], a["macs"]))
    )
    rows.append(("XLA FLOPs (cost analysis)", _fmt_m(b["xla_flops"]), _fmt_m(a["xla_flops"]), _change(b["xla_flops"], a["xla_flops"])))  # fmt: skip
    for bs in b["latency_ms"]:
        tb, ta = b["latency_ms"][bs], a["latency_ms"][bs]
        speed = f"{tb / ta:.2f}x faster" if ta <= tb else f"{ta / tb:.2f}x slower"
        rows.append((f"CPU latency, batch {bs} (median)", f"{tb:.2f} ms", f"{ta:.2f} ms", speed))
    return rows


def _report_markdown(
    *, name, numbers, table, suggestion, plan, history, ft_history, rel, conventions, data_sizes
) -> str:
    n_train, n_test = data_sizes
    sec = numbers["seconds"]
    cmd = f"jaxprune demo --model {numbers['model']}" + (" --quick" if numbers["quick"] else "")
    lines = [
        f"# jaxprune demo: {name} on the digits data",
        "",
        "Li et al., *Pruning Filters for Efficient ConvNets* (ICLR 2017), end to end on real data: a network trained, "
        "its filters scored by L1 norm, a sensitivity scan, per-stage ratios chosen from it, the network physically "
        "pruned and fine-tuned, then measured.",
        "",
        f"Command: `{cmd}`. Data: scikit-learn's handwritten digits, {n_train} training and {n_test} test images "
        f"(32x32x3). Machine: {numbers['machine']}, jax {numbers['jax']} ({numbers['backend']}). "
        f"Total {sec['total']:.0f} s.",
        "",
        "## Result",
        "",
        markdown_table(table),
        "",
        f"Latency / MAC ratio: MACs x{numbers['mac_ratio']:.3f}, latency "
        + ", ".join(f"x{v:.3f} at batch {b}" for b, v in numbers["latency_ratio"].items())
        + ".",
        "",
        "## How the ratios were chosen",
        "",
        "```",
        suggestion.explanation,
        "```",
        "",
        "## The plan",
        "",
        f"`{rel['plan']}` (round_to {numbers['round_to']}):",
        "",
        "```",
        plan.summary() if plan.keep else "(nothing pruned)",
        "```",
        "",
        "## Training",
        "",
        f"Baseline ({numbers['baseline']}, `{rel['baseline']}`): "
        + ", ".join(f"{h.get('test_accuracy', float('nan')):.4f}" for h in history)
        + " test accuracy per epoch.",
        f"Fine-tuning (`{rel['pruned']}`, lr {numbers['finetune_lr']:g} divided by 10 at 50 % and 75 %): "
        + ", ".join(f"{h.get('test_accuracy', float('nan')):.4f}" for h in ft_history)
        + f" (right after pruning: {numbers['after']['test_accuracy_pruned']:.4f}).",
        "",
        "## Figures",
        "",
        f"![Sorted filter L1 norms, paper Fig. 2(a)]({rel['fig2a']})",
        f"![Sensitivity, paper Fig. 2(b)]({rel['fig2b']})",
        f"![Widths before and after]({rel['widths']})",
        f"![MACs per layer before and after]({rel['macs']})",
        "",
        "## Time per phase",
        "",
        markdown_table([("phase", "seconds")] + [(k, f"{v:.1f}") for k, v in sec.items()]),
        "",
        "## Conventions",
        "",
        *[f"- {c}" for c in conventions],
        f"- Accuracy: fraction of the {n_test} test images classified correctly; the sensitivity scan uses "
        f"{numbers['scan_images']} training images, so the test split only measures.",
    ]
    return "\n".join(lines)
