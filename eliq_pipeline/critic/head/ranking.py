"""Comparison tuples as embeddings, their five scores (eq. 17), and held-out ranking accuracy: how
often a positive scores above its technical, aesthetic and alignment negatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.losses import total_ranking_loss
from eliq_pipeline.critic.head.modules import ELIQScoringHead, score_embeddings
from eliq_pipeline.critic.severity import VISUAL_ASPECTS, severity_order_accuracy
from eliq_pipeline.evaluation.metrics import srcc


_REQUIRED_TUPLE_FIELDS = (
    "pos_tec", "pos_aes", "pos_ali",
    "tecneg_tec", "tecneg_aes",
    "aesneg_tec", "aesneg_aes",
    "neg_ali",
)  # fmt: skip


@dataclass
class TupleEmbeddings:
    """Frozen embeddings of N comparison tuples (I+, I-_tec, I-_aes, p, p-_ali), row i = tuple i.

    pos_ali is z_ali(I+, p) and neg_ali is z_ali(I+, p-_ali). For s_vis of a visual negative the
    QQT still needs an alignment token: tecneg_ali / aesneg_ali hold z_ali(I-, p) when the caller
    embedded it; when left None, pos_ali is reused. Reusing it costs no extra backbone pass and
    makes the two sides of a visual pair differ only in z_vis, so the visual ranking cannot lean on
    the alignment token; supplying z_ali(I-, p) matches inference more closely (there z_ali is
    always computed for the scored image). Both are valid; the choice is the caller's.
    Accepts numpy arrays or tensors; stores float32 tensors of shape [N, h].
    """

    pos_tec: Tensor
    pos_aes: Tensor
    pos_ali: Tensor
    tecneg_tec: Tensor
    tecneg_aes: Tensor
    aesneg_tec: Tensor
    aesneg_aes: Tensor
    neg_ali: Tensor
    tecneg_ali: Tensor | None = None
    aesneg_ali: Tensor | None = None

    def __post_init__(self) -> None:
        shape: tuple[int, ...] | None = None
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.name in _REQUIRED_TUPLE_FIELDS:
                    raise ValueError(f"TupleEmbeddings.{f.name} is required")
                continue
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            tensor = tensor.detach().to(dtype=torch.float32, device="cpu")
            if tensor.dim() != 2:
                raise ValueError(
                    f"TupleEmbeddings.{f.name} must be 2-D [N, h], got shape {tuple(tensor.shape)}"
                )
            if shape is None:
                shape = tuple(tensor.shape)
            elif tuple(tensor.shape) != shape:
                raise ValueError(
                    f"TupleEmbeddings.{f.name} has shape {tuple(tensor.shape)}, "
                    f"expected {shape} like pos_tec"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(f"TupleEmbeddings.{f.name} contains NaN/inf")
            setattr(self, f.name, tensor)

    def __len__(self) -> int:
        return int(self.pos_tec.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.pos_tec.shape[1])

    def negative(self, aspect: str) -> tuple[Tensor, Tensor, Tensor]:
        """(z_tec, z_aes, z_ali) of every tuple's ``aspect`` visual negative (``tec`` or ``aes``)."""
        if aspect == "tec":
            return self.tecneg_tec, self.tecneg_aes, self.tecneg_ali_or_pos
        if aspect == "aes":
            return self.aesneg_tec, self.aesneg_aes, self.aesneg_ali_or_pos
        raise ValueError(f"visual negatives are {VISUAL_ASPECTS}, not {aspect!r}")

    @property
    def tecneg_ali_or_pos(self) -> Tensor:
        return self.tecneg_ali if self.tecneg_ali is not None else self.pos_ali

    @property
    def aesneg_ali_or_pos(self) -> Tensor:
        return self.aesneg_ali if self.aesneg_ali is not None else self.pos_ali

    def subset(self, index: Sequence[int] | Tensor | np.ndarray) -> TupleEmbeddings:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return TupleEmbeddings(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
                for f in fields(self)
            }
        )


@dataclass
class TupleScores:
    """The five scores of eq. 17 for a batch of tuples, each [batch]."""

    pos_vis: Tensor
    tecneg_vis: Tensor
    aesneg_vis: Tensor
    pos_ali: Tensor
    neg_ali: Tensor


