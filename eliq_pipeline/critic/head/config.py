"""Architecture, optimisation and ablation settings of the scoring head (paper 3.3.2-3.3.5, 4.3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

VisualRepresentation = Literal["gated", "tec_only", "aes_only"]
HeadKind = Literal["qqt", "mlp"]
VisualLoss = Literal["pairwise", "hardest"]

VISUAL_REPRESENTATIONS: tuple[str, ...] = ("gated", "tec_only", "aes_only")
HEADS: tuple[str, ...] = ("qqt", "mlp")
VISUAL_LOSSES: tuple[str, ...] = ("pairwise", "hardest")


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
    # Weight of a hinge term (margin m) asking s_vis(mild negative) > s_vis(strong negative) for the
    # severity pairs given to training (critic/severity.py); 0: none (the paper's head).
    severity_ranking_weight: float = 0.0
    # Train s_vis with the z_ali of random other train tuples (one draw per visual row: I+, I-_tec,
    # I-_aes), so it cannot lean on the alignment token; s_ali still sees its own. Not in the paper.
    # Visual pairs whose sides share z_ali (embed_negative_alignment off) leave s_vis free to depend
    # on z_ali across images; how much it does is then a matter of the head's seed, and the between-
    # image ranking with it (ARCHITECTURE.md, "The alignment token in s_vis").
    shuffle_visual_alignment: bool = False
    # Score s_vis with one fixed alignment token, the mean z_ali(I+, p) of the train tuples (a buffer
    # set by train_scoring_head, saved with the weights), at training and at inference; s_ali still
    # reads its own. Not in the paper. Where the shuffle only penalises a dependence on z_ali, this
    # removes it: s_vis is a function of z_vis alone (ARCHITECTURE.md, attempt O).
    fixed_visual_alignment: bool = False
    # Weight of a hinge term ranking each batch row's I+ over the visual negatives of another row
    # (another image, almost always another prompt), with margin m; 0: none (the paper's head ranks a
    # positive over its own negatives only). Not in the paper: a score learnt only within a tuple may
    # carry an offset per content that no tuple penalises, while a benchmark ranks across contents
    # (ARCHITECTURE.md, attempt V).
    cross_content_weight: float = 0.0

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
        need(self.severity_ranking_weight >= 0.0,
             f"severity_ranking_weight must be >= 0, got {self.severity_ranking_weight}")
        need(self.cross_content_weight >= 0.0,
             f"cross_content_weight must be >= 0, got {self.cross_content_weight}")
        need(not (self.shuffle_visual_alignment and self.fixed_visual_alignment),
             "shuffle_visual_alignment and fixed_visual_alignment exclude each other (a fixed token has nothing "
             "to shuffle)")
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
        for key in ("severity_ranking_weight", "shuffle_visual_alignment", "fixed_visual_alignment",
                    "cross_content_weight"):
            if not data[key]:  # absent at its default: bundles written before it still verify
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScorerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ScorerConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
