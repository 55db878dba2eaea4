"""One attempt at a from-scratch critic on real images, outside Dagster, for choosing the `cpu`
profile's settings (issue 11): supagruen-sd15 positives, registered graded degradations, SFT of a
randomly initialised Qwen3-VL-architecture backbone, aspect embeddings, QQT.

Settings are chosen on held-out tuple accuracy only (prompt-disjoint held-out split of the
positives). `--agiqa` scores AGIQA-3K *after* an attempt's settings are fixed, to record its curve
next to the held-out figures; it is never an input to choosing settings.

    .venv/bin/python bench/real_image_attempt.py --images ../shared/datasets/supagruen-sd15 \
        --steps 600 --px 256 [--agiqa ../shared/datasets/agiqa-3k] --out /tmp/attempt-a.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder with manifest.csv (supagruen-sd15 layout)")
    ap.add_argument("--agiqa", default=None, help="AGIQA-3K folder, scored after training (never used to choose)")
    ap.add_argument("--max-positives", type=int, default=0, help="0: all")
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--modules", default="visual,lm_head")
    ap.add_argument("--module-lr", default="", help="fragment=lr,... e.g. visual=3e-4 (per-module learning rates)")
    ap.add_argument("--levels", default="1,2", help="severity levels of the conventional negatives")
    ap.add_argument("--tec", default="jpeg_recompress,gaussian_noise,gaussian_blur,downscale_upscale")
    ap.add_argument("--aes", default="colour_cast,desaturate,contrast_crush,exposure_shift")
    ap.add_argument("--ali-weight", type=float, default=0.25)
    ap.add_argument("--vision-depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--tuples-per-positive", type=int, default=2)
    ap.add_argument("--work", default="/tmp/eliq-attempt")
    ap.add_argument("--out", default=None)
    ap.add_argument("--qqt-train", type=int, default=3000, help="train tuples embedded for the QQT")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
    from eliq_pipeline.critic.head.config import ScorerConfig
    from eliq_pipeline.critic.head.modules import score_embeddings
    from eliq_pipeline.critic.head.ranking import TupleEmbeddings
    from eliq_pipeline.critic.head.training import train_scoring_head
    from eliq_pipeline.critic.instruction_tuning import SFTConfig, pseudo_label_examples, tune_backbone
    from eliq_pipeline.evaluation.metrics import correlation_report
    from eliq_pipeline.supervision.degradations import apply_degradation
    from eliq_pipeline.supervision.image_cache import stable_seed
    from eliq_pipeline.supervision.tuples import heldout_prompt_ids
    from eliq_pipeline.tiny.backbone import TinyBackboneSpec, build_tiny_backbone

    t0 = time.time()
    root = Path(args.images)
    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    if args.max_positives:
        rows = rows[: args.max_positives]
    prompts = sorted({r["prompt"] for r in rows})
    heldout = heldout_prompt_ids(prompts, 0.1, seed=1)
    levels = [int(x) for x in args.levels.split(",")]
    tec_methods = [(m, lv) for m in args.tec.split(",") for lv in levels]
    aes_methods = [(m, lv) for m in args.aes.split(",") for lv in levels]
    tuples = {"train": [], "heldout": []}
    rng_prompts = np.random.default_rng(0)
    for i, r in enumerate(rows):
        positive = Image.open(root / r["file"]).convert("RGB")
        if positive.size != (args.px, args.px):
            positive = positive.resize((args.px, args.px), Image.LANCZOS)
        for k in range(args.tuples_per_positive):
            tm, tl = tec_methods[(i * args.tuples_per_positive + k) % len(tec_methods)]
            am, al = aes_methods[(i * args.tuples_per_positive + k + i // 3) % len(aes_methods)]
            rng = np.random.default_rng(stable_seed(r["file"], k))
            tec, _ = apply_degradation(tm, positive, rng, level=tl)
            aes, _ = apply_degradation(am, positive, rng, level=al)
            other = prompts[int(rng_prompts.integers(len(prompts)))]
            while other == r["prompt"]:
                other = prompts[int(rng_prompts.integers(len(prompts)))]
            split = "heldout" if r["prompt"] in heldout else "train"
            tuples[split].append({"positive": positive, "tec_negative": tec, "aes_negative": aes,
                                  "prompt": r["prompt"], "mismatched_prompt": other, "tec_method": f"{tm}@{tl}",
                                  "aes_method": f"{am}@{al}"})
    print(f"data: {len(tuples['train'])} train / {len(tuples['heldout'])} held-out tuples in {time.time() - t0:.0f}s",
          flush=True)

    tokens = (args.px // 32) ** 2
    spec = TinyBackboneSpec(
        text_hidden_size=args.width, text_layers=2, text_heads=4, text_kv_heads=2, text_head_dim=args.width // 4,
        text_intermediate_size=2 * args.width, vision_depth=args.vision_depth, vision_hidden_size=args.width,
        vision_heads=4, vision_intermediate_size=2 * args.width, num_position_embeddings=max(64, (args.px // 16) ** 2),
        min_pixels=tokens * 1024, max_pixels=tokens * 1024)
    work = Path(args.work)
    base = work / f"base-{args.px}-{args.width}-{args.vision_depth}"
    if not base.exists():
        build_tiny_backbone(base, seed=0, spec=spec)
    train_ex = pseudo_label_examples(tuples["train"])
    held_ex = pseudo_label_examples(tuples["heldout"])
    cfg = SFTConfig.tiny(max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, warmup_steps=20,
                         modules_to_save=tuple(m for m in args.modules.split(",") if m), lora_rank=16, lora_alpha=32,
                         checkpoint_every=10_000,
                         module_learning_rates=tuple((f, float(v)) for f, v in
                                                     (x.split("=") for x in args.module_lr.split(",") if x)),
                         aspect_loss_weights=(("tec", 1.0), ("aes", 1.0), ("ali", args.ali_weight)))
    t1 = time.time()
    tag = (f"sft-{args.px}-{args.width}-{args.vision_depth}-{args.steps}-{args.lr}-{args.modules}-{args.module_lr}-"
           f"{args.levels}-{args.ali_weight}")
    result = tune_backbone(str(base), train_ex, held_ex, cfg, work / tag, log=lambda m: print(m, flush=True))
    sft_s = time.time() - t1
    curve = result.loss_curve
    print(f"SFT {args.steps} steps in {sft_s:.0f}s; loss first/last 50: {np.mean(curve[:50]):.3f} / "
          f"{np.mean(curve[-50:]):.3f}; held-out label accuracy {result.heldout_accuracy}", flush=True)

    model, processor = result.model, result.processor

    def embed(items):
        images = [im for im, _, _ in items]
        return extract_aspect_embeddings(model, processor, images, [a for _, a, _ in items],
                                         [p for _, _, p in items], batch_size=16)

    def tuple_embeddings(ts):
        fields = {}
        for name, pick in {
            "pos_tec": lambda t: (t["positive"], "tec", None), "pos_aes": lambda t: (t["positive"], "aes", None),
            "pos_ali": lambda t: (t["positive"], "ali", t["prompt"]),
            "neg_ali": lambda t: (t["positive"], "ali", t["mismatched_prompt"]),
            "tecneg_tec": lambda t: (t["tec_negative"], "tec", None),
            "tecneg_aes": lambda t: (t["tec_negative"], "aes", None),
            "aesneg_tec": lambda t: (t["aes_negative"], "tec", None),
            "aesneg_aes": lambda t: (t["aes_negative"], "aes", None),
        }.items():
            fields[name] = embed([pick(t) for t in ts])
        return TupleEmbeddings(**fields)

    t2 = time.time()
    rng = np.random.default_rng(0)
    train_idx = rng.permutation(len(tuples["train"]))[: args.qqt_train]
    train_emb = tuple_embeddings([tuples["train"][i] for i in train_idx])
    held_emb = tuple_embeddings(tuples["heldout"])
    scorer = ScorerConfig(hidden_size=args.width, seed=1)
    head = train_scoring_head(train_emb, held_emb, scorer, log=lambda m: None)
    print(f"QQT in {time.time() - t2:.0f}s; held-out tuple accuracy {head.heldout_accuracies}", flush=True)
    report = {"args": vars(args), "sft_seconds": sft_s, "loss_first50": float(np.mean(curve[:50])),
              "loss_last50": float(np.mean(curve[-50:])), "sft_heldout_label_accuracy": result.heldout_accuracy,
              "qqt_heldout_accuracy": head.heldout_accuracies, "total_seconds_before_benchmark": time.time() - t0}
    # per-method held-out accuracy of s_vis (which degradations the critic sees)
    s_pos, _ = score_embeddings(head.model, held_emb.pos_tec, held_emb.pos_aes, held_emb.pos_ali)
    s_tec, _ = score_embeddings(head.model, held_emb.tecneg_tec, held_emb.tecneg_aes, held_emb.pos_ali)
    s_aes, _ = score_embeddings(head.model, held_emb.aesneg_tec, held_emb.aesneg_aes, held_emb.pos_ali)
    per_method: dict[str, list[bool]] = {}
    for t, p, n1, n2 in zip(tuples["heldout"], s_pos, s_tec, s_aes):
        per_method.setdefault(t["tec_method"], []).append(bool(p > n1))
        per_method.setdefault(t["aes_method"], []).append(bool(p > n2))
    report["heldout_accuracy_per_method"] = {m: round(float(np.mean(v)), 3) for m, v in sorted(per_method.items())}
    print("held-out s_vis accuracy per method:", report["heldout_accuracy_per_method"], flush=True)

    if args.agiqa:
        agiqa = Path(args.agiqa)
        data = list(csv.DictReader(open(agiqa / "data.csv", encoding="utf-8")))
        images = [Image.open(agiqa / "images" / d["name"]).convert("RGB") for d in data]
        z = {a: embed([(im, a, d["prompt"] if a == "ali" else None) for im, d in zip(images, data)])
             for a in ("tec", "aes", "ali")}
        s_vis, s_ali = score_embeddings(head.model, z["tec"], z["aes"], z["ali"])
        q = np.array([float(d["mos_quality"]) for d in data])
        al = np.array([float(d["mos_align"]) for d in data])
        report["agiqa_visual"] = correlation_report(s_vis, q)
        report["agiqa_alignment"] = correlation_report(s_ali, al)
        print("AGIQA-3K visual:", {k: round(v, 3) for k, v in report["agiqa_visual"].items()}, flush=True)
        print("AGIQA-3K alignment:", {k: round(v, 3) for k, v in report["agiqa_alignment"].items()}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
