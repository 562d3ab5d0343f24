"""Li et al. 2017 Tables 1 and 2 reproduced from the model zoo and the presets, without training.

This module owns the paper's printed values (docs/paper.md §1, §2) and puts them beside our own counts: `table1` for the
12 Table 1 models (MACs, parameters, pruned %), `table2` for VGG-16 per layer. Our counts come from
`jaxprune.count_macs` (abstract evaluation) on the networks that `jaxprune.preset` builds from random variables
(selection does not change counts), so everything runs in seconds. Conventions (docs/paper.md §3): FLOP = conv + dense
MACs; parameters = conv + dense weights and biases without BN; ResNet-34 leaves out its three 1x1 projection convs;
Table 2 counts weights only. It does not train, time or prune variables.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

from jaxprune import models
from jaxprune._table import text_table
from jaxprune.flops import count_macs
from jaxprune.presets import PRESETS, preset
from jaxprune.utils import random_variables

__all__ = [
    "TABLE1_PRINTED",
    "TABLE2_PRINTED",
    "Table1Row",
    "Table2Row",
    "format_table1",
    "format_table2",
    "table1",
    "table2",
]

#: Table 1 as printed (docs/paper.md §1), scratch-train rows left out: (model, preset or None, zoo base, error %,
#: FLOP, FLOP pruned %, parameters, params pruned %). Numbers are kept as printed strings to know their precision.
TABLE1_PRINTED: tuple[tuple[str, str | None, str, str, str, str | None, str, str | None], ...] = (
    ("VGG-16", None, "vgg16", "6.75", "3.13e8", None, "1.5e7", None),
    ("VGG-16-pruned-A", "vgg16-A", "vgg16", "6.60", "2.06e8", "34.2", "5.4e6", "64.0"),
    ("ResNet-56", None, "resnet56", "6.96", "1.25e8", None, "8.5e5", None),
    ("ResNet-56-pruned-A", "resnet56-A", "resnet56", "6.90", "1.12e8", "10.4", "7.7e5", "9.4"),
    ("ResNet-56-pruned-B", "resnet56-B", "resnet56", "6.94", "9.09e7", "27.6", "7.3e5", "13.7"),
    ("ResNet-110", None, "resnet110", "6.47", "2.53e8", None, "1.72e6", None),
    ("ResNet-110-pruned-A", "resnet110-A", "resnet110", "6.45", "2.13e8", "15.9", "1.68e6", "2.3"),
    ("ResNet-110-pruned-B", "resnet110-B", "resnet110", "6.70", "1.55e8", "38.6", "1.16e6", "32.4"),
    ("ResNet-34", None, "resnet34", "26.77", "3.64e9", None, "2.16e7", None),
    ("ResNet-34-pruned-A", "resnet34-A", "resnet34", "27.44", "3.08e9", "15.5", "1.99e7", "7.6"),
    ("ResNet-34-pruned-B", "resnet34-B", "resnet34", "27.83", "2.76e9", "24.2", "1.93e7", "10.8"),
    ("ResNet-34-pruned-C", "resnet34-C", "resnet34", "27.52", "3.37e9", "7.5", "2.01e7", "7.2"),
)

#: Table 2 as printed (docs/paper.md §2): (layer, our layer name, w x h, #maps, FLOP, #params, #maps A, FLOP% A).
TABLE2_PRINTED: tuple[tuple[str, str, str, int, str, str, int, str], ...] = (
    ("Conv_1", "conv1", "32x32", 64, "1.8E+06", "1.7E+03", 32, "50%"),
    ("Conv_2", "conv2", "32x32", 64, "3.8E+07", "3.7E+04", 64, "50%"),
    ("Conv_3", "conv3", "16x16", 128, "1.9E+07", "7.4E+04", 128, "0%"),
    ("Conv_4", "conv4", "16x16", 128, "3.8E+07", "1.5E+05", 128, "0%"),
    ("Conv_5", "conv5", "8x8", 256, "1.9E+07", "2.9E+05", 256, "0%"),
    ("Conv_6", "conv6", "8x8", 256, "3.8E+07", "5.9E+05", 256, "0%"),
    ("Conv_7", "conv7", "8x8", 256, "3.8E+07", "5.9E+05", 256, "0%"),
    ("Conv_8", "conv8", "4x4", 512, "1.9E+07", "1.2E+06", 256, "50%"),
    ("Conv_9", "conv9", "4x4", 512, "3.8E+07", "2.4E+06", 256, "75%"),
    ("Conv_10", "conv10", "4x4", 512, "3.8E+07", "2.4E+06", 256, "75%"),
    ("Conv_11", "conv11", "2x2", 512, "9.4E+06", "2.4E+06", 256, "75%"),
    ("Conv_12", "conv12", "2x2", 512, "9.4E+06", "2.4E+06", 256, "75%"),
    ("Conv_13", "conv13", "2x2", 512, "9.4E+06", "2.4E+06", 256, "75%"),
    ("Linear", "fc1", "1", 512, "2.6E+05", "2.6E+05", 512, "50%"),
    ("Linear", "fc2", "1", 10, "5.1E+03", "5.1E+03", 10, "0%"),
)

CONVENTION = (
    "FLOP = conv + dense multiply-accumulates (1 per MAC); params = conv + dense weights and biases, no BN; "
    "ResNet-34 without its three 1x1 projection convs (docs/paper.md §3); inputs 1x32x32x3 (CIFAR), 1x224x224x3 (ImageNet)"
)


def _agrees(ours: int, printed: str) -> bool:
    """Whether `ours` prints as `printed` at the printed number of significant digits."""
    mantissa = printed.lower().split("e")[0]
    digits = len(mantissa.replace(".", "").lstrip("0"))
    return float(f"{ours:.{digits - 1}e}") == float(printed)


@dataclasses.dataclass(frozen=True)
class Table1Row:
    """One Table 1 row: our counts beside the paper's printed values.

    Attributes:
      model: The row's label in the paper (e.g. ``ResNet-56-pruned-B``).
      preset: The `jaxprune.preset` name, or None for an unpruned model.
      macs: Our conv + dense MACs (ResNet-34 without projections).
      params: Our conv + dense weights and biases, no BN (ResNet-34 without projections).
      macs_pruned: Our FLOP reduction in % against the unpruned model (None for an unpruned row).
      params_pruned: Our parameter reduction in %.
      paper_error: Printed error (%), a string.
      paper_macs: Printed FLOP, a string such as ``9.09e7``.
      paper_params: Printed parameters.
      paper_macs_pruned: Printed FLOP pruned % (None for an unpruned row).
      paper_params_pruned: Printed params pruned %.
    """

    model: str
    preset: str | None
    macs: int
    params: int
    macs_pruned: float | None
    params_pruned: float | None
    paper_error: str
    paper_macs: str
    paper_params: str
    paper_macs_pruned: str | None
    paper_params_pruned: str | None

    @property
    def macs_agree(self) -> bool:
        """Our MACs print as the paper's FLOP at its precision."""
        return _agrees(self.macs, self.paper_macs)

    @property
    def params_agree(self) -> bool:
        """Our parameters print as the paper's at its precision (false only for ResNet-34-A: 2.00e7 vs 1.99e7)."""
        return _agrees(self.params, self.paper_params)

    @property
    def macs_pruned_diff(self) -> float | None:
        """Ours minus the paper's FLOP pruned %, in percentage points."""
        return None if self.macs_pruned is None else self.macs_pruned - float(self.paper_macs_pruned)

    @property
    def params_pruned_diff(self) -> float | None:
        """Ours minus the paper's params pruned %, in percentage points."""
        return None if self.params_pruned is None else self.params_pruned - float(self.paper_params_pruned)


