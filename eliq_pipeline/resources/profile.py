"""The model profile and runtime settings (device, home, datasets) as one resource."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from eliq_pipeline.profiles import Profile, get_profile


class ModelProfileResource(dg.ConfigurableResource):
    profile: str = "tiny"
    home: str = ".eliq"  # $ELIQ_HOME: tiny model folders, caches
    datasets_dir: str = ""  # $ELIQ_DATASETS: benchmarks in their standard layouts
    device: str = "auto"  # "auto" picks CUDA when present
    backbone: str = ""  # overrides the profile's backbone (hub id or local path)
    overrides_json: str = ""  # JSON object of Profile fields to override; sft/scorer dicts are merged
    benchmarks_json: str = ""  # JSON {name: root | {"root":..., "loader":..., options}} beyond $ELIQ_DATASETS
    niqe_params: str = ""  # a standard NIQE parameter file (.mat/.npz/.json); else fitted on positives
    drift_threshold: float = 0.05  # SRCC drop vs the previous era that the drift check flags
    prompts_file: str = ""  # a user prompt file (CSV or JSONL) replacing the generated prompt bank

    def settings(self) -> Profile:
        overrides = json.loads(self.overrides_json) if self.overrides_json else {}
        if not isinstance(overrides, dict):
            raise ValueError(f"profile overrides must be a JSON object, got {self.overrides_json!r}")
        base = get_profile(self.profile)
        for nested in ("sft", "scorer"):
            if nested in overrides:
                overrides[nested] = {**getattr(base, nested), **overrides[nested]}
        if self.backbone:
            overrides["backbone"] = self.backbone
        return get_profile(self.profile, **overrides)

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def models_dir(self) -> Path:
        return Path(self.home) / "models"

    @property
    def datasets_path(self) -> Path | None:
        return Path(self.datasets_dir) if self.datasets_dir else None

    def benchmark_config(self) -> dict:
        config = json.loads(self.benchmarks_json) if self.benchmarks_json else {}
        if not isinstance(config, dict):
            raise ValueError(f"ELIQ_BENCHMARKS must be a JSON object name -> root, got {self.benchmarks_json!r}")
        return config
