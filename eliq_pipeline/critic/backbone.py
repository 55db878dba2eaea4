"""Qwen3-VL backbone wrapper: loading (any Qwen3-VL checkpoint), aspect instructions, batched inputs.

Over 400 lines: one cohesive contract (instructions, prompt fitting, inputs) that SFT and embedding extraction must share byte for byte.

ELIQ (paper 3.3.1-3.3.2) asks one MLLM three questions per image, one per aspect, each answered
with a single label token ``low`` / ``high``. Everything that touches the MLLM's text side lives
here so the instruction tuning and the embedding extraction build *identical* inputs.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from eliq_pipeline.core.images import sha256_file, to_rgb

ASPECTS: tuple[str, ...] = ("tec", "aes", "ali")
LABELS: tuple[str, ...] = ("low", "high")

# Model families whose processor/chat layout this module understands.
SUPPORTED_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")

# One instruction per aspect (paper 3.3.1): each restricts the judgement to its aspect; only the
# alignment instruction carries the prompt, so tec/aes embeddings cannot pick up semantic cues.
INSTRUCTIONS: dict[str, str] = {
    "tec": (
        "Judge only the technical quality of this image: noise, blur, compression artifacts, "
        "exposure and distortions. Ignore its aesthetics and its content. "
        "Answer with one word, low or high."
    ),
    "aes": (
        "Judge only the aesthetic quality of this image: composition, colour harmony, lighting "
        "and visual appeal. Ignore technical defects and its content. "
        "Answer with one word, low or high."
    ),
    "ali": (
        'Judge only how well this image matches the text prompt: "{prompt}". '
        "Ignore its technical and aesthetic quality. Answer with one word, low or high."
    ),
}

# --------------------------------------------------------------------------------------------
# Processor: stock AutoProcessor with torchvision, image-only Qwen3-VL processor without it.
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _image_only_processor_class() -> type:
    """A Qwen3VLProcessor whose constructor has no ``video_processor`` argument.

    Why: ProcessorMixin derives its sub-processors from the ``__init__`` signature and validates
    each against its Auto mapping; the video processor (and that mapping) need torchvision, so the
    stock class cannot even be constructed on a CPU-only torch. Dropping the argument from the
    signature makes the mixin manage only (image_processor, tokenizer); images, chat template and
    placeholder expansion are untouched. It saves itself under the stock class name so a
    directory written here loads with the stock AutoProcessor where torchvision exists.
    """
    from transformers import Qwen3VLProcessor

    class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
            )

        def to_dict(self) -> dict[str, Any]:
            output = super().to_dict()
            output["processor_class"] = "Qwen3VLProcessor"
            # The stock processor insists on a video sub-processor config; write the Qwen3-VL
            # defaults matched to the image grid so the directory also loads with torchvision.
            image = self.image_processor
            output.setdefault(
                "video_processor",
                {
                    "video_processor_type": "Qwen3VLVideoProcessor",
                    "patch_size": image.patch_size,
                    "temporal_patch_size": image.temporal_patch_size,
                    "merge_size": image.merge_size,
                },
            )
            return output

    Qwen3VLImageOnlyProcessor.__qualname__ = "Qwen3VLImageOnlyProcessor"
    return Qwen3VLImageOnlyProcessor


def make_processor(image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
    """Assemble a Qwen3-VL processor from parts, with or without torchvision installed."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        video_processor = Qwen3VLVideoProcessor(
            patch_size=image_processor.patch_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            merge_size=image_processor.merge_size,
        )
        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=chat_template,
        )
    return _image_only_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )


def load_processor(
    name_or_path: str, min_pixels: int | None = None, max_pixels: int | None = None
) -> Any:
    """Load the processor saved with a backbone (or adapter); left padding is forced."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path)
    else:
        processor = _image_only_processor_class().from_pretrained(name_or_path)
    image_processor = processor.image_processor
    # Cap vision tokens per image (cost grows with them); the model accepts any grid size.
    # ``size`` is a SizeDict (transformers 5) or a dict (4.x); both take item assignment.
    for key, attr, value in (("shortest_edge", "min_pixels", min_pixels), ("longest_edge", "max_pixels", max_pixels)):
        if value is not None:
            image_processor.size[key] = value
            if getattr(image_processor, attr, None) is not None:  # 4.x keeps a copy here
                setattr(image_processor, attr, value)
    # Left padding keeps every row's final input token in the last column (label + embedding slot).
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


@dataclass(frozen=True)
class ProcessorResize:
    """The size a Qwen-VL image processor gives an image: sides multiples of patch x merge, pixel
    count within [min_pixels, max_pixels], aspect ratio kept (transformers' ``smart_resize``).

    The critic never sees an image at its own size unless it already fits; a classic metric read
    at this size sees the same pixels the critic does (the processor resamples bicubically)."""

    factor: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def of(cls, image_processor: Any) -> ProcessorResize:
        size = image_processor.size
        return cls(int(image_processor.patch_size * image_processor.merge_size),
                   int(size["shortest_edge"]), int(size["longest_edge"]))

    @property
    def key(self) -> str:
        """The rule as a short, path-safe name (cache keys)."""
        return f"{self.factor}-{self.min_pixels}-{self.max_pixels}"

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of (width, height) pixels once processed."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision needed

        new_height, new_width = smart_resize(height, width, factor=self.factor,
                                             min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return int(new_width), int(new_height)


def default_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (the 8B model's native precision), float32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def load_backbone(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[Any, Any]:
    """THE loader for any Qwen3-VL checkpoint, by hub id or local directory -> (model, processor).

    Production passes ``Qwen/Qwen3-VL-8B-Instruct``; the tiny profile passes the directory written
    by :func:`eliq_pipeline.tiny.backbone.build_tiny_backbone`. The model is returned in eval mode on ``device``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model; expected one of {SUPPORTED_MODEL_TYPES}"
        )
    dtype = dtype or default_dtype(device)
    # Accelerators: place weights straight onto the device (no 16 GB detour through host RAM).
    device_map = None if str(device) == "cpu" else {"": str(device)}
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, device_map=device_map)
    model.to(device)
    model.eval()
    processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels)
    return model, processor


