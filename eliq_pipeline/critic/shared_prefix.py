"""One image, one encode: every aspect question about an image shares one image prefix pass.

Hand-written because transformers has no forward for "several continuations of one prefix"
that keeps gradients; the model, its attention kernels and its M-RoPE index are the library's.

Each question about an image is the chat row ``[header, image tokens] + [instruction, assistant
header]``. The image part comes first and, under causal attention, its hidden states do not
depend on the question that follows, so asking k questions needs one vision encode and one
prefix pass, plus k short suffixes. This module packs each image with its questions::

    [prefix | suffix_1 | suffix_2 | ... | suffix_k]

with a block attention mask (the prefix is causal; each suffix sees the whole prefix and itself
causally, never another suffix nor another image; padding is seen by nothing) and M-RoPE
positions in which every suffix continues from the prefix exactly as it does in its own row.
Images asked few questions share a row with others (first-fit into rows as long as the
longest image's), so uneven question counts do not turn into padding. The final hidden state of
each suffix is then the per-question state (equal up to float summation order).

Why packing and not a KV cache of the prefix: the arithmetic is the same (the prefix runs once;
each suffix token attends to the prefix keys), but packing is one differentiable forward, so
instruction tuning backpropagates through the shared prefix (LoRA or a trained vision tower
included), it works under gradient checkpointing (which drops caches), and it makes no
per-question copy of the prefix keys and values. It needs an attention kernel that takes a
custom 4D mask (eager, sdpa); other kernels fall back to one row per question.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.critic.backbone import build_inputs, move_inputs, question_text

# Attention kernels that honour an arbitrary 4D mask (flash-attention takes none).
MASKED_ATTENTION_KERNELS = ("eager", "sdpa")


def base_model(model: Any) -> Any:
    """The transformers model inside a plain or peft-wrapped one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def multimodal_trunk(model: Any) -> Any:
    """The Qwen3-VL trunk (vision tower + LLM, no LM head) inside a plain or peft-wrapped model.

    Calling the trunk skips the vocabulary projection, which we do not need; LoRA layers are
    injected in place, so the trunk of a peft model still runs the adapted weights.
    """
    base = base_model(model)
    trunk = getattr(base, "model", None)
    if trunk is None or not hasattr(trunk, "language_model"):
        raise TypeError(f"expected a Qwen3-VL conditional-generation model, got {type(base).__name__}")
    return trunk


def supports_shared_prefix(model: Any) -> bool:
    """Whether the model's attention kernel takes the packed block mask."""
    config = multimodal_trunk(model).language_model.config
    return getattr(config, "_attn_implementation", None) in MASKED_ATTENTION_KERNELS