def _counts(model, base: str) -> tuple[int, int]:
    r = count_macs(model, exclude_projections=(base == "resnet34"))
    return r.macs, r.params_no_bn


@functools.cache
def _variables(base: str):
    # Selection does not change counts; one seeded draw per zoo model serves every preset of it.
    return random_variables(models.get(base), seed=0)


_TABLE1: list[tuple[Table1Row, ...]] = []  # computed once per process


def _table1(progress: bool = False) -> tuple[Table1Row, ...]:
    if not _TABLE1:
        from tqdm.auto import tqdm

        rows = []
        with tqdm(total=len(TABLE1_PRINTED), desc="Table 1", unit="row", disable=not progress, leave=False) as bar:
            for row in _table1_rows():
                rows.append(row)
                bar.update(1)
        _TABLE1.append(tuple(rows))
    return _TABLE1[0]


def _table1_rows():
    """Yields Table 1's rows in order (each counts a network, and the first of each model draws its variables)."""
    base_counts: dict[str, tuple[int, int]] = {}
    for label, name, base, err, flop, flop_pct, params, params_pct in TABLE1_PRINTED:
        model = models.get(base)
        if name is None:
            macs, n_params = base_counts[base] = _counts(model, base)
            yield Table1Row(label, None, macs, n_params, None, None, err, flop, params, None, None)
            continue
        if PRESETS[name].table1_row != label:  # the presets module and this table must agree
            raise RuntimeError(f"preset {name!r} is for {PRESETS[name].table1_row!r}, not {label!r}")
        plan = preset(name, model, _variables(base))
        macs, n_params = _counts(model.with_widths(plan.new_widths), base)
        b_macs, b_params = base_counts[base]
        yield Table1Row(
            label,
            name,
            macs,
            n_params,
            100 * (b_macs - macs) / b_macs,
            100 * (b_params - n_params) / b_params,
            err,
            flop,
            params,
            flop_pct,
            params_pct,
        )


