"""Channel groups as a text table (`format_groups`, `describe_groups`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxprune.groups import AxisRef, ChannelGroup
from jaxprune.trace.extract import blocked_reason, tied_note


def _fmt_ref(ref: AxisRef) -> str:
    s = f"{ref.name}[{ref.axis}]"
    if ref.offset is not None:
        s += f"@{ref.offset}"
    if ref.repeat > 1:
        s += f"x{ref.repeat}"
    return s


def format_groups(groups: Sequence[ChannelGroup], *, verbose: bool = False) -> str:
    """Channel groups as a text table: name, kind, width, prunable, scored kernel, producer and consumer counts.

    A traced group the trace could not follow (its channels pass through a primitive without a rule) is listed as not
    prunable with the reason under it: the primitive and its source line. A traced group whose channels fall in
    blocks says so under its row: ``balanced across 4 GroupNorm groups ...`` (the width counts all channels; each
    norm group keeps an equal count of its own choosing), or ``tied across 4 conv feature groups ...`` (also for
    attention heads; the width counts one block's channels, and pruning keeps the same channels in every block).

    Args:
      groups: Groups, e.g. from `trace_groups` or ``model.channel_groups()``, or a model (a `TracedModel`).
      verbose: Also list every axis under its group (``path[axis]``, ``@offset``, ``xrepeat``).

    Raises:
      TypeError: an element that is not a ChannelGroup.
    """
    if callable(getattr(groups, "channel_groups", None)):
        groups = groups.channel_groups()
    groups = list(groups)
    for g in groups:
        if not isinstance(g, ChannelGroup):
            raise TypeError(f"format_groups takes ChannelGroups, got {type(g).__name__}")
    head = ("group", "kind", "width", "prunable", "scored kernel", "producers", "consumers")
    rows = [
        (
            g.name,
            g.kind,
            str(g.width),
            "yes" if g.prunable else "no",
            _fmt_ref(g.scored) if g.scored is not None else "-",
            str(len(g.producers)),
            str(len(g.consumers)),
        )
        for g in groups
    ]
    size = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    right = {2, 5, 6}

    def line(r):
        return "  ".join(c.rjust(size[i]) if i in right else c.ljust(size[i]) for i, c in enumerate(r)).rstrip()

    lines = [line(head), "  ".join("-" * s for s in size)]
    for g, r in zip(groups, rows, strict=True):
        lines.append(line(r))
        why = blocked_reason(g)
        if why is not None:
            lines.append(f"    not prunable: {why}")
        tied = tied_note(g)
        if tied is not None:
            lines.append(f"    {tied}")
        if verbose:
            lines.extend(f"    producer {_fmt_ref(ref)}" for ref in g.producers)
            lines.extend(f"    consumer {_fmt_ref(ref)}" for ref in g.consumers)
    n_prunable = sum(g.prunable for g in groups)
    lines.append(f"{len(groups)} groups, {n_prunable} prunable, {sum(g.width for g in groups)} channels")
    return "\n".join(lines)


def describe_groups(groups: Sequence[ChannelGroup], *, verbose: bool = False, file=None) -> None:
    """Prints channel groups (or a model's, e.g. a `TracedModel`) as a table (`format_groups`) to `file` (default:
    standard output); a group the trace could not follow shows why under its row.

    Example:
      >>> import jaxprune as jp
      >>> jp.describe_groups(jp.models.vgg11().channel_groups()[:2])
      group  kind  width  prunable  scored kernel           producers  consumers
      -----  ----  -----  --------  ----------------------  ---------  ---------
      conv1  conv     64  yes       params/conv1/kernel[3]          5          1
      conv2  conv    128  yes       params/conv2/kernel[3]          5          1
      2 groups, 2 prunable, 192 channels
    """
    print(format_groups(groups, verbose=verbose), file=file if file is not None else sys.stdout)
