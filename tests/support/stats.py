"""Statistics the placement tests judge shares by."""

from __future__ import annotations

from collections.abc import Mapping


def chi2(observed: Mapping, expected_share: Mapping) -> float:
    """Pearson's chi-square of ``observed`` counts (a mapping) against shares proportional to ``expected_share``."""
    n, total = sum(observed.values()), sum(expected_share.values())
    return sum((observed.get(k, 0) - n * w / total) ** 2 / (n * w / total) for k, w in expected_share.items())
