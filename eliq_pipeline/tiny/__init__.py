"""Toy-sized models for the tiny profile, behind one resolver.

Every toy model is a real architecture at toy size (diffusers pipelines, an img2img editor, a
Qwen3-VL backbone), randomly initialised from configs in code: CPU-fast and offline. A model
reference `"tiny:<arch>"` (in `eras.yaml` or a profile) becomes, through `resolve`, a folder built
once under the models directory, which the production loaders then load like any local model.
"""

from __future__ import annotations

from pathlib import Path

TINY_PREFIX = "tiny:"
TEXT_TO_IMAGE_ARCHS = ("sd", "flux", "sd3")  # diffusers text-to-image pipelines (generators)
EDITOR_ARCH = "sd-img2img"  # a diffusers image-to-image pipeline (editors)
BACKBONE_ARCH = "qwen3-vl"  # the MLLM backbone
# Backbone sizes by name (configs in tiny/backbone.py BACKBONE_SPECS): the toy one, the one the
# `cpu` profile trains on 256 px real images, and that one with DCT patch filters (attempt P).
BACKBONE_ARCHS = (BACKBONE_ARCH, "qwen3-vl-256", "qwen3-vl-256-dct")


def resolve(ref: str, models_dir: str | Path, init_seed: int = 0) -> str:
    """`"tiny:<arch>"` -> the folder of that toy model under `models_dir`, built on first use (the
    build is atomic, so a crash never leaves a folder that later loads); any other reference (hub
    id, local path) is returned unchanged.

    Pipelines live in `models_dir/generators/<arch>-seed<init_seed>`, the backbone in
    `models_dir/tiny-qwen3-vl-<init_seed>`; `init_seed` picks the random network.
    """
    if not ref.startswith(TINY_PREFIX):
        return ref
    arch, seed, models_dir = ref[len(TINY_PREFIX):], int(init_seed), Path(models_dir)
    if arch in BACKBONE_ARCHS:
        from eliq_pipeline.core.atomic import staged_dir
        from eliq_pipeline.tiny.backbone import BACKBONE_SPECS, build_tiny_backbone

        folder = models_dir / f"tiny-{arch}-{seed}"
        if not (folder / "_COMPLETE").exists():
            with staged_dir(folder) as staging:  # publishes atomically onto the (empty) staging folder
                build_tiny_backbone(staging, seed=seed, spec=BACKBONE_SPECS[arch])
                (staging / "_COMPLETE").write_text("ok")
        return str(folder)
    if arch not in (*TEXT_TO_IMAGE_ARCHS, EDITOR_ARCH):
        known = ", ".join(TINY_PREFIX + a for a in (*TEXT_TO_IMAGE_ARCHS, EDITOR_ARCH, *BACKBONE_ARCHS))
        raise ValueError(f"unknown tiny architecture {ref!r}; known: {known}")
    from eliq_pipeline.tiny.diffusion import build_tiny_editor, build_tiny_pipeline

    folder = models_dir / "generators" / f"{arch}-seed{seed}"
    if not (folder / "model_index.json").is_file():
        if arch == EDITOR_ARCH:
            build_tiny_editor(folder, seed=seed)
        else:
            build_tiny_pipeline(arch, folder, seed=seed)
    return str(folder)
