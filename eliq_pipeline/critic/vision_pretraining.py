"""Label-free pretraining of the backbone's vision tower by masked image modelling (SimMIM, Xie et
al. 2022) on an era's positives, before the SFT: parts of each image are hidden and the tower learns
to predict their pixels from the rest, i.e. the local statistics of good renders (what NIQE models
by hand) instead of random features.

Hand-written because the library versions do not fit this tower: transformers'
``ViTForMaskedImageModeling`` and SimMIM's reference code assume ViT's patch embedding and a fixed
position grid, while Qwen3-VL's tower takes flattened patches with a grid per image and attends
within each image through ``cu_seqlens``. Masking here is a learned token swapped in for the
masked patches' embeddings (a forward hook on ``patch_embed``), whole spatial-merge groups at a time
(32x32 px at the cpu profile's sizes, one LLM image token each), and a linear head predicts the
masked patches' pixels (L1, as SimMIM) or their embedding under fixed patch filters.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageOps

from eliq_pipeline.critic.backbone import load_backbone
from eliq_pipeline.core.atomic import staged_dir

TRAINABLE_MODULES = ("patch_embed", "pos_embed", "blocks")  # of model.model.visual
TARGETS = ("pixels", "patch_embedding")
REPORT_FILE = "eliq_vision_pretraining.json"  # in the output folder: config, held-out L1, seconds


@dataclass(frozen=True)
class MaskedImageModelingConfig:
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50  # then cosine decay to 0 at ``steps``
    mask_ratio: float = 0.6  # of each image's merge groups
    seed: int = 0
    heldout_every: int = 250  # steps between held-out masked-L1 measurements
    # which of the tower's TRAINABLE_MODULES learn; the others (and the merger, the LLM) stay as built
    trained_modules: tuple[str, ...] = TRAINABLE_MODULES
    # what a masked patch's prediction is compared with: "pixels" (SimMIM; the L1 is dominated by
    # the low frequencies, where most of an image's energy is) or "patch_embedding", the patch's
    # embedding under the fixed patch filters, e.g. tiny:qwen3-vl-256-dct's whitened DCT bank, where
    # fine detail weighs as much as coarse (scaled by the held-out targets' std)
    target: str = "pixels"

    def __post_init__(self) -> None:
        object.__setattr__(self, "trained_modules", tuple(self.trained_modules))  # JSON gives a list
        unknown = set(self.trained_modules) - set(TRAINABLE_MODULES)
        if unknown or not self.trained_modules:
            raise ValueError(f"MaskedImageModelingConfig.trained_modules must be a non-empty subset of "
                             f"{TRAINABLE_MODULES}, got {self.trained_modules}")
        if self.target not in TARGETS:
            raise ValueError(f"MaskedImageModelingConfig.target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "patch_embedding" and "patch_embed" in self.trained_modules:
            # a target the model itself moves can be met by collapsing it
            raise ValueError("MaskedImageModelingConfig: target 'patch_embedding' needs the patch embedding "
                             "fixed; leave 'patch_embed' out of trained_modules")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"MaskedImageModelingConfig.mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"MaskedImageModelingConfig needs steps >= 1 and batch_size >= 1, got {self.steps}, "
                             f"{self.batch_size}")


@dataclass
class MaskedImageModelingResult:
    output_dir: Path
    loss_curve: list[float]
    # (step, mean masked L1 on the held-out images under one fixed mask); step 0 is the random tower
    heldout_l1: list[tuple[int, float]] = field(default_factory=list)
    heldout_l1_zero: float = float("nan")  # the same L1 of predicting 0 (pixels: the processor's mean pixel)
    seconds: float = 0.0  # training, without writing the folder


def merge_group_mask(grid_thw: torch.Tensor, merge: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask over the flattened patches of a batch: ``ratio`` of each image's merge x merge
    groups, whole. The Qwen2-VL image processor lays a group's patches out consecutively."""
    masks = []
    for t, h, w in grid_thw.tolist():
        groups = t * (h // merge) * (w // merge)
        hidden = torch.zeros(groups, dtype=torch.bool)
        hidden[torch.randperm(groups, generator=generator)[: max(1, round(ratio * groups))]] = True
        masks.append(hidden.repeat_interleave(merge * merge))
    return torch.cat(masks)


class _MaskedTower(torch.nn.Module):
    """The vision tower with a learned mask token and a linear prediction head; ``remove()`` takes
    the mask hook off the tower again."""

    def __init__(self, visual: Any, target: str = "pixels") -> None:
        super().__init__()
        self.visual = visual
        config = visual.config
        hidden = config.hidden_size
        self.mask_token = torch.nn.Parameter(torch.zeros(hidden))
        torch.nn.init.normal_(self.mask_token, std=config.initializer_range)
        self.target = target
        self.target_scale = 1.0  # "patch_embedding": set from held-out targets before training
        width = config.in_channels * config.patch_size**2 if target == "pixels" else hidden
        self.prediction_head = torch.nn.Linear(hidden, width)
        self._mask: torch.Tensor | None = None
        self._embedded: torch.Tensor | None = None  # the last masked pass's patch embedding, unmasked
        self._hook = visual.patch_embed.register_forward_hook(self._swap_in_mask_token)

    def remove(self) -> None:
        self._hook.remove()

    def _swap_in_mask_token(self, _module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self._mask is None:
            return output
        self._embedded = output.detach()
        return torch.where(self._mask[:, None], self.mask_token.to(output.dtype), output)

    def targets(self, pixel_values: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """What each patch's prediction is compared with (unmasked, no gradient); ``embedded``: the
        patches' embedding when a pass already computed it."""
        if self.target == "pixels":
            return _first_frame(pixel_values, self.visual.config)
        if embedded is None:
            with torch.no_grad():
                embedded = self.visual.patch_embed(pixel_values)
        return embedded / self.target_scale

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean L1 between the masked patches' predictions and their targets."""
        self._mask = mask
        try:
            hidden = self.visual(pixel_values, grid_thw=grid_thw).last_hidden_state
            target = self.targets(pixel_values, self._embedded)[mask]  # the pass's own patch embedding
        finally:
            self._mask, self._embedded = None, None
        return (self.prediction_head(hidden[mask]) - target).abs().mean()


def _first_frame(pixel_values: torch.Tensor, config: Any) -> torch.Tensor:
    # flattened patches are (channel, time, patch, patch); an image repeats one frame over time
    patch, frames = config.patch_size, config.temporal_patch_size
    return pixel_values.view(pixel_values.shape[0], -1, frames, patch, patch)[:, :, 0].flatten(1)


def _pixels(processor: Any, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    out = processor.image_processor(images=list(images), return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def _lr_factor(step: int, cfg: MaskedImageModelingConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _heldout_l1(tower: _MaskedTower, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    tower.eval()
    losses = [float(tower(pixels, grid, mask)) for pixels, grid, mask in batches]
    tower.train()
    return sum(losses) / len(losses)


def pretrain_vision_tower(
    backbone: str | Path,
    images: Sequence[Image.Image],
    heldout_images: Sequence[Image.Image],
    cfg: MaskedImageModelingConfig,
    output_dir: str | Path,
    log_every: int = 100,
) -> MaskedImageModelingResult:
    """Pretrain ``backbone``'s vision tower (``cfg.trained_modules``) on ``images`` and
    write the whole backbone, the rest unchanged, to ``output_dir`` (atomically: a killed run
    leaves no directory, and the next run starts over). ``heldout_images`` (none of ``images``)
    measure the masked L1 under one fixed mask; the LLM never runs."""
    if not images or not heldout_images:
        raise ValueError("pretrain_vision_tower needs training and held-out images")
    t0 = time.time()
    model, processor = load_backbone(str(backbone))
    visual = model.model.visual
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.visual.") and name.split(".")[2] in cfg.trained_modules
    config = visual.config
    with torch.random.fork_rng(devices=[]):  # mask token and head from cfg.seed, the caller's RNG untouched
        torch.manual_seed(cfg.seed)
        tower = _MaskedTower(visual, cfg.target)
    merge = config.spatial_merge_size
    generator = torch.Generator().manual_seed(cfg.seed)
    held_generator = torch.Generator().manual_seed(cfg.seed + 1)
    held = []
    for start in range(0, len(heldout_images), cfg.batch_size):
        pixels, grid = _pixels(processor, heldout_images[start:start + cfg.batch_size])
        held.append((pixels, grid, merge_group_mask(grid, merge, cfg.mask_ratio, held_generator)))
    if cfg.target == "patch_embedding":  # one fixed scale, so the loss reads alike across backbones
        tower.target_scale = float(torch.cat([tower.targets(p) for p, _, _ in held]).std())
    params = [p for p in tower.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    result = MaskedImageModelingResult(Path(output_dir), [])
    result.heldout_l1_zero = sum(float(tower.targets(p)[m].abs().mean()) for p, _, m in held) / len(held)
    result.heldout_l1.append((0, _heldout_l1(tower, held)))
    tower.train()
    order: list[int] = []
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:  # reshuffle per epoch
            order += torch.randperm(len(images), generator=generator).tolist()
        picked, order = order[: cfg.batch_size], order[cfg.batch_size:]
        flips = torch.rand(len(picked), generator=generator) < 0.5
        batch = [ImageOps.mirror(images[i]) if flip else images[i] for i, flip in zip(picked, flips.tolist())]
        pixels, grid = _pixels(processor, batch)
        loss = tower(pixels, grid, merge_group_mask(grid, merge, cfg.mask_ratio, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        result.loss_curve.append(loss.item())
        if (step + 1) % cfg.heldout_every == 0 or step + 1 == cfg.steps:
            result.heldout_l1.append((step + 1, _heldout_l1(tower, held)))
        if log_every and (step + 1) % log_every == 0:
            print(f"mim step {step + 1}: loss {sum(result.loss_curve[-log_every:]) / log_every:.4f}"
                  f" held-out {result.heldout_l1[-1]} ({time.time() - t0:.0f} s)", flush=True)
    tower.remove()
    model.eval()
    result.seconds = time.time() - t0
    with staged_dir(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / REPORT_FILE).write_text(json.dumps(
            {"config": asdict(cfg), "heldout_l1": result.heldout_l1, "heldout_l1_zero": result.heldout_l1_zero,
             "seconds": round(result.seconds, 1)}, indent=2))
    return result
