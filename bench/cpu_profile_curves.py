"""Learning curves of the `cpu` profile on real images (issue 11): at every ``--eval-every`` SFT
steps, the held-out SFT label accuracy per aspect, the QQT's held-out tuple accuracy and, when
``--agiqa`` is given, AGIQA-3K label-free SRCC / PLCC (bootstrap 95% intervals) of s_vis and s_ali.

Everything is the pipeline's own code with the profile's settings, outside Dagster: imported
positives (every manifest row its own positive, prompts from the manifest), ``build_negatives``
and ``build_tuples`` into a local store under ``--work`` (cached, so a rerun skips them), then
``tune_backbone`` with ``CPU.sft_config``. The SFT runs in stages: its learning rate is constant
after the warmup, so stopping at step s and resuming to s + k is the trajectory of one
uninterrupted run (``SFTConfig``), and every point of a curve belongs to the same run. At each
point the QQT is trained afresh on that checkpoint's embeddings (``--qqt-train`` tuples, all
held-out tuples), as ``qqt_model`` does.

AGIQA-3K is read at every point of a run whose settings were fixed before it started; it records
how a choice transfers and is never an input to one. Settings are chosen on held-out label
accuracy.

    .venv/bin/python bench/cpu_profile_curves.py --images ../shared/datasets/supagruen-sd15 \
        --agiqa ../shared/datasets/agiqa-3k --steps 4000 --eval-every 500 \
        --out curves.json --plot curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eliq_pipeline import tiny
from eliq_pipeline.core.atomic import write_bytes, write_text
from eliq_pipeline.core.profiles import get_profile
from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.critic import data as critic_data
from eliq_pipeline.critic.backbone import backbone_fingerprint
from eliq_pipeline.critic.embedding_cache import EmbeddingCache
from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
from eliq_pipeline.critic.head.modules import score_embeddings
from eliq_pipeline.critic.head.training import train_scoring_head
from eliq_pipeline.critic.instruction_tuning import SFTExample, label_probabilities, pseudo_label_examples, tune_backbone
from eliq_pipeline.critic.head.ranking import cross_content_accuracy, severity_order, visual_alignment_invariance
from eliq_pipeline.critic.severity import VISUAL_ASPECTS, severity_pairs
from eliq_pipeline.critic.vision_pretraining import REPORT_FILE as MIM_REPORT_FILE
from eliq_pipeline.critic.vision_pretraining import MaskedImageModelingConfig, pretrain_vision_tower
from eliq_pipeline.evaluation.metrics import correlation_report
from eliq_pipeline.supervision.image_cache import get_image, put_image, stable_hash
from eliq_pipeline.supervision.negatives import build_negatives
from eliq_pipeline.supervision.prompts import prompt_id_for, prompts_from_import
from eliq_pipeline.supervision.tuples import build_tuples, seeded_subset

ERA_SEED = 1  # eras-cpu.yaml's sd15-real
GENERATOR = "supagruen-sd15"


def supervision(images: Path, store: LocalArtifactStore, profile, max_positives: int) -> list[dict]:
    """The era's comparison tuples, built by the pipeline's functions with the profile's settings."""
    rows = list(csv.DictReader(open(images / "manifest.csv", encoding="utf-8")))
    if max_positives:
        rows = rows[:max_positives]
    bank = prompts_from_import([{"prompt": r["prompt"], "category": r.get("category", "")} for r in rows])
    positives = []
    for r in rows:
        sha = put_image(store, Image.open(images / r["file"]).convert("RGB"))
        positives.append({"image_sha256": sha, "prompt_id": prompt_id_for(r["prompt"]), "prompt": r["prompt"],
                          "generator": GENERATOR})
    negatives, _, _ = build_negatives(store, positives, bank, [], ERA_SEED,
                                      technical_methods=profile.technical_methods,
                                      aesthetic_methods=profile.aesthetic_methods,
                                      levels=profile.severity_levels, per_aspect=profile.negatives_per_aspect)
    return build_tuples(positives, negatives, profile.heldout_fraction, ERA_SEED, profile.tuples_per_positive,
                        families=profile.negative_families, exclude_methods=profile.tuple_exclude_methods)


