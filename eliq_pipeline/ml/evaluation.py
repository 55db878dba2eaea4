"""Label-free evaluation of a trained critic: held-out tuple ranking and benchmark correlations."""

from __future__ import annotations

from typing import Any

import numpy as np

from eliq_pipeline.ml.benchmark_inputs import item_requests
from eliq_pipeline.ml.benchmarks import Benchmark
from eliq_pipeline.ml.embedding_cache import EmbeddingCache
from eliq_pipeline.ml.images import sha256_bytes
from eliq_pipeline.ml.metrics import correlation_report
from eliq_pipeline.ml.scorer import ELIQScoringHead, score_embeddings

REPORTED_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc")


def score_benchmark(head: ELIQScoringHead, cache: EmbeddingCache, benchmark: Benchmark,
                    shas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    requests = [item_requests(sha, item.prompt) for sha, item in zip(shas, benchmark.items)]
    z = [cache.get([r[i] for r in requests]) for i in range(3)]
    return score_embeddings(head, *z)


def benchmark_rows(benchmark: Benchmark, s_vis: np.ndarray, s_ali: np.ndarray, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Label-free protocol: raw scores against quality MOS, and against alignment MOS when rated."""
    rows: list[dict[str, Any]] = []
    targets = [("visual", s_vis, benchmark.mos_quality())]
    if benchmark.has_alignment:
        targets.append(("alignment", s_ali, benchmark.mos_align()))
    for aspect, pred, mos in targets:
        report = correlation_report(pred, np.asarray(mos, dtype=float), n_boot=n_boot)
        for metric in REPORTED_METRICS:
            rows.append({
                "benchmark": benchmark.name, "protocol": "label-free", "aspect": aspect, "metric": metric,
                "value": float(report[metric]), "n": int(report["n"]),
                "ci_low": _finite(report.get(f"{metric}_ci_low")), "ci_high": _finite(report.get(f"{metric}_ci_high")),
            })
    return rows


def heldout_rows(accuracies: dict[str, float], n: int) -> list[dict[str, Any]]:
    """Held-out tuple ranking accuracy (always available, no human labels involved)."""
    aspect = {"vis_vs_tec": "visual", "vis_vs_aes": "visual", "ali": "alignment"}
    return [{"benchmark": "heldout-tuples", "protocol": "label-free", "aspect": aspect.get(name, name),
             "metric": f"ranking_accuracy_{name}", "value": float(value), "n": n, "ci_low": None, "ci_high": None}
            for name, value in sorted(accuracies.items())]


def bundle_hash(*parts: bytes) -> str:
    return sha256_bytes(b"|".join(parts))[:16]


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
