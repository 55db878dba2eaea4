"""A toy Qwen3-VL backbone: the real architecture at a few hundred thousand weights, built from a
config in code with its own tokenizer and processor, loaded by the production `load_backbone`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import torch

from eliq_pipeline.core.atomic import staged_dir
from eliq_pipeline.critic.backbone import INSTRUCTIONS, LABELS, make_processor

# Qwen-style chat template for the tiny tokenizer (production checkpoints ship their own): user
# turns hold an image placeholder and text, and the generation prompt opens the assistant turn.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Small fixed corpus for the tiny BPE: the instructions plus common prompt words, so instructions
# and AGIQA-style prompts become short token sequences (sequence length is the CPU cost driver).
_TINY_CORPUS_WORDS = (
    "a an the of and with in on at by for to from is are this that image photo picture painting "
    "drawing portrait landscape city street house room forest mountain river sea sky sun moon "
    "night day light dark red green blue yellow orange purple black white pink brown gold silver "
    "man woman girl boy child people dog cat bird horse fish car flower tree tower castle robot "
    "dragon style art digital oil watercolor anime cartoon realistic detailed beautiful cute old "
    "new small big tall long short young happy sad fantasy futuristic cyberpunk baroque abstract "
    "sketch render unreal engine highly 4k 8k hd trending artstation background standing sitting "
    "wearing holding playing flying walking under over near inside outside glass water fire ice "
    "snow rain cloud stone wood metal"
)


PATCH_FILTERS = ("random_highpass", "dct")


@dataclass(frozen=True)
class TinyBackboneSpec:
    """Toy Qwen3-VL sizes: real architecture, a few hundred thousand weights, CPU-fast."""

    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_head_dim: int = 16
    text_intermediate_size: int = 128
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    num_position_embeddings: int = 64  # an 8x8 learned grid, interpolated to each image's grid
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    # One LLM image token covers (patch * merge)^2 = 32x32 pixels: 16..36 image tokens per image.
    min_pixels: int = 16 * 32 * 32
    max_pixels: int = 36 * 32 * 32
    vocab_size: int = 1024
    # Tiny-only init: this fraction of patch-embedding filters are high-pass (local differences of
    # a random kernel), scaled by the gain. A pretrained vision encoder has such edge/texture
    # detectors; a random one barely does, and then cannot see noise or JPEG blocking at all.
    highpass_patch_fraction: float = 0.5
    highpass_gain: float = 4.0
    # "dct": the patch embedding is instead a fixed 2-D DCT filter bank (same for every seed; the
    # rest of the network stays random): frequency bands are what blur, downscaling and blocking
    # change, and a fixed bank takes the patch filters out of the seed's hands.
    patch_filters: str = "random_highpass"

    def __post_init__(self) -> None:
        if self.patch_filters not in PATCH_FILTERS:
            raise ValueError(f"TinyBackboneSpec.patch_filters must be one of {PATCH_FILTERS}, got {self.patch_filters!r}")


# 256 px real images (the `cpu` profile): one LLM token per 32x32 pixels gives 64 image tokens at
# 256x256 (min = max pixels: every image, AGIQA-3K's 512-1024 px ones too, is resized to about the
# pixel count the critic trained on, keeping its aspect ratio); widths 128 with a 4-block vision tower (16x16 patches, a 16x16
# learned position grid). Sizes chosen by held-out tuple accuracy and 2-core step time, see
# profiles.CPU.
CPU_256_SPEC = TinyBackboneSpec(
    text_hidden_size=128, text_head_dim=32, text_intermediate_size=256,
    vision_depth=4, vision_hidden_size=128, vision_intermediate_size=256,
    num_position_embeddings=256, min_pixels=64 * 32 * 32, max_pixels=64 * 32 * 32,
)
BACKBONE_SPECS = {"qwen3-vl": TinyBackboneSpec(), "qwen3-vl-256": CPU_256_SPEC,
                  "qwen3-vl-256-dct": replace(CPU_256_SPEC, patch_filters="dct")}


def _tiny_tokenizer(spec: TinyBackboneSpec) -> Any:
    """Byte-level BPE trained offline on a fixed corpus, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [instruction.replace("{prompt}", "") for instruction in INSTRUCTIONS.values()]
    corpus += [_TINY_CORPUS_WORDS, "user assistant system low high"]
    tokenizer.train_from_iterator(corpus * 4, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
    )
    # The answer must be exactly one token; add whole-word tokens if the merges did not get there.
    missing = [word for word in LABELS if len(fast.encode(word, add_special_tokens=False)) != 1]
    if missing:
        fast.add_tokens(missing)
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def _tiny_config(spec: TinyBackboneSpec, tokenizer: Any) -> Any:
    from transformers import Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TINY_SPECIAL_TOKENS}
    half = spec.text_head_dim // 2
    # M-RoPE splits the rotary half-dimension between (time, height, width); sections sum to half.
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden_size,
        "intermediate_size": spec.text_intermediate_size,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "head_dim": spec.text_head_dim,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section,
            "mrope_interleaved": True,
        },
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "use_cache": False,
    }
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "patch_size": spec.patch_size,
        "spatial_merge_size": spec.spatial_merge_size,
        "temporal_patch_size": spec.temporal_patch_size,
        "out_hidden_size": spec.text_hidden_size,
        "num_position_embeddings": spec.num_position_embeddings,
        "deepstack_visual_indexes": list(spec.deepstack_visual_indexes),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _tiny_image_processor(spec: TinyBackboneSpec) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    # Saved as the PIL class; AutoImageProcessor maps it to the torchvision backend when present.
    return Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
    )


