"""ELIQ scoring head: gated visual fusion + Quality Query Transformer (paper 3.3.2-3.3.6).

Inputs are frozen aspect-aware MLLM embeddings z_tec(I), z_aes(I), z_ali(I, p) in R^h; outputs
are two scalars per (image, prompt): visual quality s_vis and alignment s_ali. Training uses only
the label-free comparison tuples (I+, I-_tec, I-_aes, p, p-_ali) with margin ranking losses.

Everything here works on embedding tensors, so the head trains in seconds on CPU once the
backbone has embedded the tuples, and the checkpoint (safetensors + json) is independent of the
backbone except for its hidden size, which load_scoring_head checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from eliq_pipeline.ml.atomic import staged_file, write_text

VisualRepresentation = Literal["gated", "tec_only", "aes_only"]
HeadKind = Literal["qqt", "mlp"]
VisualLoss = Literal["pairwise", "hardest"]

VISUAL_REPRESENTATIONS: tuple[str, ...] = ("gated", "tec_only", "aes_only")
HEADS: tuple[str, ...] = ("qqt", "mlp")
VISUAL_LOSSES: tuple[str, ...] = ("pairwise", "hardest")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = "eliq-scoring-head"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------- config


@dataclass
class ScorerConfig:
    """Architecture, optimisation and ablation settings of the scoring head.

    The paper does not publish QQT sizes or optimiser settings; defaults are small and were
    chosen to train stably on frozen embeddings. hidden_size must equal the backbone's h.
    """

    hidden_size: int = 64  # h: backbone hidden size (z_* in R^h)
    d_model: int = 128  # QQT token width after the 2h -> d_model projection
    depth: int = 2  # transformer encoder layers
    heads: int = 4
    ff_dim: int = 256
    dropout: float = 0.1
    margin: float = 0.5  # m in the hinge losses (eq. 18-19)
    lr: float = 3e-4
    weight_decay: float = 0.01
    epochs: int = 30
    max_steps: int | None = None  # optional cap on optimiser steps across all epochs
    batch_size: int = 64  # tuples per step (each tuple gives 4 forward rows)
    patience: int | None = 5  # epochs without held-out improvement before stopping; None: never
    seed: int = 0
    grad_clip: float | None = 1.0
    # Per-aspect LayerNorm on the frozen embeddings before fusion. Not in the paper: raw MLLM
    # hidden states carry a few very large dimensions, and normalising them keeps the gates and
    # the AdamW step size meaningful across backbones.
    input_norm: bool = True
    # Ablation switches (paper 4.3 / appendix).
    visual_representation: VisualRepresentation = "gated"
    head: HeadKind = "qqt"
    visual_loss: VisualLoss = "pairwise"
    # Which ranking terms train the head (Table 5's tec / aes / ali subsets); all three by default.
    aspects: tuple[str, ...] = ("tec", "aes", "ali")

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"ScorerConfig: {message}")

        self.aspects = tuple(self.aspects)  # json gives lists; configs compare equal either way
        need(bool(self.aspects) and set(self.aspects) <= {"tec", "aes", "ali"} and len(set(self.aspects)) == len(self.aspects),
             f"aspects must be a non-empty subset of ('tec', 'aes', 'ali'), got {self.aspects!r}")

        for name in ("hidden_size", "d_model", "depth", "heads", "ff_dim", "epochs", "batch_size"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(
            self.d_model % self.heads == 0,
            f"d_model ({self.d_model}) must be divisible by heads ({self.heads})",
        )
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.margin >= 0.0, f"margin must be >= 0, got {self.margin}")
        need(self.lr > 0.0, f"lr must be > 0, got {self.lr}")
        need(
            self.max_steps is None or self.max_steps >= 1,
            f"max_steps must be >= 1 or None, got {self.max_steps}",
        )
        need(
            self.patience is None or self.patience >= 1,
            f"patience must be >= 1 or None, got {self.patience}",
        )
        need(
            self.grad_clip is None or self.grad_clip > 0,
            f"grad_clip must be > 0 or None, got {self.grad_clip}",
        )
        need(
            self.visual_representation in VISUAL_REPRESENTATIONS,
            f"visual_representation must be one of {VISUAL_REPRESENTATIONS}, "
            f"got {self.visual_representation!r}",
        )
        need(self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}")
        need(
            self.visual_loss in VISUAL_LOSSES,
            f"visual_loss must be one of {VISUAL_LOSSES}, got {self.visual_loss!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values (lists, not tuples), so a dict read back from config.json compares equal."""
        data = asdict(self)
        data["aspects"] = list(self.aspects)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScorerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ScorerConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# ---------------------------------------------------------------------------------- modules


