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


def _level_pairs(items: Iterable[tuple[Hashable, int, Any]]) -> list[tuple[Any, Any]]:
    """(milder, stronger) value pairs within each series, from (series, level, value) items. One
    value per (series, level), the first: two tuples with the same negative are one sample, not a pair."""
    series: dict[Hashable, dict[int, Any]] = {}
    for key, level, value in items:
        series.setdefault(key, {}).setdefault(int(level), value)
    pairs = []
    for by_level in series.values():
        levels = sorted(by_level)
        pairs += [(by_level[a], by_level[b]) for k, a in enumerate(levels) for b in levels[k + 1:]]
    return pairs


def _row_items(rows: Sequence[Mapping[str, Any]], aspect: str, values: Iterable[Any]) -> Iterable[tuple[Hashable, int, Any]]:
    """(series, level, value) of each row's graded ``aspect`` negative: a series is one method on one positive."""
    for row, value in zip(rows, values):
        if row.get(f"{aspect}_severity") is not None:
            yield (row["positive_sha256"], row[f"{aspect}_method"]), row[f"{aspect}_severity"], value


def severity_pairs(rows: Sequence[Mapping[str, Any]], aspect: str) -> list[tuple[int, int]]:
    """(i, j) row indices where row i's ``aspect`` negative is the same method on the same positive
    as row j's, at a milder severity. Ungraded negatives (severity None) form no pair."""
    if aspect not in VISUAL_ASPECTS:
        raise ValueError(f"severity pairs exist for {VISUAL_ASPECTS}, not {aspect!r}")
    return _level_pairs(_row_items(rows, aspect, range(len(rows))))


def series_order_accuracy(items: Iterable[tuple[Hashable, int, float]]) -> float | None:
    """Share of (milder, stronger) pairs within each series whose milder item scores higher (a tie
    counts half), from (series, level, score) items; the first item of a (series, level) counts.
    None when no series has two levels."""
    pairs = _level_pairs(items)
    if not pairs:
        return None
    return sum(1.0 if mild > strong else 0.5 if mild == strong else 0.0 for mild, strong in pairs) / len(pairs)


def severity_order_accuracy(rows: Sequence[Mapping[str, Any]], scores: Mapping[str, Sequence[float]]
                            ) -> dict[str, float]:
    """Per visual aspect in ``scores`` (row-aligned scores of each row's negative of that aspect,
    higher = better), the share of severity pairs whose milder negative scores higher (a tie counts
    half). Aspects without pairs are left out."""
    accuracy = {}
    for aspect, values in scores.items():
        if len(values) != len(rows):
            raise ValueError(f"{len(values)} {aspect} scores for {len(rows)} rows")
        value = series_order_accuracy(_row_items(rows, aspect, (float(v) for v in values)))
        if value is not None:
            accuracy[aspect] = value
    return accuracy
