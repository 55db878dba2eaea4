"""Image editors for the conventional aesthetic negatives (paper 3.2.3).

The paper edits high-quality images with an instruction-driven editor (Qwen-Image-Edit) so that
composition and colour get worse while the semantic content stays. Every editor here has one
signature,

    editor.edit(image, instruction, seed) -> (edited RGB image of the input's size, params)

deterministic for (image, instruction, seed), with `params` recording what was done (instruction
included) for the negative manifest, and `editor.model_revision()` for cache keys.

  * `offline`: deterministic PIL operations; each of `EDIT_INSTRUCTIONS` maps to the matching
    operation(s) of `degradations.offline_aesthetic_edit` (the tiny profile and CPU-only runs);
  * `diffusers`: any diffusers pipeline that takes an image, by hub id or local folder.
    Instruction-driven pipelines (QwenImageEditPipeline, FluxKontextPipeline, ...) get the
    instruction as their prompt; plain image-to-image pipelines (StableDiffusionImg2ImgPipeline)
    have no instruction interface and get it as the prompt with a configurable `strength`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from eliq_pipeline.supervision.degradations import AESTHETIC_OPS, offline_aesthetic_edit
from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.core.registry import Registry
from eliq_pipeline.supervision.generators import GeneratorSpec

EDITORS: Registry[type] = Registry("editor")

OFFLINE_EDITOR_VERSION = "offline-edit-1"  # bump when an instruction's operations change
DEFAULT_STRENGTH = 0.6  # img2img: enough noise to change tones and layout, little enough to keep the scene
# Instruction-following editors otherwise tend to redraw the subject; the paper keeps content fixed.
DEFAULT_TEMPLATE = "{instruction}. Keep the same subject, objects and scene."

# instruction -> offline operations (specs for offline_aesthetic_edit; missing params are drawn
# from the seed), geometry before colour as in AESTHETIC_OPS
OFFLINE_OPERATIONS: dict[str, list[dict[str, Any]]] = {
    "shift the subject to the edge of the frame": [{"op": "off_centre_crop"}],
    "crop the scene awkwardly so the subject is cut off at a corner": [{"op": "off_centre_crop", "scale": 0.55}],
    "tilt the horizon": [{"op": "tilt"}],
    "tilt the camera and push the subject off-centre": [{"op": "off_centre_crop"}, {"op": "tilt"}],
    "wash out the colours": [{"op": "desaturate"}],
    "add a sickly green colour cast": [{"op": "colour_cast", "tint": "green"}],
    "give the image a muddy yellow tint": [{"op": "colour_cast", "tint": "yellow"}],
    "add an unnatural magenta colour cast": [{"op": "colour_cast", "tint": "magenta"}],
    "crush the contrast": [{"op": "contrast_crush"}],
    "make the lighting flat and dull and mute the colours": [{"op": "contrast_crush"}, {"op": "desaturate"}],
}
EDIT_INSTRUCTIONS: list[str] = list(OFFLINE_OPERATIONS)


class Editor(Protocol):
    def edit(self, image: Image.Image, instruction: str, seed: int) -> tuple[Image.Image, dict[str, Any]]: ...
    def model_revision(self) -> str: ...


def choose_instruction(seed: int, instructions: list[str] | None = None) -> str:
    """A deterministic instruction for a seed (hash-based, so adding instructions is the only
    thing that reshuffles the choice)."""
    options = list(instructions or EDIT_INSTRUCTIONS)
    if not options:
        raise ValueError("no edit instructions to choose from")
    digest = hashlib.sha256(str(int(seed)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


@EDITORS.register("offline")
class OfflineEditor:
    """Deterministic PIL stand-in for an instruction editor: one instruction, its operations."""

    def __init__(self, operations: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.operations = dict(operations or OFFLINE_OPERATIONS)
        for instruction, ops in self.operations.items():
            bad = [o.get("op") for o in ops if o.get("op") not in AESTHETIC_OPS]
            if not ops or bad:
                raise ValueError(f"instruction {instruction!r}: unknown or no operations {bad}")

    @property
    def instructions(self) -> list[str]:
        return list(self.operations)

    def edit(self, image: Image.Image, instruction: str, seed: int) -> tuple[Image.Image, dict[str, Any]]:
        if instruction not in self.operations:
            raise ValueError(
                f"the offline editor cannot follow {instruction!r}; known instructions: {'; '.join(self.operations)}"
            )
        source = to_rgb(image)
        rng = np.random.default_rng(int(seed))
        out, used = offline_aesthetic_edit(source, rng, ops=[dict(o) for o in self.operations[instruction]])
        return out, {"editor": "offline", "instruction": instruction, "seed": int(seed), **used}

    def model_revision(self) -> str:
        payload = json.dumps(self.operations, sort_keys=True).encode("utf-8")
        return f"{OFFLINE_EDITOR_VERSION}:{hashlib.sha256(payload).hexdigest()[:12]}"

    def close(self) -> None:
        """Nothing to release."""


@EDITORS.register("diffusers")
class DiffusersEditor:
    """Instruction-driven editing with any image-conditioned diffusers pipeline.

    Loaded through the diffusers generator backend (same dtype, revision, offload and
    safety-checker handling), from a catalog entry: `spec.model` is a hub id or local folder and
    `spec.params` the usual generator params (steps, guidance, negative_prompt, dtype, revision,
    offload, call_kwargs). `strength` (img2img only) comes from the kwarg, else
    `call_kwargs["strength"]`, else DEFAULT_STRENGTH. height/width params are ignored: the output
    always has the input's size (resized back when the pipeline rounds or rescales it).
    """

    def __init__(
        self,
        spec: GeneratorSpec,
        device: str = "cpu",
        *,
        strength: float | None = None,
        template: str = DEFAULT_TEMPLATE,
        dtype: str | torch.dtype | None = None,
        local_files_only: bool = False,
    ) -> None:
        from eliq_pipeline.supervision.generators import DiffusersGenerator

        self.spec = spec
        # reuse the generator backend's loader; it loads whatever pipeline class the folder names
        self._loader = DiffusersGenerator(spec, device=device, dtype=dtype, local_files_only=local_files_only)
        self.pipeline = self._loader.pipeline
        call_params = set(inspect.signature(type(self.pipeline).__call__).parameters)
        if "image" not in call_params:
            raise ValueError(
                f"editor {spec.id!r}: {type(self.pipeline).__name__} takes no input image; "
                "use an image-to-image or image-editing pipeline"
            )
        if "{instruction}" not in template:
            raise ValueError(f"template {template!r} must contain '{{instruction}}'")
        self.template = template
        self.uses_strength = "strength" in call_params
        extra = dict(spec.params.get("call_kwargs") or {})
        configured = extra.pop("strength", DEFAULT_STRENGTH)  # never passed twice to the call
        self.strength = float(strength if strength is not None else configured)
        if self.uses_strength and not 0.0 < self.strength <= 1.0:
            raise ValueError(f"editor {spec.id!r}: strength must be in (0, 1], got {self.strength}")
        p = spec.params
        wanted = {
            "num_inference_steps": p.get("steps"),
            "guidance_scale": p.get("guidance"),
            "negative_prompt": p.get("negative_prompt"),
            "max_sequence_length": p.get("max_sequence_length"),
        }
        self.call_kwargs = {k: v for k, v in wanted.items() if v is not None and k in call_params}
        self.call_kwargs.update(extra)
        if self.uses_strength:
            steps = int(self.call_kwargs.get("num_inference_steps") or 50)
            if int(steps * self.strength) < 1:
                raise ValueError(f"editor {spec.id!r}: {steps} steps x strength {self.strength} runs no denoising step")
            self.call_kwargs["strength"] = self.strength

    @classmethod
    def from_model(cls, model: str, device: str = "cpu", **params: Any) -> "DiffusersEditor":
        """Convenience: an editor from a hub id or folder and generator params."""
        return cls(GeneratorSpec(id="editor", backend="diffusers", model=model, params=params), device=device)

    def edit(self, image: Image.Image, instruction: str, seed: int) -> tuple[Image.Image, dict[str, Any]]:
        if not instruction.strip():
            raise ValueError("empty edit instruction")
        source = to_rgb(image)
        prompt = self.template.format(instruction=instruction.strip())
        # a CPU generator per call: pixels depend on (image, instruction, seed) only, as for generation
        generator = torch.Generator("cpu").manual_seed(int(seed))
        with torch.inference_mode():
            out = self.pipeline(prompt=prompt, image=source, generator=generator, output_type="pil",
                                num_images_per_prompt=1, **self.call_kwargs)
        edited = to_rgb(out.images[0])
        params: dict[str, Any] = {
            "editor": "diffusers",
            "model": self.spec.id,
            "pipeline": type(self.pipeline).__name__,
            "instruction": instruction,
            "prompt": prompt,
            "seed": int(seed),
            **{k: v for k, v in self.call_kwargs.items() if isinstance(v, (int, float, str, bool))},
            "output_resized_from": None,
        }
        if edited.size != source.size:
            # pipelines round to their latent grid or render at their own resolution
            params["output_resized_from"] = list(edited.size)
            edited = edited.resize(source.size, Image.LANCZOS)
        return edited, params

    def model_revision(self) -> str:
        return self._loader.model_revision()

    def close(self) -> None:
        self._loader.close()
        self.pipeline = None  # type: ignore[assignment]


@dataclass(frozen=True)
class EditorFactory:
    """Loads a diffusers editor from its spec: picklable, so a Ray worker loads it (see
    core/compute.py). ``device`` may be "auto" (resolved where it is loaded)."""

    spec: GeneratorSpec
    device: str = "auto"

    def __call__(self) -> "DiffusersEditor":
        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return load_editor("diffusers", self.spec, device=device)

    def revision(self) -> str:
        """What `DiffusersEditor.model_revision` returns, without loading the pipeline."""
        from eliq_pipeline.supervision.generators import model_revision

        return model_revision(self.spec.model, self.spec.params.get("revision"))


def load_editor(name: str, spec: GeneratorSpec | None = None, device: str = "cpu", **kwargs: Any) -> Any:
    """`load_editor("offline")` or `load_editor("diffusers", spec, device)`."""
    cls = EDITORS.get(name)
    if name == "offline":
        return cls(**kwargs)
    if spec is None:
        raise ValueError(f"editor {name!r} needs a GeneratorSpec naming its model")
    return cls(spec, device=device, **kwargs)
