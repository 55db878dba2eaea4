"""Comparison tuples (I+, I-tec, I-aes, p, p-ali) with a prompt-disjoint train / held-out split."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from eliq_pipeline.supervision.image_cache import stable_hash, stable_seed

FAMILIES = ("conventional", "ai_specific")


def seeded_subset(ids: Iterable[str], count: int, seed: int) -> set[str]:
    """`count` of the distinct ids, a pure function of (ids, seed): the first in hash order."""
    return set(sorted(set(ids), key=lambda pid: stable_hash(seed, pid))[:count])


def heldout_prompt_ids(prompt_ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """A prompt-disjoint held-out split, deterministic for the era seed."""
    distinct = set(prompt_ids)
    return seeded_subset(distinct, max(1, round(len(distinct) * fraction)) if distinct else 0, seed)


def build_tuples(
    positives: Sequence[dict[str, Any]],
    negatives: Sequence[dict[str, Any]],
    heldout_fraction: float,
    seed: int,
    tuples_per_positive: int,
    families: Iterable[str] = FAMILIES,
    exclude_methods: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """(I+, I-tec, I-aes, p, p-ali) rows, cycling through the available negative methods so that
    every family and method is represented. `families` selects conventional-only / AI-specific-only
    supervision (the ablation of Table 4); `exclude_methods` drops single methods."""
    families, excluded = set(families), set(exclude_methods)
    by_positive: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in negatives:
        if row["family"] in families and row["method"] not in excluded:
            by_positive.setdefault(row["positive_sha256"], {}).setdefault(row["aspect"], []).append(row)
    heldout = heldout_prompt_ids((p["prompt_id"] for p in positives), heldout_fraction, seed)
    tuples = []
    for positive in positives:
        groups = by_positive.get(positive["image_sha256"], {})
        missing = [aspect for aspect in ("tec", "aes", "ali") if not groups.get(aspect)]
        if missing:
            raise ValueError(f"positive {positive['image_sha256'][:12]} (prompt {positive['prompt_id']}) has no "
                             f"{missing} negatives in families {sorted(families)}")
        offset = stable_seed(seed, positive["image_sha256"])
        for k in range(tuples_per_positive):
            tec = groups["tec"][(offset + k) % len(groups["tec"])]
            aes = groups["aes"][(offset // 7 + k) % len(groups["aes"])]
            ali = groups["ali"][k % len(groups["ali"])]
            tuples.append({
                "tuple_id": stable_hash(positive["image_sha256"], tec["negative_id"], aes["negative_id"], ali["negative_id"], length=16),
                "split": "heldout" if positive["prompt_id"] in heldout else "train",
                "prompt_id": positive["prompt_id"],
                "prompt": positive["prompt"],
                "generator": positive["generator"],
                "positive_sha256": positive["image_sha256"],
                "tec_negative_id": tec["negative_id"], "tec_sha256": tec["image_sha256"],
                "tec_method": tec["method"], "tec_family": tec["family"], "tec_severity": tec.get("severity"),
                "aes_negative_id": aes["negative_id"], "aes_sha256": aes["image_sha256"],
                "aes_method": aes["method"], "aes_family": aes["family"], "aes_severity": aes.get("severity"),
                "ali_negative_id": ali["negative_id"], "ali_method": ali["method"], "ali_family": ali["family"],
                # the alignment-negative pair (ali_sha256, mismatched_prompt): I+ with a shuffled
                # prompt, or (AI-specific) a prompt variant's image with the original prompt
                "ali_sha256": ali["image_sha256"] or positive["image_sha256"],
                "mismatched_prompt_id": ali["mismatched_prompt_id"], "mismatched_prompt": ali["mismatched_prompt"],
            })
    return tuples


def count_by(rows: Iterable[dict[str, Any]], *fields: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        key = "/".join(str(row[f]) for f in fields)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