def _gelu(x: Tensor) -> Tensor:
    # A plain function rather than F.gelu / "gelu": nn.TransformerEncoderLayer only takes its
    # fused inference fast path for the built-in activations, and that path computes slightly
    # differently from the training path. Opting out keeps eval scores identical whatever the
    # batch size or grad mode.
    return F.gelu(x)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
    )


class GatedFusion(nn.Module):
    """Eq. 9-11: element-wise gates from [z_tec; z_aes], then phi: R^2h -> R^h."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.w_tec = nn.Linear(2 * h, h)
        self.w_aes = nn.Linear(2 * h, h)
        self.phi = _mlp(2 * h, h, h)

    def forward(self, z_tec: Tensor, z_aes: Tensor) -> Tensor:
        both = torch.cat([z_tec, z_aes], dim=-1)
        g_tec = torch.sigmoid(self.w_tec(both))
        g_aes = torch.sigmoid(self.w_aes(both))
        return self.phi(torch.cat([z_tec * g_tec, z_aes * g_aes], dim=-1))


class SingleAspect(nn.Module):
    """Ablation: z_vis from one aspect only, through an MLP of the same depth as phi."""

    def __init__(self, h: int, aspect: Literal["tec", "aes"]) -> None:
        super().__init__()
        self.aspect = aspect
        self.phi = _mlp(h, h, h)

    def forward(self, z_tec: Tensor, z_aes: Tensor) -> Tensor:
        return self.phi(z_tec if self.aspect == "tec" else z_aes)


class QualityQueryTransformer(nn.Module):
    """Eq. 12-15: tokens [z_va, q_vis, q_ali] -> projection + positions -> encoder -> two heads."""

    def __init__(
        self, h: int, d_model: int, depth: int, heads: int, ff_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.q_vis = nn.Parameter(torch.randn(2 * h) * 0.02)
        self.q_ali = nn.Parameter(torch.randn(2 * h) * 0.02)
        self.proj = nn.Linear(2 * h, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=ff_dim,
            dropout=dropout,
            activation=_gelu,
            batch_first=True,
            norm_first=True,  # pre-norm trains stably without warm-up at this size
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=depth, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.f_vis = _mlp(d_model, d_model, 1)
        self.f_ali = _mlp(d_model, d_model, 1)

    def forward(self, z_va: Tensor) -> tuple[Tensor, Tensor]:
        b = z_va.shape[0]
        tokens = torch.stack([z_va, self.q_vis.expand(b, -1), self.q_ali.expand(b, -1)], dim=1)
        hidden = self.encoder(self.proj(tokens) + self.pos)
        return self.f_vis(hidden[:, 1]).squeeze(-1), self.f_ali(hidden[:, 2]).squeeze(-1)


class MLPScoreHead(nn.Module):
    """Ablation: replaces QQT with an MLP on z_va giving (s_vis, s_ali)."""

    def __init__(self, h: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * h, d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
            nn.GELU(),
            nn.Linear(d_model, 2),
        )

    def forward(self, z_va: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(z_va)
        return out[:, 0], out[:, 1]


class ELIQScoringHead(nn.Module):
    """Visual representation (gated fusion or an ablation) + QQT (or MLP): (z_tec, z_aes, z_ali)
    -> (s_vis, s_ali), each of shape [batch]. Rows never interact, so a row's score does not
    depend on what else is in its batch."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size

        def norm() -> nn.Module:
            return nn.LayerNorm(h) if config.input_norm else nn.Identity()

        self.norm_tec, self.norm_aes, self.norm_ali = norm(), norm(), norm()
        if config.visual_representation == "gated":
            self.visual: nn.Module = GatedFusion(h)
        else:
            self.visual = SingleAspect(h, "tec" if config.visual_representation == "tec_only" else "aes")
        if config.head == "qqt":
            self.scorer: nn.Module = QualityQueryTransformer(
                h, config.d_model, config.depth, config.heads, config.ff_dim, config.dropout
            )
        else:
            self.scorer = MLPScoreHead(h, config.d_model, config.dropout)

    def forward(self, z_tec: Tensor, z_aes: Tensor, z_ali: Tensor) -> tuple[Tensor, Tensor]:
        h = self.config.hidden_size
        for name, z in (("z_tec", z_tec), ("z_aes", z_aes), ("z_ali", z_ali)):
            if z.dim() != 2 or z.shape[1] != h:
                raise ValueError(f"{name} must have shape [batch, {h}], got {tuple(z.shape)}")
        if not (z_tec.shape[0] == z_aes.shape[0] == z_ali.shape[0]):
            raise ValueError(
                f"batch sizes differ: z_tec {z_tec.shape[0]}, z_aes {z_aes.shape[0]}, "
                f"z_ali {z_ali.shape[0]}"
            )
        z_vis = self.visual(self.norm_tec(z_tec), self.norm_aes(z_aes))
        z_va = torch.cat([z_vis, self.norm_ali(z_ali)], dim=-1)  # eq. 12
        return self.scorer(z_va)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return save_scoring_head(self, self.config, out_dir)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, expected_hidden_size: int | None = None
    ) -> ELIQScoringHead:
        return load_scoring_head(path, expected_hidden_size=expected_hidden_size)[0]


