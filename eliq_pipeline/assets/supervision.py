"""Supervision assets (paper 3.2): prompts, positive_images, negative_images, comparison_tuples."""


import dagster as dg

from eliq_pipeline.assets.common import GROUP_SUPERVISION, current_era, era_key, era_metadata, rows_to_table
from eliq_pipeline.eras import Era, EraRegistry
from eliq_pipeline.ml import supervision as sup
from eliq_pipeline.ml.generators import GENERATOR_BACKENDS, GeneratorSpec, resolve_model_ref
from eliq_pipeline.ml.prompts import Prompt, build_prompt_bank
from eliq_pipeline.partitions import ERA_PARTITIONS
from eliq_pipeline.resources import ArtifactStoreResource, EraRegistryResource, ModelProfileResource


def load_prompts(store, era: str) -> list[Prompt]:
    table = store.get_table(era_key(era, "prompts.parquet")).to_pylist()
    return [Prompt(prompt_id=r["prompt_id"], text=r["text"], category=r["category"],
                   sub_concept=r["sub_concept"], labels=list(r["labels"]), subject=r.get("subject") or "")
            for r in table]


def _defaults(profile: ModelProfileResource) -> dict:
    settings = profile.settings()
    return {"steps": settings.generation_steps, "height": settings.image_height, "width": settings.image_width}


def _generator_loader(registry: EraRegistry, profile: ModelProfileResource):
    def load(gid: str):
        entry = registry.generators[gid]
        model = resolve_model_ref(entry.model_for(profile.profile), profile.models_dir / "generators",
                                  init_seed=int(entry.params.get("init_seed", 0)))
        spec = GeneratorSpec(id=gid, backend=entry.backend, model=model, params={**_defaults(profile), **entry.params})
        return GENERATOR_BACKENDS.get(entry.backend)(spec, device=profile.torch_device())

    return load


def _requests(registry: EraRegistry, generator_ids, prompts: list[Prompt], profile: ModelProfileResource):
    defaults = _defaults(profile)
    return [
        sup.GenerationRequest(gid, prompt, sup.generation_params(registry.generators[gid].params, defaults, prompt))
        for gid in generator_ids
        for prompt in prompts
    ]


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=GROUP_SUPERVISION, code_version="prompts-1")
def prompts(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """The prompt bank of the paper's seven-category taxonomy (3.2.1), with multi-label categories."""
    era = current_era(context, eras)
    settings = profile.settings()
    bank = build_prompt_bank(settings.n_prompts, seed=settings.prompt_seed)
    rows = [{"prompt_id": p.prompt_id, "text": p.text, "category": p.category,
             "sub_concept": p.sub_concept, "labels": list(p.labels), "subject": p.subject} for p in bank]
    store = artifacts.store()
    store.put_table(era_key(era.name, "prompts.parquet"), rows_to_table(rows))
    coverage = sup.count_by(rows, "category")
    return dg.MaterializeResult(metadata=era_metadata(era, eras, profile, num_prompts=len(rows),
                                                      category_coverage=dg.MetadataValue.json(coverage),
                                                      examples=dg.MetadataValue.md("\n".join(f"- {r['text']}" for r in rows[:5]))))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=GROUP_SUPERVISION, code_version="positives-1",
          deps=[prompts], pool="gpu")
def positive_images(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """One image per (prompt, positive generator) of the era (3.2.2), plus the era's low-quality
    generator images used as AI-specific aesthetic negatives; shared generators reuse cached images."""
    era: Era = current_era(context, eras)
    registry, store = eras.load(), artifacts.store()
    prompt_list = load_prompts(store, era.name)
    load = _generator_loader(registry, profile)
    batch = profile.settings().generation_batch_size
    log = lambda done, total: context.log.info(f"images {done}/{total}")  # noqa: E731
    rows, generated, reused = sup.generate_images(store, _requests(registry, era.positive_generators, prompt_list, profile), load, batch, log)
    low, low_generated, low_reused = sup.generate_images(store, _requests(registry, era.low_quality_generators, prompt_list, profile), load, batch, log)
    for row in rows:
        row["role"] = "positive"
    for row in low:
        row["role"] = "low_quality"
    store.put_table(era_key(era.name, "positive_images.parquet"), rows_to_table(rows + low))
    return dg.MaterializeResult(metadata=era_metadata(
        era, eras, profile, images_generated=generated + low_generated, images_reused=reused + low_reused,
        num_positives=len(rows), num_low_quality=len(low),
        per_generator=dg.MetadataValue.json(sup.count_by(rows + low, "role", "generator")),
    ))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=GROUP_SUPERVISION, code_version="negatives-1",
          deps=[positive_images])
def negative_images(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """Aspect-specific negatives per positive (3.2.3): technical (repeated JPEG, Gaussian noise),
    aesthetic (offline composition/colour edit; low-quality generators) and alignment (shuffled prompts)."""
    era = current_era(context, eras)
    store = artifacts.store()
    images = store.get_table(era_key(era.name, "positive_images.parquet")).to_pylist()
    positives = [r for r in images if r["role"] == "positive"]
    low = [r for r in images if r["role"] == "low_quality"]
    rows, created, reused = sup.build_negatives(store, positives, load_prompts(store, era.name), low, seed=era.seed)
    store.put_table(era_key(era.name, "negative_images.parquet"), rows_to_table(rows))
    return dg.MaterializeResult(metadata=era_metadata(
        era, eras, profile, num_negatives=len(rows), negatives_created=created, negatives_reused=reused,
        counts_by_aspect_family_method=dg.MetadataValue.json(sup.count_by(rows, "aspect", "family", "method")),
    ))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=GROUP_SUPERVISION, code_version="tuples-1",
          deps=[negative_images])
def comparison_tuples(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """(I+, I-tec, I-aes, p, p-ali) tuples with a prompt-disjoint train / held-out split."""
    era = current_era(context, eras)
    store, settings = artifacts.store(), profile.settings()
    images = store.get_table(era_key(era.name, "positive_images.parquet")).to_pylist()
    positives = [r for r in images if r["role"] == "positive"]
    negatives = store.get_table(era_key(era.name, "negative_images.parquet")).to_pylist()
    rows = sup.build_tuples(positives, negatives, settings.heldout_fraction, era.seed, settings.tuples_per_positive)
    for row in rows:
        row["era"] = era.name
    store.put_table(era_key(era.name, "comparison_tuples.parquet"), rows_to_table(rows))
    split = sup.count_by(rows, "split")
    return dg.MaterializeResult(metadata=era_metadata(
        era, eras, profile, num_tuples=len(rows), split=dg.MetadataValue.json(split),
        methods=dg.MetadataValue.json(sup.count_by(rows, "tec_method", "aes_method")),
        location=store.describe(era_key(era.name, "comparison_tuples.parquet")),
    ))
