"""Toy diffusers pipelines: the real classes (SD 1.x, FLUX.1, SD3, SD img2img) at toy size,
randomly initialised from configs in code, so the tiny profile runs the production loaders offline."""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from eliq_pipeline.core.atomic import staged_dir
from eliq_pipeline.tiny import TEXT_TO_IMAGE_ARCHS
from eliq_pipeline.tiny.tokenizers import build_tiny_clip_tokenizer, build_tiny_t5_tokenizer


def _tiny_clip_config(tokenizer: Any, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_t5(tokenizer: Any, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _tiny_vae(latent_channels: int, shift_factor: float | None, scaling_factor: float) -> Any:
    """Toy AutoencoderKL (scale factor 4) whose decoder is initialised as a smooth upsampler.

    A randomly initialised decoder emits near-constant grey or high-frequency speckle, which would
    make clean positives look like their JPEG/noise-degraded copies. Tiny profile only: residual
    branches start at zero (blocks are identities), each upsampler conv is a per-channel blur, and
    the in/out convs are random channel mixes, so a decoded image is a smooth, colourful rendering
    of the latent (prompt- and seed-dependent blobs) -- clean at pixel level.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )
    decoder = vae.decoder
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    with torch.no_grad():
        for module in decoder.modules():
            name = type(module).__name__
            if name == "ResnetBlock2D":
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
            elif name == "Attention":
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
            elif name == "Upsample2D":
                conv = module.conv
                conv.weight.zero_()
                conv.bias.zero_()
                for c in range(conv.out_channels):
                    conv.weight[c, c] = blur
        # latent -> features: centred 3x3 blur of a random channel mix keeps neighbouring latents coherent
        mix = torch.randn(decoder.conv_in.out_channels, latent_channels) / latent_channels**0.5
        decoder.conv_in.weight.copy_(mix[:, :, None, None] * blur[None, None])
        decoder.conv_in.bias.zero_()
        out_mix = torch.randn(3, decoder.conv_out.in_channels) * 0.2
        decoder.conv_out.weight.copy_(out_mix[:, :, None, None] * blur[None, None])
        decoder.conv_out.bias.zero_()
    return vae


def _tiny_sd_components(seed: int) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    torch.manual_seed(seed + 2)
    vae = _tiny_vae(latent_channels=4, shift_factor=None, scaling_factor=0.18215)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    return {
        "cls": StableDiffusionPipeline,
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _tiny_flux_components(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer_2 = build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,  # like FLUX.1-dev (guidance-distilled)
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    torch.manual_seed(seed + 2)
    text_encoder_2 = _tiny_t5(tokenizer_2, d_model=32)
    torch.manual_seed(seed + 3)
    vae = _tiny_vae(latent_channels=4, shift_factor=0.0609, scaling_factor=1.5035)
    return {
        "cls": FluxPipeline,
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def _tiny_sd3_components(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer_3 = build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,  # = T5 width = the two CLIP widths concatenated
        pooled_projection_dim=64,  # the two CLIP projections concatenated
        out_channels=4,
        pos_embed_max_size=32,
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_3 = _tiny_t5(tokenizer_3, d_model=64)
    torch.manual_seed(seed + 4)
    vae = _tiny_vae(latent_channels=4, shift_factor=0.0609, scaling_factor=1.5035)
    return {
        "cls": StableDiffusion3Pipeline,
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": build_tiny_clip_tokenizer(),
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "image_encoder": None,
        "feature_extractor": None,
    }


_TINY_BUILDERS: dict[str, Callable[[int], dict[str, Any]]] = {
    "sd": _tiny_sd_components,
    "flux": _tiny_flux_components,
    "sd3": _tiny_sd3_components,
}


def build_tiny_pipeline(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a randomly initialised toy pipeline of `arch` and `save_pretrained` it to `out_dir`.

    Deterministic for (arch, seed, library versions). Written to a temporary sibling folder and
    renamed into place, so a crash never leaves a half-written model that would later load.
    """
    if arch not in _TINY_BUILDERS:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(TEXT_TO_IMAGE_ARCHS)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        components = _TINY_BUILDERS[arch](seed)
    cls = components.pop("cls")
    accepted = set(inspect.signature(cls.__init__).parameters)
    pipe = cls(**{k: v for k, v in components.items() if k in accepted})
    with staged_dir(out_dir) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "tiny_pipeline.json").write_text(json.dumps({"arch": arch, "seed": seed}, sort_keys=True) + "\n")
    return out_dir


def build_tiny_editor(out_dir: Path, seed: int = 0) -> Path:
    """A toy StableDiffusionImg2ImgPipeline saved to `out_dir`, assembled from the components of
    `build_tiny_pipeline("sd", ...)` (same weights for the same seed). Written to a temporary
    sibling and renamed into place, so a crash never leaves a half-written editor."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent) as scratch, \
            staged_dir(out_dir) as staging:
        text_to_image = build_tiny_pipeline("sd", Path(scratch) / "t2i", seed=seed)
        base = StableDiffusionPipeline.from_pretrained(text_to_image, local_files_only=True)
        components = {**base.components, "safety_checker": None, "feature_extractor": None}
        editor = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
        editor.save_pretrained(staging, safe_serialization=True)
        marker = json.dumps({"arch": "sd-img2img", "seed": seed}, sort_keys=True)
        (staging / "tiny_pipeline.json").write_text(marker + "\n")
    return out_dir
