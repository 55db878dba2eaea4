"""Label-free evaluation of a trained critic: held-out tuple ranking and benchmark correlations."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from eliq_pipeline.evaluation.benchmark_inputs import item_requests
from eliq_pipeline.evaluation.baselines import NIQE_BLOCK, NIQEModel, Scorer, fit_niqe_model, resized_scorer, score_paths
from eliq_pipeline.evaluation.benchmarks import Benchmark
from eliq_pipeline.critic.embedding_cache import EmbeddingCache
from eliq_pipeline.core.images import sha256_bytes
from eliq_pipeline.evaluation.protocols import label_free_rows, weak_supervised
from eliq_pipeline.critic.head.modules import ELIQScoringHead, score_embeddings

REPORTED_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc")


def score_benchmark(head: ELIQScoringHead, cache: EmbeddingCache, benchmark: Benchmark,
                    shas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    requests = [item_requests(sha, item.prompt) for sha, item in zip(shas, benchmark.items)]
    z = [cache.get([r[i] for r in requests]) for i in range(3)]
    return score_embeddings(head, *z)


def benchmark_rows(benchmark: Benchmark, s_vis: np.ndarray, s_ali: np.ndarray, n_boot: int = 1000,
                   n_splits: int = 10) -> list[dict[str, Any]]:
    """Both protocols of paper 4.1. Label-free: raw scores against quality MOS (and alignment MOS
    when the set rates it). Weak-supervised: a linear head on the QQT outputs (s_vis, s_ali) fitted
    on 20% (AIGC) / 30% (UGC) of the MOS, evaluated on the rest over seeded splits."""
    targets = [("visual", s_vis, benchmark.mos_quality())]
    if benchmark.has_alignment:
        targets.append(("alignment", s_ali, benchmark.mos_align()))
    features = np.c_[s_vis, s_ali]
    rows: list[dict[str, Any]] = []
    for aspect, pred, mos in targets:
        mos = np.asarray(mos, dtype=float)
        rows += label_free_rows(benchmark.name, aspect, pred, mos, n_boot=n_boot)
        rows += weak_supervised(features, mos, kind=benchmark.kind, n_splits=n_splits).rows(benchmark.name, aspect)
    return rows


BASELINE_NAMES = {"niqe": "NIQE (fitted on era positives)", "niqe-standard": "NIQE (standard parameters)",
                  "piqe": "PIQE"}
# A baseline read on each image resized as the critic's processor resizes it: a classic metric that
# reads a 512 px image while the critic sees 256 px has seen four times the pixels.
AT_CRITIC_INPUT = "-at-critic-input"


def baseline_label(baseline: str, toy: bool = False) -> str:
    """How reports name a baseline ('niqe', 'piqe-at-critic-input', ...)."""
    name = baseline.removesuffix(AT_CRITIC_INPUT)
    label = ("NIQE fitted on this era's toy positives" if toy and name == "niqe"
             else BASELINE_NAMES.get(name, name.upper()))
    return f"{label}, at the critic's input size" if baseline.endswith(AT_CRITIC_INPUT) else label


def critic_input_sizes(benchmark: Benchmark, input_size: Callable[[int, int], tuple[int, int]]
                       ) -> dict[tuple[int, int], tuple[int, int]]:
    """(width, height) -> the critic's input size, for each image size in the benchmark; {} when
    the critic sees every image at its own size (its baselines then need no second reading)."""
    sizes: dict[tuple[int, int], tuple[int, int]] = {}
    for item in benchmark.items:
        with Image.open(item.image_path) as image:  # reads the header only
            if image.size not in sizes:
                sizes[image.size] = input_size(*image.size)
    return {} if all(source == target for source, target in sizes.items()) else sizes


def at_critic_input(baselines: dict[str, tuple[str, Scorer]], sizes: dict[tuple[int, int], tuple[int, int]],
                    resize_key: str) -> dict[str, tuple[str, Scorer]]:
    """Each baseline (name -> (cache key, scorer)) again, read at the critic's input sizes; none
    when `sizes` is empty. `resize_key` names the resize rule in the cache key."""
    return {name + AT_CRITIC_INPUT: (f"{key}-{resize_key}", resized_scorer(scorer, sizes))
            for name, (key, scorer) in baselines.items()} if sizes else {}


def baseline_rows(benchmark: Benchmark, name: str, scores: np.ndarray, n_boot: int = 1000) -> list[dict[str, Any]]:
    """A classic label-free metric against quality MOS; images where it is undefined (NIQE on a
    flat, all-black image) are left out: n says how many remain and each row's `dropped` names them."""
    mos = np.asarray(benchmark.mos_quality(), dtype=float)
    keep = np.isfinite(scores)
    rows = label_free_rows(benchmark.name, "visual", scores[keep], mos[keep], protocol=f"label-free/{name}", n_boot=n_boot)
    dropped = [item.image_path.name for item, kept in zip(benchmark.items, keep) if not kept]
    return [{**row, "dropped": dropped} for row in rows]  # the warehouse keeps the names, reports show them