def score_tuples(
    model: ELIQScoringHead, tuples: TupleEmbeddings, index: Tensor | None = None,
    visual_ali_index: Tensor | None = None,
) -> TupleScores:
    """One forward over 4 stacked row groups: I+, I-_tec, I-_aes (all with prompt p) and
    (I+, p-_ali). Runs in whatever mode/grad context the caller set.

    visual_ali_index ([3, batch] tuple indices) scores I+, I-_tec and I-_aes for s_vis with those
    tuples' z_ali(I+, p) instead of their own (``ScorerConfig.shuffle_visual_alignment``); s_ali(I+, p)
    then comes from a fifth row group with its own z_ali."""
    t = tuples
    idx = torch.arange(len(t)) if index is None else index
    b = int(idx.shape[0])
    z_tec = [t.pos_tec[idx], t.tecneg_tec[idx], t.aesneg_tec[idx], t.pos_tec[idx]]
    z_aes = [t.pos_aes[idx], t.tecneg_aes[idx], t.aesneg_aes[idx], t.pos_aes[idx]]
    if visual_ali_index is None:
        z_ali = [t.pos_ali[idx], t.tecneg_ali_or_pos[idx], t.aesneg_ali_or_pos[idx], t.neg_ali[idx]]
    else:
        if tuple(visual_ali_index.shape) != (3, b):
            raise ValueError(f"visual_ali_index must have shape (3, {b}), got {tuple(visual_ali_index.shape)}")
        z_ali = [*(t.pos_ali[row] for row in visual_ali_index), t.neg_ali[idx], t.pos_ali[idx]]
        z_tec.append(t.pos_tec[idx])
        z_aes.append(t.pos_aes[idx])
    s_vis, s_ali = model(torch.cat(z_tec), torch.cat(z_aes), torch.cat(z_ali))
    return TupleScores(
        pos_vis=s_vis[:b],
        tecneg_vis=s_vis[b : 2 * b],
        aesneg_vis=s_vis[2 * b : 3 * b],
        pos_ali=s_ali[:b] if visual_ali_index is None else s_ali[4 * b :],
        neg_ali=s_ali[3 * b : 4 * b],
    )


@torch.no_grad()
def evaluate_ranking(
    model: ELIQScoringHead, tuples: TupleEmbeddings, cfg: ScorerConfig, batch_size: int = 1024
) -> tuple[dict[str, float], float]:
    """Held-out ranking accuracies and mean total loss, in eval mode."""
    if len(tuples) == 0:
        raise ValueError("cannot evaluate ranking accuracy on zero tuples")
    was_training = model.training
    model.eval()
    try:
        parts: list[TupleScores] = []
        for start in range(0, len(tuples), batch_size):
            parts.append(
                score_tuples(model, tuples, torch.arange(start, min(start + batch_size, len(tuples))))
            )
    finally:
        model.train(was_training)
    s = TupleScores(
        **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TupleScores)}
    )
    acc = {
        "vis_vs_tec": float((s.pos_vis > s.tecneg_vis).double().mean()),
        "vis_vs_aes": float((s.pos_vis > s.aesneg_vis).double().mean()),
        "ali": float((s.pos_ali > s.neg_ali).double().mean()),
    }
    acc["mean"] = (acc["vis_vs_tec"] + acc["vis_vs_aes"] + acc["ali"]) / 3.0
    loss = float(total_ranking_loss(s, cfg.margin, cfg.visual_loss, cfg.aspects)[0])
    return acc, loss


def ranking_accuracies(model: ELIQScoringHead, tuples: TupleEmbeddings) -> dict[str, float]:
    """Fraction of tuples where the positive scores strictly higher: vis_vs_tec
    (s_vis(I+) > s_vis(I-_tec)), vis_vs_aes, ali (s_ali(I+, p) > s_ali(I+, p-_ali)), and mean."""
    return evaluate_ranking(model, tuples, model.config)[0]


def negative_visual_scores(model: ELIQScoringHead, tuples: TupleEmbeddings, aspect: str) -> np.ndarray:
    """Eval-mode s_vis of every tuple's ``aspect`` negative (``tec`` or ``aes``), row-aligned."""
    return score_embeddings(model, *tuples.negative(aspect))[0]


