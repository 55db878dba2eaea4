"""Quality-aware instruction tuning on the tiny backbone: labels, learning, resume, save/load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.critic.backbone import (
    backbone_fingerprint,
    build_inputs,
    label_token_ids,
    load_backbone,
)
from eliq_pipeline.critic.instruction_tuning import (
    TUNED_META_FILE,
    SFTConfig,
    SFTExample,
    adapter_fingerprint,
    load_tuned_backbone,
    pseudo_label_examples,
    save_tuned_backbone,
    sft_batch,
    tune_backbone,
)
from eliq_pipeline.tiny.backbone import build_tiny_backbone


def _gradient(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth two-colour linear gradient in a random direction."""
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / (t.max() - t.min() + 1e-9)
    return start + (end - start) * t[..., None]


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def toy_tec_examples(pairs: int, seed: int) -> list[SFTExample]:
    """tec 'high' = smooth gradient, 'low' = the same gradient under strong Gaussian noise."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(pairs):
        clean = _gradient(rng)
        examples.append(SFTExample(_to_image(clean), "tec", None, "high"))
        examples.append(SFTExample(_to_image(clean + rng.normal(0, 60, clean.shape)), "tec", None, "low"))
    return examples


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("sft") / "tiny", seed=0)


@pytest.fixture(scope="module")
def toy_data() -> tuple[list[SFTExample], list[SFTExample]]:
    return toy_tec_examples(32, seed=1), toy_tec_examples(20, seed=101)


@pytest.fixture(scope="module")
def tuned(tiny_dir: Path, toy_data, tmp_path_factory: pytest.TempPathFactory):
    train, heldout = toy_data
    lines: list[str] = []
    work = tmp_path_factory.mktemp("work")
    result = tune_backbone(str(tiny_dir), train, heldout, SFTConfig.tiny(), work, log=lines.append)
    return result, lines


# ---------------------------------------------------------------------------------------------


@dataclass
class _Tuple:
    positive: Image.Image
    tec_negative: Image.Image
    aes_negative: Image.Image
    prompt: str
    mismatched_prompt: str


def test_pseudo_labels_follow_section_3_3_1() -> None:
    pos, tec, aes = (Image.new("RGB", (8, 8), c) for c in ((1, 1, 1), (2, 2, 2), (3, 3, 3)))
    rows = [
        {"positive": pos, "tec_negative": tec, "aes_negative": aes, "prompt": "a cat", "mismatched_prompt": "a car"},
        _Tuple(pos, tec, aes, "a dog", "a boat"),
    ]
    examples = pseudo_label_examples(rows)
    assert len(examples) == 12
    first = [(e.image, e.aspect, e.prompt, e.label) for e in examples[:6]]
    assert sorted(first, key=repr) == sorted(
        [
            (pos, "tec", None, "high"),
            (pos, "aes", None, "high"),
            (pos, "ali", "a cat", "high"),
            (tec, "tec", None, "low"),
            (aes, "aes", None, "low"),
            (pos, "ali", "a car", "low"),
        ],
        key=repr,
    )
    # Negatives are never labelled on their non-primary aspects.
    assert not any(e.image is tec and e.aspect != "tec" for e in examples)
    assert not any(e.image is aes and e.aspect != "aes" for e in examples)
    assert {e.prompt for e in examples[6:] if e.aspect == "ali"} == {"a dog", "a boat"}


def test_example_validation() -> None:
    image = Image.new("RGB", (8, 8))
    assert SFTExample(image, "tec", "dropped", "low").prompt is None
    with pytest.raises(ValueError):
        SFTExample(image, "ali", None, "low")
    with pytest.raises(ValueError):
        SFTExample(image, "tec", None, "medium")
    with pytest.raises(ValueError):
        SFTExample(image, "sharpness", None, "low")


def test_loss_covers_only_the_label_token(tiny_dir: Path, toy_data) -> None:
    model, processor = load_backbone(str(tiny_dir))
    batch = toy_data[0][:3] + [SFTExample(toy_data[0][0].image, "ali", "a much longer prompt than the others", "low")]
    inputs = sft_batch(processor, batch)
    labels = inputs["labels"]
    ids = label_token_ids(processor.tokenizer)
    assert labels[:, :-1].eq(-100).all()
    assert labels[:, -1].tolist() == [ids[e.label] for e in batch]
    assert labels.ne(-100).sum() == len(batch)
    # The model's loss equals cross-entropy of the label given the final input token.
    with torch.no_grad():
        loss = model(**inputs).loss
        plain = build_inputs(processor, [e.image for e in batch], [e.aspect for e in batch], [e.prompt for e in batch])
        last = model(**plain).logits[:, -1, :]
    expected = torch.nn.functional.cross_entropy(last, labels[:, -1])
    assert torch.allclose(loss, expected, atol=1e-5)


def test_tuning_learns_toy_tec_task(tuned) -> None:
    result, lines = tuned
    cfg = SFTConfig.tiny()
    report = (
        f"toy tec SFT: steps={result.steps} trainable={result.trainable_params}/{result.total_params} "
        f"loss {result.loss_curve[0]:.3f} -> {np.mean(result.loss_curve[-10:]):.3f} "
        f"held-out accuracy={result.heldout_accuracy} (n={result.heldout_counts})"
    )
    print(report)
    assert result.steps == cfg.max_steps and len(result.loss_curve) == cfg.max_steps
    assert result.resumed_from_step == 0
    assert result.heldout_counts == {"tec": 40}
    assert result.heldout_accuracy["tec"] >= 0.8, report
    assert np.mean(result.loss_curve[-10:]) < 0.5 * result.loss_curve[0]
    assert 0 < result.trainable_params < result.total_params
    assert any(line.startswith("held-out accuracy") for line in lines)


def test_resume_continues_from_checkpoint(tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    train = toy_data[0]
    cfg = SFTConfig.tiny(max_steps=4, checkpoint_every=1, batch_size=4, lora_dropout=0.1)
    straight = tune_backbone(str(tiny_dir), train, [], cfg, tmp_path / "straight")

    work = tmp_path / "interrupted"
    first = tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "max_steps": 2}), work)
    assert first.resumed_from_step == 0 and len(first.loss_curve) == 2
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    log: list[str] = []
    second = tune_backbone(str(tiny_dir), train, [], cfg, work, log=log.append)
    assert second.resumed_from_step == 2
    assert log[0].startswith("resumed from step-00000002")
    assert second.loss_curve[:2] == first.loss_curve
    # Same data order, optimizer state and dropout RNG: identical to the uninterrupted run.
    assert np.allclose(second.loss_curve, straight.loss_curve, atol=1e-6)
    # A finished run only re-evaluates.
    third = tune_backbone(str(tiny_dir), train, [], cfg, work)
    assert third.resumed_from_step == 4 and third.loss_curve == second.loss_curve
    # Checkpoints from other settings are not resumed.
    changed = tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "learning_rate": 1e-3}), work)
    assert changed.resumed_from_step == 0
    checkpoint = work / "checkpoints" / "step-00000004"
    files = {p.name for p in checkpoint.iterdir()}
    assert files == {"adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 4


def test_save_load_round_trip_gives_identical_logits(tuned, tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    result, _ = tuned
    out = save_tuned_backbone(result.model, result.processor, tmp_path / "tuned", base_ref=str(tiny_dir))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", TUNED_META_FILE, "processor_config.json"} <= names
    meta = json.loads((out / TUNED_META_FILE).read_text())
    assert meta["base_ref"] == str(tiny_dir)
    assert meta["base_fingerprint"] == backbone_fingerprint(str(tiny_dir))

    model, processor = load_tuned_backbone(out)
    heldout = toy_data[1][:6]
    args = ([e.image for e in heldout], [e.aspect for e in heldout], [e.prompt for e in heldout])
    with torch.no_grad():
        before = result.model(**build_inputs(result.processor, *args)).logits
        after = model(**build_inputs(processor, *args)).logits
    assert torch.equal(before, after)

    # A symbolic base reference (resolved by the caller at load time) still records the real base.
    symbolic = save_tuned_backbone(result.model, result.processor, tmp_path / "symbolic", base_ref="tiny:qwen3-vl")
    assert json.loads((symbolic / TUNED_META_FILE).read_text())["base_fingerprint"] == meta["base_fingerprint"]
    merged, _ = load_tuned_backbone(symbolic, base_override=str(tiny_dir), merge=True)
    with torch.no_grad():
        merged_logits = merged(**build_inputs(processor, *args)).logits
    assert torch.allclose(before, merged_logits, atol=1e-4)

    fingerprint = adapter_fingerprint(out)
    assert fingerprint.startswith("adapter-sha256:") and fingerprint == adapter_fingerprint(out)
    other = build_tiny_backbone(tmp_path / "other_base", seed=1)
    assert adapter_fingerprint(out, base_override=str(other)) != adapter_fingerprint(out, base_override=str(tiny_dir))


def test_zero_steps_is_the_no_instruction_tuning_ablation(tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    """sft max_steps=0 keeps the raw backbone (LoRA B starts at zero): embeddings are unchanged."""
    from eliq_pipeline.critic.embeddings import extract_aspect_embeddings

    train, heldout = toy_data
    result = tune_backbone(str(tiny_dir), train, heldout, SFTConfig.tiny(max_steps=0), tmp_path)
    assert result.steps == 0 and result.loss_curve == []
    raw, processor = load_backbone(str(tiny_dir))
    images = [e.image for e in heldout[:3]]
    args = (images, ["tec", "aes", "tec"], [None, None, None])
    tuned_z = extract_aspect_embeddings(result.model, result.processor, *args)
    raw_z = extract_aspect_embeddings(raw, processor, *args)
    assert torch.allclose(tuned_z, raw_z, atol=1e-6)


def test_module_learning_rates_group_parameters_and_reach_the_checkpoint_key(tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    from eliq_pipeline.critic.instruction_tuning import _lora_backbone, _param_groups

    cfg = SFTConfig.tiny(modules_to_save=("visual.merger", "lm_head"), module_learning_rates=(("merger", 1e-2),),
                         max_steps=2, warmup_steps=4, checkpoint_every=1)
    model, _, trainable = _lora_backbone(str(tiny_dir), cfg, "cpu", torch.float32)
    groups = {g["lr"]: g["params"] for g in _param_groups(model, cfg)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(groups) == {1e-2, cfg.learning_rate}
    assert groups[1e-2] and all("merger" in names[id(p)] for p in groups[1e-2])
    assert sum(len(v) for v in groups.values()) == len(trainable)  # every trainable parameter, once
    with pytest.raises(ValueError, match=r"\['blocks'\], which match no trainable parameter"):
        _param_groups(model, SFTConfig.tiny(module_learning_rates=(("blocks", 1e-4),)))
    # the rate is part of the trajectory key only when used (earlier checkpoints stay resumable)
    assert "module_learning_rates" not in SFTConfig.tiny().run_key()
    assert cfg.run_key()["module_learning_rates"] == [["merger", 0.01]]
    # a run with them trains and records them in its checkpoints
    train, heldout = toy_data
    result = tune_backbone(str(tiny_dir), train[:8], heldout[:4], cfg, tmp_path / "run")
    assert result.steps == 2
    state = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["run_key"]["module_learning_rates"] == [["merger", 0.01]]


def test_a_finished_run_on_other_examples_is_not_resumed(tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    """Regression: new negatives of the same count (a changed negative plan) once resumed the old
    run's final checkpoint, so the era's critic silently kept training on the old examples."""
    train = toy_data[0]
    cfg = SFTConfig.tiny(max_steps=2, checkpoint_every=1, batch_size=4)
    work = tmp_path / "sft"
    assert tune_backbone(str(tiny_dir), train, [], cfg, work).resumed_from_step == 0
    assert tune_backbone(str(tiny_dir), train, [], cfg, work).resumed_from_step == 2  # same examples: resumed
    other = [SFTExample(e.image.transpose(Image.FLIP_LEFT_RIGHT), e.aspect, e.prompt, e.label, e.group) for e in train]
    log: list[str] = []
    again = tune_backbone(str(tiny_dir), other, [], cfg, work, log=log.append)
    assert again.resumed_from_step == 0 and any("other settings or examples; starting fresh" in line for line in log)
    relabelled = [SFTExample(e.image, e.aspect, e.prompt, "low" if e.label == "high" else "high", e.group) for e in other]
    assert tune_backbone(str(tiny_dir), relabelled, [], cfg, work).resumed_from_step == 0


def test_ema_returns_the_average_of_the_trajectory_and_resumes_it(tiny_dir: Path, toy_data, tmp_path: Path) -> None:
    """With ``ema_decay`` the returned model carries the exponential average of the raw weights
    after each step (read back from per-step checkpoints), debiased so that the random initial
    weights are no part of it; an interrupted run resumes the average, and a finished one
    re-evaluates it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    train, decay = toy_data[0], 0.6
    cfg = SFTConfig.tiny(max_steps=4, checkpoint_every=1, keep_checkpoints=10, batch_size=4, ema_decay=decay)
    straight = tune_backbone(str(tiny_dir), train, [], cfg, tmp_path / "straight")
    averaged = get_peft_model_state_dict(straight.model)
    expected = {k: torch.zeros_like(v) for k, v in averaged.items()}  # the debiased average starts at zero
    for step in range(1, 5):
        raw = load_file(str(tmp_path / "straight" / "checkpoints" / f"step-{step:08d}" / "adapter_model.safetensors"))
        expected = {k: decay * expected[k] + (1 - decay) * raw[k] for k in expected}
    expected = {k: v / (1 - decay**4) for k, v in expected.items()}
    assert set(expected) == set(raw)  # the checkpoints hold the same trainable weights
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)
    # the checkpoints hold the raw trajectory; the model is the average, not the last raw weights
    assert any(not torch.allclose(averaged[k], raw[k], atol=1e-4) for k in raw)

    work = tmp_path / "interrupted"
    tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "max_steps": 2}), work)
    for run in range(2):  # resumed at step 2, then a finished run that only re-evaluates
        result = tune_backbone(str(tiny_dir), train, [], cfg, work)
        assert result.resumed_from_step == (2, 4)[run]
        state = get_peft_model_state_dict(result.model)
        assert all(torch.allclose(state[k], averaged[k], atol=1e-6) for k in averaged)

    # the average of a one-step run is that step's weights, whatever the decay: no trace of the init
    one = tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "max_steps": 1, "ema_decay": 0.99}),
                        tmp_path / "one")
    first = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000001" / "adapter_model.safetensors"))
    assert all(torch.allclose(get_peft_model_state_dict(one.model)[k], first[k], atol=1e-6) for k in first)

    # part of the trajectory key only when used; a decay outside [0, 1) is refused
    assert "ema_decay" not in SFTConfig.tiny().run_key() and cfg.run_key()["ema_decay"] == decay
    assert "ema_start" not in SFTConfig.tiny().run_key() and cfg.run_key()["ema_start"] == "zero-debiased"
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        SFTConfig.tiny(ema_decay=1.0)