@torch.no_grad()
def score_embeddings(
    model: ELIQScoringHead,
    z_tec: Tensor | np.ndarray,
    z_aes: Tensor | np.ndarray,
    z_ali: Tensor | np.ndarray,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Inference (eq. 21): eval-mode (s_vis, s_ali) as float64 numpy arrays, in batches."""
    tensors = [torch.as_tensor(z, dtype=torch.float32) for z in (z_tec, z_aes, z_ali)]
    was_training = model.training
    model.eval()
    try:
        vis, ali = [], []
        for start in range(0, tensors[0].shape[0], batch_size):
            s_vis, s_ali = model(*(t[start : start + batch_size] for t in tensors))
            vis.append(s_vis)
            ali.append(s_ali)
    finally:
        model.train(was_training)
    if not vis:
        return np.zeros(0), np.zeros(0)
    return torch.cat(vis).double().numpy(), torch.cat(ali).double().numpy()


# ---------------------------------------------------------------------------------- losses


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


# ---------------------------------------------------------------------------------- tuples


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
    model: ELIQScoringHead, tuples: TupleEmbeddings, index: Tensor | None = None
) -> TupleScores:
    """One forward over 4 stacked row groups: I+, I-_tec, I-_aes (all with prompt p) and
    (I+, p-_ali). Runs in whatever mode/grad context the caller set."""
    t = tuples
    idx = torch.arange(len(t)) if index is None else index
    b = int(idx.shape[0])
    z_tec = torch.cat([t.pos_tec[idx], t.tecneg_tec[idx], t.aesneg_tec[idx], t.pos_tec[idx]])
    z_aes = torch.cat([t.pos_aes[idx], t.tecneg_aes[idx], t.aesneg_aes[idx], t.pos_aes[idx]])
    z_ali = torch.cat(
        [t.pos_ali[idx], t.tecneg_ali_or_pos[idx], t.aesneg_ali_or_pos[idx], t.neg_ali[idx]]
    )
    s_vis, s_ali = model(z_tec, z_aes, z_ali)
    return TupleScores(
        pos_vis=s_vis[:b],
        tecneg_vis=s_vis[b : 2 * b],
        aesneg_vis=s_vis[2 * b : 3 * b],
        pos_ali=s_ali[:b],
        neg_ali=s_ali[3 * b :],
    )


@torch.no_grad()
def _evaluate(
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
    return _evaluate(model, tuples, model.config)[0]


# ---------------------------------------------------------------------------------- training

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


def train_scoring_head(
    train: TupleEmbeddings,
    heldout: TupleEmbeddings,
    cfg: ScorerConfig,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train fusion + QQT with L_vis + L_ali (eq. 20) using AdamW.

    After every epoch the held-out tuples are scored; the kept model is the epoch with the best
    mean held-out ranking accuracy (ties broken by a held-out loss lower by more than 1e-4), and
    training stops after `patience` epochs without improvement or after `max_steps` optimiser
    steps. Deterministic for a given cfg.seed on a given machine; the caller's global torch RNG
    state is left untouched.
    """
    for label, split in (("train", train), ("heldout", heldout)):
        if len(split) == 0:
            raise ValueError(f"{label} tuples are empty")
        if split.hidden_size != cfg.hidden_size:
            raise ValueError(
                f"{label} embeddings have hidden size {split.hidden_size}, "
                f"config expects {cfg.hidden_size}"
            )
    emit = log or (lambda _msg: None)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # init + dropout masks
        model = ELIQScoringHead(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order_rng = torch.Generator().manual_seed(cfg.seed)

        result = TrainResult(model=model, config=cfg)
        best_key: tuple[float, float] | None = None
        best_state: dict[str, Tensor] = {}
        epochs_since_best = 0
        n = len(train)

        for epoch in range(1, cfg.epochs + 1):
            model.train()
            permutation = torch.randperm(n, generator=order_rng)
            seen, sums = 0, {"total": 0.0, "vis": 0.0, "ali": 0.0}
            for start in range(0, n, cfg.batch_size):
                if cfg.max_steps is not None and result.steps >= cfg.max_steps:
                    break
                index = permutation[start : start + cfg.batch_size]
                total, l_vis, l_ali = total_ranking_loss(
                    score_tuples(model, train, index), cfg.margin, cfg.visual_loss, cfg.aspects
                )
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
            if seen == 0:  # max_steps was reached exactly at the previous epoch's end
                break

            acc, heldout_loss = _evaluate(model, heldout, cfg)
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

            # Improvement: higher mean accuracy, or equal accuracy and a held-out loss lower by
            # more than a hair (so a loss creeping down by 1e-6 does not defeat patience).
            improved = (
                best_key is None
                or acc["mean"] > best_key[0]
                or (acc["mean"] == best_key[0] and heldout_loss < best_key[1] - _LOSS_TIE_DELTA)
            )
            if improved:
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


# ---------------------------------------------------------------------------------- checkpoints


def save_scoring_head(model: ELIQScoringHead, cfg: ScorerConfig | None, out_dir: str | Path) -> Path:
    """Write model.safetensors then config.json (the config last, so a directory with a config
    always has matching weights). cfg defaults to model.config and must describe the same
    architecture. Returns out_dir."""
    cfg = cfg or model.config
    if cfg.to_dict() != model.config.to_dict():
        arch = (
            "hidden_size",
            "d_model",
            "depth",
            "heads",
            "ff_dim",
            "input_norm",
            "visual_representation",
            "head",
        )
        diff = [k for k in arch if getattr(cfg, k) != getattr(model.config, k)]
        if diff:
            raise ValueError(f"cfg does not describe this model; differs in {diff}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with staged_file(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    document = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
    }
    write_text(out / CONFIG_NAME, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return out


def load_scoring_head(
    path: str | Path, expected_hidden_size: int | None = None
) -> tuple[ELIQScoringHead, ScorerConfig]:
    """Load a directory written by save_scoring_head; the model comes back in eval mode.

    expected_hidden_size is the hidden size of the backbone whose embeddings will be scored; a
    mismatch means the head was trained for another backbone and is refused up front.
    """
    root = Path(path)
    config_path, weights_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"scoring head checkpoint incomplete: {p} not found")
    document = json.loads(config_path.read_text())
    if document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{config_path} is not an ELIQ scoring head config (format {document.get('format')!r})"
        )
    if document.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{config_path}: unsupported format_version {document.get('format_version')!r} "
            f"(this code reads {CHECKPOINT_VERSION})"
        )
    cfg = ScorerConfig.from_dict(document["config"])
    if expected_hidden_size is not None and cfg.hidden_size != expected_hidden_size:
        raise ValueError(
            f"scoring head at {root} was trained on embeddings of hidden size {cfg.hidden_size}, "
            f"but the backbone gives {expected_hidden_size}; retrain the head for this backbone"
        )
    model = ELIQScoringHead(cfg)
    state = load_file(str(weights_path))
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match its config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state)
    model.eval()
    return model, cfg