def group_by_image(images: Sequence[Image.Image]) -> list[list[int]]:
    """Query indices grouped by image object (the same PIL object = the same image), in order
    of first appearance. Callers pass one object per image for all of its questions."""
    groups: dict[int, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(id(image), []).append(index)
    return list(groups.values())


@dataclass
class PackedQueries:
    """Packed model inputs (rows of images with their questions) and where each question's final token is."""

    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor  # [n_queries] packed row of each question
    columns: torch.Tensor  # [n_queries] column of each question's final input token


def _split_at_image(processor: Any, text: str) -> tuple[str, str]:
    """(prefix text ending with the image placeholder, the rest of the question)."""
    placeholder = processor.image_token
    cut = text.find(placeholder)
    if cut < 0 or text.find(placeholder, cut + 1) >= 0:
        raise ValueError(f"a question must hold exactly one image placeholder {placeholder!r}: {text!r}")
    cut += len(placeholder)
    if not text[cut:]:
        raise ValueError(f"a question has no text after its image: {text!r}")
    return text[:cut], text[cut:]


def _rope_index(trunk: Any, ids: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor, types: torch.Tensor | None):
    """The library's M-RoPE positions of left-padded rows (keywords differ across releases)."""
    kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": mask}
    if "mm_token_type_ids" in inspect.signature(trunk.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = types
    positions, _ = trunk.get_rope_index(ids, **kwargs)
    return positions


def pack_queries(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    texts: Sequence[Sequence[str]],
    dtype: torch.dtype,
) -> PackedQueries:
    """Packed inputs for ``images[i]`` asked every chat text in ``texts[i]``.

    Raises if the questions of one image do not share their text up to the image placeholder
    (then their prefixes differ and cannot be shared).
    """
    if len(images) != len(texts) or not images:
        raise ValueError("need one non-empty list of questions per image")
    prefixes, rests = [], []
    for i, questions in enumerate(texts):
        if not questions:
            raise ValueError(f"image {i} has no questions")
        split = [_split_at_image(processor, text) for text in questions]
        if len({prefix for prefix, _ in split}) != 1:
            raise ValueError(f"the questions about image {i} differ before the image; the prefix cannot be shared")
        prefixes.append(split[0][0])
        rests.append([rest for _, rest in split])
    # The placeholder is a special token, so the tokenizer splits there: the rest tokenizes alone.
    flat = iter(processor.tokenizer([rest for group in rests for rest in group], add_special_tokens=False)["input_ids"])
    suffixes = [[list(next(flat)) for _ in group] for group in rests]

    prefix = processor(text=prefixes, images=[to_rgb(image) for image in images], padding=True,
                       padding_side="left", return_tensors="pt")
    prefix_ids, prefix_mask = prefix["input_ids"], prefix["attention_mask"].bool()
    types = prefix.get("mm_token_type_ids")
    if types is None:
        types = (prefix_ids == processor.image_token_id).to(torch.int32)
    trunk = multimodal_trunk(model)
    prefix_positions = _rope_index(trunk, prefix_ids, prefix_mask.long(), prefix["image_grid_thw"], types)

    lengths = [int(prefix_mask[i].sum()) + sum(len(s) for s in suffixes[i]) for i in range(len(images))]
    layout = _pack_rows(lengths)
    width = max(lengths)
    pad_id = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(layout), width), pad_id, dtype=prefix_ids.dtype)
    positions = torch.zeros((3, len(layout), width), dtype=prefix_positions.dtype)
    owner = torch.full((len(layout), width), -1, dtype=torch.long)  # image of each token, -1 padding
    segment = torch.zeros((len(layout), width), dtype=torch.long)  # 0 prefix, j suffix j
    rows, columns = [0] * sum(len(s) for s in suffixes), [0] * sum(len(s) for s in suffixes)
    first_query = [sum(len(s) for s in suffixes[:i]) for i in range(len(images))]
    for r, members in enumerate(layout):
        stop = width - sum(lengths[i] for i in members)  # left padding keeps rows right-aligned
        for i in members:
            ids = prefix_ids[i][prefix_mask[i]]
            start, stop = stop, stop + len(ids)
            input_ids[r, start:stop] = ids
            positions[:, r, start:stop] = prefix_positions[:, i, prefix_mask[i]]
            owner[r, start:stop] = i
            # Text after the image continues one past the prefix's largest position (as get_rope_index does).
            next_position = int(prefix_positions[:, i, prefix_mask[i]].max()) + 1
            for j, suffix in enumerate(suffixes[i], start=1):
                span = slice(stop, stop + len(suffix))
                input_ids[r, span] = torch.tensor(suffix, dtype=input_ids.dtype)
                positions[:, r, span] = torch.arange(next_position, next_position + len(suffix))
                owner[r, span], segment[r, span] = i, j
                stop += len(suffix)
                rows[first_query[i] + j - 1], columns[first_query[i] + j - 1] = r, stop - 1

    # The vision tower's outputs fill image tokens in row-major order: give it the images so.
    order = [i for members in layout for i in members]
    grid = prefix["image_grid_thw"]
    patches = torch.split(prefix["pixel_values"], grid.prod(-1).tolist())
    inputs = {
        "input_ids": input_ids,
        "attention_mask": block_attention_mask(owner, segment, dtype),
        "position_ids": positions,
        "pixel_values": torch.cat([patches[i] for i in order]),
        "image_grid_thw": grid[order],
    }
    return PackedQueries(inputs, torch.tensor(rows), torch.tensor(columns))


