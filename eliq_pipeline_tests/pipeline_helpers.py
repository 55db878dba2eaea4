"""Small, fast pipeline settings for tests: real assets and models, fewer prompts and steps."""

from __future__ import annotations

import json
from pathlib import Path

from eliq_pipeline_tests.shared_data import AGIQA_3K

FAST_OVERRIDES = {"n_prompts": 6, "sft": {"max_steps": 12, "checkpoint_every": 6}, "scorer": {"epochs": 4}}

ERAS_ONE = """
generators:
  flux: {backend: diffusers, model: "tiny:flux"}
  sd3: {backend: diffusers, model: "tiny:sd3"}
  sd15: {backend: diffusers, model: "tiny:sd"}
eras:
  - {name: era-a, positive_generators: [flux], low_quality_generators: [sd15], seed: 1}
"""


def write_eras(path: Path, text: str = ERAS_ONE) -> Path:
    path.write_text(text)
    return path


def pipeline_env(home: Path, eras_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "ELIQ_HOME": str(home),
        "ELIQ_ERAS": str(eras_path),
        "ELIQ_PROFILE": "tiny",
        "ELIQ_PROFILE_OVERRIDES": json.dumps(FAST_OVERRIDES),
        "ELIQ_DEVICE": "cpu",
    }
    env.update(extra)
    return env


def metadata_of(instance, asset_key: str, era: str) -> dict:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset_key), asset_partitions=[era]), limit=1
    ).records
    assert records, f"{asset_key} has no materialization for {era}"
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def materialization_ids(instance, asset_key: str, era: str) -> list[int]:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset_key), asset_partitions=[era]), limit=100
    ).records
    return sorted(r.storage_id for r in records)




def agiqa_subset(target: Path, rows: int = 30) -> Path | None:
    """A datasets folder holding the first rows of the real AGIQA-3K (None when it is absent)."""
    if not (AGIQA_3K / "data.csv").is_file():
        return None
    folder = target / "agiqa-3k"
    (folder / "images").mkdir(parents=True)
    lines = (AGIQA_3K / "data.csv").read_text(encoding="utf-8").splitlines()
    (folder / "data.csv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    for line in lines[1 : rows + 1]:
        name = line.split(",", 1)[0]
        (folder / "images" / name).symlink_to(AGIQA_3K / "images" / name)
    return target
