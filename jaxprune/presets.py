"""The paper's pruning configurations (Li et al. 2017, Table 1; docs/paper.md §5-§6) as data.

This module owns the eight presets (`vgg16-A`, `resnet56-A`, `resnet56-B`, `resnet110-A`, `resnet110-B`,
`resnet34-A`, `resnet34-B`, `resnet34-C`) and the paper's layer numbering (`paper_layer`). A preset is a table row,
not code: which model it applies to, one prune ratio per stage, the skipped (sensitive) layers in the paper's own
layer numbers, and the few layers or streams named directly. `preset` turns a row into a `{group: ratio}` mapping and
hands it to `jaxprune.make_plan`, so the floor keep rule, selection and strategies are those of
`jaxprune.strategies` (kept = floor(width * (1 - p)), e.g. 16 -> 14, 64 -> 57, 32 -> 22 at 10/10/30 %). It does not
count MACs (that is `jaxprune.flops`) and does not slice (that is `jaxprune.surgery`).

Layer numbering (docs/paper.md §5): in a ResNet the stem conv is layer 1; in residual block b (0-based over the whole
network) the first conv is layer 2 + 2b and the second conv layer 3 + 2b; ResNet-34's numbering skips its 1x1
projection convs. In VGG, layer L is conv L.

| preset | Table 1 row | conv + FC MACs | params (conv + FC, no BN) | pruned % (MACs / params) |
|---|---|---|---|---|
| vgg16-A | VGG-16-pruned-A | 313,463,808 -> 206,279,680 | 14,978,250 -> 5,390,698 | 34.19 / 64.01 |
| resnet56-A | ResNet-56-pruned-A | 125,485,696 -> 112,435,840 | 848,954 -> 769,466 | 10.40 / 9.36 |
| resnet56-B | ResNet-56-pruned-B | 125,485,696 -> 90,907,264 | 848,954 -> 732,026 | 27.56 / 13.77 |
| resnet110-A | ResNet-110-pruned-A | 252,887,680 -> 212,779,648 | 1,719,866 -> 1,680,698 | 15.86 / 2.28 |
| resnet110-B | ResNet-110-pruned-B | 252,887,680 -> 155,124,352 | 1,719,866 -> 1,161,722 | 38.66 / 32.45 |
| resnet34-A | ResNet-34-pruned-A | 3,644,493,824 -> 3,080,916,992 | 21,608,616 -> 19,963,560 | 15.46 / 7.61 |
| resnet34-B | ResNet-34-pruned-B | 3,644,493,824 -> 2,763,001,856 | 21,608,616 -> 19,281,576 | 24.19 / 10.77 |
| resnet34-C | ResNet-34-pruned-C | 3,644,493,824 -> 3,374,446,592 | 21,608,616 -> 20,051,112 | 7.41 / 7.21 |

(ResNet-34 figures leave out the three 1x1 projection convs, as the paper does; `jaxprune.paper.table1` prints
these beside the paper's values.)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jaxprune import models as _models
from jaxprune.models.base import check_prunable_model
from jaxprune.strategies import make_plan

__all__ = ["PRESETS", "Preset", "available", "paper_layer", "preset", "preset_ratios"]

_FAMILY_LABEL = {"vgg": "VGG", "resnet_cifar": "CIFAR ResNet", "resnet_imagenet": "ImageNet ResNet"}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One row of the paper's pruning configurations (docs/paper.md §5).

    Attributes:
      name: Preset name, e.g. ``resnet56-B``.
      base: The zoo model it applies to (``vgg16``, ``resnet56``, ``resnet110``, ``resnet34``).
      table1_row: The Table 1 row it reproduces.
      description: One line: what is pruned and the totals it reproduces.
      stage_ratios: Prune ratio per stage (stage 1 first), reaching the first conv of every block of that stage.
      skip: Paper layer numbers left unpruned (mapped through `paper_layer`).
      layer_ratios: Paper layer number -> ratio, for layers named directly (VGG-16-A).
      stream_ratios: Stage number -> ratio of that stage's residual stream (ResNet-34-C).
    """

    name: str
    base: str
    table1_row: str
    description: str
    stage_ratios: tuple[float, ...] = ()
    skip: tuple[int, ...] = ()
    layer_ratios: Mapping[int, float] = dataclasses.field(default_factory=dict)
    stream_ratios: Mapping[int, float] = dataclasses.field(default_factory=dict)