def embed_tuples(model, processor, rows: list[dict], load, own_ali: bool, batch: int, work: Path) -> EmbeddingCache:
    """Every query of ``rows`` into a fresh embedding cache under ``work`` (as ``aspect_embeddings``
    does, each image decoded once per shard); ``critic_data.tuple_embeddings`` reads it back."""
    cache = EmbeddingCache(LocalArtifactStore(work), "point")
    cache.ensure(critic_data.all_tuple_requests(rows, own_ali), load,
                 lambda images, aspects, prompts: extract_aspect_embeddings(model, processor, images, aspects, prompts,
                                                                            batch_size=batch))
    return cache


def tec_accuracy_by_method(model, processor, rows: list[dict], load, batch: int) -> dict[str, float]:
    """Held-out technical negatives answered "low" (P(high) < 0.5), per method and level."""
    examples = [SFTExample(load(r["tec_sha256"]), "tec", None, "low") for r in rows]
    p_high = label_probabilities(model, processor, examples, batch).tolist()
    right: dict[str, list[bool]] = {}
    for row, p in zip(rows, p_high):
        right.setdefault(f"{row['tec_method']}@{row['tec_severity']}", []).append(p < 0.5)
    return {key: round(sum(v) / len(v), 3) for key, v in sorted(right.items())}


def agiqa_embeddings(model, processor, agiqa: list[tuple[Image.Image, dict]], batch: int) -> torch.Tensor:
    """(images, 3, hidden): z_tec, z_aes, z_ali of every AGIQA-3K image."""
    images = [im for im, _ in agiqa]
    queries = [(i, a) for i in range(len(images)) for a in ("tec", "aes", "ali")]  # one image's questions adjacent
    z = extract_aspect_embeddings(model, processor, [images[i] for i, _ in queries], [a for _, a in queries],
                                  [agiqa[i][1]["prompt"] if a == "ali" else None for i, a in queries], batch_size=batch)
    return z.view(len(images), 3, -1)


def agiqa_point(head, z: torch.Tensor, agiqa: list[tuple[Image.Image, dict]]) -> dict:
    s_vis, s_ali = score_embeddings(head, z[:, 0], z[:, 1], z[:, 2])
    return {"visual": correlation_report(s_vis, [float(d["mos_quality"]) for _, d in agiqa]),
            "alignment": correlation_report(s_ali, [float(d["mos_align"]) for _, d in agiqa])}


