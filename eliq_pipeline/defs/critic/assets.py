"""Critic assets (paper 3.3): tuned_mllm, aspect_embeddings, qqt_model."""


import json
from functools import partial
from pathlib import Path

import dagster as dg
import pyarrow as pa

from eliq_pipeline import tiny
from eliq_pipeline.core.atomic import staged_dir
from eliq_pipeline.critic import data as critic_data
from eliq_pipeline.critic.embedding_cache import EmbeddingCache
from eliq_pipeline.critic.embeddings import AspectEmbedder
from eliq_pipeline.critic.head.checkpoints import save_scoring_head
from eliq_pipeline.critic.head.ranking import cross_content_accuracy, severity_order, visual_alignment_invariance
from eliq_pipeline.critic.head.training import train_scoring_head
from eliq_pipeline.critic.severity import VISUAL_ASPECTS, severity_pairs
from eliq_pipeline.critic.instruction_tuning import (
    adapter_fingerprint, pseudo_label_examples, save_tuned_backbone, tune_backbone,
)
from eliq_pipeline.defs.console import progress
from eliq_pipeline.defs.common import GPU_STEP_TAGS, current_era, era_output, rows_to_table
from eliq_pipeline.defs.metadata import (
    ACCURACY_LABELS, LINEAGE_GROUP, accuracy_metadata, era_metadata, image_metadata, numbers,
)
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import (
    ArtifactStoreResource, ComputeResource, EraRegistryResource, ModelProfileResource,
)
from eliq_pipeline.evaluation.benchmark_inputs import benchmark_requests, image_loader
from eliq_pipeline.evaluation.plots import curves_png
from eliq_pipeline.supervision.image_cache import get_image

# The cache namespace of an era's embeddings travels with its table (parquet schema metadata).
NAMESPACE_KEY = b"eliq_embedding_namespace"


def adapter_namespace(adapter_dir: Path) -> str:
    """The adapter fingerprint as a path-safe embedding-cache namespace."""
    return adapter_fingerprint(adapter_dir).split(":")[-1][:32]


def embedding_namespace(aspect_embeddings: pa.Table) -> str:
    return aspect_embeddings.schema.metadata[NAMESPACE_KEY].decode()


def model_output_dir(profile: ModelProfileResource, era: str, name: str) -> Path:
    """Where an asset builds a model folder that the IO manager then publishes to the store."""
    return Path(profile.home) / "work" / era / "outputs" / name


def loss_plot(era: str, losses: list[float]) -> bytes:
    """The SFT loss per optimizer step, with a moving average over 1/20 of the steps (at least 5)."""
    window = max(5, len(losses) // 20)
    return curves_png({"train loss": losses}, f"{era}: tuned_mllm instruction-tuning loss", "optimizer step",
                      "cross-entropy on low/high", smooth=window if len(losses) >= 2 * window else 0)


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="sft-4", pool="gpu",
          op_tags=GPU_STEP_TAGS, kinds={"pytorch", "transformers"})