# --------------------------------------------------------------------------------------------
# Fingerprints (cache keys)
# --------------------------------------------------------------------------------------------



def directory_fingerprint(directory: Path, exclude: Iterable[str] = ()) -> str:
    """Hash of every file's relative name and content (hidden files and docs excluded)."""
    directory = Path(directory)
    skip = set(exclude)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.suffix.lower() not in (".md", ".lock")
        and p.name not in skip
    )
    if not files:
        raise FileNotFoundError(f"no files to fingerprint in {directory}")
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(path).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def backbone_fingerprint(name_or_path: str) -> str:
    """Stable cache key for a backbone: content hash for a local dir, commit for a hub id.

    A hub id resolves to the commit of the locally cached snapshot when there is one (no network),
    otherwise to the hub's current commit; both name exact weights without reading 16 GB.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return "dir-sha256:" + directory_fingerprint(path)
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name_or_path, local_files_only=True))
        commit = snapshot.name
    except Exception:  # not cached (or partial): ask the hub which commit the id points at
        from huggingface_hub import HfApi

        commit = HfApi().model_info(name_or_path).sha
    return f"hub:{name_or_path}@{commit}"


# --------------------------------------------------------------------------------------------
# Instructions and batched inputs
# --------------------------------------------------------------------------------------------


def instruction_messages(aspect: str, prompt: str | None) -> list[dict[str, Any]]:
    """Chat messages asking the model to judge one aspect and answer ``low`` or ``high``.

    tec/aes ignore ``prompt`` entirely (paper: no semantic cues); ali requires it.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")
    if aspect == "ali":
        if prompt is None or not str(prompt).strip():
            raise ValueError("the alignment aspect needs the generation prompt")
        text = INSTRUCTIONS["ali"].format(prompt=" ".join(str(prompt).split()))
    else:
        text = INSTRUCTIONS[aspect]
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


# tokenizers without a real limit report a huge sentinel (int(1e30)) as model_max_length
_NO_LIMIT = 10**8


@dataclass(frozen=True)
class PromptFit:
    """A generation prompt as the alignment instruction will carry it.

    ``text`` is the whitespace-normalised prompt, cut at a token boundary when the instruction
    would not fit the backbone's sequence limit; ``tokens`` counts the prompt's tokens before
    the cut and ``kept`` after it (equal when ``truncated`` is False).
    """

    text: str
    truncated: bool
    tokens: int
    kept: int


