"""Frozen aspect-aware embeddings (paper 3.3.2).

z_d(I[, p]) is the last-layer hidden state of the final input token when the tuned backbone is
asked the aspect-d question (with the generation prompt, before any answer token). That token is
exactly where the SFT taught the model to decide low vs high, so its state summarises the aspect.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
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


@dataclass
class AspectEmbedder:
    """Loads the tuned backbone once and embeds (image, aspect, prompt) queries: the model factory
    and the work of :meth:`EmbeddingCache.ensure <eliq_pipeline.critic.embedding_cache.EmbeddingCache.ensure>`
    on any compute backend. Picklable; :meth:`portable` embeds the adapter's files so that a
    worker on another machine (which cannot see ``adapter_dir``) loads the same adapter.
    ``device`` may be "auto" (resolved where the model is loaded)."""

    adapter_dir: str
    base: str | None = None  # the base backbone (hub id or folder); None: the one the adapter names
    device: str = "auto"
    batch_size: int = 8
    adapter_files: dict[str, bytes] | None = None

    def portable(self) -> "AspectEmbedder":
        root = Path(self.adapter_dir)
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return replace(self, adapter_files=files)

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self) -> tuple[Any, Any]:
        from eliq_pipeline.critic.instruction_tuning import load_tuned_backbone

        if self.adapter_files is None:
            return load_tuned_backbone(Path(self.adapter_dir), base_override=self.base, device=self._device())
        # Unpacked once per worker process, and removed once loaded: the model and processor hold
        # everything in memory, and a folder left per load filled /tmp with one adapter per worker.
        with tempfile.TemporaryDirectory(prefix="eliq-adapter-") as unpacked:
            adapter_dir = Path(unpacked)
            for name, data in self.adapter_files.items():
                (adapter_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (adapter_dir / name).write_bytes(data)
            return load_tuned_backbone(adapter_dir, base_override=self.base, device=self._device())

    def __call__(self, model_processor: tuple[Any, Any], items: list[tuple[Any, Image.Image]]) -> list[torch.Tensor]:
        """Items: (request with ``aspect`` and ``prompt``, image); one embedding per item."""
        model, processor = model_processor
        states = extract_aspect_embeddings(model, processor, [image for _, image in items],
                                           [r.aspect for r, _ in items], [r.prompt for r, _ in items],
                                           batch_size=self.batch_size, device=self._device())
        return list(states.unbind(0))
