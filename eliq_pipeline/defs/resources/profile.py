"""The model profile and runtime settings (device, home, datasets, LLM label refiner) as one resource."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from eliq_pipeline.core.profiles import Profile, get_profile

if TYPE_CHECKING:
    from eliq_pipeline.supervision.prompt_refine import ChatClient


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
    # OpenAI-compatible endpoint refining uncertain prompt labels (paper 3.2.1); "" turns it off.
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""  # a secret (set it as dg.EnvVar): never part of the fingerprint or of any metadata
    llm_timeout: float = 30.0  # seconds per request; does not change what is built, so not fingerprinted

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

    def refiner_settings(self) -> dict[str, str]:
        """What the LLM label refiner changes in `prompts`: its endpoint and model (never the key);
        empty when refinement is off."""
        if not self.llm_base_url:
            return {}
        return {"base_url": self.llm_base_url.rstrip("/"), "model": self.llm_model}

    def input_files(self) -> dict[str, str]:
        """sha256 of the user files that shape outputs: the prompt file (replaces the bank) and the
        NIQE parameter file (the baseline's model); a missing file is named as such."""
        files = {}
        for name, path in (("prompts_file", self.prompts_file), ("niqe_params", self.niqe_params)):
            if path:
                files[name] = (hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file()
                               else f"missing: {path}")
        return files

    def fingerprint(self) -> str:
        """What every materialization records as `profile_fingerprint` and `eliq materialize`
        compares: the profile settings, the LLM refiner when it is on (endpoint and model) and the
        content of the user's prompt / NIQE parameter files when given. With none of those this is
        `settings().fingerprint()`, so earlier materializations stay up to date."""
        base = self.settings().fingerprint()
        extra = {**({"llm_refiner": self.refiner_settings()} if self.refiner_settings() else {}),
                 **self.input_files()}
        if not extra:
            return base
        payload = json.dumps({"profile": base, **extra}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def chat_client(self) -> ChatClient | None:
        """The LLM refiner's client, or None (refinement off) when no base URL is configured."""
        if not self.llm_base_url:
            return None
        if not self.llm_model:
            raise ValueError(f"an LLM base URL ({self.llm_base_url}) is set, so LLM label refinement is on, "
                             "but ELIQ_LLM_MODEL names no model")
        from eliq_pipeline.supervision.prompt_refine import ChatClient

        key = self.llm_api_key
        if isinstance(key, dg.EnvVar):  # not resolved: used outside a run
            key = key.get_value()
        return ChatClient(self.llm_base_url, self.llm_model, api_key=key or None, timeout=self.llm_timeout)

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
