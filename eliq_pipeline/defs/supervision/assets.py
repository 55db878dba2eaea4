"""Supervision assets (paper 3.2): prompts, positive_images, negative_images, comparison_tuples."""

import json
from collections import Counter

import dagster as dg
import pyarrow as pa

from eliq_pipeline import tiny
from eliq_pipeline.core.compute import Compute
from eliq_pipeline.core.eras import OFFLINE_EDITOR, Era, EraRegistry
from eliq_pipeline.defs.common import GPU_STEP_TAGS, current_era, era_output, rows_to_table
from eliq_pipeline.defs.console import progress
from eliq_pipeline.defs.metadata import LINEAGE_GROUP, era_metadata, image_metadata
from eliq_pipeline.defs.partitions import ERA_PARTITIONS
from eliq_pipeline.defs.resources import (
    ArtifactStoreResource, ComputeResource, EraRegistryResource, ModelProfileResource,
)
from eliq_pipeline.defs.resources.io_manager import era_key
from eliq_pipeline.supervision.backends import GENERATOR_BACKENDS, GeneratorFactory, can_sample
from eliq_pipeline.supervision.editors import EditorFactory, load_editor
from eliq_pipeline.supervision.generation import (
    GenerationRequest, ImageSource, ai_specific_requests, generate_ai_specific, generate_images, generation_params,
    variants_for,
)
from eliq_pipeline.supervision.generators import GeneratorSpec
from eliq_pipeline.supervision.negatives import (
    PrecomputedEditor, build_negatives, check_methods, low_quality_skips, precompute_edits, sampler_skips,
)
from eliq_pipeline.supervision.preview import positives_png, preview_png
from eliq_pipeline.supervision.prompt_refine import refine_labels
from eliq_pipeline.supervision.prompts import (
    Prompt, aesthetic_degraded_prompt, build_prompt_bank, degraded_prompt, load_prompt_file, prompts_from_import,
)
from eliq_pipeline.supervision.tuples import build_tuples, count_by, seeded_subset

def prompt_list(table: pa.Table) -> list[Prompt]:
    """The `prompts` asset's table as Prompt objects."""
    return [Prompt(prompt_id=r["prompt_id"], text=r["text"], category=r["category"],
                   sub_concept=r["sub_concept"], labels=list(r["labels"]), subject=r.get("subject") or "")
            for r in table.to_pylist()]


def _defaults(profile: ModelProfileResource) -> dict:
    settings = profile.settings()
    return {"steps": settings.generation_steps, "height": settings.image_height, "width": settings.image_width}


def _spec(registry: EraRegistry, profile: ModelProfileResource, gid: str) -> GeneratorSpec:
    entry = registry.generators[gid]
    model = tiny.resolve(entry.model_for(profile.profile), profile.models_dir,
                         init_seed=int(entry.params.get("init_seed", 0)))
    return GeneratorSpec(id=gid, backend=entry.backend, model=model, params={**_defaults(profile), **entry.params})


def _generator_factory(registry: EraRegistry, profile: ModelProfileResource, artifacts: ArtifactStoreResource,
                       gids) -> GeneratorFactory:
    """Loads the generators `gids` by id, here or in a Ray worker (picklable); `loaded` keeps
    those loaded in this process (import sources, for their reports)."""
    return GeneratorFactory({gid: _spec(registry, profile, gid) for gid in dict.fromkeys(gids)}, device=profile.device,
                            s3_endpoint_url=artifacts.s3_endpoint_url, s3_region=artifacts.s3_region)


def _editors(registry: EraRegistry, era: Era, profile: ModelProfileResource, store, positives: list[dict],
             runner: Compute | None) -> list:
    """(method, id, editor): the deterministic offline editor (unless the profile names its own
    aesthetic degradations), plus the era's editing pipeline (Qwen-Image-Edit in production, a toy
    img2img pipeline in tiny) when it names one. On Ray (`runner`) the missing edits are rendered
    by the workers first, and the editor here only finds them cached."""
    own_methods = bool(profile.settings().aesthetic_methods)
    editors = [] if own_methods else [("offline_edit", OFFLINE_EDITOR, load_editor("offline"))]
    editor_id = era.editor_for(profile.profile)
    if editor_id != OFFLINE_EDITOR:
        factory = EditorFactory(_spec(registry, profile, editor_id), device=profile.device)
        if runner is None:
            editor = factory()
        else:
            precompute_edits(store, [p["image_sha256"] for p in positives], editor_id, factory.revision(), factory, runner)
            editor = PrecomputedEditor(factory.revision())
        editors.append(("model_edit", editor_id, editor))
    return editors