@torch.no_grad()
def _highpass_patch_filters(model: Any, fraction: float, gain: float) -> None:
    """Replace a fraction of patch-embedding filters by horizontal + vertical differences of random
    kernels: they ignore smooth content and respond to noise, blocking and fine texture."""
    weight = model.model.visual.patch_embed.proj.weight  # [out, channels, time, patch, patch]
    count = int(weight.shape[0] * fraction)
    if count == 0:
        return
    kernel = torch.randn_like(weight[:count])
    highpass = (kernel - torch.roll(kernel, 1, dims=-1)) + (kernel - torch.roll(kernel, 1, dims=-2))
    weight[:count] = highpass * (gain * weight.std() / highpass.std())


# luminance and two opponent-colour directions in RGB, and how many DCT filters each gets
_DCT_COLOUR_SPLIT = ((torch.tensor([1.0, 1.0, 1.0]) / 3**0.5, 0.75),
                     (torch.tensor([1.0, -1.0, 0.0]) / 2**0.5, 0.125),
                     (torch.tensor([1.0, 1.0, -2.0]) / 6**0.5, 0.125))


@torch.no_grad()
def _dct_patch_filters(model: Any, spec: TinyBackboneSpec) -> None:
    """Set every patch-embedding filter to a 2-D DCT basis function of one colour direction: the
    lowest frequencies (by u + v) of luminance (3/4 of the filters) and of two opponent colours,
    each scaled by 1 + its radial frequency so that natural images' 1/f spectrum reaches the
    network whitened (fine detail as loud as coarse), the overall scale the one the random +
    high-pass init has on average (not the seed's draw, so the bank is the same for every seed).
    Same on both frames of a temporal patch (an image is one repeated frame)."""
    weight = model.model.visual.patch_embed.proj.weight  # [out, channels, time, patch, patch]
    out, channels, frames, patch, _ = weight.shape
    # orthonormal 1-D DCT-II basis, row k = frequency k (the transform of the identity)
    basis = torch.from_numpy(scipy.fft.dct(np.eye(patch), norm="ortho", axis=0))
    order = sorted(((u, v) for u in range(patch) for v in range(patch)), key=lambda uv: (uv[0] + uv[1], uv[0]))
    counts = [int(out * share) for _, share in _DCT_COLOUR_SPLIT]
    counts[0] += out - sum(counts)
    filters = []
    for (colour, _), count in zip(_DCT_COLOUR_SPLIT, counts):
        for u, v in order[:count]:
            spatial = torch.outer(basis[u], basis[v]) * (1 + (u * u + v * v) ** 0.5)
            filters.append(colour.double()[:, None, None, None] * spatial[None, None] / frames**0.5)
    bank = torch.stack(filters).expand(out, channels, frames, patch, patch)
    f, gain = spec.highpass_patch_fraction, spec.highpass_gain
    scale = model.config.vision_config.initializer_range * (1 - f + f * gain**2) ** 0.5
    weight.copy_((bank * (scale / bank.std())).to(weight.dtype))
    model.model.visual.patch_embed.proj.bias.zero_()


def build_tiny_backbone(out_dir: Path, seed: int = 0, spec: TinyBackboneSpec | None = None) -> Path:
    """Write a randomly initialised toy Qwen3-VL (model, tokenizer, processor) to ``out_dir``.

    Same seed and spec give bit-identical weights, so tiny runs are reproducible cache keys.
    """
    from transformers import Qwen3VLForConditionalGeneration

    spec = spec or TinyBackboneSpec()
    out_dir = Path(out_dir)
    tokenizer = _tiny_tokenizer(spec)
    config = _tiny_config(spec, tokenizer)
    # fork_rng: seeding for determinism must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
        if spec.patch_filters == "dct":
            _dct_patch_filters(model, spec)
        else:
            _highpass_patch_filters(model, spec.highpass_patch_fraction, spec.highpass_gain)
    model.eval()
    processor = make_processor(_tiny_image_processor(spec), tokenizer, TINY_CHAT_TEMPLATE)

    with staged_dir(out_dir) as staging:  # a crash never leaves a half-written backbone
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "eliq_tiny_spec.json").write_text(
            json.dumps({"seed": seed, **asdict(spec)}, indent=2, sort_keys=True)
        )
    return out_dir
