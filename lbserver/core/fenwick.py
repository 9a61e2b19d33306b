"""A Fenwick (binary indexed) tree of non-negative weights for weighted sampling.

Building is O(n); changing one weight, a prefix sum and drawing one index in
proportion to the weights are O(log n). Weights are changed by assignment;
the exact values are kept beside the tree so the floating-point drift of
many incremental updates is bounded: the tree is rebuilt from them after
every ``n`` updates (amortised O(1)) and a draw never returns an index whose
weight is 0.
"""

from __future__ import annotations

import random
from typing import Iterable


class Fenwick:
    """Weighted sampler over indexes ``0 .. n-1``."""

    __slots__ = ("_n", "_tree", "_values", "_positive", "_updates", "_step", "_total")

    def __init__(self, weights: Iterable[float] = ()) -> None:
        self._values = [self._check(w) for w in weights]
        self._n = len(self._values)
        self._step = 1 << max(0, self._n.bit_length() - 1) if self._n else 0
        self._rebuild()

    @staticmethod
    def _check(w: float) -> float:
        w = float(w)
        if not w >= 0.0 or w == float("inf"):  # also rejects NaN
            raise ValueError(f"weight must be finite and >= 0, got {w!r}")
        return w

    def _rebuild(self) -> None:
        tree = [0.0] + self._values
        for i in range(1, self._n + 1):
            j = i + (i & -i)
            if j <= self._n:
                tree[j] += tree[i]
        self._tree = tree
        self._positive = sum(1 for w in self._values if w > 0)
        self._total = self.prefix(self._n)
        self._updates = 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> float:
        return self._values[i]

    def values(self) -> list[float]:
        """A copy of the current weights."""
        return list(self._values)

    @property
    def positive(self) -> int:
        """How many weights are > 0 (exact, not subject to rounding)."""
        return self._positive

    def set(self, i: int, weight: float) -> None:
        """Set weight ``i`` (O(log n))."""
        old = self._values[i]
        if weight == old:  # a pick often leaves a weight as it was: nothing to check or do
            return
        weight = self._check(weight)
        self._values[i] = weight
        self._positive += (weight > 0) - (old > 0)
        self._updates += 1
        if self._updates >= max(self._n, 64):
            self._rebuild()
            return
        delta = weight - old
        self._total += delta
        j = i + 1
        while j <= self._n:
            self._tree[j] += delta
            j += j & -j

    def prefix(self, i: int) -> float:
        """Sum of weights ``0 .. i-1``."""
        s = 0.0
        while i > 0:
            s += self._tree[i]
            i -= i & -i
        return s

    def total(self) -> float:
        """Sum of all weights (kept up to date by :meth:`set`, so O(1))."""
        return self._total

    def find(self, target: float) -> int:
        """The smallest index whose inclusive prefix sum exceeds ``target``.

        Clamped to the last index with a positive weight when rounding puts
        ``target`` at or past the total.
        """
        pos = 0
        step = self._step
        while step:
            nxt = pos + step
            if nxt <= self._n and self._tree[nxt] <= target:
                pos = nxt
                target -= self._tree[nxt]
            step >>= 1
        if pos < self._n and self._values[pos] > 0:
            return pos
        return self._nearest_positive(min(pos, self._n - 1))

    def _nearest_positive(self, i: int) -> int:
        # Only reached through rounding, so a short linear walk is fine.
        for j in range(i, -1, -1):
            if self._values[j] > 0:
                return j
        for j in range(i + 1, self._n):
            if self._values[j] > 0:
                return j
        raise LookupError("no positive weight")

    def sample(self, rng: random.Random) -> int | None:
        """An index drawn with probability proportional to its weight, or None if all are 0."""
        if self._positive == 0:
            return None
        return self.find(rng.random() * self._total)

    def sample_pair(self, rng: random.Random) -> tuple[int, int] | None:
        """Two indexes drawn independently as :meth:`sample` draws one (in that order), or None if all are 0.

        One descent of the tree for both: this is what every terminal costs
        under two-choices.
        """
        if self._positive == 0:
            return None
        tree, n = self._tree, self._n
        a = rng.random() * self._total
        b = rng.random() * self._total
        i = j = 0
        step = self._step
        while step:
            nxt = i + step
            if nxt <= n and tree[nxt] <= a:
                i = nxt
                a -= tree[nxt]
            nxt = j + step
            if nxt <= n and tree[nxt] <= b:
                j = nxt
                b -= tree[nxt]
            step >>= 1
        values = self._values
        if i >= n or not values[i] > 0:
            i = self._nearest_positive(min(i, n - 1))
        if j >= n or not values[j] > 0:
            j = self._nearest_positive(min(j, n - 1))
        return i, j


__all__ = ["Fenwick"]