def tuned_mllm(
    context: dg.AssetExecutionContext, comparison_tuples: pa.Table, eras: EraRegistryResource,
    profile: ModelProfileResource, artifacts: ArtifactStoreResource,
) -> dg.Output[Path]:
    """Quality-aware instruction tuning (3.3.1): LoRA on low/high labels per aspect.

    Metadata: `final_loss`, `heldout_label_accuracy_tec|aes|ali` (low/high answered right on
    held-out tuples) and `heldout_severity_order_tec|aes` (graded eras: a mild negative answered
    "high" more confidently than a strong one) as numbers, the loss curve as a plot (and as JSON)."""
    era = current_era(context, eras)
    store, settings = artifacts.store(), profile.settings()
    rows = comparison_tuples.to_pylist()
    load = partial(get_image, store)
    aspects = set(settings.supervision_aspects)  # Table 5 ablations drop whole aspects

    def examples(split: str):
        tuples = critic_data.sft_tuples([r for r in rows if r["split"] == split], load)
        return [e for e in pseudo_label_examples(tuples) if e.aspect in aspects]

    train, heldout = examples("train"), examples("heldout")
    config = settings.sft_config(seed=era.seed)
    work_dir = Path(profile.home) / "work" / era.name / "sft"  # resumable checkpoints live here
    base = tiny.resolve(settings.backbone, profile.models_dir)  # a tiny backbone is built once
    result = tune_backbone(base, train, heldout, config, work_dir, device=profile.torch_device(),
                           log=context.log.info, progress=progress(context, "instruction tuning", "steps"))
    out = save_tuned_backbone(result.model, result.processor, model_output_dir(profile, era.name, "tuned_mllm"),
                              base_ref=settings.backbone)
    return era_output(out, era_metadata(
        era, eras, profile, adapter_hash=adapter_namespace(out),
        base_backbone=settings.backbone, resumed_from_step=result.resumed_from_step,
        train_examples=len(train), heldout_examples=len(heldout), steps=result.steps,
        trainable_parameters=result.trainable_params,
        **numbers(final_loss=result.loss_curve[-1] if result.loss_curve else None),
        **accuracy_metadata(result.heldout_accuracy, "heldout_label_accuracy"),
        **numbers(**{f"heldout_severity_order_{a}": v for a, v in result.heldout_severity_order.items()}),
        loss_plot=image_metadata(loss_plot(era.name, result.loss_curve), "instruction-tuning loss per step"),
        heldout_label_accuracy=dg.MetadataValue.json(result.heldout_accuracy),
        loss_curve=dg.MetadataValue.json([round(x, 4) for x in result.loss_curve]),
    ))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="embeddings-2", pool="gpu",
          op_tags=GPU_STEP_TAGS, kinds={"pytorch", "parquet"})
def aspect_embeddings(
    context: dg.AssetExecutionContext, comparison_tuples: pa.Table, tuned_mllm: Path, eras: EraRegistryResource,
    profile: ModelProfileResource, artifacts: ArtifactStoreResource, compute: ComputeResource,
) -> dg.Output[pa.Table]:
    """z_tec, z_aes, z_ali (3.3.2) for every tuple image and every benchmark image found, through a
    cache keyed by (adapter hash, image sha256, aspect, prompt hash); computed in this process or
    on Ray (`compute`)."""
    era = current_era(context, eras)
    store, settings = artifacts.store(), profile.settings()
    adapter_dir = tuned_mllm
    namespace = adapter_namespace(adapter_dir)
    cache = EmbeddingCache(store, namespace)
    requests = critic_data.all_tuple_requests(comparison_tuples.to_pylist(), settings.embed_negative_alignment)
    bench_requests, bench_paths, bench_counts = benchmark_requests(profile.datasets_path, profile.benchmark_config())
    requests += bench_requests
    embedder = AspectEmbedder(str(adapter_dir), base=tiny.resolve(settings.backbone, profile.models_dir),
                              device=profile.device, batch_size=settings.embed_batch_size)
    computed, reused = cache.ensure(requests, image_loader(store, bench_paths), embedder,
                                    progress=progress(context, "embeddings", "queries"),
                                    compute=compute.compute())
    index = [{"key": r.key(namespace), "image_sha256": r.image_sha256, "aspect": r.aspect,
              "has_prompt": r.prompt is not None} for r in dict.fromkeys(requests)]
    table = rows_to_table(index)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), NAMESPACE_KEY: namespace.encode()})
    return era_output(table, era_metadata(
        era, eras, profile, embeddings_computed=computed, embeddings_reused=reused, adapter_hash=namespace,
        benchmark_images=dg.MetadataValue.json(bench_counts),
    ))