def sequence_limit(processor: Any) -> int | None:
    """The most tokens one input row may have: the tokenizer's ``model_max_length`` (for the
    Qwen3-VL checkpoints and the tiny backbone equal to ``max_position_embeddings``); None when
    the tokenizer states no limit."""
    limit = getattr(processor.tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


def max_image_tokens(processor: Any) -> int:
    """LLM tokens the largest image this processor emits takes (its pixel cap / token area)."""
    image_processor = processor.image_processor
    size = getattr(image_processor, "size", None) or {}
    try:
        max_pixels = size["longest_edge"]
    except (KeyError, TypeError):
        max_pixels = None
    max_pixels = max_pixels or getattr(image_processor, "max_pixels", None)
    area = (int(image_processor.patch_size) * int(image_processor.merge_size)) ** 2
    return -(-int(max_pixels) // area)


def _token_count(tokenizer: Any, text: str) -> int:
    # verbose=False: counting a too-long text must not log "Token indices sequence length is
    # longer than ..."; that is what this module prevents by fitting the prompt.
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _chat_text(processor: Any, aspect: str, prompt: str | None) -> str:
    return processor.apply_chat_template(instruction_messages(aspect, prompt), tokenize=False, add_generation_prompt=True)


def fit_prompt(processor: Any, prompt: str, reserve: int = 1) -> PromptFit:
    """Cut ``prompt`` so the alignment row fits the backbone's sequence limit.

    The budget is the limit minus the instruction and chat tokens, the tokens of the largest
    image the processor emits (so the cut does not depend on the image), and ``reserve``
    tokens (the SFT label column). The prompt keeps its first tokens, cut at a token
    boundary; a prompt that fits is returned unchanged (whitespace-normalised). Idempotent:
    fitting a fitted prompt changes nothing, so callers may fit before :func:`build_inputs`.
    """
    text = " ".join(str(prompt).split())
    tokenizer = processor.tokenizer
    encoding = tokenizer(text, add_special_tokens=False, verbose=False,
                         return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = list(encoding["input_ids"])
    limit = sequence_limit(processor)
    if limit is None:
        return PromptFit(text, False, len(ids), len(ids))
    # The chat text holds one image placeholder token that the processor expands to the image's.
    fixed = max_image_tokens(processor) - 1 + reserve

    def excess(candidate: str) -> int:
        return _token_count(tokenizer, _chat_text(processor, "ali", candidate)) + fixed - limit

    over = excess(text)
    if over <= 0:
        return PromptFit(text, False, len(ids), len(ids))
    keep = len(ids) - over
    offsets = encoding.get("offset_mapping")
    while keep > 0:
        if offsets is not None:
            cut = text[: offsets[keep - 1][1]].rstrip()
        else:  # slow tokenizers have no offsets: decode the kept tokens instead
            cut = " ".join(tokenizer.decode(ids[:keep], skip_special_tokens=True).split())
        over = excess(cut) if cut else 1
        if over <= 0:
            return PromptFit(cut, True, len(ids), _token_count(tokenizer, cut))
        keep -= max(over, 1)  # boundary merges can differ by a token or two: step down again
    raise ValueError(
        f"the alignment instruction and the largest image already take the backbone's whole "
        f"limit of {limit} tokens; no prompt fits"
    )


def question_text(processor: Any, aspect: str, prompt: str | None) -> str:
    """The chat text asking one aspect question, an alignment prompt cut to fit (:func:`fit_prompt`)."""
    return _chat_text(processor, aspect, fit_prompt(processor, prompt).text if aspect == "ali" and prompt else prompt)


def label_token_ids(tokenizer: Any) -> dict[str, int]:
    """Token id of each answer word; each must be exactly one token (it is the whole target)."""
    ids: dict[str, int] = {}
    for word in LABELS:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"label {word!r} is {len(encoded)} tokens in this tokenizer; need exactly 1")
        ids[word] = int(encoded[0])
    return ids


def build_inputs(
    processor: Any,
    images: Sequence[Image.Image],
    aspects: Sequence[str],
    prompts: Sequence[str | None],
    add_label: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded batch of chat inputs (with generation prompt), one row per (image, aspect).

    The last column is every row's final input token. With ``add_label`` the label token is
    appended as a new last column and ``labels`` is -100 everywhere except that column, so the
    causal-LM loss covers only the single answer token. Alignment prompts longer than the
    backbone takes are cut to fit (:func:`fit_prompt`), with room left for the label column.
    """
    if not (len(images) == len(aspects) == len(prompts)):
        raise ValueError("images, aspects and prompts must have the same length")
    if add_label is not None and len(add_label) != len(images):
        raise ValueError("add_label must have one label per row")
    if not images:
        raise ValueError("empty batch")
    # An over-long prompt is cut to the backbone's limit (fit_prompt) instead of overrunning it.
    texts = [question_text(processor, aspect, prompt) for aspect, prompt in zip(aspects, prompts)]
    batch = processor(
        text=texts,
        images=[to_rgb(image) for image in images],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    inputs = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
    if add_label is None:
        return inputs

    ids = label_token_ids(processor.tokenizer)
    unknown = set(add_label) - set(LABELS)
    if unknown:
        raise ValueError(f"labels must be in {LABELS}, got {sorted(unknown)}")
    label_column = torch.tensor([[ids[label]] for label in add_label], dtype=inputs["input_ids"].dtype)
    ones = torch.ones_like(label_column)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], label_column], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], ones.to(inputs["attention_mask"].dtype)], dim=1)
    if "mm_token_type_ids" in inputs:  # the label is text (type 0) for M-RoPE positions
        mm = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(label_column, dtype=mm.dtype)], dim=1)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -1] = label_column[:, 0]
    inputs["labels"] = labels
    return inputs


def move_inputs(
    inputs: dict[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; float tensors (pixels) follow the model dtype."""
    moved = {}
    for key, value in inputs.items():
        if dtype is not None and value.is_floating_point():
            moved[key] = value.to(device=device, dtype=dtype)
        else:
            moved[key] = value.to(device)
    return moved