def _without_sampler(registry: EraRegistry, generator_ids) -> dict[str, str]:
    """Generator id -> why it cannot render AI-specific negatives, for those whose backend has no
    sampler (the `import` backend: fixed images, no prompt can be re-rendered or decoded early)."""
    out = {}
    for gid in generator_ids:
        backend = registry.generators[gid].backend
        if not can_sample(backend):
            out[gid] = f"generator {gid!r} ({backend} backend) has no sampler"
    return out


def _import_reports(factory: GeneratorFactory) -> dict:
    return {gid: backend.report().as_metadata() for gid, backend in factory.loaded.items()
            if isinstance(backend, ImageSource)}


def _requests(registry: EraRegistry, generator_ids, prompts: list[Prompt], profile: ModelProfileResource):
    defaults = _defaults(profile)
    return [
        GenerationRequest(gid, prompt, generation_params(registry.generators[gid].params, defaults, prompt))
        for gid in generator_ids
        for prompt in prompts
    ]


def _import_prompts(registry: EraRegistry, era: Era, profile: ModelProfileResource,
                    artifacts: ArtifactStoreResource) -> tuple[list[Prompt], list[str]]:
    """The distinct prompts of the era's imported positives (its positive generators with backend
    `import`, in era order; the first occurrence of a prompt wins), and those generators' ids.
    The manifests are read without decoding any image."""
    gids = [gid for gid in era.positive_generators if registry.generators[gid].backend == "import"]
    if not gids:
        raise ValueError(f"era {era.name!r}: prompt_source 'import' needs a positive generator with backend "
                         f"'import'; its positive generators are {', '.join(era.positive_generators)}")
    entries: list[dict] = []
    for gid in gids:
        spec = _spec(registry, profile, gid)
        extra = {"client": artifacts.s3_client()} if spec.model.startswith("s3://") else {}
        source = GENERATOR_BACKENDS.get(spec.backend)(spec, device="cpu", validate=False, **extra)
        entries.extend(source.manifest_prompts())
    return prompts_from_import(entries), gids


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="prompts-3", kinds={"parquet"})
def prompts(
    context: dg.AssetExecutionContext, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource,
) -> dg.Output[pa.Table]:
    """The prompt bank of the paper's seven-category taxonomy (3.2.1), with multi-label categories;
    or, with the profile's `prompt_source: import`, the prompts of the era's imported positives."""
    era = current_era(context, eras)
    settings = profile.settings()
    source = profile.prompts_file or "generated bank"
    if settings.prompt_source == "import":  # real exports: their own prompts
        bank, import_gids = _import_prompts(eras.load(), era, profile, artifacts)
        source = f"import: {', '.join(import_gids)}"
        if settings.n_prompts and len(bank) > settings.n_prompts:  # a subset (smoke runs), fixed by the era seed
            keep = seeded_subset((p.prompt_id for p in bank), settings.n_prompts, era.seed)
            bank = [p for p in bank if p.prompt_id in keep]
    elif profile.prompts_file:  # a user's own prompts replace the generated bank
        bank = load_prompt_file(profile.prompts_file)
    else:
        bank = build_prompt_bank(settings.n_prompts, seed=settings.prompt_seed)
    client = profile.chat_client()  # optional LLM refinement of uncertain labels (off by default)
    refinement = {"enabled": False}
    if client is not None:
        bank, report = refine_labels(bank, client)
        refinement = report.as_metadata()
    rows = [{"prompt_id": p.prompt_id, "text": p.text, "category": p.category,
             "sub_concept": p.sub_concept, "labels": list(p.labels), "subject": p.subject,
             # alignment variants (3.2.3) and degraded-appearance / low-fidelity variants
             "variants": json.dumps({k: v.text for k, v in variants_for(p).items()}),
             "degraded_prompt": degraded_prompt(p.text), "appearance_prompt": aesthetic_degraded_prompt(p.text)}
            for p in bank]
    coverage = count_by(rows, "category")
    return era_output(rows_to_table(rows), era_metadata(era, eras, profile, num_prompts=len(rows),
                                                      source=source,
                                                      variant_kinds=dg.MetadataValue.json(count_by(
                                                          [{"k": k} for r in rows for k in json.loads(r["variants"])], "k")),
                                                      category_coverage=dg.MetadataValue.json(coverage),
                                                      label_refinement=dg.MetadataValue.json(refinement),
                                                      examples=dg.MetadataValue.md("\n".join(f"- {r['text']}" for r in rows[:5]))))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="positives-3", pool="gpu",
          op_tags=GPU_STEP_TAGS, kinds={"diffusers", "parquet"})