def severity_order(model: ELIQScoringHead, tuples: TupleEmbeddings, rows: Sequence[dict]) -> dict[str, float]:
    """How often the head scores a milder negative above a stronger one of the same method on the same
    positive (``critic.severity``), per visual aspect with graded pairs among ``rows`` (row i = tuple i)."""
    return severity_order_accuracy(rows, {a: negative_visual_scores(model, tuples, a).tolist() for a in VISUAL_ASPECTS})


def distinct_positive_index(rows: Sequence[dict]) -> Tensor:
    """Indices of the first row of every distinct positive (``positive_sha256``) among ``rows``, in
    order: an era builds several tuples per positive, and a positive should count once."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row["positive_sha256"], i)
    return torch.tensor(sorted(first.values()), dtype=torch.long)


def visual_alignment_invariance(model: ELIQScoringHead, tuples: TupleEmbeddings, rows: Sequence[dict],
                                seed: int = 0) -> float | None:
    """Spearman correlation of s_vis over the distinct positives of ``rows`` (row i = tuple i)
    scored with their own z_ali and with a seeded shuffle of the others': 1.0 when the visual score
    ignores the alignment token, lower the more it leans on it. Needs no scores from people. None
    with fewer than three positives, or when a side is constant (a collapsed head ranks nothing)."""
    idx = distinct_positive_index(rows)
    if len(idx) < 3:
        return None
    shuffled = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    own = score_embeddings(model, tuples.pos_tec[idx], tuples.pos_aes[idx], tuples.pos_ali[idx])[0]
    other = score_embeddings(model, tuples.pos_tec[idx], tuples.pos_aes[idx], tuples.pos_ali[shuffled])[0]
    value = srcc(own, other)  # NaN when either side is constant
    return None if np.isnan(value) else value


def _wins(s_pos: np.ndarray, sorted_neg: np.ndarray) -> np.ndarray:
    """Per positive, how many of ``sorted_neg`` score below it, a tie counting half."""
    below = np.searchsorted(sorted_neg, s_pos, side="left")
    return below + 0.5 * (np.searchsorted(sorted_neg, s_pos, side="right") - below)


def cross_content_accuracy(model: ELIQScoringHead, tuples: TupleEmbeddings, rows: Sequence[dict]
                           ) -> dict[str, float]:
    """How often a positive scores above the visual negative of another prompt, per visual aspect:
    s_vis of every distinct positive of ``rows`` (row i = tuple i) against s_vis of every row's
    ``aspect`` negative whose ``prompt_id`` differs (a tie counts half). Held-out tuple accuracy
    compares an image with its own degraded copies; this compares across contents, as a benchmark
    of many images does, and needs no scores from people. Empty when no positive has another prompt's
    negative to meet. Counted by sorting (all pairs less the same prompt's), so memory stays linear in the rows."""
    idx = distinct_positive_index(rows).numpy()
    if len(idx) == 0:
        return {}
    prompts = np.array([row["prompt_id"] for row in rows], dtype=object)
    _, code = np.unique(prompts, return_inverse=True)
    rows_per_prompt = np.bincount(code)
    pairs = int((len(rows) - rows_per_prompt[code[idx]]).sum())
    if pairs == 0:
        return {}
    s_pos = score_embeddings(model, tuples.pos_tec[idx], tuples.pos_aes[idx], tuples.pos_ali[idx])[0]
    earlier_prompts = np.concatenate([[0], np.cumsum(rows_per_prompt)[:-1]])[code[idx]]
    accuracy: dict[str, float] = {}
    for aspect in VISUAL_ASPECTS:
        s_neg = negative_visual_scores(model, tuples, aspect)
        wins = _wins(s_pos, np.sort(s_neg)).sum()
        # the same prompt's negatives do not count: on the key (prompt, score rank) a positive's
        # wins are every negative of an earlier prompt plus its own prompt's below it
        levels, rank = np.unique(np.concatenate([s_pos, s_neg]), return_inverse=True)
        pos_key = code[idx] * len(levels) + rank[: len(idx)]
        neg_key = code * len(levels) + rank[len(idx):]
        wins -= (_wins(pos_key, np.sort(neg_key)) - earlier_prompts).sum()
        accuracy[aspect] = float(wins / pairs)
    return accuracy