def training_plots(era: str, history: list[dict[str, float]], best_epoch: int) -> dict[str, bytes]:
    """The scoring head's per-epoch losses (train, held-out) and held-out ranking accuracies
    (against chance), the kept epoch marked."""
    epochs = [row["epoch"] for row in history]
    column = lambda key: [row.get(key, float("nan")) for row in history]  # noqa: E731
    losses = curves_png({"train loss": column("train_loss"), "held-out loss": column("heldout_loss")},
                        f"{era}: qqt_model ranking loss", "epoch", "margin ranking loss", x=epochs,
                        marker_x=best_epoch or None)
    accuracy = curves_png({label: column(f"heldout_{key}") for key, label in ACCURACY_LABELS.items()},
                          f"{era}: qqt_model held-out accuracy per epoch", "epoch", "ranking accuracy", x=epochs,
                          hline=(0.5, "chance"), marker_x=best_epoch or None)
    return {"loss_plot": losses, "heldout_accuracy_plot": accuracy}


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="qqt-2", kinds={"pytorch"})
def qqt_model(
    context: dg.AssetExecutionContext, comparison_tuples: pa.Table, aspect_embeddings: pa.Table,
    eras: EraRegistryResource, profile: ModelProfileResource, artifacts: ArtifactStoreResource,
) -> dg.Output[Path]:
    """Gated fusion + Quality Query Transformer (3.3.2-3.3.4) trained with the margin ranking losses (3.3.5).

    Metadata: `heldout_accuracy_tec|aes|ali` (held-out tuples ranked right at the kept epoch),
    `heldout_severity_order_tec|aes` (graded eras: mild negatives scored above strong ones),
    `heldout_vis_ali_invariance` (s_vis of held-out positives with their own vs shuffled alignment
    tokens, Spearman: 1 when the visual score ignores z_ali), `heldout_cross_content_accuracy_tec|aes`
    (held-out positives scored above other prompts' negatives) and `final_loss` as numbers; plots of
    the losses and held-out accuracies per epoch (dotted line: the kept epoch; dashed: chance)."""
    era = current_era(context, eras)
    store, settings = artifacts.store(), profile.settings()
    namespace = embedding_namespace(aspect_embeddings)
    cache = EmbeddingCache(store, namespace)
    rows = comparison_tuples.to_pylist()
    own_ali = settings.embed_negative_alignment
    train_rows, heldout_rows = ([r for r in rows if r["split"] == split] for split in ("train", "heldout"))
    train = critic_data.tuple_embeddings(cache, train_rows, own_ali)
    heldout = critic_data.tuple_embeddings(cache, heldout_rows, own_ali)
    config = settings.scorer_config(hidden_size=int(train.pos_tec.shape[1]), seed=era.seed)
    result = train_scoring_head(train, heldout, config, log=context.log.info,
                                severity_pairs={a: severity_pairs(train_rows, a) for a in VISUAL_ASPECTS})
    # graded negatives: does the head order mild above strong? (empty when the era has no series)
    order = severity_order(result.model, heldout, heldout_rows)
    with staged_dir(model_output_dir(profile, era.name, "qqt_model")) as out:
        save_scoring_head(result.model, config, out)
        (out / "embedding_namespace.json").write_text(json.dumps({"namespace": namespace}))
        (out / "training_report.json").write_text(json.dumps(
            {"heldout_accuracy": result.heldout_accuracies, "best_epoch": result.best_epoch, "history": result.history}))
    return era_output(model_output_dir(profile, era.name, "qqt_model"), era_metadata(
        era, eras, profile, train_tuples=len(train_rows), heldout_tuples=len(heldout_rows),
        **accuracy_metadata(result.heldout_accuracies),
        **numbers(**{f"heldout_severity_order_{aspect}": value for aspect, value in order.items()}),
        **numbers(**{f"heldout_cross_content_accuracy_{aspect}": value for aspect, value in
                     cross_content_accuracy(result.model, heldout, heldout_rows).items()}),
        **numbers(final_loss=result.loss_history[-1] if result.loss_history else None,
                  heldout_vis_ali_invariance=visual_alignment_invariance(result.model, heldout, heldout_rows)),
        best_epoch=result.best_epoch, stopped_early=result.stopped_early,
        **{key: image_metadata(png, key.replace("_", " ")) for key, png in
           training_plots(era.name, result.history, result.best_epoch).items()},
        heldout_accuracy=dg.MetadataValue.json(result.heldout_accuracies),
        loss_curve=dg.MetadataValue.json([round(x, 4) for x in result.loss_history]),
    ))
