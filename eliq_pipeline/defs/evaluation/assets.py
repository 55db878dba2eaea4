"""benchmark_scores: held-out tuple ranking always; on every benchmark present, ELIQ (label-free
and weak-supervised) and classic label-free baselines (NIQE, PIQE), into the DuckDB warehouse."""

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa

from eliq_pipeline.core.images import sha256_file
from eliq_pipeline.critic import data as critic_data
from eliq_pipeline.critic.backbone import ProcessorResize, load_processor
from eliq_pipeline.critic.embedding_cache import EmbeddingCache
from eliq_pipeline.critic.head.checkpoints import load_scoring_head
from eliq_pipeline.critic.head.ranking import ranking_accuracies
from eliq_pipeline.defs.console import progress
from eliq_pipeline.defs.common import current_era, era_result
from eliq_pipeline.defs.metadata import (
    ACCURACY_LABELS, LINEAGE_GROUP, accuracy_metadata, era_metadata, image_metadata, score_numbers, scores_table,
)
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import ArtifactStoreResource, EraRegistryResource, ModelProfileResource, WarehouseResource
from eliq_pipeline.defs.resources.io_manager import era_key
from eliq_pipeline.evaluation.baselines import make_baseline
from eliq_pipeline.evaluation.benchmark_inputs import load_present_benchmarks
from eliq_pipeline.evaluation.evaluation import (
    at_critic_input, baseline_rows, benchmark_rows, bundle_hash, cached_baseline_scores, critic_input_sizes,
    heldout_rows, method_of, niqe_model_for, score_benchmark,
)
from eliq_pipeline.evaluation.plots import accuracy_bars_png, scatter_png
from eliq_pipeline.evaluation.report import TOY_CAVEAT, TOY_PROFILES, report_markdown
from eliq_pipeline.supervision.image_cache import get_image, stable_hash

@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="bench-5",
          kinds={"duckdb", "matplotlib"})
def benchmark_scores(
    context: dg.AssetExecutionContext, positive_images: pa.Table, comparison_tuples: pa.Table, tuned_mllm: Path,
    qqt_model: Path, eras: EraRegistryResource, profile: ModelProfileResource, artifacts: ArtifactStoreResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Held-out tuple ranking accuracy, and on every benchmark found: label-free and weak-supervised
    SRCC / PLCC / KRCC of the critic next to NIQE and PIQE (4.1), these also read at the critic's
    input size where its processor resizes the benchmark's images; rows go to the warehouse
    (`scores` table of $ELIQ_HOME/warehouse.duckdb, `eliq report`).

    Metadata: `heldout_accuracy_tec|aes|ali` and, per benchmark, `srcc|plcc|krcc_<vis|ali>_<benchmark>`
    as numbers (the Plots tab charts them across eras); the `scores` table; plots of held-out
    accuracy against chance and of s_vis against quality MOS (and s_ali against alignment MOS where
    the benchmark rates alignment)."""
    era = current_era(context, eras)
    store = artifacts.store()
    head_dir = qqt_model
    namespace = json.loads((head_dir / "embedding_namespace.json").read_text())["namespace"]
    head, _ = load_scoring_head(head_dir)
    cache = EmbeddingCache(store, namespace)
    heldout = [r for r in comparison_tuples.to_pylist() if r["split"] == "heldout"]
    accuracies = ranking_accuracies(head, critic_data.tuple_embeddings(cache, heldout,
                                                                       profile.settings().embed_negative_alignment))
    rows = heldout_rows(accuracies, len(heldout))
    present, skipped = load_present_benchmarks(profile.datasets_path, profile.benchmark_config())
    scatter = {}
    if present:
        positives = positive_images.to_pylist()
        # NIQE fitted on this era's positives always; with standard parameters too when given
        niqe_models = {"niqe": niqe_model_for([get_image(store, r["image_sha256"]) for r in positives])}
        if profile.niqe_params:
            niqe_models["niqe-standard"] = niqe_model_for([], profile.niqe_params)
        baselines = {name: (stable_hash(model.mu.tolist(), model.cov.tolist(), length=12),
                            make_baseline("niqe", model=model)) for name, model in niqe_models.items()}
        baselines["piqe"] = ("v1", make_baseline("piqe"))
        resize = ProcessorResize.of(load_processor(str(tuned_mllm)).image_processor)
    for benchmark in present:
        shas = [sha256_file(item.image_path) for item in benchmark.items]
        s_vis, s_ali = score_benchmark(head, cache, benchmark, shas)
        rows += benchmark_rows(benchmark, s_vis, s_ali)
        at_input = at_critic_input(baselines, critic_input_sizes(benchmark, resize.size), resize.key)
        for name, (model_key, scorer) in {**baselines, **at_input}.items():
            scores = cached_baseline_scores(store, name, model_key, benchmark, shas, scorer,
                                            progress(context, f"{name} on {benchmark.name}"))
            rows += baseline_rows(benchmark, name, scores)
        png = scatter_png(s_vis, benchmark.mos_quality(), title=f"{era.name}: s_vis vs quality MOS, {benchmark.name}",
                          xlabel="ELIQ s_vis (label-free)", ylabel="quality MOS")
        store.put_bytes(era_key(era.name, f"scatter-{benchmark.name}.png"), png)
        scatter[f"scatter_vis_{benchmark.name}"] = (png, f"ELIQ s_vis against quality MOS on {benchmark.name}")
        if benchmark.has_alignment:
            png = scatter_png(s_ali, benchmark.mos_align(), title=f"{era.name}: s_ali vs alignment MOS, {benchmark.name}",
                              xlabel="ELIQ s_ali (label-free)", ylabel="alignment MOS", point_color=(44, 160, 44))
            store.put_bytes(era_key(era.name, f"scatter-ali-{benchmark.name}.png"), png)
            scatter[f"scatter_ali_{benchmark.name}"] = (png, f"ELIQ s_ali against alignment MOS on {benchmark.name}")
        context.log.info(f"{benchmark.name}: scored {len(benchmark)} images")
    bundle = bundle_hash(namespace.encode(), (head_dir / "model.safetensors").read_bytes())
    warehouse.replace_scores(era.name, bundle, rows)
    for row in rows:
        row["method"] = method_of(row["protocol"])
    caveat = {"caveat": dg.MetadataValue.text(TOY_CAVEAT)} if profile.profile in TOY_PROFILES else {}
    metadata = era_metadata(
        era, eras, profile, **caveat, **accuracy_metadata(accuracies), heldout_tuples=len(heldout), **score_numbers(rows),
        scores_table=scores_table(rows, profile.profile),
        heldout_accuracy_plot=image_metadata(
            accuracy_bars_png({ACCURACY_LABELS[k]: v for k, v in accuracies.items() if k in ACCURACY_LABELS},
                              f"{era.name}: held-out tuple ranking accuracy"),
            "held-out tuple ranking accuracy", "Held-out tuples (prompts never trained on): how often the critic "
            "ranks the positive over its negative; dashed line: chance."),
        **{key: image_metadata(png, alt) for key, (png, alt) in scatter.items()},
        bundle_hash=bundle, benchmarks=dg.MetadataValue.json([b.name for b in present]),
        skipped_benchmarks=dg.MetadataValue.json({name: reason for name, reason in skipped}),
        heldout_accuracy=dg.MetadataValue.json(accuracies),
        scores=dg.MetadataValue.md(report_markdown(
            [{**r, "era": era.name} for r in rows], profile.profile,
            {(era.name, r["benchmark"], r["protocol"]): r["dropped"] for r in rows if r.get("dropped")})),
    )
    return era_result(metadata, bundle + json.dumps(rows, default=str))
