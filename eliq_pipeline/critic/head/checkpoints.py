"""Scoring-head checkpoints: safetensors weights, then a config.json naming format and version."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from eliq_pipeline.core.atomic import staged_file, write_text
from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.modules import ELIQScoringHead

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = "eliq-scoring-head"
CHECKPOINT_VERSION = 1


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
