"""Tiny Qwen3-VL backbone: offline build, the production loader, instructions, batched inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.critic.backbone import (
    ASPECTS,
    LABELS,
    ProcessorResize,
    backbone_fingerprint,
    build_inputs,
    instruction_messages,
    label_token_ids,
    load_backbone,
    load_processor,
)
from eliq_pipeline.evaluation.baselines import resized_scorer
from eliq_pipeline.tiny.backbone import TinyBackboneSpec, build_tiny_backbone


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    return load_backbone(str(tiny_dir))


def _solid(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_build_is_deterministic_per_seed(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_backbone(tmp_path / "again", seed=0)
    other = build_tiny_backbone(tmp_path / "other", seed=1)
    weights = (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    assert backbone_fingerprint(str(again)) == backbone_fingerprint(str(tiny_dir))
    assert backbone_fingerprint(str(other)) != backbone_fingerprint(str(tiny_dir))


def test_build_overwrites_atomically_and_leaves_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    build_tiny_backbone(target, seed=0)
    build_tiny_backbone(target, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_production_loader_loads_tiny_dir_and_runs_forward(loaded) -> None:
    from transformers.utils import is_torchvision_available

    model, processor = loaded
    assert model.config.model_type == "qwen3_vl"
    assert not model.training
    # Without torchvision the image-only processor (PIL backend) stands in for the stock one.
    expected = "Qwen3VLProcessor" if is_torchvision_available() else "Qwen3VLImageOnlyProcessor"
    assert type(processor).__name__ == expected
    assert processor.tokenizer.padding_side == "left"
    inputs = build_inputs(processor, [_solid((64, 64), (200, 10, 10))], ["tec"], [None])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_saved_processor_config_loads_with_stock_processor_too(tiny_dir: Path) -> None:
    # A directory written without torchvision must still name the stock class and carry a video
    # sub-config, or AutoProcessor fails on a torchvision install.
    config = json.loads((tiny_dir / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen3VLProcessor"
    assert config["video_processor"]["video_processor_type"] == "Qwen3VLVideoProcessor"
    assert config["image_processor"]["patch_size"] == TinyBackboneSpec().patch_size


def test_tokenizer_has_qwen_specials_and_single_token_labels(loaded) -> None:
    _, processor = loaded
    tokenizer = processor.tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    ids = label_token_ids(tokenizer)
    assert set(ids) == set(LABELS) and ids["low"] != ids["high"]
    assert tokenizer.pad_token is not None


def test_chat_template_ends_with_generation_prompt(loaded) -> None:
    _, processor = loaded
    text = processor.apply_chat_template(instruction_messages("tec", None), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_instruction_messages_per_aspect() -> None:
    texts = {}
    for aspect in ASPECTS:
        messages = instruction_messages(aspect, "a red fox in snow")
        assert messages[0]["role"] == "user"
        assert messages[0]["content"][0] == {"type": "image"}
        texts[aspect] = messages[0]["content"][1]["text"]
        assert "low or high" in texts[aspect]
    assert "a red fox in snow" in texts["ali"]
    assert "a red fox in snow" not in texts["tec"] and "a red fox in snow" not in texts["aes"]
    assert instruction_messages("tec", "anything") == instruction_messages("tec", None)
    assert len(set(texts.values())) == 3
    with pytest.raises(ValueError):
        instruction_messages("ali", None)
    with pytest.raises(ValueError):
        instruction_messages("ali", "   ")
    with pytest.raises(ValueError):
        instruction_messages("colour", None)


def test_build_inputs_left_pads_and_masks_all_but_label(loaded) -> None:
    _, processor = loaded
    images = [_solid((64, 64), (0, 0, 0)), _solid((300, 200), (255, 255, 255))]
    prompts = [None, "a long prompt about a castle on a hill under the stars at night"]
    inputs = build_inputs(processor, images, ["tec", "ali"], prompts, add_label=["high", "low"])
    mask, ids, labels = inputs["attention_mask"], inputs["input_ids"], inputs["labels"]
    assert mask[:, -1].eq(1).all()  # left padding: the last column is real for every row
    assert mask[0, 0] == 0 and mask[1].eq(1).all()  # the shorter row is padded on the left
    label_ids = label_token_ids(processor.tokenizer)
    assert ids[:, -1].tolist() == [label_ids["high"], label_ids["low"]]
    assert labels[:, -1].tolist() == [label_ids["high"], label_ids["low"]]
    assert labels[:, :-1].eq(-100).all()
    assert inputs["mm_token_type_ids"][:, -1].eq(0).all()
    # Without labels, the final column is the last token of the generation prompt.
    plain = build_inputs(processor, images, ["tec", "ali"], prompts)
    assert "labels" not in plain
    assert torch.equal(plain["input_ids"], ids[:, :-1])
    with pytest.raises(ValueError):
        build_inputs(processor, images, ["tec", "ali"], prompts, add_label=["high", "medium"])
    with pytest.raises(ValueError):
        build_inputs(processor, images, ["tec"], [None])


def test_tiny_vision_token_budget_and_override(tiny_dir: Path, loaded) -> None:
    _, processor = loaded
    spec = TinyBackboneSpec()
    merge = spec.spatial_merge_size**2
    big = build_inputs(processor, [_solid((1024, 768), (9, 9, 9))], ["aes"], [None])
    small = build_inputs(processor, [_solid((16, 16), (9, 9, 9))], ["aes"], [None])
    assert int(big["image_grid_thw"].prod()) // merge <= spec.max_pixels // (32 * 32)
    assert int(small["image_grid_thw"].prod()) // merge >= spec.min_pixels // (32 * 32)
    capped = load_processor(str(tiny_dir), max_pixels=16 * 32 * 32)
    capped_inputs = build_inputs(capped, [_solid((1024, 768), (9, 9, 9))], ["aes"], [None])
    assert int(capped_inputs["image_grid_thw"].prod()) // merge <= 16


def test_fingerprint_tracks_content(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert backbone_fingerprint(str(copy)) == backbone_fingerprint(str(tiny_dir))
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    assert backbone_fingerprint(str(copy)) != backbone_fingerprint(str(tiny_dir))


def test_loader_rejects_other_model_types(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        load_backbone(str(tmp_path))


def _processed_pixels(processor, image: Image.Image) -> np.ndarray:
    """The RGB pixels (0-1) the processor hands the vision tower, unpatched and unnormalised."""
    image_processor = processor.image_processor
    out = image_processor(images=[image], return_tensors="pt")
    _, grid_h, grid_w = out["image_grid_thw"][0].tolist()
    patch, merge = image_processor.patch_size, image_processor.merge_size
    patches = out["pixel_values"].reshape(grid_h // merge, grid_w // merge, merge, merge, 3,
                                          image_processor.temporal_patch_size, patch, patch)[:, :, :, :, :, 0]
    pixels = patches.permute(0, 2, 5, 1, 3, 6, 4).reshape(grid_h * patch, grid_w * patch, 3).numpy()
    return pixels * np.array(image_processor.image_std) + np.array(image_processor.image_mean)


@pytest.mark.parametrize("size", [(512, 512), (700, 300), (1024, 512), (40, 50), (96, 96)])
def test_processor_resize_is_the_size_and_pixels_the_critic_sees(loaded, size: tuple[int, int]) -> None:
    """A baseline read 'at the critic's input size' must see exactly what the vision tower sees:
    the size rule against the processor's grid, and resized_scorer's pixels against its pixels."""
    _, processor = loaded
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = _processed_pixels(processor, image)
    rule = ProcessorResize.of(processor.image_processor)
    assert rule.size(*size) == (expected.shape[1], expected.shape[0])
    seen: list[np.ndarray] = []
    scorer = resized_scorer(lambda im: seen.append(np.asarray(im, dtype=np.float64) / 255) or 0.0,
                            {size: rule.size(*size)})
    scorer(image)
    assert np.abs(seen[0] - expected).max() < 1e-5