def table1() -> list[Table1Row]:
    """Table 1 of Li et al. (docs/paper.md §1) reproduced: our MACs, parameters and pruned % beside the printed values.

    Our counts are exact (`jaxprune.count_macs` of the networks `jaxprune.preset` builds); every pruned % lies
    within 0.1 percentage point of the paper's (docs/paper.md §4, §9). Runs in seconds; no training.

    Returns:
      The 12 rows (the scratch-train rows have no counts of their own), in the paper's order.

    Example:
      >>> from jaxprune import paper
      >>> row = paper.table1()[4]
      >>> row.model, row.macs, row.params, round(row.macs_pruned, 2), row.paper_macs_pruned
      ('ResNet-56-pruned-B', 90907264, 732026, 27.56, '27.6')
    """
    return list(_table1())


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _diff(v: float | None) -> str:
    return "" if v is None else f"{v:+.2f}"


def format_table1(*, progress: bool | None = None) -> str:
    """Table 1 as text: ours beside the paper, with differences in percentage points and the convention.

    A mark after a paper value says whether ours prints the same at the paper's precision (``=``) or not (``!``).

    Args:
      progress: Show a progress bar on stderr while the rows are counted (the first call in a process counts 12
        networks: tens of seconds on a 2-core CPU). None, the default: only when stderr is a terminal.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    _table1(progress=progress)
    lines = [
        (
            "model",
            "FLOP ours",
            "paper",
            "pruned % ours",
            "paper",
            "diff pp",
            "params ours",
            "paper",
            "pruned % ours",
            "paper",
            "diff pp",
        )
    ]
    for r in table1():
        lines.append(
            (
                r.model,
                f"{r.macs:,}",
                f"{r.paper_macs} {'=' if r.macs_agree else '!'}",
                _pct(r.macs_pruned),
                r.paper_macs_pruned or "",
                _diff(r.macs_pruned_diff),
                f"{r.params:,}",
                f"{r.paper_params} {'=' if r.params_agree else '!'}",
                _pct(r.params_pruned),
                r.paper_params_pruned or "",
                _diff(r.params_pruned_diff),
            )
        )
    return (
        "Li et al. 2017, Table 1: ours vs printed ('=' same at printed precision, '!' differs)\n"
        f"{text_table(lines)}\nconvention: {CONVENTION}"
    )


@dataclasses.dataclass(frozen=True)
class Table2Row:
    """One VGG-16 layer of Table 2 (docs/paper.md §2): our counts beside the printed values.

    Attributes:
      layer: The paper's label (``Conv_1`` ... ``Conv_13``, ``Linear``).
      name: Our layer name (``conv1`` ... ``conv13``, ``fc1``, ``fc2``).
      hw: Output size as printed (``32x32``, ``1`` for the linear layers).
      maps: Output width.
      macs: Our MACs of the layer.
      weights: Our weights of the layer (no biases, the Table 2 convention).
      maps_a: Output width in VGG-16-pruned-A.
      macs_a: Our MACs of the layer in VGG-16-pruned-A.
      macs_pruned_a: Our FLOP reduction of the layer in %.
      paper_macs: Printed FLOP (``1.8E+06``).
      paper_params: Printed #params.
      paper_maps_a: Printed #maps in pruned-A.
      paper_macs_pruned_a: Printed FLOP% (``50%``).
    """

    layer: str
    name: str
    hw: str
    maps: int
    macs: int
    weights: int
    maps_a: int
    macs_a: int
    macs_pruned_a: float
    paper_macs: str
    paper_params: str
    paper_maps_a: int
    paper_macs_pruned_a: str


@functools.cache
def _table2() -> tuple[Table2Row, ...]:
    model = models.vgg16()
    plan = preset("vgg16-A", model, _variables("vgg16"))
    before = count_macs(model)
    after = count_macs(model.with_widths(plan.new_widths))
    rows = []
    for label, name, _hw, _maps, flop, params, maps_a, flop_a in TABLE2_PRINTED:
        b, a = before.row(name), after.row(name)
        rows.append(
            Table2Row(
                layer=label,
                name=name,
                hw="1" if b.out_hw is None else f"{b.out_hw[0]}x{b.out_hw[1]}",
                maps=b.out_width,
                macs=b.macs,
                weights=b.weights,
                maps_a=a.out_width,
                macs_a=a.macs,
                macs_pruned_a=100 * (b.macs - a.macs) / b.macs,
                paper_macs=flop,
                paper_params=params,
                paper_maps_a=maps_a,
                paper_macs_pruned_a=flop_a,
            )
        )
    return tuple(rows)


def table2() -> list[Table2Row]:
    """Table 2 of Li et al. (VGG-16 on CIFAR-10, per layer; docs/paper.md §2) reproduced beside the printed values.

    Our MACs and weights (no biases) print as the paper's values at its precision; the pruned-A columns follow
    `jaxprune.preset("vgg16-A", ...)`.

    Returns:
      15 rows: conv1..conv13, fc1, fc2.

    Example:
      >>> from jaxprune import paper
      >>> r = paper.table2()[8]
      >>> r.layer, r.macs, r.weights, r.maps_a, r.macs_pruned_a
      ('Conv_9', 37748736, 2359296, 256, 75.0)
    """
    return list(_table2())


def format_table2() -> str:
    """Table 2 as text, ours beside the paper, with totals and the convention."""
    rows = table2()
    lines = [("layer", "w x h", "#maps", "FLOP ours", "paper", "#params ours", "paper", "#maps A", "FLOP% A", "paper")]
    for r in rows:
        lines.append(
            (
                r.layer,
                r.hw,
                str(r.maps),
                f"{r.macs:,}",
                r.paper_macs,
                f"{r.weights:,}",
                r.paper_params,
                str(r.maps_a),
                f"{r.macs_pruned_a:.0f}%",
                r.paper_macs_pruned_a,
            )
        )
    macs, macs_a = sum(r.macs for r in rows), sum(r.macs_a for r in rows)
    weights = sum(r.weights for r in rows)
    lines.append(
        (
            "Total",
            "",
            "",
            f"{macs:,}",
            "3.1E+08",
            f"{weights:,}",
            "1.5E+07",
            "",
            f"{100 * (macs - macs_a) / macs:.2f}%",
            "34%",
        )
    )
    return (
        "Li et al. 2017, Table 2 (VGG-16 on CIFAR-10, pruned-A)\n"
        f"{text_table(lines)}\nconvention: FLOP = MACs of the layer at batch 1; #params = weights only (no biases, "
        "no BN), as Table 2 counts them"
    )
