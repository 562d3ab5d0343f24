"""The one formatter of jaxprune's tables: plain text (reports, plans, latency, the paper's tables) and markdown.

Both take rows of strings, the header first, and align the first `left` columns to the left and the others (the
numbers) to the right.
"""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """Columns padded to their widest cell and two spaces apart, a dashed rule under the header, no trailing spaces.

    Example:
      >>> print(text_table([("layer", "MACs"), ("conv1", "1,728")]))
      layer   MACs
      -----  -----
      conv1  1,728
    """
    size = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells) -> str:
        return "  ".join(c.ljust(size[i]) if i < left else c.rjust(size[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(r) for r in rows]
    out.insert(1, "  ".join("-" * s for s in size))
    return "\n".join(out)


def markdown_table(rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A markdown table; the first `left` columns left-aligned, the others right-aligned.

    Example:
      >>> print(markdown_table([("group", "width"), ("conv1", "64")]))
      | group | width |
      |---|---:|
      | conv1 | 64 |
    """
    head, *body = rows
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
