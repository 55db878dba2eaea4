"""Frozen aspect-aware embeddings (paper 3.3.2).

z_d(I[, p]) is the last-layer hidden state of the final input token when the tuned backbone is
asked the aspect-d question (with the generation prompt, before any answer token). That token is
exactly where the SFT taught the model to decide low vs high, so its state summarises the aspect.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from eliq_pipeline.critic.backbone import ASPECTS, build_inputs, move_inputs


def _multimodal_trunk(model: Any) -> Any:
    """The Qwen3-VL trunk (vision tower + LLM, no LM head) inside a plain or peft-wrapped model.

    Calling the trunk skips the vocabulary projection, which we do not need; LoRA layers are
    injected in place, so the trunk of a peft model still runs the adapted weights.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk = getattr(base, "model", None)
    if trunk is None or not hasattr(trunk, "language_model"):
        raise TypeError(f"expected a Qwen3-VL conditional-generation model, got {type(base).__name__}")
    return trunk


@torch.no_grad()
def final_token_hidden_states(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last-layer (post final-norm) hidden state of the last column of a left-padded batch."""
    trunk = _multimodal_trunk(model)
    outputs = trunk(**inputs, use_cache=False, return_dict=True)
    return outputs.last_hidden_state[:, -1, :]


def extract_aspect_embeddings(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    aspects: Sequence[str],
    prompts: Sequence[str | None],
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Embeddings ``[n, hidden]`` (float32, on CPU) for n (image, aspect, prompt) queries.

    tec/aes ignore the prompt; ali requires it. The model is put in eval mode (no dropout) and
    run without gradients; rows are batched with left padding so each row's final input token
    is the last column, which makes batched results match one-by-one results. An ali prompt
    longer than the backbone takes is embedded as its first tokens that fit
    (:func:`~eliq_pipeline.critic.backbone.fit_prompt`), never past the model's sequence limit.
    """
    n = len(images)
    if not (n == len(aspects) == len(prompts)):
        raise ValueError("images, aspects and prompts must have the same length")
    unknown = set(aspects) - set(ASPECTS)
    if unknown:
        raise ValueError(f"unknown aspects {sorted(unknown)}; expected {ASPECTS}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    model.eval()
    dtype = next(model.parameters()).dtype
    chunks: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        # Only the aspect's own inputs reach the model: a prompt passed for tec/aes is dropped
        # here so callers can pass one prompt column for all aspects.
        batch_prompts = [
            prompts[i] if aspects[i] == "ali" else None for i in range(start, stop)
        ]
        inputs = build_inputs(processor, images[start:stop], aspects[start:stop], batch_prompts)
        inputs = move_inputs(inputs, device, dtype)
        chunks.append(final_token_hidden_states(model, inputs).float().cpu())
        if progress is not None:
            progress(stop, n)
    if not chunks:
        hidden = _multimodal_trunk(model).config.text_config.hidden_size
        return torch.empty(0, hidden, dtype=torch.float32)
    return torch.cat(chunks, dim=0)
