"""The generator backend registry (paper 3.2.2): `diffusers` samples images from a pipeline,
`import` serves images made elsewhere. A new backend is a class registered here."""

from __future__ import annotations

from typing import Any

from eliq_pipeline.core.registry import Registry
from eliq_pipeline.supervision.generators import DiffusersGenerator, GeneratorSpec
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