def plot(points: list[dict], loss_curve: list[float], title: str) -> bytes:
    """One figure: held-out accuracies (SFT labels, QQT tuples) and AGIQA-3K SRCC against SFT steps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    # the QQT ranks s_vis of I+ over each visual negative, and s_ali of I+ over the mismatched prompt
    for colour, (aspect, qqt_key) in zip(("C0", "C1", "C2"), (("tec", "vis_vs_tec"), ("aes", "vis_vs_aes"),
                                                              ("ali", "ali"))):
        axes[0].plot(steps, [p["sft_heldout_label_accuracy"].get(aspect, np.nan) for p in points], "o-",
                     color=colour, label=f"SFT labels {aspect}")
        axes[0].plot(steps, [p["qqt_heldout_accuracy"].get(qqt_key, np.nan) for p in points], "s--",
                     color=colour, label=f"QQT tuples {qqt_key}")
    for colour, aspect in (("C3", "tec"), ("C4", "aes")):  # graded series: mild scored above strong
        for stage, marker in (("sft", "^-"), ("qqt", "v--")):
            axes[0].plot(steps, [p.get("heldout_severity_order", {}).get(stage, {}).get(aspect, np.nan) for p in points],
                         marker, color=colour, label=f"{stage.upper()} severity order {aspect}")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    axes[0].set(title="held-out accuracy", xlabel="SFT step", ylim=(0.3, 1.0))
    axes[0].legend(fontsize=7)
    for key, label in (("visual", "s_vis vs quality MOS"), ("alignment", "s_ali vs alignment MOS")):
        if all(key in p.get("agiqa", {}) for p in points) and points and "agiqa" in points[0]:
            mid = [p["agiqa"][key]["srcc"] for p in points]
            low = [p["agiqa"][key]["srcc_ci_low"] for p in points]
            high = [p["agiqa"][key]["srcc_ci_high"] for p in points]
            axes[1].plot(steps, mid, "o-", label=label)
            axes[1].fill_between(steps, low, high, alpha=0.2)
    axes[1].axhline(0.0, color="grey", lw=0.8, ls=":")
    axes[1].set(title="AGIQA-3K label-free SRCC (95% CI)", xlabel="SFT step")
    axes[1].legend(fontsize=7)
    axes[2].plot(np.arange(1, len(loss_curve) + 1), loss_curve, lw=0.4, alpha=0.4, label="per step")
    if len(loss_curve) >= 100:
        smooth = np.convolve(loss_curve, np.ones(50) / 50, mode="valid")
        axes[2].plot(np.arange(50, len(loss_curve) + 1), smooth, label="mean of 50")
    axes[2].set(title="SFT loss", xlabel="SFT step")
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="import folder with manifest.csv (supagruen-sd15 layout)")
    ap.add_argument("--agiqa", default=None, help="AGIQA-3K folder, scored at each point (never used to choose)")
    ap.add_argument("--steps", type=int, default=None, help="last SFT step (default: the profile's max_steps)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-at", default=None, metavar="STEPS",
                    help="comma-separated SFT steps to measure at instead of every --eval-every, e.g. 2000,2500,3000")
    ap.add_argument("--max-positives", type=int, default=0, help="first N manifest rows; 0: all")
    ap.add_argument("--agiqa-stride", type=int, default=1, help="every Nth AGIQA-3K image (1: all)")
    ap.add_argument("--qqt-train", type=int, default=2000, help="train tuples the QQT sees at each point; 0: all")
    ap.add_argument("--qqt-seeds", default="", metavar="SEEDS",
                    help="comma-separated extra QQT seeds trained at each point on the same embeddings (and "
                         "scored on the same AGIQA-3K embeddings): how much the head's fit alone moves a figure")
    ap.add_argument("--sft", action="append", default=[], metavar="KEY=JSON",
                    help="override one of the profile's SFT settings, e.g. learning_rate=1e-3 (an attempt)")
    ap.add_argument("--scorer", action="append", default=[], metavar="KEY=JSON",
                    help="override one of the profile's scorer (QQT) settings, e.g. severity_ranking_weight=1.0")
    ap.add_argument("--profile", action="append", default=[], metavar="KEY=JSON",
                    help="override a profile setting, e.g. technical_methods='[\"gaussian_blur\", \"elastic_warp\"]'")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed S: random backbone init S, SFT and QQT seed ERA_SEED + S; the supervision "
                         "(negatives, split, tuples) stays the era's. 0 is the profile's own run")
    ap.add_argument("--mim-steps", type=int, default=0,
                    help="pretrain the vision tower by masked image modelling on the train split's positives for "
                         "this many steps before the SFT (critic/vision_pretraining.py; attempt Q); 0: off")
    ap.add_argument("--mim", action="append", default=[], metavar="KEY=JSON",
                    help="override a MaskedImageModelingConfig setting, e.g. mask_ratio=0.5")
    ap.add_argument("--work", default="/tmp/eliq-cpu-curves")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--save-embeddings", default=None, metavar="FILE",
                    help="torch file of the last point's QQT train / held-out tuple embeddings, their rows and the "
                         "AGIQA-3K embeddings, for bench/qqt_heads.py")
    args = ap.parse_args()
    torch.set_num_threads(2)

    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.sft)}
    for key in ("modules_to_save", "aspect_loss_weights", "module_learning_rates"):
        if key in overrides:  # JSON lists -> the tuples SFTConfig holds
            overrides[key] = tuple(tuple(v) if isinstance(v, list) else v for v in overrides[key])
    profile = get_profile("cpu")
    scorer_overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.scorer)}
    profile_overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.profile)}
    profile = replace(profile, sft={**profile.sft, **overrides}, scorer={**profile.scorer, **scorer_overrides},
                      **{k: tuple(v) if isinstance(v, list) else v for k, v in profile_overrides.items()})
    last = args.steps or profile.sft["max_steps"]
    stages = list(range(args.eval_every, last, args.eval_every)) + [last]
    if args.eval_at:
        stages = sorted({int(step) for step in args.eval_at.split(",")} | {last})
        if stages[0] < 1 or stages[-1] > last:  # a point past the last step would train beyond it
            ap.error(f"--eval-at steps must lie in 1..{last} (the last SFT step), got {args.eval_at}")
    work = Path(args.work)
    store = LocalArtifactStore(work / "store")
    t0 = time.time()
    tuples = supervision(Path(args.images), store, profile, args.max_positives)
    train_rows = [r for r in tuples if r["split"] == "train"]
    held_rows = [r for r in tuples if r["split"] == "heldout"]
    qqt_rows = train_rows
    if args.qqt_train and len(train_rows) > args.qqt_train:
        keep = seeded_subset([r["tuple_id"] for r in train_rows], args.qqt_train, ERA_SEED)
        qqt_rows = [r for r in train_rows if r["tuple_id"] in keep]
    print(f"supervision: {len(train_rows)} train / {len(held_rows)} held-out tuples in {time.time() - t0:.0f} s",
          flush=True)

    load = lambda sha: get_image(store, sha)  # noqa: E731
    sft_train = pseudo_label_examples(critic_data.sft_tuples(train_rows, load))
    sft_held = pseudo_label_examples(critic_data.sft_tuples(held_rows, load))
    agiqa = []
    if args.agiqa:
        root = Path(args.agiqa)
        agiqa = [(Image.open(root / "images" / d["name"]).convert("RGB"), d)
                 for d in list(csv.DictReader(open(root / "data.csv", encoding="utf-8")))[::args.agiqa_stride]]
    base = tiny.resolve(profile.backbone, work / "models", init_seed=args.seed)
    train_seed = ERA_SEED + args.seed
    mim_report = None
    if args.mim_steps:
        mim_cfg = MaskedImageModelingConfig(steps=args.mim_steps, seed=train_seed,
                                            **{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.mim)})
        key = f"{backbone_fingerprint(base).split(':')[-1][:12]}-{stable_hash(asdict(mim_cfg), length=12)}"
        mim_dir = work / f"mim-{key}"
        if not mim_dir.is_dir():  # the positives of each split, each image once
            train_pos = {r["positive_sha256"]: None for r in train_rows}
            held_pos = list({r["positive_sha256"]: None for r in held_rows})[:64]
            pretrain_vision_tower(base, [load(sha) for sha in train_pos], [load(sha) for sha in held_pos],
                                  mim_cfg, mim_dir)
        mim_report = json.loads((mim_dir / MIM_REPORT_FILE).read_text())
        print(f"masked image modelling: {json.dumps(mim_report)}", flush=True)
        base = str(mim_dir)
    qqt_seeds = [int(seed) for seed in args.qqt_seeds.split(",") if seed]
    own_ali, batch = profile.embed_negative_alignment, profile.embed_batch_size
    points: list[dict] = []
    for step in stages:
        t1 = time.time()
        cfg = profile.sft_config(seed=train_seed, max_steps=step)
        result = tune_backbone(base, sft_train, sft_held, cfg, work / "sft")  # resumes from the last point
        sft_s = time.time() - t1
        model, processor = result.model, result.processor
        with tempfile.TemporaryDirectory(dir=work) as point_dir:  # this checkpoint's embeddings only
            cache = embed_tuples(model, processor, qqt_rows + held_rows, load, own_ali, batch, Path(point_dir))
            train_emb = critic_data.tuple_embeddings(cache, qqt_rows, own_ali)
            held_emb = critic_data.tuple_embeddings(cache, held_rows, own_ali)
        pairs = {a: severity_pairs(qqt_rows, a) for a in VISUAL_ASPECTS}
        heads = {seed: train_scoring_head(train_emb, held_emb,
                                          profile.scorer_config(hidden_size=int(train_emb.pos_tec.shape[1]), seed=seed),
                                          severity_pairs=pairs)
                 for seed in [train_seed, *qqt_seeds]}
        head = heads[train_seed]
        point = {"step": step, "loss_mean_last_100": float(np.mean(result.loss_curve[-100:])),
                 "sft_heldout_label_accuracy": result.heldout_accuracy,
                 "qqt_heldout_accuracy": head.heldout_accuracies, "sft_seconds": round(sft_s, 1),
                 "qqt_cross_content_accuracy": cross_content_accuracy(head.model, held_emb, held_rows),
                 "sft_heldout_tec_accuracy_by_method": tec_accuracy_by_method(model, processor, held_rows, load, batch),
                 "heldout_severity_order": {"sft": result.heldout_severity_order,
                                            "qqt": severity_order(head.model, held_emb, held_rows)}}
        if agiqa:
            z_agiqa = agiqa_embeddings(model, processor, agiqa, batch)  # once, for every head
            point["agiqa"] = agiqa_point(head.model, z_agiqa, agiqa)
        invariance = {seed: visual_alignment_invariance(other.model, held_emb, held_rows) for seed, other in heads.items()}
        if qqt_seeds:
            point["qqt_seeds"] = [{"seed": seed, "qqt_heldout_accuracy": other.heldout_accuracies,
                                   "vis_ali_invariance": invariance[seed],
                                   **({"agiqa": agiqa_point(other.model, z_agiqa, agiqa)} if agiqa else {})}
                                  for seed, other in heads.items()]
        point["vis_ali_invariance"] = invariance[train_seed]
        if args.save_embeddings and step == stages[-1]:
            torch.save({"train": train_emb, "held": held_emb, "train_rows": qqt_rows, "held_rows": held_rows,
                        **({"agiqa_z": z_agiqa, "agiqa_meta": [d for _, d in agiqa]} if agiqa else {}),
                        "sft_heldout": result.heldout_accuracy, "scorer": profile.scorer}, args.save_embeddings)
        point["seconds"] = round(time.time() - t1, 1)
        points.append(point)
        line = {k: {a: round(v, 3) for a, v in point[k].items()}
                for k in ("sft_heldout_label_accuracy", "qqt_heldout_accuracy", "qqt_cross_content_accuracy")}
        line["severity_order"] = {k: {a: round(v, 3) for a, v in d.items()}
                                  for k, d in point["heldout_severity_order"].items()}
        if point["vis_ali_invariance"] is not None:  # None below three held-out positives
            line["vis_ali_invariance"] = round(point["vis_ali_invariance"], 3)
        if agiqa:
            vis = point["agiqa"]["visual"]
            line["agiqa_vis_srcc"] = f"{vis['srcc']:.3f} [{vis['srcc_ci_low']:.3f}, {vis['srcc_ci_high']:.3f}]"
            line["agiqa_ali_srcc"] = round(point["agiqa"]["alignment"]["srcc"], 3)
        if qqt_seeds and agiqa:
            line["agiqa_vis_srcc_by_qqt_seed"] = {p["seed"]: round(p["agiqa"]["visual"]["srcc"], 3)
                                                  for p in point["qqt_seeds"]}
        print(f"step {step}: {json.dumps(line)} ({point['seconds']:.0f} s)", flush=True)
        report = {"args": vars(args), "masked_image_modelling": mim_report, "profile_overrides": profile_overrides,
                  "sft_overrides": overrides, "scorer_overrides": scorer_overrides, "train_tuples": len(train_rows),
                  "heldout_tuples": len(held_rows), "qqt_train_tuples": len(qqt_rows), "points": points,
                  "loss_curve": [round(x, 4) for x in result.loss_curve]}
        if args.out:  # after every point, so a stopped run keeps what it measured
            write_text(args.out, json.dumps(report, indent=1, default=float))
        if args.plot:
            changed = {**profile_overrides, **overrides, **{f"qqt.{k}": v for k, v in scorer_overrides.items()},
                       **({"seed": args.seed} if args.seed else {}),
                       **({"mim_steps": args.mim_steps} if args.mim_steps else {})}
            title = f"cpu profile{' + ' + json.dumps(changed) if changed else ''}: curves of one run"
            write_bytes(args.plot, plot(points, result.loss_curve, title))
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
