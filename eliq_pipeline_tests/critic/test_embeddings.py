"""Frozen aspect embeddings: final input token, last layer, batched == one-by-one, over-long
prompts cut to the backbone's limit."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.critic.backbone import (
    build_inputs,
    fit_prompt,
    load_backbone,
    max_image_tokens,
    sequence_limit,
)
from eliq_pipeline.critic.embedding_cache import EmbeddingRequest
from eliq_pipeline.critic.embeddings import AspectEmbedder, extract_aspect_embeddings
from eliq_pipeline.tiny.backbone import build_tiny_backbone


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny_backbone(tmp_path_factory.mktemp("emb") / "tiny", seed=0)
    # Loaded through the production loader, exactly as a hub checkpoint would be.
    return load_backbone(str(folder))


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_batched_equals_one_by_one(backbone) -> None:
    model, processor = backbone
    images = _images([(64, 64), (300, 200), (128, 256), (512, 384), (90, 140), (200, 200), (256, 96)])
    aspects = ["tec", "ali", "aes", "ali", "tec", "ali", "aes"]
    castle = "a castle on a hill under a sky full of stars, oil painting, highly detailed"
    prompts = [None, "a cat", None, castle, None, "dog", None]
    batched = extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=4)
    single = extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=1)
    assert batched.shape == (7, model.config.text_config.hidden_size)
    assert batched.dtype == torch.float32 and batched.device.type == "cpu"
    assert torch.allclose(batched, single, atol=1e-4)
    assert not torch.allclose(batched[0], batched[4])  # different images, different embeddings


def test_embedding_is_last_layer_state_of_final_input_token(backbone) -> None:
    model, processor = backbone
    images = _images([(64, 64), (128, 96)])
    aspects, prompts = ["aes", "ali"], [None, "a red bicycle"]
    z = extract_aspect_embeddings(model, processor, images, aspects, prompts)
    with torch.no_grad():
        out = model(**build_inputs(processor, images, aspects, prompts), output_hidden_states=True)
    assert torch.allclose(z, out.hidden_states[-1][:, -1, :], atol=1e-6)


def test_alignment_depends_on_prompt_and_tec_does_not(backbone) -> None:
    model, processor = backbone
    image = _images([(128, 128)])[0]
    z = extract_aspect_embeddings(
        model,
        processor,
        [image] * 4,
        ["ali", "ali", "tec", "tec"],
        ["a photo of a cat", "a photo of a spaceship", "a photo of a cat", "a photo of a spaceship"],
    )
    assert not torch.allclose(z[0], z[1], atol=1e-4)
    assert torch.allclose(z[2], z[3], atol=1e-6, rtol=0)  # two suffixes of one packed row: float noise only
    no_prompt = extract_aspect_embeddings(model, processor, [image], ["tec"], [None])
    assert torch.allclose(no_prompt[0], z[2], atol=1e-5)  # batch 1 vs a padded batch of 4
    with pytest.raises(ValueError):
        extract_aspect_embeddings(model, processor, [image], ["ali"], [None])
    with pytest.raises(ValueError):
        extract_aspect_embeddings(model, processor, [image], ["tec", "aes"], [None])


def test_peft_wrapped_model_uses_the_adapter(backbone, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model, processor = backbone
    image = _images([(96, 96)])[0]
    base = extract_aspect_embeddings(model, processor, [image], ["tec"], [None])
    torch.manual_seed(0)
    # Fresh copy (get_peft_model mutates in place); random non-zero LoRA so the adapter matters.
    copy, _ = load_backbone(model.name_or_path)
    lora = LoraConfig(r=4, target_modules=r".*\.language_model\..*\.(q_proj|v_proj)", init_lora_weights=False)
    tuned = get_peft_model(copy, lora)
    tuned.train()
    z = extract_aspect_embeddings(tuned, processor, [image], ["tec"], [None])
    assert not tuned.training  # extraction switches to eval mode
    assert not torch.allclose(z, base, atol=1e-4)
    with torch.no_grad():
        out = tuned(**build_inputs(processor, [image], ["tec"], [None]), output_hidden_states=True)
    expected = out.hidden_states[-1][:, -1]
    assert torch.allclose(z, expected, atol=1e-6)


def test_empty_input_and_throughput_report(backbone) -> None:
    model, processor = backbone
    empty = extract_aspect_embeddings(model, processor, [], [], [])
    assert empty.shape == (0, model.config.text_config.hidden_size)
    # AGIQA-3K scale check: 512x512 images, batch 16 (printed, not asserted: timing is noisy).
    images = _images([(512, 512)] * 16, seed=3) * 2
    aspects = (["tec", "aes", "ali"] * 11)[:32]
    prompts = ["a photo of a cat sitting on a wooden table in a garden"] * 32
    extract_aspect_embeddings(model, processor, images[:16], aspects[:16], prompts[:16], batch_size=16)
    start = time.perf_counter()
    z = extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=16)
    rate = len(images) / (time.perf_counter() - start)
    print(f"tiny backbone embedding throughput: {rate:.1f} (image, aspect) pairs/s at batch 16")
    assert z.shape[0] == 32 and torch.isfinite(z).all()


def test_an_over_long_prompt_is_cut_to_fit_the_backbone(backbone, capfd) -> None:
    model, processor = backbone
    limit = sequence_limit(processor)
    assert limit == processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 4096
    assert max_image_tokens(processor) == 36  # the tiny processor's pixel cap / (16 * 2)^2
    long = ("The quick brown fox jumps over the lazy dog; zebras quaff vexing jynx! " * 150)[:10_000]
    capfd.readouterr()
    fit = fit_prompt(processor, long)
    assert fit.truncated and fit.tokens > limit > fit.kept > limit - 100 and long.startswith(fit.text)
    assert fit_prompt(processor, fit.text) == fit.__class__(fit.text, False, fit.kept, fit.kept)  # idempotent
    short = fit_prompt(processor, "  a red\n bicycle ")
    assert (short.text, short.truncated, short.tokens == short.kept) == ("a red bicycle", False, True)

    # The largest image plus the SFT label column still fit the limit.
    image = _images([(600, 600)], seed=9)[0]
    inputs = build_inputs(processor, [image], ["ali"], [long], add_label=["high"])
    assert inputs["input_ids"].shape[1] <= limit
    z = extract_aspect_embeddings(model, processor, [image, image], ["ali", "ali"], [long, fit.text])
    assert torch.allclose(z[0], z[1], atol=1e-5, rtol=0)  # the long prompt is embedded as its kept part
    assert capfd.readouterr().err == ""  # no tokenizer warning about the sequence length

    # A tokenizer that states no limit cuts nothing.
    before = processor.tokenizer.model_max_length
    processor.tokenizer.model_max_length = int(1e30)
    try:
        assert sequence_limit(processor) is None and not fit_prompt(processor, long).truncated
    finally:
        processor.tokenizer.model_max_length = before


def test_a_portable_embedder_loads_its_packed_adapter_and_leaves_no_folder(backbone, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker elsewhere unpacks the adapter's bytes to load it; the unpacked copy once stayed in
    the temp folder after every load (one per worker process and run)."""
    from eliq_pipeline_tests.critic.test_bundle import make_adapter

    adapter = make_adapter(Path(backbone[0].name_or_path), tmp_path / "adapter")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    local = AspectEmbedder(str(adapter), device="cpu")
    # the worker cannot see the adapter folder: only the packed bytes can reach it
    remote = replace(local.portable(), adapter_dir=str(tmp_path / "not-on-this-worker"))
    items = [(EmbeddingRequest("0" * 64, aspect, "a red bicycle" if aspect == "ali" else None), image)
             for aspect, image in zip(("tec", "aes", "ali"), _images([(64, 64), (96, 80), (72, 72)]))]
    z_remote = remote(remote.load(), items)
    assert list(scratch.iterdir()) == []
    torch.testing.assert_close(torch.stack(z_remote), torch.stack(local(local.load(), items)), rtol=0, atol=0)