def method_of(protocol: str) -> str:
    """Which critic a score row belongs to: ours, or the baseline named in the protocol."""
    _, _, baseline = protocol.partition("/")
    return baseline_label(baseline) if baseline else "ELIQ (ours)"


HELDOUT_BENCHMARK = "heldout-tuples"  # the benchmark name of held-out tuple accuracy rows


def heldout_rows(accuracies: dict[str, float], n: int) -> list[dict[str, Any]]:
    """Held-out tuple ranking accuracy (always available, no human labels involved)."""
    aspect = {"vis_vs_tec": "visual", "vis_vs_aes": "visual", "ali": "alignment"}
    return [{"benchmark": HELDOUT_BENCHMARK, "protocol": "label-free", "aspect": aspect.get(name, name),
             "metric": f"ranking_accuracy_{name}", "value": float(value), "n": n, "ci_low": None, "ci_high": None}
            for name, value in sorted(accuracies.items())]


def bundle_hash(*parts: bytes) -> str:
    return sha256_bytes(b"|".join(parts))[:16]




def niqe_model_for(images: Sequence[Image.Image], params_file: str | None = None) -> NIQEModel:
    """NIQE's pristine model: a standard parameter file when given, else fitted on the era's
    positives. Images smaller than two NIQE patches per side (the tiny profile's 64 px toys) are
    upscaled first so that patches exist; that is only meaningful for a smoke run."""
    if params_file:
        return NIQEModel.load(params_file)
    minimum = 2 * NIQE_BLOCK
    resized = [im if min(im.size) >= minimum else im.resize(
        (max(minimum, round(im.width * minimum / min(im.size))), max(minimum, round(im.height * minimum / min(im.size)))),
        Image.BICUBIC) for im in images]
    return fit_niqe_model(resized)


def cached_baseline_scores(store, name: str, model_key: str, benchmark: Benchmark, shas: Sequence[str],
                           scorer: Callable[[Any], float],
                           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Baseline scores per image, cached in the store by (metric, model, image sha256): a baseline
    that does not depend on the era (PIQE, NIQE with fixed parameters) is computed once."""
    key = f"cache/baselines/{name}-{model_key}/{benchmark.name}.parquet"
    cached: dict[str, float] = {}
    if store.exists(key):
        table = store.get_table(key).to_pydict()
        cached = dict(zip(table["image_sha256"], table["score"]))
    missing = [i for i, sha in enumerate(shas) if sha not in cached]
    if missing:
        values = score_paths(scorer, [benchmark.items[i].image_path for i in missing], workers=1, progress=progress)
        cached.update({shas[i]: float(v) for i, v in zip(missing, values)})
        store.put_table(key, pa.table({"image_sha256": list(cached), "score": list(cached.values())}))
    return np.array([cached[sha] for sha in shas], dtype=float)