def positive_images(
    context: dg.AssetExecutionContext, prompts: pa.Table, eras: EraRegistryResource, profile: ModelProfileResource,
    artifacts: ArtifactStoreResource, compute: ComputeResource,
) -> dg.Output[pa.Table]:
    """One image per (prompt, positive generator) of the era (3.2.2); a generator shared with an
    earlier era reuses its cached images. Rendered in this process or on Ray (`compute`).

    Metadata: counts (generated, reused, skipped, per generator) and `preview`, a grid of the first
    positives labelled with generator and prompt."""
    era: Era = current_era(context, eras)
    registry, store = eras.load(), artifacts.store()
    requests = _requests(registry, era.positive_generators, prompt_list(prompts), profile)
    factory, skipped = _generator_factory(registry, profile, artifacts, era.positive_generators), []
    rows, generated, reused = generate_images(store, requests, factory, profile.settings().generation_batch_size,
                                              progress(context, "positives"), skipped=skipped,
                                              compute=compute.compute())
    if skipped:  # one console line; each image in the event log
        reasons = Counter(f"{skip['generator']}: {skip['reason']}" for skip in skipped)
        context.log.warning(f"skipped {len(skipped)} positive image(s): "
                            + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common()))
    for skip in skipped:
        context.log.debug(f"skipped {skip['generator']}: {skip['prompt'][:60]!r}: {skip['reason']}")
    return era_output(rows_to_table(rows), era_metadata(
        era, eras, profile, images_generated=generated, images_reused=reused, num_positives=len(rows),
        images_skipped=len(skipped), per_generator=dg.MetadataValue.json(count_by(rows, "generator")),
        **({"preview": image_metadata(positives_png(store, rows), "the first positives of the era",
                                      f"{min(len(rows), 10)} of the {len(rows)} positives, each generator in turn")} if rows else {}),
        import_reports=dg.MetadataValue.json(_import_reports(factory)),
    ))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="negatives-7", pool="gpu",
          op_tags=GPU_STEP_TAGS, kinds={"diffusers", "parquet"})
