"""The generator backend registry (paper 3.2.2): `diffusers` samples images from a pipeline,
`import` serves images made elsewhere. A new backend is a class registered here."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from eliq_pipeline.core.registry import Registry
from eliq_pipeline.supervision.generators import DiffusersGenerator, GeneratorSpec
from eliq_pipeline.supervision.generators import model_revision as generator_model_revision
from eliq_pipeline.supervision.import_backend import ImportGenerator

GENERATOR_BACKENDS: Registry[type] = Registry("generator backend")
GENERATOR_BACKENDS.register("diffusers")(DiffusersGenerator)
GENERATOR_BACKENDS.register("import")(ImportGenerator)


def can_sample(backend: str) -> bool:
    """Whether generators of a backend have their own sampler: render any prompt, decode latents
    early. AI-specific negatives made from the positive's generator (degraded / appearance /
    variant prompts, premature decoding) need one; an `import` source serves fixed images only.

    Every backend class declares the class attribute `can_sample`; checked on the class, so no
    model is loaded to find out.
    """
    return bool(GENERATOR_BACKENDS.get(backend).can_sample)


def load_generator(spec: GeneratorSpec, device: str = "cpu", **kwargs: Any) -> Any:
    """Instantiate the backend named by the spec."""
    return GENERATOR_BACKENDS.get(spec.backend)(spec, device=device, **kwargs)


@dataclass
class GeneratorFactory:
    """Loads generators by id from their specs: what `generate_images` calls. Picklable, so a
    Ray worker loads the same generator from the same spec (see core/compute.py).

    ``device`` may be "auto": resolved where the generator is loaded (a CUDA worker, a CPU
    driver). `s3://` import sources get a boto3 client on ``s3_endpoint_url``.
    ``revision(gid)`` answers without loading a sampler, so a driver can plan (cache keys) for a
    20B generator it never loads; an image source (`import`: a manifest, cheap) is loaded.
    Generators loaded in this process are kept in ``loaded`` (not pickled).
    """

    specs: dict[str, GeneratorSpec]
    device: str = "auto"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    loaded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "loaded": {}}

    def __call__(self, gid: str) -> Any:
        if gid in self.loaded:  # each generator is loaded once per process
            return self.loaded[gid]
        spec = self.specs[gid]
        extra: dict[str, Any] = {}
        if spec.model.startswith("s3://"):  # an s3:// import source is read with the store's endpoint
            import boto3

            extra["client"] = boto3.client("s3", endpoint_url=self.s3_endpoint_url or None, region_name=self.s3_region)
        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        generator = load_generator(spec, device=device, **extra)
        self.loaded[gid] = generator
        return generator

    def is_source(self, gid: str) -> bool:
        """Whether the generator serves fixed images (no sampler): planned by loading it."""
        return not can_sample(self.specs[gid].backend)

    def revision(self, gid: str) -> str | None:
        """The weights' fingerprint for cache keys, without loading a sampler; None for an image
        source (its revision comes from its loaded manifest)."""
        if self.is_source(gid):
            return None
        spec = self.specs[gid]
        return generator_model_revision(spec.model, spec.params.get("revision"))

    def for_generator(self, gid: str) -> Callable[[], Any]:
        """A no-argument factory of one generator (what a compute worker loads once)."""
        return partial(self, gid)
