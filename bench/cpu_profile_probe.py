"""A few hundred SFT steps on the technical question only, to see whether a from-scratch backbone
can learn a set of degradations at all (issue 11: which modules train, at which rate, on which
degradations). Prints the loss and the held-out label accuracy every 50 steps.

Held-out = renders of other prompts than the training ones (the manifest's last rows); nothing
here reads a benchmark.

    .venv/bin/python bench/cpu_profile_probe.py --images ../shared/datasets/supagruen-sd15 \
        --methods gaussian_blur,downscale_upscale,jpeg_recompress --modules visual.merger,lm_head --lr 3e-3
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder with manifest.csv (supagruen-sd15 layout)")
    ap.add_argument("--methods", default="jpeg_recompress,gaussian_noise,gaussian_blur,downscale_upscale")
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--modules", default="visual.merger,lm_head")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--module-lr", default="", help="fragment=lr,... e.g. merger=3e-3,visual=3e-4")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--backbone", default="tiny:qwen3-vl-256")
    ap.add_argument("--models", default="/tmp/eliq-probe-models")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from eliq_pipeline import tiny
    from eliq_pipeline.critic.instruction_tuning import (
        SFTConfig, SFTExample, _label_loss, _lora_backbone, _param_groups, heldout_accuracy,
    )
    from eliq_pipeline.supervision.degradations import apply_degradation

    cfg = SFTConfig.tiny(modules_to_save=tuple(m for m in args.modules.split(",") if m), learning_rate=args.lr,
                         lora_rank=16, lora_alpha=32,
                         module_learning_rates=tuple((f, float(v)) for f, v in
                                                     (x.split("=") for x in args.module_lr.split(",") if x)))
    model, processor, _ = _lora_backbone(tiny.resolve(args.backbone, args.models), cfg, "cpu", torch.float32)
    root = Path(args.images)
    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    methods, levels = args.methods.split(","), [int(x) for x in args.levels.split(",")]

    def pairs(subset: list[dict], offset: int) -> list[SFTExample]:
        out = []
        for i, row in enumerate(subset):
            image = Image.open(root / row["file"]).convert("RGB")
            level = levels[(i // len(methods)) % len(levels)]
            negative, _ = apply_degradation(methods[i % len(methods)], image, np.random.default_rng(i + offset),
                                            level=level)
            out += [SFTExample(image, "tec", None, "high", i), SFTExample(negative, "tec", None, "low", i)]
        return out

    train, heldout = pairs(rows[:2400:8], 0), pairs(rows[3000::12], 10_000)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=args.lr)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    start, losses = time.time(), []
    for step in range(args.steps):
        model.train()
        chosen = np.random.default_rng(step).choice(len(train) // 2, 6, replace=False)
        batch = [train[2 * j + k] for j in chosen for k in (0, 1)]  # 6 clean / degraded pairs
        loss = _label_loss(model, processor, batch, [1.0] * len(batch), "cpu", True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 49:
            accuracy, _ = heldout_accuracy(model, processor, heldout, 16, "cpu")
            print(f"step {step + 1}: loss {np.mean(losses[-50:]):.4f}, held-out tec accuracy {accuracy['tec']:.3f} "
                  f"({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
