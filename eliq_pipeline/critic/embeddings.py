"""Frozen aspect-aware embeddings (paper 3.3.2).

z_d(I[, p]) is the last-layer hidden state of the final input token when the tuned backbone is
asked the aspect-d question (with the generation prompt, before any answer token). That token is
exactly where the SFT taught the model to decide low vs high, so its state summarises the aspect.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from eliq_pipeline.critic.backbone import ASPECTS
from eliq_pipeline.critic.shared_prefix import batched_final_states, multimodal_trunk


def extract_aspect_embeddings(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    aspects: Sequence[str],
    prompts: Sequence[str | None],
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    share_image_prefix: bool = True,
) -> torch.Tensor:
    """Embeddings ``[n, hidden]`` (float32, on CPU) for n (image, aspect, prompt) queries.

    tec/aes ignore the prompt; ali requires it. The model is put in eval mode (no dropout) and
    run without gradients. Queries that pass the same image object share one vision encode and
    one image-prefix pass (:mod:`~eliq_pipeline.critic.shared_prefix`); ``batch_size`` is rows per
    forward pass: images with all their questions, or, with ``share_image_prefix=False`` (or an
    attention kernel without custom masks), single questions. Rows are left padded so each
    question's final input token ends its row or suffix, which makes batched results match
    one-by-one results. An ali prompt longer than the backbone takes is embedded as its first
    tokens that fit (:func:`~eliq_pipeline.critic.backbone.fit_prompt`), never past the model's
    sequence limit.
    """
    n = len(images)
    if not (n == len(aspects) == len(prompts)):
        raise ValueError("images, aspects and prompts must have the same length")
    unknown = set(aspects) - set(ASPECTS)
    if unknown:
        raise ValueError(f"unknown aspects {sorted(unknown)}; expected {ASPECTS}")
    out = torch.empty(n, multimodal_trunk(model).config.text_config.hidden_size, dtype=torch.float32)
    model.eval()
    done = 0
    for batch, states in batched_final_states(model, processor, images, aspects, prompts, batch_size, device,
                                              share_image_prefix):
        out[batch] = states.float().cpu()
        done += len(batch)
        if progress is not None:
            progress(done, n)
    return out