def _p(*rows: Preset) -> Mapping[str, Preset]:
    return MappingProxyType({r.name: r for r in rows})


#: The presets, by name (docs/paper.md §5; Table 1 rows and the totals they reproduce are in each description).
PRESETS: Mapping[str, Preset] = _p(
    Preset(
        name="vgg16-A",
        base="vgg16",
        table1_row="VGG-16-pruned-A",
        description="VGG-16-pruned-A: 50% of conv1 and conv8..conv13; MACs 313,463,808 -> 206,279,680 (34.19%), "
        "params 14,978,250 -> 5,390,698 (64.01%)",
        layer_ratios={1: 0.5, 8: 0.5, 9: 0.5, 10: 0.5, 11: 0.5, 12: 0.5, 13: 0.5},
    ),
    Preset(
        name="resnet56-A",
        base="resnet56",
        table1_row="ResNet-56-pruned-A",
        description="ResNet-56-pruned-A: 10% of every first conv, skip layers 16, 20, 38, 54; MACs 125,485,696 -> "
        "112,435,840 (10.40%), params 848,954 -> 769,466 (9.36%)",
        stage_ratios=(0.1, 0.1, 0.1),
        skip=(16, 20, 38, 54),
    ),
    Preset(
        name="resnet56-B",
        base="resnet56",
        table1_row="ResNet-56-pruned-B",
        description="ResNet-56-pruned-B: first convs at p = 60/30/10% by stage, skip layers 16, 18, 20, 34, 38, 54; "
        "MACs 125,485,696 -> 90,907,264 (27.56%), params 848,954 -> 732,026 (13.77%)",
        stage_ratios=(0.6, 0.3, 0.1),
        skip=(16, 18, 20, 34, 38, 54),
    ),
    Preset(
        name="resnet110-A",
        base="resnet110",
        table1_row="ResNet-110-pruned-A",
        description="ResNet-110-pruned-A: 50% of stage-1 first convs, skip layer 36; MACs 252,887,680 -> "
        "212,779,648 (15.86%), params 1,719,866 -> 1,680,698 (2.28%)",
        stage_ratios=(0.5, 0.0, 0.0),
        skip=(36,),
    ),
    Preset(
        name="resnet110-B",
        base="resnet110",
        table1_row="ResNet-110-pruned-B",
        description="ResNet-110-pruned-B: first convs at p = 50/40/30% by stage, skip layers 36, 38, 74; MACs "
        "252,887,680 -> 155,124,352 (38.66%), params 1,719,866 -> 1,161,722 (32.45%)",
        stage_ratios=(0.5, 0.4, 0.3),
        skip=(36, 38, 74),
    ),
    Preset(
        name="resnet34-A",
        base="resnet34",
        table1_row="ResNet-34-pruned-A",
        description="ResNet-34-pruned-A: first convs at p = 30/30/30/0% by stage, skip layers 2, 8, 14, 16, 26, 28, "
        "30, 32; MACs 3,644,493,824 -> 3,080,916,992 (15.46%), params 21,608,616 -> 19,963,560 (7.61%), "
        "projections left out",
        stage_ratios=(0.3, 0.3, 0.3, 0.0),
        skip=(2, 8, 14, 16, 26, 28, 30, 32),
    ),
    Preset(
        name="resnet34-B",
        base="resnet34",
        table1_row="ResNet-34-pruned-B",
        description="ResNet-34-pruned-B: first convs at p = 50/60/40/0% by stage, skip layers 2, 8, 14, 16, 26, 28, "
        "30, 32; MACs 3,644,493,824 -> 2,763,001,856 (24.19%), params 21,608,616 -> 19,281,576 (10.77%), "
        "projections left out",
        stage_ratios=(0.5, 0.6, 0.4, 0.0),
        skip=(2, 8, 14, 16, 26, 28, 30, 32),
    ),
    Preset(
        name="resnet34-C",
        base="resnet34",
        table1_row="ResNet-34-pruned-C",
        description="ResNet-34-pruned-C: stage-3 residual stream 256 -> 204 (p = 20%, chosen by the projection "
        "shortcut's L1); MACs 3,644,493,824 -> 3,374,446,592 (7.41%, paper 7.5%), params 21,608,616 -> "
        "20,051,112 (7.21%), projections left out",
        stream_ratios={3: 0.2},
    ),
)


