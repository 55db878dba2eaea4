"""Graded severities of one degradation on one positive: which tuples form a severity series, and
how often a critic orders a series as its severities say (mild scored above strong).

A profile with ``severity_levels`` (1, 2) and ``negatives_per_aspect`` 2 gives each positive, per
visual aspect, the mild and the strong version of one method, in two tuples. Binary labels treat
both as "low"; these pairs are what a severity-ranking term and its held-out measure read.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

VISUAL_ASPECTS = ("tec", "aes")


def severity_pairs(rows: Sequence[Mapping[str, Any]], aspect: str) -> list[tuple[int, int]]:
    """(i, j) row indices where row i's ``aspect`` negative is the same method on the same positive
    as row j's, at a milder severity. Ungraded negatives (severity None) form no pair."""
    if aspect not in VISUAL_ASPECTS:
        raise ValueError(f"severity pairs exist for {VISUAL_ASPECTS}, not {aspect!r}")
    series: dict[tuple[str, str], dict[int, int]] = {}
    for index, row in enumerate(rows):
        level = row.get(f"{aspect}_severity")
        if level is None:
            continue
        # one index per level: two tuples with the same negative are one sample, not a pair
        series.setdefault((row["positive_sha256"], row[f"{aspect}_method"]), {}).setdefault(int(level), index)
    pairs = []
    for by_level in series.values():
        levels = sorted(by_level)
        pairs += [(by_level[a], by_level[b]) for k, a in enumerate(levels) for b in levels[k + 1:]]
    return pairs


def series_order_accuracy(items: Iterable[tuple[Hashable, int, float]]) -> float | None:
    """Share of (milder, stronger) pairs within each series whose milder item scores higher (a tie
    counts half), from (series, level, score) items; the first item of a (series, level) counts.
    None when no series has two levels."""
    series: dict[Hashable, dict[int, float]] = {}
    for key, level, score in items:
        series.setdefault(key, {}).setdefault(int(level), float(score))
    wins, pairs = 0.0, 0
    for by_level in series.values():
        levels = sorted(by_level)
        for k, a in enumerate(levels):
            for b in levels[k + 1:]:
                wins += 1.0 if by_level[a] > by_level[b] else 0.5 if by_level[a] == by_level[b] else 0.0
                pairs += 1
    return wins / pairs if pairs else None


def severity_order_accuracy(rows: Sequence[Mapping[str, Any]], scores: Mapping[str, Sequence[float]]
                            ) -> dict[str, float]:
    """Per visual aspect in ``scores`` (row-aligned scores of each row's negative of that aspect,
    higher = better), the share of severity pairs whose milder negative scores higher (a tie counts
    half). Aspects without pairs are left out."""
    accuracy = {}
    for aspect, values in scores.items():
        if len(values) != len(rows):
            raise ValueError(f"{len(values)} {aspect} scores for {len(rows)} rows")
        value = series_order_accuracy(((row["positive_sha256"], row[f"{aspect}_method"]), row[f"{aspect}_severity"], score)
                                      for row, score in zip(rows, values) if row.get(f"{aspect}_severity") is not None)
        if value is not None:
            accuracy[aspect] = value
    return accuracy
