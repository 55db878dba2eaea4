"""One image, one encode: packed shared-prefix rows equal one row per question, in embeddings,
label probabilities, the SFT loss and its gradients (LoRA, trained vision tower, gradient
checkpointing), and the SFT sampler keeps the questions about one image together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.critic.backbone import load_backbone, question_text
from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
from eliq_pipeline.critic.instruction_tuning import (
    SFTConfig,
    SFTExample,
    _label_loss,
    _lora_model,
    _SampleStream,
    example_groups,
    label_probabilities,
    pseudo_label_examples,
    tune_backbone,
)
from eliq_pipeline.critic.shared_prefix import (
    block_attention_mask,
    group_by_image,
    multimodal_trunk,
    pack_queries,
    supports_shared_prefix,
)
from eliq_pipeline.tiny.backbone import build_tiny_backbone

CASTLE = "a castle on a hill under a sky full of stars, oil painting, highly detailed"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("shared") / "tiny", seed=0)


@pytest.fixture(scope="module")
def backbone(tiny_dir: Path):
    return load_backbone(str(tiny_dir))


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _queries() -> tuple[list[Image.Image], list[str], list[str | None]]:
    """Images of different sizes, each asked 1-4 questions, interleaved (not grouped) in order."""
    images = _images([(64, 64), (300, 200), (128, 256), (512, 384), (90, 140)])
    questions = {
        0: [("tec", None), ("aes", None), ("ali", "a cat"), ("ali", CASTLE)],
        1: [("ali", "a red bicycle"), ("tec", "ignored for tec")],
        2: [("aes", None)],
        3: [("tec", None), ("aes", None), ("ali", "dog"), ("ali", "a bowl of fruit on a table")],
        4: [("ali", CASTLE), ("aes", None), ("tec", None)],
    }
    rows = [(image, q) for depth in range(4) for image, qs in questions.items() if depth < len(qs) for q in [qs[depth]]]
    return [images[i] for i, _ in rows], [a for _, (a, _) in rows], [p for _, (_, p) in rows]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_embeddings_equal_the_per_query_path(backbone, batch_size: int) -> None:
    model, processor = backbone
    images, aspects, prompts = _queries()
    assert supports_shared_prefix(model)
    reference = extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=1,
                                          share_image_prefix=False)
    shared = extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=batch_size)
    assert shared.shape == reference.shape == (len(images), model.config.text_config.hidden_size)
    assert torch.allclose(shared, reference, atol=1e-5, rtol=0)
    # The rows really differ by image and question (equality above is not of constants).
    assert (reference[0] - reference[5]).abs().max() > 1e-3


def test_each_image_is_encoded_once_and_run_once(backbone) -> None:
    model, processor = backbone
    images, aspects, prompts = _queries()
    trunk = multimodal_trunk(model)
    grids, rows = [], []
    hooks = [
        trunk.visual.register_forward_hook(lambda _m, args, kwargs, _o: grids.append(kwargs["grid_thw"]),
                                           with_kwargs=True),
        trunk.language_model.register_forward_hook(lambda _m, _a, kwargs, _o: rows.append(kwargs["inputs_embeds"].shape[0]),
                                                   with_kwargs=True),
    ]
    try:
        extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=2)
    finally:
        for hook in hooks:
            hook.remove()
    distinct = len(group_by_image(images))
    assert sum(len(grid) for grid in grids) == distinct == 5  # one vision encode per image
    assert len(rows) == 3 and max(rows) <= 2  # batch_size images per pass, at most one row each


def test_block_mask_lets_suffixes_see_their_prefix_and_themselves_only() -> None:
    # pad, image 0 (prefix x2, suffix 1 x2, suffix 2), image 1 (prefix, suffix 1) in one row
    owner = torch.tensor([[-1, 0, 0, 0, 0, 0, 1, 1]])
    segment = torch.tensor([[0, 0, 0, 1, 1, 2, 0, 1]])
    allowed = block_attention_mask(owner, segment, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],  # padding sees only itself
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 1, 0, 0],  # suffix 2 skips suffix 1
        [0, 0, 0, 0, 0, 0, 1, 0],  # the next image sees none of the first
        [0, 0, 0, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_images_with_few_questions_share_a_row(backbone) -> None:
    model, processor = backbone
    images = _images([(64, 64)] * 3)
    texts = [[question_text(processor, aspect, None) for aspect in ("tec", "aes", "tec", "aes")],
             [question_text(processor, "tec", None)], [question_text(processor, "aes", None)]]
    packed = pack_queries(model, processor, images, texts, torch.float32)
    assert packed.inputs["input_ids"].shape[0] == 2  # four questions in one row, two single ones in the other
    assert packed.rows.tolist() == [0, 0, 0, 0, 1, 1]


def test_questions_that_differ_before_the_image_are_refused(backbone) -> None:
    model, processor = backbone
    image = _images([(64, 64)])[0]
    text = question_text(processor, "tec", None)
    with pytest.raises(ValueError, match="differ before the image"):
        pack_queries(model, processor, [image], [[text, "system note\n" + text]], torch.float32)
    with pytest.raises(ValueError, match="no questions"):
        pack_queries(model, processor, [image], [[]], torch.float32)


def _tuples(n: int, seed: int = 0, ali_negative: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        size = (96 + 32 * (k % 3), 96)
        pos, tec, aes, other = _images([size] * 4, seed=seed * 100 + k)
        rows.append({"positive": pos, "tec_negative": tec, "aes_negative": aes, "prompt": f"a cat number {k}",
                     "mismatched_prompt": "a long boat on a calm sea at dawn",
                     "ali_negative": other if ali_negative else None})
    rng.shuffle(rows)
    return rows


def _loss_and_grads(model, processor, batch, share: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    weights = [{"tec": 1.0, "aes": 0.5, "ali": 2.0}[e.aspect] for e in batch]
    loss = _label_loss(model, processor, batch, weights, "cpu", share)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("modules_to_save,checkpointing", [
    (("lm_head",), False),  # the tiny preset: LoRA on the LLM, trained head
    (("visual", "lm_head"), False),  # a trained vision tower: the shared prefix is not frozen
    (("lm_head",), True),  # gradient checkpointing drops caches; packing needs none
])
def test_sft_loss_and_gradients_equal_the_per_example_path(tiny_dir: Path, modules_to_save, checkpointing) -> None:
    model, processor = load_backbone(str(tiny_dir))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = _lora_model(model, SFTConfig.tiny(modules_to_save=modules_to_save))
    model.train()
    batch = pseudo_label_examples(_tuples(2) + _tuples(1, seed=1, ali_negative=True))
    shared_loss, shared_grads = _loss_and_grads(model, processor, batch, share=True)
    plain_loss, plain_grads = _loss_and_grads(model, processor, batch, share=False)
    assert abs(shared_loss - plain_loss) < 1e-5
    assert shared_grads.keys() == plain_grads.keys()
    if "visual" in modules_to_save:
        assert any("visual" in name for name in shared_grads)  # the vision tower is trained
    for name, grad in shared_grads.items():
        assert torch.allclose(grad, plain_grads[name], atol=1e-5, rtol=1e-4), name
    assert any(grad.abs().max() > 1e-4 for grad in shared_grads.values())


def test_label_probabilities_equal_the_per_example_path(backbone) -> None:
    model, processor = backbone
    examples = pseudo_label_examples(_tuples(3, seed=2, ali_negative=True))
    shared = label_probabilities(model, processor, examples, batch_size=2)
    plain = label_probabilities(model, processor, examples, batch_size=5, share_image_prefix=False)
    assert torch.allclose(shared, plain, atol=1e-5, rtol=0)


def test_sampler_keeps_groups_adjacent_and_singletons_shuffle_as_before() -> None:
    images = _images([(32, 32)] * 3)
    examples = [SFTExample(images[0], "tec", None, "high", 0), SFTExample(images[1], "tec", None, "low"),
                SFTExample(images[0], "aes", None, "high", 0), SFTExample(images[2], "aes", None, "low", 1)]
    groups = example_groups(examples)
    assert groups == [[0, 2], [1], [3]]
    stream = _SampleStream(groups, seed=3)
    for epoch in range(4):
        order = stream.take(epoch * 4, 4)
        assert sorted(order) == [0, 1, 2, 3]
        assert abs(order.index(0) - order.index(2)) == 1
    # Singleton groups: exactly the per-example permutation (trajectories of ungrouped data stay).
    generator = torch.Generator().manual_seed(5 * 1_000_003 + 0)
    assert _SampleStream([[i] for i in range(7)], seed=5).take(0, 7) == torch.randperm(7, generator=generator).tolist()


def test_training_trajectory_is_the_same_with_and_without_sharing(tiny_dir: Path, tmp_path: Path) -> None:
    train = pseudo_label_examples(_tuples(4, seed=3))
    heldout = pseudo_label_examples(_tuples(2, seed=4))
    results = {}
    for share in (True, False):
        cfg = SFTConfig.tiny(max_steps=6, share_image_prefix=share, checkpoint_every=100)
        results[share] = tune_backbone(str(tiny_dir), train, heldout, cfg, tmp_path / str(share))
    shared, plain = results[True], results[False]
    assert len(shared.loss_curve) == 6
    assert np.allclose(shared.loss_curve, plain.loss_curve, atol=1e-4, rtol=0)
    assert shared.loss_curve[0] != shared.loss_curve[-1]
    params = dict(plain.model.named_parameters())
    for name, value in shared.model.named_parameters():
        if value.requires_grad:
            assert torch.allclose(value, params[name], atol=1e-4), name