def available() -> dict[str, str]:
    """The preset names, each with a one-line description (Table 1 row, what is pruned, the totals it reproduces).

    Example:
      >>> from jaxprune import presets
      >>> list(presets.available())[:3]
      ['vgg16-A', 'resnet56-A', 'resnet56-B']
    """
    return {name: p.description for name, p in PRESETS.items()}


def _block_groups(model) -> list[Any]:
    """The first-conv groups of a zoo ResNet, in forward (block) order."""
    return [g for g in model.channel_groups() if g.kind == "conv"]


def paper_layer(model, layer: int) -> str:
    """The group that paper layer `layer` belongs to (docs/paper.md §5 numbering).

    ResNets (CIFAR and ImageNet): the stem conv is layer 1; in residual block b (0-based over the whole network)
    the first conv is layer 2 + 2b and maps to its own group ``stage{s}_block{k}_conv1``; the second conv is layer
    3 + 2b and, like the stem, produces the residual stream, so it maps to ``stage{s}_stream``. ResNet-34's numbering
    skips the 1x1 projection convs. VGG: layer L is ``conv{L}``.

    Args:
      model: A zoo VGG or ResNet.
      layer: The paper's 1-based layer number.

    Returns:
      A group name of `model.channel_groups()`.

    Raises:
      TypeError: `model` lacks the prunable-model protocol, or `layer` is not an int.
      ValueError: `layer` is out of range for the model, or the model is not a VGG or ResNet of the zoo.

    Example:
      >>> from jaxprune import models, presets
      >>> m = models.resnet56()
      >>> [presets.paper_layer(m, L) for L in (2, 16, 20, 21)]
      ['stage1_block1_conv1', 'stage1_block8_conv1', 'stage2_block1_conv1', 'stage2_stream']
    """
    check_prunable_model(model)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"paper layer must be an int, got {type(layer).__name__} {layer!r}")
    layer = int(layer)
    family = getattr(model, "family", None)
    if family == "vgg":
        n = len(model.widths)
        if not 1 <= layer <= n:
            raise ValueError(f"paper layer {layer} out of range for VGG-{model.depth}: valid layers are 1..{n}")
        return f"conv{layer}"
    if family in ("resnet_cifar", "resnet_imagenet"):
        blocks = _block_groups(model)
        last = 1 + 2 * len(blocks)
        if not 1 <= layer <= last:
            raise ValueError(
                f"paper layer {layer} out of range for ResNet-{model.depth}: valid layers are 1..{last} "
                "(stem = 1, block b's convs = 2 + 2b and 3 + 2b)"
            )
        if layer == 1:
            return "stage1_stream"
        g = blocks[(layer - 2) // 2]
        return g.name if layer % 2 == 0 else f"{g.stage}_stream"
    raise ValueError(
        f"paper layer numbering is defined for the zoo's VGG and ResNet families, not for {type(model).__name__} "
        f"(family {family!r})"
    )


def _get_preset(name) -> Preset:
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__} {name!r}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_ratios(name: str, model) -> dict[str, float]:
    """The `{group: ratio}` mapping a preset gives `make_plan` for `model` (forward order, ratio > 0 only).

    Args:
      name: A preset name (see `available`).
      model: The unpruned zoo model the preset is for.

    Returns:
      Group name -> prune ratio; groups not named keep every filter.

    Raises:
      ValueError: unknown preset (lists the valid names); a model of another family or depth, or one whose widths
        are not the original network's.
      TypeError: `model` lacks the prunable-model protocol.
    """
    p = _get_preset(name)
    check_prunable_model(model)
    ref = _models.get(p.base)
    family, depth = getattr(model, "family", None), getattr(model, "depth", None)
    if family != ref.family or depth != ref.depth:
        got = f"{_FAMILY_LABEL.get(family, type(model).__name__)} depth {depth}"
        raise ValueError(
            f"preset {name!r} is for {_FAMILY_LABEL[ref.family]} depth {ref.depth} ({p.base}), got {got}; "
            f"presets for this family: {', '.join(n for n, q in PRESETS.items() if _family(q) == family) or 'none'}"
        )
    widths, ref_widths = model.group_widths(), ref.group_widths()
    if widths != ref_widths:
        diff = {n: (widths[n], ref_widths[n]) for n in ref_widths if widths.get(n) != ref_widths[n]}
        shown = ", ".join(f"{n} {a} (original {b})" for n, (a, b) in list(diff.items())[:4])
        raise ValueError(
            f"preset {name!r} prunes the original {p.base}; this model has other widths: {shown}"
            f"{' ...' if len(diff) > 4 else ''}"
        )
    skipped = {paper_layer(model, L) for L in p.skip}
    ratios: dict[str, float] = {}
    for s, ratio in enumerate(p.stage_ratios, start=1):
        if ratio > 0:
            for g in model.stages().get(f"stage{s}", ()):
                if g not in skipped:
                    ratios[g] = ratio
    for L, ratio in p.layer_ratios.items():
        ratios[paper_layer(model, L)] = ratio
    for s, ratio in p.stream_ratios.items():
        ratios[f"stage{s}_stream"] = ratio
    order = list(model.group_widths())
    return {g: ratios[g] for g in order if g in ratios and ratios[g] > 0}


