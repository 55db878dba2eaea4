"""The toy pipelines' tokenizers cover the prompt bank and reload."""

from __future__ import annotations

from pathlib import Path

from eliq_pipeline.supervision.prompts import build_prompt_bank
from eliq_pipeline.tiny.tokenizers import build_tiny_clip_tokenizer, build_tiny_t5_tokenizer


def test_tiny_tokenizers_fit_bank_prompts_and_reload(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip, t5 = build_tiny_clip_tokenizer(), build_tiny_t5_tokenizer()
    bank = build_prompt_bank(70, seed=0)
    assert max(len(clip(p.text).input_ids) for p in bank) <= 77  # no truncation in CLIP's window
    text = bank[0].text
    assert clip.unk_token_id not in clip("Zürich 2024 ☃ " + text).input_ids[1:-1]  # byte-level: no unknowns
    clip.save_pretrained(tmp_path / "clip")
    t5.save_pretrained(tmp_path / "t5")
    assert CLIPTokenizer.from_pretrained(tmp_path / "clip")(text).input_ids == clip(text).input_ids
    assert T5TokenizerFast.from_pretrained(tmp_path / "t5")(text).input_ids == t5(text).input_ids
