"""How much the scoring head's own fit moves its scores (issue 11, attempts M, N and O in ARCHITECTURE.md):
several QQT heads, seeds 1..N, trained on the same frozen embeddings (``bench/cpu_profile_curves.py
--save-embeddings``), then compared without any human score:

- held-out tuple accuracy of each head;
- ``cross_content``: how often a held-out positive scores above the visual negative of another
  prompt, per aspect (attempt V's measure: a benchmark ranks across contents, a tuple within one);
- ``vis_ali_invariance``: Spearman of s_vis over the held-out positives with their own vs shuffled
  alignment tokens (1: s_vis ignores z_ali);
- head agreement: mean Spearman of s_vis between pairs of heads on the held-out positives, with
  their own z_ali and with z_ali set to the train mean, and between the mean of heads 1..N/2 and
  of the rest (attempt M's ensemble).

AGIQA-3K, with ``--agiqa`` when the file holds its embeddings, is printed after, as a record: never an
input. Leave it off until the attempt's rule has been applied to the held-out figures.

    .venv/bin/python bench/qqt_heads.py /tmp/point.pt --heads 8 --scorer shuffle_visual_alignment=false
    .venv/bin/python bench/qqt_heads.py /tmp/point.pt --heads 4 --scorer shuffle_visual_alignment=false \
        --scorer fixed_visual_alignment=true     # attempt O: s_vis on the train mean z_ali
    .venv/bin/python bench/qqt_heads.py /tmp/point.pt --heads 4 --scorer cross_content_weight=1.0 \
        --out v.json                             # attempt V: I+ also ranked over other rows' negatives
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from eliq_pipeline.core.atomic import write_text
from eliq_pipeline.core.profiles import get_profile
from eliq_pipeline.critic.head.modules import score_embeddings
from eliq_pipeline.critic.head.ranking import (cross_content_accuracy, distinct_positive_index, evaluate_ranking,
                                              visual_alignment_invariance)
from eliq_pipeline.critic.head.training import train_scoring_head
from eliq_pipeline.critic.severity import VISUAL_ASPECTS, severity_pairs
from eliq_pipeline.evaluation.metrics import correlation_report, srcc


class MeanOfHeads(torch.nn.Module):
    """s_vis and s_ali averaged over heads (attempt M's ensemble)."""

    def __init__(self, heads: list[torch.nn.Module]) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, *z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [head(*z) for head in self.heads]
        return tuple(torch.stack([o[i] for o in outs]).mean(0) for i in (0, 1))


def agreement(scores: dict[int, np.ndarray]) -> tuple[float, dict[int, float]]:
    """Mean pairwise Spearman, overall and per head."""
    pairs = {k: srcc(scores[k[0]], scores[k[1]]) for k in itertools.combinations(scores, 2)}
    per_head = {s: float(np.mean([v for k, v in pairs.items() if s in k])) for s in scores}
    return float(np.mean(list(pairs.values()))), per_head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", help="file written by cpu_profile_curves.py --save-embeddings")
    ap.add_argument("--heads", type=int, default=8, help="QQT seeds 1..N (N >= 2)")
    ap.add_argument("--scorer", action="append", default=[], metavar="KEY=JSON",
                    help="ScorerConfig override on top of the cpu profile's, e.g. shuffle_visual_alignment=false")
    ap.add_argument("--agiqa", action="store_true",
                    help="score the file's AGIQA-3K embeddings too (after the held-out rule was applied)")
    ap.add_argument("--out", default=None, help="JSON file of every head's held-out figures (and AGIQA-3K's, after)")
    args = ap.parse_args()
    if args.heads < 2:
        ap.error("--heads must be at least 2: agreement needs a pair")
    torch.set_num_threads(2)
    saved = torch.load(args.embeddings, weights_only=False)
    if args.agiqa and "agiqa_z" not in saved:
        ap.error(f"{args.embeddings} holds no AGIQA-3K embeddings (cpu_profile_curves.py --agiqa)")
    train, held, held_rows = saved["train"], saved["held"], saved["held_rows"]
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.scorer)}
    profile = get_profile("cpu")
    hidden = int(train.pos_tec.shape[1])
    pairs = {a: severity_pairs(saved["train_rows"], a) for a in VISUAL_ASPECTS}
    idx = distinct_positive_index(held_rows)
    z_pos = (held.pos_tec[idx], held.pos_aes[idx], held.pos_ali[idx])
    train_mean_ali = train.pos_ali.mean(0, keepdim=True)
    mean_ali = train_mean_ali.expand(len(idx), -1)
    print(f"{len(train)} train tuples, {len(idx)} held-out positives; scorer overrides {overrides}", flush=True)

    heads, own, neutral, accuracy, cross, invariances = {}, {}, {}, {}, {}, {}
    for seed in range(1, args.heads + 1):
        t0 = time.time()
        cfg = profile.scorer_config(hidden_size=hidden, seed=seed, **overrides)
        result = train_scoring_head(train, held, cfg, severity_pairs=pairs)
        heads[seed], accuracy[seed] = result.model, result.heldout_accuracies
        own[seed] = score_embeddings(result.model, *z_pos)[0]
        neutral[seed] = score_embeddings(result.model, z_pos[0], z_pos[1], mean_ali)[0]
        invariance = invariances[seed] = visual_alignment_invariance(result.model, held, held_rows)
        cross[seed] = cross_content_accuracy(result.model, held, held_rows)
        shown = "undefined (fewer than 3 held-out positives)" if invariance is None else f"{invariance:.3f}"
        print(f"head {seed}: held-out {json.dumps({k: round(v, 3) for k, v in accuracy[seed].items()})}, "
              f"cross_content {json.dumps({k: round(v, 3) for k, v in cross[seed].items()})}, "
              f"vis_ali_invariance {shown} ({time.time() - t0:.0f} s)", flush=True)

    print("label-free, held-out positives:")
    for label, scores in (("own z_ali", own), ("z_ali = train mean", neutral)):
        mean, per_head = agreement(scores)
        print(f"  head agreement, {label}: {mean:.3f}; per head {json.dumps({s: round(v, 3) for s, v in per_head.items()})}")
    halves = list(heads)[: args.heads // 2], list(heads)[args.heads // 2:]
    ensembles = [MeanOfHeads([heads[s] for s in half]).eval() for half in halves]
    print(f"  mean of heads {halves[0]} vs of {halves[1]}: "
          f"{srcc(*(score_embeddings(e, *z_pos)[0] for e in ensembles)):.3f}")
    cfg = profile.scorer_config(hidden_size=hidden, **overrides)
    for half, ensemble in zip(halves, ensembles):
        acc = evaluate_ranking(ensemble, held, cfg)[0]
        print(f"  held-out accuracy of the mean of heads {half}: {json.dumps({k: round(v, 4) for k, v in acc.items()})}")
    mean_accuracy = {k: float(np.mean([a[k] for a in accuracy.values()])) for k in accuracy[1]}
    mean_cross = {k: float(np.mean([c[k] for c in cross.values()])) for k in cross[1]}
    print(f"  mean held-out accuracy of single heads: {json.dumps({k: round(v, 4) for k, v in mean_accuracy.items()})}; "
          f"cross_content {json.dumps({k: round(v, 4) for k, v in mean_cross.items()})}")
    report = {"embeddings": args.embeddings, "scorer_overrides": overrides, "mean_heldout_accuracy": mean_accuracy,
              "mean_cross_content": mean_cross,
              "heads": {seed: {"heldout_accuracy": accuracy[seed], "cross_content": cross[seed],
                               "vis_ali_invariance": invariances[seed]} for seed in heads}}

    if args.agiqa:
        print("AGIQA-3K visual SRCC (read after; never an input):", flush=True)
        z, mos = saved["agiqa_z"], [float(m["mos_quality"]) for m in saved["agiqa_meta"]]
        z_mean = train_mean_ali.expand(z.shape[0], -1)
        fmt = lambda r: f"{r['srcc']:.3f} [{r['srcc_ci_low']:.3f}, {r['srcc_ci_high']:.3f}]"  # noqa: E731
        for seed, head in heads.items():
            mine = correlation_report(score_embeddings(head, z[:, 0], z[:, 1], z[:, 2])[0], mos)
            mean = correlation_report(score_embeddings(head, z[:, 0], z[:, 1], z_mean)[0], mos)
            report["heads"][seed]["agiqa_visual"] = mine
            print(f"  head {seed}: {fmt(mine)}; with z_ali = train mean {fmt(mean)}")
        for half, ensemble in zip(halves, ensembles):
            print(f"  mean of heads {half}: {fmt(correlation_report(score_embeddings(ensemble, z[:, 0], z[:, 1], z[:, 2])[0], mos))}")

    if args.out:
        write_text(args.out, json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
