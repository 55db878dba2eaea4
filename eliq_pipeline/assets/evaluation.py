"""benchmark_scores: held-out tuple ranking always; SRCC/PLCC/KRCC on every benchmark present."""


import json

import dagster as dg

from eliq_pipeline.assets.common import GROUP_EVALUATION, current_era, era_key, era_metadata, markdown_table
from eliq_pipeline.assets.critic import load_era_tuples, qqt_model
from eliq_pipeline.ml import critic_data
from eliq_pipeline.ml.benchmark_inputs import file_sha256, load_present_benchmarks
from eliq_pipeline.ml.embedding_cache import EmbeddingCache
from eliq_pipeline.ml.evaluation import benchmark_rows, bundle_hash, heldout_rows, score_benchmark
from eliq_pipeline.ml.scorer import load_scoring_head, ranking_accuracies
from eliq_pipeline.partitions import ERA_PARTITIONS
from eliq_pipeline.resources import ArtifactStoreResource, EraRegistryResource, ModelProfileResource, WarehouseResource

TABLE_COLUMNS = ("benchmark", "protocol", "aspect", "metric", "value", "ci_low", "ci_high", "n")


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=GROUP_EVALUATION, code_version="bench-1", deps=[qqt_model])
def benchmark_scores(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource, warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    era = current_era(context, eras)
    store = artifacts.store()
    head_dir = store.get_dir(era_key(era.name, "qqt_model"))
    namespace = json.loads((head_dir / "embedding_namespace.json").read_text())["namespace"]
    head, _ = load_scoring_head(head_dir)
    cache = EmbeddingCache(store, namespace)
    heldout = [r for r in load_era_tuples(store, era.name) if r["split"] == "heldout"]
    accuracies = ranking_accuracies(head, critic_data.tuple_embeddings(cache, heldout))
    rows = heldout_rows(accuracies, len(heldout))
    present = load_present_benchmarks(profile.datasets_path)
    for benchmark in present:
        shas = [file_sha256(item.image_path) for item in benchmark.items]
        s_vis, s_ali = score_benchmark(head, cache, benchmark, shas)
        rows += benchmark_rows(benchmark, s_vis, s_ali)
        context.log.info(f"{benchmark.name}: scored {len(benchmark)} images")
    bundle = bundle_hash(namespace.encode(), (head_dir / "model.safetensors").read_bytes())
    warehouse.replace_scores(era.name, bundle, rows)
    return dg.MaterializeResult(metadata=era_metadata(
        era, eras, profile, bundle_hash=bundle, benchmarks=dg.MetadataValue.json([b.name for b in present]),
        heldout_accuracy=dg.MetadataValue.json(accuracies),
        scores=dg.MetadataValue.md(markdown_table(rows, TABLE_COLUMNS)),
    ))
