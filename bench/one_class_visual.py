"""Attempt W (issue 11, ARCHITECTURE.md "Resolution, and NIQE's recipe on the critic's embeddings"):
NIQE's recipe on the critic's own visual embeddings instead of a trained head. One Gaussian is
fitted on the train positives' [z_tec; z_aes], and an image's visual score is minus its Mahalanobis
distance to it. Nothing learns from the negatives here; they only measure.

It reads the embeddings that ``bench/cpu_profile_curves.py --save-embeddings`` saves and reports
held-out tuple accuracy and cross-content accuracy, as ``bench/qqt_heads.py`` does for QQT heads.
The covariance is shrunk toward a scaled identity, with a weight fixed before any run (0.1).
A Gaussian of 256 dimensions is a few lines of torch; scikit-learn's estimators would add a
dependency for them.

AGIQA-3K is printed only with ``--agiqa``, as a record after the held-out rule was applied.

    .venv/bin/python bench/one_class_visual.py emb-s0.pt emb-s1.pt emb-s2.pt --out w.json
"""

from __future__ import annotations

import argparse
import json

import torch

from eliq_pipeline.core.atomic import write_text
from eliq_pipeline.critic.head.modules import score_embeddings
from eliq_pipeline.critic.head.ranking import cross_content_accuracy, distinct_positive_index, negative_visual_scores
from eliq_pipeline.critic.severity import VISUAL_ASPECTS
from eliq_pipeline.evaluation.metrics import correlation_report

SHRINK = 0.1  # fixed before any run: no setting here is chosen on a figure


class OneClassVisual(torch.nn.Module):
    """s_vis = -Mahalanobis distance of [z_tec; z_aes] to the positives' Gaussian; s_ali = 0.
    The (z_tec, z_aes, z_ali) -> (s_vis, s_ali) signature of the QQT head, so the held-out measures
    apply to it unchanged."""

    def __init__(self, z: torch.Tensor, shrink: float = SHRINK) -> None:
        super().__init__()
        z = z.double()
        mu = z.mean(0)
        cov = torch.cov((z - mu).T)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype)
        cov = (1 - shrink) * cov + shrink * torch.trace(cov) / cov.shape[0] * eye
        self.register_buffer("mu", mu)
        self.register_buffer("precision", torch.linalg.inv(cov))

    def forward(self, z_tec: torch.Tensor, z_aes: torch.Tensor, z_ali: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([z_tec, z_aes], -1).double() - self.mu
        distance = torch.einsum("bi,ij,bj->b", x, self.precision, x).clamp_min(0).sqrt()
        return (-distance).float(), torch.zeros(len(x))


def held_out_figures(saved: dict, agiqa: bool) -> dict:
    train, held, rows = saved["train"], saved["held"], saved["held_rows"]
    idx = distinct_positive_index(saved["train_rows"])
    model = OneClassVisual(torch.cat([train.pos_tec[idx], train.pos_aes[idx]], -1))

    positive = score_embeddings(model, held.pos_tec, held.pos_aes, held.pos_ali)[0]
    figures = {"train_positives": len(idx),
               **{f"vis_vs_{aspect}": float((positive > negative_visual_scores(model, held, aspect)).mean())
                  for aspect in VISUAL_ASPECTS},
               "cross_content": cross_content_accuracy(model, held, rows)}
    if agiqa:
        z = saved["agiqa_z"]
        figures["agiqa_visual"] = correlation_report(score_embeddings(model, z[:, 0], z[:, 1], z[:, 2])[0],
                                                     [float(m["mos_quality"]) for m in saved["agiqa_meta"]])
    return figures


def rounded(value: object) -> object:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", nargs="+", help="files written by cpu_profile_curves.py --save-embeddings")
    ap.add_argument("--agiqa", action="store_true",
                    help="score the files' AGIQA-3K embeddings too (after the held-out rule was applied)")
    ap.add_argument("--out", default=None, help="JSON file of the figures per embeddings file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    report = {}
    for path in args.embeddings:
        saved = torch.load(path, weights_only=False)
        if args.agiqa and "agiqa_z" not in saved:
            ap.error(f"{path} holds no AGIQA-3K embeddings (cpu_profile_curves.py --agiqa)")
        report[path] = figures = held_out_figures(saved, args.agiqa)
        shown = {k: v for k, v in figures.items() if k != "agiqa_visual"}
        print(f"{path}: {json.dumps(rounded(shown))}", flush=True)
        if args.agiqa:
            r = figures["agiqa_visual"]
            print(f"  AGIQA-3K visual SRCC (read after; never an input): {r['srcc']:.3f} "
                  f"[{r['srcc_ci_low']:.3f}, {r['srcc_ci_high']:.3f}]", flush=True)
    if args.out:
        write_text(args.out, json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
