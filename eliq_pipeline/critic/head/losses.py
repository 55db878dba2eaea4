"""The margin ranking losses of the scoring head (paper 3.3.5, eq. 18-20)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from eliq_pipeline.critic.head.config import VISUAL_LOSSES, VisualLoss

if TYPE_CHECKING:
    from eliq_pipeline.critic.head.modules import ELIQScoringHead
    from eliq_pipeline.critic.head.ranking import TupleEmbeddings, TupleScores


def _hinge(margin: float, s_pos: Tensor, s_neg: Tensor) -> Tensor:
    return torch.clamp(margin - s_pos + s_neg, min=0.0)


def visual_ranking_loss(
    s_pos: Tensor, s_tec: Tensor, s_aes: Tensor, margin: float, mode: VisualLoss = "pairwise",
    aspects: Sequence[str] = ("tec", "aes"),
) -> Tensor:
    """Eq. 18. pairwise: mean over tuples of hinge(I+, I-_tec) + hinge(I+, I-_aes).
    hardest (ablation): mean of one hinge against the higher-scored negative, which is the
    hard-negative aggregation the paper argues gives sparser gradients. `aspects` keeps only the
    tec and/or aes negatives (the Table 5 ablations); with neither, the visual loss is zero."""
    negatives = [s for name, s in (("tec", s_tec), ("aes", s_aes)) if name in aspects]
    if not negatives:
        return s_pos.sum() * 0.0
    if mode == "pairwise":
        return sum(_hinge(margin, s_pos, s) for s in negatives).mean()
    if mode == "hardest":
        return _hinge(margin, s_pos, torch.stack(negatives).amax(dim=0)).mean()
    raise ValueError(f"visual loss mode must be one of {VISUAL_LOSSES}, got {mode!r}")


def alignment_ranking_loss(s_pos_ali: Tensor, s_neg_ali: Tensor, margin: float) -> Tensor:
    """Eq. 19: mean over tuples of max(0, m - s_ali(I+, p) + s_ali(I+, p-_ali))."""
    return _hinge(margin, s_pos_ali, s_neg_ali).mean()


def total_ranking_loss(
    scores: TupleScores, margin: float, mode: VisualLoss = "pairwise",
    aspects: Sequence[str] = ("tec", "aes", "ali"),
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 20: returns (L_vis + L_ali, L_vis, L_ali), restricted to the ranking terms of `aspects`."""
    l_vis = visual_ranking_loss(scores.pos_vis, scores.tecneg_vis, scores.aesneg_vis, margin, mode, aspects)
    l_ali = (alignment_ranking_loss(scores.pos_ali, scores.neg_ali, margin) if "ali" in aspects
             else scores.pos_ali.sum() * 0.0)
    return l_vis + l_ali, l_vis, l_ali


def cross_content_ranking_loss(scores: TupleScores, margin: float, mode: VisualLoss = "pairwise",
                               aspects: Sequence[str] = ("tec", "aes")) -> Tensor:
    """Eq. 18 with each row's I+ ranked over the visual negatives of the next row of the batch (a
    cyclic shift): a positive above the degraded copy of another image, not only of its own. Rows
    are shuffled tuples, so the other row is almost always another prompt; where it shares the
    positive the pair is still a clean image over a degraded one."""
    return visual_ranking_loss(scores.pos_vis, scores.tecneg_vis.roll(1), scores.aesneg_vis.roll(1), margin, mode,
                               aspects)


def severity_ranking_loss(model: ELIQScoringHead, tuples: TupleEmbeddings, pairs: dict[str, Tensor],
                          margin: float) -> Tensor:
    """Mean over the given (mild, strong) tuple-index pairs of every visual aspect of
    max(0, m - s_vis(mild negative) + s_vis(strong negative)); zero without pairs."""
    losses = []
    for aspect, index in pairs.items():
        if index.numel() == 0:
            continue
        rows = torch.cat([index[:, 0], index[:, 1]])
        s_vis, _ = model(*(z[rows] for z in tuples.negative(aspect)))
        mild, strong = s_vis[: index.shape[0]], s_vis[index.shape[0]:]
        losses.append(_hinge(margin, mild, strong))
    return torch.cat(losses).mean() if losses else tuples.pos_tec.sum() * 0.0