def _family(p: Preset) -> str:
    return _models.get(p.base).family


def preset(name: str, model, variables: Mapping[str, Any], *, strategy: str = "independent", round_to: int = 1):
    """The plan that prunes `model` the way Li et al. did for a Table 1 row (docs/paper.md §5-§6).

    The preset's skip list (paper layer numbers, mapped through `paper_layer`) and stage ratios become a
    `{group: ratio}` mapping for `jaxprune.make_plan` with the L1 criterion; kept = floor(width * (1 - p)).
    ``resnet34-C`` prunes ``stage3_stream`` (the stage-3 projection shortcut, every stage-3 second conv and all their
    consumers) to 204 channels, chosen by the L1 of the 1x1 projection-shortcut filters.

    Args:
      name: One of `available()`: ``vgg16-A``, ``resnet56-A``, ``resnet56-B``, ``resnet110-A``, ``resnet110-B``,
        ``resnet34-A``, ``resnet34-B``, ``resnet34-C``.
      model: The unpruned zoo model the preset is for (VGG-16, ResNet-56, ResNet-110 or ResNet-34).
      variables: Its variables (the scored kernels are read).
      strategy: ``independent`` (the re-implementation's) or ``greedy``; they differ only for ``vgg16-A``
        (docs/paper.md §7).
      round_to: Round kept counts to a multiple (e.g. 8 for XLA:CPU speed); 1 reproduces the paper.

    Returns:
      A `PruningPlan` whose ``meta["preset"]`` is `name`.

    Raises:
      ValueError: unknown preset (lists the valid names), a model of another family or depth, a model that is not
        the original network, or a bad `strategy` / `round_to`.
      TypeError: `model` lacks the prunable-model protocol.

    Example:
      >>> import jaxprune as jp
      >>> from jaxprune import models
      >>> m = models.resnet56()
      >>> plan = jp.preset("resnet56-B", m, jp.random_variables(m, seed=0))
      >>> [plan.new_widths[g] for g in ("stage1_block1_conv1", "stage2_block2_conv1", "stage3_block2_conv1")]
      [6, 22, 57]
    """
    ratios = preset_ratios(name, model)
    return make_plan(model, variables, prune_ratio=ratios, strategy=strategy, round_to=round_to, meta={"preset": name})
