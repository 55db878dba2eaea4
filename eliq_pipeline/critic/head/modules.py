"""The scoring head's modules (paper 3.3.2-3.3.4, eq. 9-15, 21): gated visual fusion and the Quality
Query Transformer (and their ablations), from frozen embeddings z_tec, z_aes, z_ali to (s_vis, s_ali).

Everything here works on embedding tensors, so the head trains in seconds on CPU once the
backbone has embedded the tuples; the checkpoint is independent of the backbone except for its
hidden size, which `checkpoints.load_scoring_head` checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eliq_pipeline.critic.head.config import ScorerConfig


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
        if config.fixed_visual_alignment:
            # the train tuples' mean z_ali, filled in by train_scoring_head; saved with the weights
            self.register_buffer("visual_alignment_token", torch.zeros(h))

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
        if not self.config.fixed_visual_alignment:
            return self.scorer(z_va)
        # s_vis from [z_vis; fixed token] and s_ali from [z_vis; own z_ali], in one pass of 2b rows
        b = z_va.shape[0]
        token = self.norm_ali(self.visual_alignment_token).expand(b, -1)
        s_vis, s_ali = self.scorer(torch.cat([torch.cat([z_vis, token], dim=-1), z_va]))
        return s_vis[:b], s_ali[b:]

    def save_pretrained(self, out_dir: str | Path) -> Path:
        from eliq_pipeline.critic.head.checkpoints import save_scoring_head

        return save_scoring_head(self, self.config, out_dir)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, expected_hidden_size: int | None = None
    ) -> ELIQScoringHead:
        from eliq_pipeline.critic.head.checkpoints import load_scoring_head

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
