"""Asset checks on the supervision itself (paper 3.2). Blocking where a wrong result would poison training."""


from typing import Iterable

import dagster as dg
import pyarrow as pa

from eliq_pipeline.defs.common import era_asset_check
from eliq_pipeline.defs.resources import ArtifactStoreResource
from eliq_pipeline.defs.supervision.assets import comparison_tuples, negative_images, positive_images
from eliq_pipeline.supervision.image_cache import get_image


def _undecodable(store, shas: Iterable[str]) -> list[str]:
    bad = []
    for sha in sorted(set(shas)):
        try:
            get_image(store, sha)
        except (FileNotFoundError, ValueError) as exc:
            bad.append(f"{sha[:12]}: {exc}")
    return bad


@era_asset_check(asset=positive_images, blocking=True, description="Every positive and low-quality image exists and decodes.")
def positive_images_decode(positive_images: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = positive_images.to_pylist()
    bad = _undecodable(store, (r["image_sha256"] for r in rows))
    return dg.AssetCheckResult(passed=not bad, metadata={"images": len(rows), "undecodable": len(bad),
                                                          "first_failures": dg.MetadataValue.json(bad[:5])})


@era_asset_check(asset=negative_images, blocking=True, additional_ins={"prompts": dg.AssetIn("prompts")},
                description="Each negative differs from its positive: other pixels, or another prompt for alignment.")
def negatives_differ_from_positives(negative_images: pa.Table, prompts: pa.Table) -> dg.AssetCheckResult:
    rows = negative_images.to_pylist()
    texts = {r["prompt_id"]: r["text"] for r in prompts.to_pylist()}
    # an image negative must have other pixels; an alignment pair (image or I+, prompt) must
    # differ from (I+, p) in its image or its prompt
    same = [r["negative_id"] for r in rows
            if (r["aspect"] != "ali" and r["image_sha256"] in (None, r["positive_sha256"]))
            or (r["aspect"] == "ali" and (r["image_sha256"] or r["positive_sha256"]) == r["positive_sha256"]
                and (r["mismatched_prompt"] or "") == texts.get(r["prompt_id"]))]
    return dg.AssetCheckResult(passed=not same, metadata={"negatives": len(rows), "identical_to_positive": len(same),
                                                          "first_failures": dg.MetadataValue.json(same[:5])})


# method -> (measurable, +1 if the negative should raise it / -1 lower it / 0 move it either way)
INTENDED_DIRECTION = {
    "gaussian_noise": ("noise_level", +1),
    "jpeg_recompress": ("blockiness", +1),
    "gaussian_blur": ("sharpness", -1),
    "downscale_upscale": ("sharpness", -1),
    "elastic_warp": ("structure_change", +1),  # pair measurable: structure_change(negative, positive)
    "colour_cast": ("colour_shift", +1),  # pair measurable: colour_shift(negative, positive)
    "desaturate": ("colourfulness", -1),
    "contrast_crush": ("contrast", -1),
    "exposure_shift": ("brightness", 0),  # gamma > 1 darkens, < 1 brightens
    "degraded_prompt": ("sharpness", -1),
    "premature_decode": ("noise_level", +1),
}
PAIR_MEASURABLES = ("colour_shift", "structure_change")  # measured on (negative, positive) together
CONVENTIONAL_CHECKED = tuple(m for m in INTENDED_DIRECTION if m not in ("degraded_prompt", "premature_decode"))


def _moved(sign: int, delta: float) -> bool:
    return abs(delta) > 1e-3 if sign == 0 else sign * delta > 0


@era_asset_check(asset=negative_images, description=(
    "Each negative moves its measurable in the intended direction (noise raises the noise estimate, "
    "JPEG raises blockiness, blur lowers sharpness, ...; per severity level when graded); fails when a "
    "conventional method does so for under 90% of negatives."))
def negatives_move_in_intended_direction(negative_images: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    from eliq_pipeline.supervision import degradations

    store = artifacts.store()
    rows = negative_images.to_pylist()
    measured: dict[str, list[bool]] = {}
    for row in rows:
        if row["method"] not in INTENDED_DIRECTION or not row["image_sha256"]:
            continue
        name, sign = INTENDED_DIRECTION[row["method"]]
        negative, positive = get_image(store, row["image_sha256"]), get_image(store, row["positive_sha256"])
        if name in PAIR_MEASURABLES:
            delta = getattr(degradations, name)(negative, positive)
        else:
            measure = getattr(degradations, name)
            delta = measure(negative) - measure(positive)
        key = row["method"] if row.get("severity") is None else f"{row['method']}@{row['severity']}"
        measured.setdefault(key, []).append(_moved(sign, delta))
    fractions = {m: round(sum(v) / len(v), 3) for m, v in sorted(measured.items())}
    conventional = {m: f for m, f in fractions.items() if m.split("@")[0] in CONVENTIONAL_CHECKED}
    return dg.AssetCheckResult(
        passed=all(f >= 0.9 for f in conventional.values()), severity=dg.AssetCheckSeverity.WARN,
        metadata={"fraction_in_intended_direction": dg.MetadataValue.json(fractions),
                  "measurables": dg.MetadataValue.json({m: f"{'raise' if s > 0 else 'lower'} {n}" for m, (n, s) in INTENDED_DIRECTION.items()})})


@era_asset_check(asset=comparison_tuples, blocking=True,
                description="Every tuple references images that exist and decode; splits are prompt-disjoint and non-empty.")
def tuples_reference_valid_images(comparison_tuples: pa.Table, artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
    store = artifacts.store()
    rows = comparison_tuples.to_pylist()
    bad = _undecodable(store, (r[c] for r in rows for c in ("positive_sha256", "tec_sha256", "aes_sha256", "ali_sha256")))
    train = {r["prompt_id"] for r in rows if r["split"] == "train"}
    heldout = {r["prompt_id"] for r in rows if r["split"] == "heldout"}
    overlap = sorted(train & heldout)
    passed = not bad and not overlap and bool(train) and bool(heldout)
    return dg.AssetCheckResult(passed=passed, metadata={
        "tuples": len(rows), "undecodable": len(bad), "first_failures": dg.MetadataValue.json(bad[:5]),
        "train_prompts": len(train), "heldout_prompts": len(heldout), "prompts_in_both_splits": len(overlap)})