# ---------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class LinearCalibration:
    """Monotonic linear map raw score -> MOS scale (paper 3.3.6): mos ~ slope * raw + intercept.

    Fitted by least squares with the slope constrained to slope >= floor > 0, floor being 1e-3 of
    the scale ratio std(mos)/std(raw). An unconstrained fit could flip the ranking when the small
    labelled split disagrees with the critic, and a slope of exactly 0 would collapse all scores
    to one value; the strictly positive floor keeps the map rank-preserving, which is what the
    paper promises for this post-hoc step. slope_at_floor records when the constraint was active.
    """

    slope: float
    intercept: float
    slope_at_floor: bool = False

    @classmethod
    def fit(
        cls, raw: Sequence[float] | np.ndarray, mos: Sequence[float] | np.ndarray
    ) -> LinearCalibration:
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        y = np.asarray(mos, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"length mismatch: raw has {x.size} values, mos has {y.size}")
        if x.size < 2:
            raise ValueError(f"need at least 2 labelled points to calibrate, got {x.size}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("raw scores and MOS must be finite to calibrate")
        sx = x.std()
        if sx == 0.0:
            raise ValueError("raw scores are constant; a slope cannot be fitted")
        slope = float(np.mean((x - x.mean()) * (y - y.mean())) / sx**2)
        floor = max(1e-3 * float(y.std()) / float(sx), 1e-12)
        at_floor = slope < floor
        if at_floor:
            slope = floor
        # For a fixed slope the least-squares intercept is mean(y) - slope * mean(x).
        return cls(
            slope=slope, intercept=float(y.mean() - slope * x.mean()), slope_at_floor=bool(at_floor)
        )

    def __call__(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(raw, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearCalibration:
        slope = float(data["slope"])
        if not (slope > 0 and math.isfinite(slope)):
            raise ValueError(
                f"LinearCalibration slope must be a positive finite number, got {data['slope']!r}"
            )
        return cls(
            slope=slope,
            intercept=float(data["intercept"]),
            slope_at_floor=bool(data.get("slope_at_floor", False)),
        )
