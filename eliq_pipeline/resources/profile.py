"""The model profile and runtime settings (device, home, datasets) as one resource."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from eliq_pipeline.profiles import Profile, get_profile


class ModelProfileResource(dg.ConfigurableResource):
    profile: str = "tiny"
    home: str = ".eliq"  # $ELIQ_HOME: tiny model folders, caches
    datasets_dir: str = ""  # $ELIQ_DATASETS: benchmarks in their standard layouts
    device: str = "auto"  # "auto" picks CUDA when present
    backbone: str = ""  # overrides the profile's backbone (hub id or local path)

    def settings(self) -> Profile:
        profile = get_profile(self.profile)
        return get_profile(self.profile, backbone=self.backbone) if self.backbone else profile

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
