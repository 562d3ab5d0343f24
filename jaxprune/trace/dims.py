"""The union-find over dimensions that the trace builds: one node per axis of every jaxpr value and parameter.

A class is one channel index space (atomic) or a sequence of pieces (a concatenation, a pad, a flatten); flags on
atomic classes record what the trace learnt about a space (tied to the model's input or output, passed through
something without a rule, written by a kernel, joined by a residual addition). It knows nothing about primitives.
"""

from __future__ import annotations

from collections.abc import Sequence

_MAX_RUNS = 200_000


class _TooComplex(Exception):
    pass


# -- the union-find over dimensions ----------------------------------------------------------------------------


class _Dims:
    """A union-find over dimensions (one node per axis of a jaxpr value or parameter).

    A class is *atomic* (one channel index space) or *composite*: a sequence of pieces ``(node, count)``, each
    repeated `count` times (a concatenation, a pad, a flatten). Unifying two dimensions aligns their pieces and splits
    atomic classes where boundaries differ. Flags live on atomic classes: `fixed` (tied to the model's input or
    output, or a spatial / window axis: never a group), `taint` (passed through something the trace cannot follow
    channel by channel: an error if the class turns out to be a group), `produced` (written by a conv or dense
    kernel), `joined` (two produced spaces added: a residual stream).
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.struct: list[tuple[tuple[int, int], ...] | None] = []
        self.fixed: list[str | None] = []
        self.taint: list[tuple | None] = []
        self.produced: list[bool] = []
        self.joined: list[bool] = []

    def new(self, size: int, *, fixed: str | None = None, taint: tuple | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(int(size))
        self.struct.append(None)
        self.fixed.append(fixed)
        self.taint.append(taint if size > 1 else None)
        self.produced.append(False)
        self.joined.append(False)
        return i

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def resolve(self, x: int) -> list[tuple[int, int]]:
        """The atomic pieces of a dimension: ``[(atomic root, count), ...]``, adjacent equal roots merged."""
        r = self.find(x)
        st = self.struct[r]
        if st is None:
            return [(r, 1)]
        out: list[list[int]] = []
        for child, count in st:
            sub = self.resolve(child)
            if len(sub) == 1:
                _push(out, sub[0][0], sub[0][1] * count)
            else:
                if len(sub) * count > _MAX_RUNS:
                    raise _TooComplex
                for _ in range(count):
                    for root, c in sub:
                        _push(out, root, c)
        return [(a, b) for a, b in out]

    def compose(self, parts: Sequence[tuple[int, int]]) -> int:
        """A dimension made of pieces ``(node, count)``; a single piece of count 1 is that node itself."""
        parts = [(n, c) for n, c in parts if c > 0 and self.size[n] > 0]
        if len(parts) == 1 and parts[0][1] == 1:
            return parts[0][0]
        node = self.new(sum(self.size[n] * c for n, c in parts))
        self.struct[node] = tuple(parts)
        return node

    def _link(self, a: int, b: int) -> int:
        """Joins two atomic roots; flags merge."""
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.taint[a] = self.taint[a] or self.taint[b]
        self.produced[a] = self.produced[a] or self.produced[b]
        self.joined[a] = self.joined[a] or self.joined[b]
        return a

    def _split(self, r: int, k: int) -> None:
        """Refines atomic root `r` into pieces of sizes k and size - k (flags copied)."""
        n1, n2 = self.new(k), self.new(self.size[r] - k)
        for n in (n1, n2):
            self.fixed[n], self.produced[n], self.joined[n] = self.fixed[r], self.produced[r], self.joined[r]
            self.taint[n] = self.taint[r] if self.size[n] > 1 else None
        self.struct[r] = ((n1, 1), (n2, 1))

    def unify(self, a: int, b: int) -> None:
        """Makes two dimensions of equal size one index space (piece by piece)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise AssertionError(f"internal: unifying dimensions of sizes {self.size[ra]} and {self.size[rb]}")
        if self.struct[ra] is None and self.struct[rb] is None:
            self._link(ra, rb)
            return
        while True:
            la, lb = self.resolve(ra), self.resolve(rb)
            i = j = 0
            ca, cb = la[0][1], lb[0][1]
            refined = False
            while i < len(la):
                pa, pb = self.find(la[i][0]), self.find(lb[j][0])
                sa, sb = self.size[pa], self.size[pb]
                if sa == sb:
                    if pa != pb:
                        self._link(pa, pb)
                    n = min(ca, cb)
                    ca, cb = ca - n, cb - n
                elif sa < sb:
                    self._split(pb, sa)
                    refined = True
                    break
                else:
                    self._split(pa, sb)
                    refined = True
                    break
                if ca == 0:
                    i += 1
                    ca = la[i][1] if i < len(la) else 0
                if cb == 0:
                    j += 1
                    cb = lb[j][1] if j < len(lb) else 0
            if not refined:
                break
        ra, rb = self.find(ra), self.find(rb)
        if ra != rb:
            self.parent[rb] = ra
            if self.struct[ra] is None:
                self.struct[ra] = self.struct[rb]

    # -- flags over all pieces of a dimension ------------------------------------------------------------------
    def pieces(self, node: int) -> list[int]:
        return [r for r, _ in self.resolve(node)]

    def all_fixed(self, node: int) -> bool:
        return all(self.fixed[r] is not None for r in self.pieces(node))

    def any_produced(self, node: int) -> bool:
        return any(self.produced[r] for r in self.pieces(node))

    def mark_fixed(self, node: int, reason: str) -> None:
        for r in self.pieces(node):
            if self.fixed[r] is None:
                self.fixed[r] = reason

    def mark_taint(self, node: int, info: tuple) -> None:
        for r in self.pieces(node):
            if self.taint[r] is None and self.size[r] > 1:
                self.taint[r] = info

    def mark(self, node: int, flag: str) -> None:
        arr = getattr(self, flag)
        for r in self.pieces(node):
            arr[r] = True


def _push(out: list[list[int]], root: int, count: int) -> None:
    if out and out[-1][0] == root:
        out[-1][1] += count
    else:
        out.append([root, count])
