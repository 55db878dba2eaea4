"""Text-to-image generation backends (paper 3.2.2) and toy-sized diffusers pipelines.

The `diffusers` backend is the production loader: any pipeline by hub id or local path through
`DiffusionPipeline.from_pretrained` (FLUX.1-dev, SD3.5-Large, Qwen-Image, SD 1.x ...). The tiny
profile runs the very same loader on folders written by `build_tiny_pipeline`, which builds the
real pipeline classes at toy size from configs in code, so no test ever downloads anything.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from .images import to_rgb
from .registry import Registry
from .atomic import staged_dir

GENERATOR_BACKENDS: Registry[type] = Registry("generator backend")

TINY_PREFIX = "tiny:"
TINY_ARCHS = ("sd", "flux", "sd3")

# Params a generator entry may carry (eras.yaml `params`, merged over the profile's defaults).
KNOWN_PARAMS = frozenset(
    {
        "steps",  # num_inference_steps
        "guidance",  # guidance_scale
        "height",
        "width",
        "seed",  # base seed of the generator; per-image seeds come from `supervision.generation_params`
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
    model: str  # hub id, local path (or "tiny:<arch>" before `resolve_model_ref`)
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


@GENERATOR_BACKENDS.register("diffusers")
class DiffusersGenerator:
    """Any diffusers text-to-image pipeline, by hub id or local folder.

    Each image gets its own CPU `torch.Generator` seeded with its seed, so pixels depend on
    (model, prompt, seed, params) only -- not on the batch an image happened to be in, nor on the
    device the initial noise is drawn for (diffusers draws CPU-generator noise on the CPU).
    """

    # A real sampler: it renders any prompt and can decode its latents early (see `can_sample`).
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
                "with resolve_model_ref() first"
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


# --------------------------------------------------------------------------------------------
# Tiny pipelines: the real classes at toy size, randomly initialised, built offline.
# --------------------------------------------------------------------------------------------


def _tiny_words() -> list[str]:
    from .prompts import prompt_vocabulary

    return prompt_vocabulary()


def _train_bpe(words: list[list[str]]) -> list[tuple[str, str]]:
    """Deterministic BPE training: merge the most frequent pair (ties: smallest pair) until every
    word is one symbol. `tokenizers`' own trainer breaks ties in hash order, so two builds could
    disagree -- and the tiny pipelines must be reproducible for a seed."""
    from collections import Counter, defaultdict

    counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += 1
            where[pair].add(index)
    merges: list[tuple[str, str]] = []
    while counts:
        best = min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        for index in sorted(where.pop(best, ())):
            symbols = words[index]
            for pair in zip(symbols, symbols[1:]):
                counts[pair] -= 1
                if counts[pair] <= 0:
                    del counts[pair]
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[index] = merged
            for pair in zip(merged, merged[1:]):
                counts[pair] += 1
                where[pair].add(index)
    return merges


@functools.lru_cache(maxsize=1)
def _tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer(model_max_length=77).backend_tokenizer  # CLIP's normaliser + pre-tokeniser
    pieces: set[str] = set()
    for word in _tiny_words():
        normalised = backend.normalizer.normalize_str(word)
        pieces.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalised))
    words = [list(piece[:-1]) + [piece[-1] + "</w>"] for piece in sorted(pieces)]
    merges = _train_bpe(words)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


def build_tiny_clip_tokenizer() -> Any:
    """Byte-level BPE CLIP tokenizer trained offline on the prompt-bank vocabulary.

    Every byte stays encodable, and bank words become single tokens so a 40-word prompt fits
    CLIP's 77-token window (a bytes-only vocab would not).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def build_tiny_t5_tokenizer() -> Any:
    """Unigram T5 tokenizer: whole-word pieces for the prompt vocabulary, single characters as the
    fallback for anything else (uppercase, digits, punctuation)."""
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    for word in _tiny_words():
        for form in dict.fromkeys((word, word.capitalize())):  # T5 is case-sensitive: sentence starts too
            pieces.append(("▁" + form, -5.0))  # one word piece beats spelling it out (chars cost -8 each)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-/()&%+"))
    known = {p for p, _ in pieces}
    pieces.extend((c, -8.0) for c in chars if c not in known)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


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
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS)}")
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


def resolve_model_ref(model: str, tiny_root: str | Path, init_seed: int = 0) -> str:
    """Turn "tiny:<arch>" into a built folder under `tiny_root` (built once, then reused);
    any other reference (hub id, local path) is returned unchanged."""
    if not model.startswith(TINY_PREFIX):
        return model
    arch = model[len(TINY_PREFIX) :]
    folder = Path(tiny_root) / f"{arch}-seed{int(init_seed)}"
    if not (folder / "model_index.json").is_file():
        build_tiny_pipeline(arch, folder, seed=int(init_seed))
    return str(folder)