def negative_images(
    context: dg.AssetExecutionContext, prompts: pa.Table, positive_images: pa.Table, eras: EraRegistryResource,
    profile: ModelProfileResource, artifacts: ArtifactStoreResource, compute: ComputeResource,
) -> dg.Output[pa.Table]:
    """Aspect-specific negatives per positive (3.2.3), conventional and AI-specific: repeated JPEG,
    Gaussian noise, degraded prompts, premature decoding (tec); the editor, low-quality generators,
    appearance-degrading prompts (aes); shuffled prompts, rendered prompt variants (ali).
    The renders that need the positive's own sampler (degraded, appearance and variant prompts,
    premature decoding) are made for generators that have one; for imported positives they are
    skipped, with count and reason per family/method in `skipped_negatives`.

    Metadata: counts per family x aspect (x method) and `preview`, a grid of one positive and its
    image negatives labelled aspect, family and method."""
    era = current_era(context, eras)
    registry, store, settings = eras.load(), artifacts.store(), profile.settings()
    check_methods(settings.technical_methods, settings.aesthetic_methods, settings.severity_levels)  # before any work
    bank, positives = prompt_list(prompts), positive_images.to_pylist()
    load = _generator_factory(registry, profile, artifacts, [*era.low_quality_generators, *era.positive_generators])
    batch, runner = settings.generation_batch_size, compute.compute()
    low_skipped: list[dict] = []
    low, low_generated, low_reused = generate_images(
        store, _requests(registry, era.low_quality_generators, bank, profile), load, batch,
        progress(context, "low-quality"), skipped=low_skipped, compute=runner)
    # AI-specific renders need the positive's own sampler: planned only for generators that have
    # one; for the others (imported images) they are skipped and reported, the rest is built.
    no_sampler = _without_sampler(registry, era.positive_generators)
    samplers = [gid for gid in era.positive_generators if gid not in no_sampler]
    planned = ai_specific_requests(_requests(registry, samplers, bank, profile), settings.premature_fraction)
    ai_rows, ai_generated, ai_reused = generate_ai_specific(store, planned, load, batch,
                                                            progress(context, "AI-specific"), compute=runner)
    skipped_negatives = {**sampler_skips(positives, no_sampler), **low_quality_skips(positives, low_skipped)}
    for key, skip in skipped_negatives.items():
        context.log.warning(f"skipped {skip['count']} {key} negatives: {skip['reason']}")
    no_effect: list[dict] = []  # degradations that left a positive unchanged (replaced by the next one)
    rows, created, reused = build_negatives(store, positives, bank, low, era.seed, ai_generated=ai_rows,
                                                editors=_editors(registry, era, profile, store, positives, runner),
                                                technical_methods=settings.technical_methods,
                                                aesthetic_methods=settings.aesthetic_methods or None,
                                                levels=settings.severity_levels,
                                                per_aspect=settings.negatives_per_aspect, no_effect=no_effect,
                                                progress=progress(context, "negatives", "positives"))
    preview = preview_png(store, positives[0], [r for r in rows if r["positive_sha256"] == positives[0]["image_sha256"]])
    store.put_bytes(era_key(era.name, "negative_preview.png"), preview)
    return era_output(rows_to_table(rows), era_metadata(
        era, eras, profile, num_negatives=len(rows),
        images_generated=low_generated + ai_generated, images_reused=low_reused + ai_reused,
        degradations_created=created, degradations_reused=reused,
        # e.g. desaturating a black-and-white positive: no negative, the next method was made instead
        degradations_without_effect=dg.MetadataValue.json(count_by(
            [{"m": f"{r['method']}@{r['level']}" if r["level"] is not None else r["method"]} for r in no_effect], "m")),
        counts_by_family_aspect=dg.MetadataValue.json(count_by(rows, "family", "aspect")),
        counts_by_family_aspect_method=dg.MetadataValue.json(count_by(rows, "family", "aspect", "method")),
        # family/method -> count, reason (and count per generator) of negatives that could not be made
        skipped_negatives=dg.MetadataValue.json(skipped_negatives),
        preview=image_metadata(preview, "one positive and its image negatives",
                               f"The first positive and its image negatives. Prompt: *{positives[0]['prompt']}*"),
        preview_path=store.describe(era_key(era.name, "negative_preview.png")),
    ))


@dg.asset(partitions_def=ERA_PARTITIONS, group_name=LINEAGE_GROUP, code_version="tuples-3", kinds={"parquet"})
def comparison_tuples(
    context: dg.AssetExecutionContext, positive_images: pa.Table, negative_images: pa.Table,
    eras: EraRegistryResource, profile: ModelProfileResource,
) -> dg.Output[pa.Table]:
    """(I+, I-tec, I-aes, p, p-ali) tuples with a prompt-disjoint train / held-out split."""
    era = current_era(context, eras)
    settings = profile.settings()
    rows = build_tuples(positive_images.to_pylist(), negative_images.to_pylist(), settings.heldout_fraction, era.seed, settings.tuples_per_positive,
                            families=settings.negative_families, exclude_methods=settings.tuple_exclude_methods)
    for row in rows:
        row["era"] = era.name
    split = count_by(rows, "split")
    return era_output(rows_to_table(rows), era_metadata(
        era, eras, profile, num_tuples=len(rows), split=dg.MetadataValue.json(split),
        methods=dg.MetadataValue.json({
            aspect: count_by(rows, f"{aspect}_family", f"{aspect}_method") for aspect in ("tec", "aes", "ali")}),
    ))