def _pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Images per row, first-fit decreasing into rows no longer than the longest image's: an
    image asked one question then fills the room an image asked four leaves, instead of padding."""
    capacity = max(lengths)
    layout: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                layout[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            layout.append([i])
            room.append(capacity - lengths[i])
    return layout


def block_attention_mask(owner: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask ``[rows, 1, length, length]`` from each token's image (``owner``, -1 for
    padding) and segment (0 prefix, j suffix j).

    A token sees earlier-or-same tokens of its own image's prefix and of its own segment; a
    padding token sees only itself (its output is never read; this keeps its softmax finite).
    """
    length = owner.shape[1]
    order = torch.arange(length)
    causal = order[None, :] <= order[:, None]  # [query, key]
    same_image = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] >= 0)
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal[None] & same_image & ((key == 0) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool)[None] & (owner[:, :, None] < 0)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def query_batches(images: Sequence[Image.Image], batch_size: int, share_image_prefix: bool) -> list[list[int]]:
    """Query indices per forward pass: ``batch_size`` rows, a row being one image with all its
    questions (shared prefix) or one question."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if share_image_prefix:
        groups = group_by_image(images)
        return [sum(groups[g : g + batch_size], []) for g in range(0, len(groups), batch_size)]
    return [list(range(start, min(start + batch_size, len(images)))) for start in range(0, len(images), batch_size)]


def batched_final_states(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    aspects: Sequence[str],
    prompts: Sequence[str | None],
    batch_size: int,
    device: str | torch.device = "cpu",
    share_image_prefix: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(query indices, their final-token states) per forward pass of ``batch_size`` rows, without
    gradients: :func:`final_token_states` over :func:`query_batches`."""
    share_image_prefix = share_image_prefix and supports_shared_prefix(model)
    for batch in query_batches(images, batch_size, share_image_prefix):
        with torch.no_grad():
            states = final_token_states(model, processor, [images[i] for i in batch], [aspects[i] for i in batch],
                                        [prompts[i] for i in batch], device, share_image_prefix)
        yield torch.tensor(batch, dtype=torch.long), states


def final_token_states(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    aspects: Sequence[str],
    prompts: Sequence[str | None],
    device: str | torch.device = "cpu",
    share_image_prefix: bool = True,
) -> torch.Tensor:
    """Last-layer hidden state ``[n, hidden]`` of each question's final input token, in input
    order: each distinct image object packed with its questions (:func:`pack_queries`), or one left-padded
    row per question. The two are equal up to float summation order; packing needs a masked
    attention kernel and falls back to rows per question without one. Differentiable: call
    under ``torch.no_grad()`` for inference. ``prompts`` are used for ``ali`` only."""
    if not (len(images) == len(aspects) == len(prompts)):
        raise ValueError("images, aspects and prompts must have the same length")
    # Only the aspect's own inputs reach the model: a prompt passed for tec/aes is dropped here
    # so callers can pass one prompt column for all aspects.
    prompts = [prompt if aspect == "ali" else None for aspect, prompt in zip(aspects, prompts)]
    dtype = next(model.parameters()).dtype
    trunk = multimodal_trunk(model)
    if not (share_image_prefix and supports_shared_prefix(model)):
        inputs = move_inputs(build_inputs(processor, images, aspects, prompts), device, dtype)
        return trunk(**inputs, use_cache=False, return_dict=True).last_hidden_state[:, -1, :]
    groups = group_by_image(images)
    texts = [[question_text(processor, aspects[q], prompts[q]) for q in group] for group in groups]
    packed = pack_queries(model, processor, [images[group[0]] for group in groups], texts, dtype)
    hidden = trunk(**move_inputs(packed.inputs, device, dtype), use_cache=False, return_dict=True).last_hidden_state
    states = hidden[packed.rows.to(hidden.device), packed.columns.to(hidden.device)]
    # Packed order is group by group; put each question back at its input index.
    order = torch.tensor([q for group in groups for q in group], device=states.device)
    return states[torch.argsort(order)]


def label_logits(model: Any, states: torch.Tensor) -> torch.Tensor:
    """Next-token logits from final-token states (the LM head, trained copy under peft)."""
    return base_model(model).lm_head(states)
