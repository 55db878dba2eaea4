"""Training the scoring head (paper 3.3.5): AdamW on the ranking losses, the best held-out epoch kept."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.losses import cross_content_ranking_loss, severity_ranking_loss, total_ranking_loss
from eliq_pipeline.critic.head.modules import ELIQScoringHead
from eliq_pipeline.critic.head.ranking import TupleEmbeddings, evaluate_ranking, score_tuples
from eliq_pipeline.critic.severity import VISUAL_ASPECTS

_LOSS_TIE_DELTA = 1e-4


@dataclass
class TrainResult:
    """The best-epoch model (eval mode) and what happened on the way there."""

    model: ELIQScoringHead
    config: ScorerConfig
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    heldout_accuracies: dict[str, float] = field(default_factory=dict)  # at best_epoch
    steps: int = 0
    stopped_early: bool = False

    @property
    def loss_history(self) -> list[float]:
        return [row["train_loss"] for row in self.history]


def _check_splits(train: TupleEmbeddings, heldout: TupleEmbeddings, cfg: ScorerConfig) -> None:
    for label, split in (("train", train), ("heldout", heldout)):
        if len(split) == 0:
            raise ValueError(f"{label} tuples are empty")
        if split.hidden_size != cfg.hidden_size:
            raise ValueError(
                f"{label} embeddings have hidden size {split.hidden_size}, "
                f"config expects {cfg.hidden_size}"
            )


def _train_epoch(
    model: ELIQScoringHead,
    optimizer: torch.optim.Optimizer,
    train: TupleEmbeddings,
    cfg: ScorerConfig,
    order_rng: torch.Generator,
    result: TrainResult,
    severity_pairs: dict[str, Tensor],
) -> tuple[int, dict[str, float]]:
    """One pass over the shuffled training tuples (stopping at `max_steps`); returns the number
    of tuples seen and the summed total / visual / alignment losses."""
    model.train()
    n = len(train)
    permutation = torch.randperm(n, generator=order_rng)
    seen, sums = 0, {"total": 0.0, "vis": 0.0, "ali": 0.0}
    for start in range(0, n, cfg.batch_size):
        if cfg.max_steps is not None and result.steps >= cfg.max_steps:
            break
        index = permutation[start : start + cfg.batch_size]
        # each visual row's z_ali from a random train tuple: s_vis must rank without leaning on it
        visual_ali = (torch.randint(n, (3, int(index.shape[0])), generator=order_rng)
                      if cfg.shuffle_visual_alignment else None)
        scores = score_tuples(model, train, index, visual_ali)
        total, l_vis, l_ali = total_ranking_loss(scores, cfg.margin, cfg.visual_loss, cfg.aspects)
        if cfg.cross_content_weight:
            total = total + cfg.cross_content_weight * cross_content_ranking_loss(
                scores, cfg.margin, cfg.visual_loss, cfg.aspects)
        if severity_pairs:
            # the pairs whose milder side is in this batch: each pair once per epoch
            in_batch = torch.zeros(n, dtype=torch.bool)
            in_batch[index] = True
            batch_pairs = {a: p[in_batch[p[:, 0]]] for a, p in severity_pairs.items()}
            total = total + cfg.severity_ranking_weight * severity_ranking_loss(model, train, batch_pairs, cfg.margin)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        result.steps += 1
        k = int(index.shape[0])
        seen += k
        for key, value in (("total", total), ("vis", l_vis), ("ali", l_ali)):
            sums[key] += float(value.detach()) * k
    return seen, sums


def _severity_pair_tensors(train: TupleEmbeddings, cfg: ScorerConfig,
                           severity_pairs: Mapping[str, Sequence[tuple[int, int]]] | None) -> dict[str, Tensor]:
    """The pairs as [P, 2] index tensors, checked; empty when the term is off."""
    if not cfg.severity_ranking_weight:
        return {}
    if severity_pairs is None:
        raise ValueError("severity_ranking_weight > 0 needs severity_pairs (critic.severity.severity_pairs of the "
                         "train rows)")
    tensors = {}
    for aspect, pairs in severity_pairs.items():
        if aspect not in VISUAL_ASPECTS:
            raise ValueError(f"severity pairs are of visual negatives {VISUAL_ASPECTS}, not {aspect!r}")
        index = torch.as_tensor(list(pairs), dtype=torch.long).reshape(-1, 2)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(train)):
            raise ValueError(f"{aspect} severity pairs index outside the {len(train)} train tuples")
        tensors[aspect] = index
    return tensors


def _improved(best_key: tuple[float, float] | None, acc: dict[str, float], heldout_loss: float) -> bool:
    # Higher mean accuracy, or equal accuracy and a held-out loss lower by more than a hair (so a
    # loss creeping down by 1e-6 does not defeat patience).
    return (
        best_key is None
        or acc["mean"] > best_key[0]
        or (acc["mean"] == best_key[0] and heldout_loss < best_key[1] - _LOSS_TIE_DELTA)
    )


def train_scoring_head(
    train: TupleEmbeddings,
    heldout: TupleEmbeddings,
    cfg: ScorerConfig,
    log: Callable[[str], None] | None = None,
    severity_pairs: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> TrainResult:
    """Train fusion + QQT with L_vis + L_ali (eq. 20) using AdamW.

    With ``cfg.cross_content_weight`` > 0 every positive is also ranked over another batch row's
    visual negatives (``losses.cross_content_ranking_loss``). With ``cfg.severity_ranking_weight`` > 0,
    ``severity_pairs`` (per visual aspect, (mild, strong) indices into ``train``:
    ``critic.severity.severity_pairs``) add a hinge term ranking the milder negative's s_vis above the
    stronger one's.

    After every epoch the held-out tuples are scored; the kept model is the epoch with the best
    mean held-out ranking accuracy (ties broken by a held-out loss lower by more than 1e-4), and
    training stops after `patience` epochs without improvement or after `max_steps` optimiser
    steps. Deterministic for a given cfg.seed on a given machine; the caller's global torch RNG
    state is left untouched.
    """
    _check_splits(train, heldout, cfg)
    emit = log or (lambda _msg: None)
    pairs = _severity_pair_tensors(train, cfg, severity_pairs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # init + dropout masks
        model = ELIQScoringHead(cfg)
        if cfg.fixed_visual_alignment:
            model.visual_alignment_token.copy_(train.pos_ali.mean(dim=0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order_rng = torch.Generator().manual_seed(cfg.seed)

        result = TrainResult(model=model, config=cfg)
        best_key: tuple[float, float] | None = None
        best_state: dict[str, Tensor] = {}
        epochs_since_best = 0

        for epoch in range(1, cfg.epochs + 1):
            seen, sums = _train_epoch(model, optimizer, train, cfg, order_rng, result, pairs)
            if seen == 0:  # max_steps was reached exactly at the previous epoch's end
                break

            acc, heldout_loss = evaluate_ranking(model, heldout, cfg)
            row = {
                "epoch": float(epoch),
                "steps": float(result.steps),
                "train_loss": sums["total"] / seen,
                "train_loss_vis": sums["vis"] / seen,
                "train_loss_ali": sums["ali"] / seen,
                "heldout_loss": heldout_loss,
                **{f"heldout_{k}": v for k, v in acc.items()},
            }
            result.history.append(row)
            emit(
                f"epoch {epoch}: train loss {row['train_loss']:.4f}, held-out loss {heldout_loss:.4f}, "
                f"acc vis/tec {acc['vis_vs_tec']:.3f} vis/aes {acc['vis_vs_aes']:.3f} "
                f"ali {acc['ali']:.3f}"
            )
            if _improved(best_key, acc, heldout_loss):
                best_key = (acc["mean"], heldout_loss)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                result.best_epoch = epoch
                result.heldout_accuracies = acc
                epochs_since_best = 0
            else:
                epochs_since_best += 1
                if cfg.patience is not None and epochs_since_best >= cfg.patience:
                    result.stopped_early = True
                    break
            if cfg.max_steps is not None and result.steps >= cfg.max_steps:
                break

    model.load_state_dict(best_state)
    model.eval()
    emit(f"best epoch {result.best_epoch}: held-out accuracy {result.heldout_accuracies['mean']:.3f}")
    return result
