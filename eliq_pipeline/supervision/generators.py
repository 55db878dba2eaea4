"""The `diffusers` text-to-image generator backend (paper 3.2.2) and the generator spec.

The `diffusers` backend is the production loader: any pipeline by hub id or local path through
`DiffusionPipeline.from_pretrained` (FLUX.1-dev, SD3.5-Large, Qwen-Image, SD 1.x ...). The tiny
profile runs the very same loader on folders that `eliq_pipeline.tiny.resolve` builds (the real
pipeline classes at toy size, from configs in code), so no test ever downloads anything.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.tiny import TINY_PREFIX

# Params a generator entry may carry (eras.yaml `params`, merged over the profile's defaults).
KNOWN_PARAMS = frozenset(
    {
        "steps",  # num_inference_steps
        "guidance",  # guidance_scale
        "height",
        "width",
        "seed",  # base seed of the generator; per-image seeds come from `generation.generation_params`
        "init_seed",  # tiny only: which random toy network `tiny:<arch>` resolves to
        "negative_prompt",
        "max_sequence_length",
        "batch_size",
        "dtype",  # "float32" | "bfloat16" | "float16"; default float32 on CPU, bf16 on CUDA
        "revision",  # hub revision (branch, tag or commit) for production models
        "offload",  # CUDA only: enable_model_cpu_offload instead of moving the whole pipeline
        "call_kwargs",  # anything else passed verbatim to the pipeline call
    }
)


@dataclass(frozen=True)
class GeneratorSpec:
    """One generator of the catalog: which backend loads which model with which parameters."""

    id: str
    backend: str
    model: str  # hub id, local path (or "tiny:<arch>" before `tiny.resolve`)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.params) - KNOWN_PARAMS
        if unknown:
            raise ValueError(
                f"generator {self.id!r}: unknown param(s) {sorted(unknown)}; known: {', '.join(sorted(KNOWN_PARAMS))}"
            )


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(device: str, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # bf16 halves memory on GPU without fp16's overflow problems; CPU kernels want float32
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _dtype_kwarg() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (0.42); older releases in our range need the old name."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present since the rename)
    except ImportError:
        return "torch_dtype"
    return "dtype"


def folder_fingerprint(folder: str | Path, sample_bytes: int = 1 << 20) -> str:
    """Stable fingerprint of a model folder: configs/tokenizers in full, weights by sampled content.

    Small files are hashed completely; big weight files by size plus their first, middle and last
    `sample_bytes` (a safetensors header lists every tensor, and any retrained weight changes the
    sampled bytes with overwhelming probability) so fingerprinting a 20 GB model stays cheap.
    Modification times are ignored, so a copied folder keeps its fingerprint.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue  # .cache, .gitattributes, lock files: not part of the model
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode("utf-8"))
        with path.open("rb") as handle:
            if size <= 4 * sample_bytes:
                digest.update(handle.read())
            else:
                for offset in (0, size // 2, size - sample_bytes):
                    handle.seek(offset)
                    digest.update(handle.read(sample_bytes))
    return digest.hexdigest()[:16]


class DiffusersGenerator:
    """Any diffusers text-to-image pipeline, by hub id or local folder.

    Each image gets its own CPU `torch.Generator` seeded with its seed, so pixels depend on
    (model, prompt, seed, params) only -- not on the batch an image happened to be in, nor on the
    device the initial noise is drawn for (diffusers draws CPU-generator noise on the CPU).
    """

    # A real sampler: it renders any prompt and can decode its latents early (see `backends.can_sample`).
    can_sample = True

    def __init__(
        self,
        spec: GeneratorSpec,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        local_files_only: bool = False,
    ) -> None:
        from diffusers import DiffusionPipeline

        if spec.model.startswith(TINY_PREFIX):
            raise ValueError(
                f"generator {spec.id!r}: model {spec.model!r} is a tiny reference; resolve it to a folder "
                "with eliq_pipeline.tiny.resolve() first"
            )
        self.spec = spec
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(self.device, dtype if dtype is not None else spec.params.get("dtype"))
        self.local_files_only = local_files_only or Path(spec.model).is_dir()
        load_kwargs: dict[str, Any] = {_dtype_kwarg(): self.dtype, "local_files_only": self.local_files_only}
        if spec.params.get("revision"):
            load_kwargs["revision"] = spec.params["revision"]
        try:
            index = DiffusionPipeline.load_config(
                spec.model, local_files_only=self.local_files_only, revision=load_kwargs.get("revision")
            )
            if "safety_checker" in index:
                # SD 1.x's NSFW filter blanks false positives to black: a black "negative" teaches
                # nothing, and skipping it saves loading a 1.2 GB CLIP model
                load_kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = DiffusionPipeline.from_pretrained(spec.model, **load_kwargs)
        except Exception as exc:  # many loader error types; the caller needs the generator and model named
            raise RuntimeError(f"generator {spec.id!r}: cannot load {spec.model!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        if spec.params.get("offload") and self.device.startswith("cuda"):
            # models bigger than the card (e.g. Qwen-Image + its 7B text encoder on a 48 GB GPU)
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe = pipe.to(self.device)
        self.pipeline = pipe
        self._call_params = set(inspect.signature(type(pipe).__call__).parameters)
        self._revision: str | None = None

    @property
    def default_batch_size(self) -> int:
        if "batch_size" in self.spec.params:
            return max(1, int(self.spec.params["batch_size"]))
        # CPU gains nothing from batching and a batch costs more memory; GPUs do gain
        return 4 if self.device.startswith("cuda") else 1

    def _call_kwargs(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        p = {**self.spec.params, **(overrides or {})}
        wanted = {
            "num_inference_steps": p.get("steps"),
            "guidance_scale": p.get("guidance"),
            "height": p.get("height"),
            "width": p.get("width"),
            "negative_prompt": p.get("negative_prompt"),
            "max_sequence_length": p.get("max_sequence_length"),
        }
        # drop what this pipeline class does not take (e.g. SD 1.x has no max_sequence_length)
        kwargs = {k: v for k, v in wanted.items() if v is not None and k in self._call_params}
        kwargs.update(p.get("call_kwargs") or {})
        return kwargs

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        stop_step: int | None = None,
        batch_size: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[Image.Image]:
        """One RGB image per (prompt, seed).

        `params` (same keys as `GeneratorSpec.params`, e.g. steps/height/width from the profile)
        override the spec's params for this call.

        `stop_step=k` decodes the latents after k of the scheduled denoising steps (premature
        decoding, an AI-specific technical negative): the remaining steps are skipped through the
        pipeline's own interrupt flag, so packing, scaling and VAE decoding stay the pipeline's.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        unknown = set(params or {}) - KNOWN_PARAMS
        if unknown:
            raise ValueError(f"generator {self.spec.id!r}: unknown param(s) {sorted(unknown)}")
        kwargs = self._call_kwargs(params)
        steps = int(kwargs.get("num_inference_steps") or inspect.signature(type(self.pipeline).__call__)
                    .parameters["num_inference_steps"].default)
        if stop_step is not None:
            if not 1 <= stop_step < steps:
                raise ValueError(f"stop_step must be in [1, {steps - 1}] for {steps} steps, got {stop_step}")
            kwargs["callback_on_step_end"] = _interrupt_after(stop_step)
        size = batch_size or self.default_batch_size
        images: list[Image.Image] = []
        for start in range(0, len(prompts), size):
            chunk_prompts = list(prompts[start : start + size])
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + size]]
            with torch.inference_mode():
                out = self.pipeline(
                    prompt=chunk_prompts, generator=generators, output_type="pil", num_images_per_prompt=1, **kwargs
                )
            images.extend(to_rgb(image) for image in out.images)
        return images

    def model_revision(self) -> str:
        """Fingerprint of the exact weights, for cache keys.

        Local folder: `folder_fingerprint`. Hub id: the commit hash of the snapshot actually loaded.
        """
        if self._revision is None:
            self._revision = model_revision(self.spec.model, self.spec.params.get("revision"))
        return self._revision

    def close(self) -> None:
        """Release the pipeline (GPU memory) before loading the next generator."""
        self.pipeline = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _interrupt_after(stop_step: int) -> Callable[..., dict[str, Any]]:
    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if step_index + 1 >= stop_step:
            pipe._interrupt = True  # diffusers' documented way to stop early; reset by the next call
        return {}

    return callback


def model_revision(model: str, revision: str | None = None) -> str:
    """Revision fingerprint of a model reference (local folder or hub id)."""
    path = Path(model)
    if path.is_dir():
        # a hub snapshot folder is named by its commit; anything else is fingerprinted by content
        if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
            return f"hf:{path.name}"
        return f"dir:{folder_fingerprint(path)}"
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=["*.json"])
        return f"hf:{Path(folder).name}"
    except Exception:
        # not in the local cache yet: ask the hub which commit the revision points to
        from huggingface_hub import HfApi

        return f"hf:{HfApi().model_info(model, revision=revision).sha}"
