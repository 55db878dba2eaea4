"""ELIQScorer bundles: round trip, batch-size invariance, calibration, and clear refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.ml.backbone import build_tiny_backbone, load_backbone
from eliq_pipeline.ml.benchmark_inputs import NEUTRAL_PROMPT
from eliq_pipeline.ml.bundle import (
    ADAPTER_DIR,
    BUNDLE_META_FILE,
    CALIBRATION_FILE,
    Calibration,
    HEAD_DIR,
    ELIQScorer,
    export_bundle,
)
from eliq_pipeline.ml.instruction_tuning import save_tuned_backbone
from eliq_pipeline.ml.scorer import ELIQScoringHead, ScorerConfig, save_scoring_head


@dataclass(frozen=True)
class TinyParts:
    base: Path  # the tiny backbone folder
    adapter: Path  # a saved tuned backbone (random, non-zero LoRA)
    head: Path  # a saved, untrained scoring head (hidden 64)


def make_adapter(base: Path, out: Path, base_ref: str | None = None, seed: int = 1) -> Path:
    """A tuned-backbone folder without training: a random non-zero LoRA, so the adapter matters."""
    from peft import LoraConfig, get_peft_model

    model, processor = load_backbone(str(base))
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=r".*\.language_model\..*\.(q_proj|v_proj)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuned = get_peft_model(model, lora)
    return save_tuned_backbone(tuned, processor, out, base_ref=base_ref or str(base))


def make_head(out: Path, hidden_size: int = 64, seed: int = 0) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ELIQScoringHead(ScorerConfig(hidden_size=hidden_size, d_model=32, depth=1, heads=2, ff_dim=64))
    return save_scoring_head(head, head.config, out)


def make_tiny_parts(root: Path) -> TinyParts:
    base = build_tiny_backbone(root / "tiny-base", seed=0)
    return TinyParts(base, make_adapter(base, root / "adapter"), make_head(root / "head"))


def images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


# Varied sizes and prompt lengths, so batched rows really are left-padded against each other.
SIZES = [(64, 64), (160, 96), (96, 200), (224, 160), (80, 120), (128, 128), (200, 72)]
PROMPTS = ["a cat", None, "a castle on a hill under a sky full of stars, oil painting, highly detailed",
           "", "dog", None, "a red car in the rain at night"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> TinyParts:
    return make_tiny_parts(tmp_path_factory.mktemp("bundle-parts"))


@pytest.fixture(scope="module")
def scorer(parts: TinyParts) -> ELIQScorer:
    return ELIQScorer.from_parts(parts.adapter, parts.head)


@pytest.fixture(scope="module")
def bundle_dir(scorer: ELIQScorer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scorer.save_pretrained(tmp_path_factory.mktemp("bundle") / "critic")


def _copy(bundle: Path, target: Path) -> Path:
    return Path(shutil.copytree(bundle, target))


# ------------------------------------------------------------------------------------------


def test_round_trip_gives_identical_scores(scorer: ELIQScorer, bundle_dir: Path, parts: TinyParts, tmp_path: Path) -> None:
    assert {p.name for p in bundle_dir.iterdir()} == {ADAPTER_DIR, HEAD_DIR, BUNDLE_META_FILE}
    meta = json.loads((bundle_dir / BUNDLE_META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["hidden_size"] == 64 and meta["base_ref"] == str(parts.base)
    assert meta["base_fingerprint"].startswith("dir-sha256:") and meta["adapter_fingerprint"].startswith("adapter-sha256:")
    assert meta["head_config"]["d_model"] == 32

    batch = images(SIZES)
    expected = scorer.score(batch, PROMPTS, batch_size=4)
    loaded = ELIQScorer.from_pretrained(bundle_dir)
    assert loaded.score(batch, PROMPTS, batch_size=4) == expected  # bit-identical
    assert loaded.fingerprint == scorer.fingerprint
    # Prompt-less (None or blank) rows report s_vis only.
    assert [ali is None for _, ali in expected] == [False, True, False, True, False, True, False]
    assert all(np.isfinite(vis) for vis, _ in expected)
    # A loaded bundle saves again to an equivalent bundle.
    again = ELIQScorer.from_pretrained(loaded.save_pretrained(tmp_path / "again"))
    assert again.score(batch, PROMPTS, batch_size=4) == expected


def test_prompt_less_images_use_the_neutral_prompt(scorer: ELIQScorer) -> None:
    batch = images(SIZES[:2], seed=5)
    without = scorer.score(batch, [None, ""])
    with_neutral = scorer.score(batch, [NEUTRAL_PROMPT, NEUTRAL_PROMPT])
    assert [vis for vis, _ in without] == pytest.approx([vis for vis, _ in with_neutral], abs=1e-6)
    assert [ali for _, ali in without] == [None, None]


def test_scores_do_not_depend_on_batch_size(scorer: ELIQScorer) -> None:
    batch = images(SIZES, seed=2)
    runs = {size: scorer.score(batch, PROMPTS, batch_size=size) for size in (1, 3, 7)}
    reference = np.array([[vis, np.nan if ali is None else ali] for vis, ali in runs[1]])
    for size in (3, 7):
        other = np.array([[vis, np.nan if ali is None else ali] for vis, ali in runs[size]])
        np.testing.assert_allclose(other, reference, rtol=0, atol=1e-5, equal_nan=True)
    assert scorer.score([], []) == []


def test_calibration_is_monotonic_and_maps_to_the_mos_range(scorer: ELIQScorer, tmp_path: Path) -> None:
    labelled = images([(64 + 32 * i, 96) for i in range(6)], seed=3)
    prompts = ["a cat", "a dog", None, "a tree", "a house", "a boat"]
    raw_vis, raw_ali = scorer.raw_scores(labelled, prompts)
    # MOS on a 1..5 scale that agrees with the critic's ranking but is not linear in it.
    mos_quality = 1 + 4 * np.argsort(np.argsort(raw_vis)) / 5
    mos_align = [float(3 + np.tanh(10 * a)) if p else None for a, p in zip(raw_ali, prompts)]
    unseen = images([(100, 60 + 40 * i) for i in range(4)], seed=4)
    unseen_prompts = ["sky", "a horse", "a tower", "fire"]
    raw_u = scorer.raw_scores(unseen, unseen_prompts)
    try:
        calibration = scorer.calibrate(labelled, prompts, mos_quality, mos_align)
        assert calibration.s_vis.slope > 0 and calibration.s_ali.slope > 0
        vis = calibration.s_vis(raw_vis)
        assert vis.mean() == pytest.approx(mos_quality.mean(), abs=1e-6)  # least squares: same mean
        assert 0.0 < vis.min() and vis.max() < 6.0  # the MOS range, not the raw score range
        with_prompt = [i for i, p in enumerate(prompts) if p]
        assert calibration.s_ali(raw_ali[with_prompt]).mean() == pytest.approx(
            np.mean([mos_align[i] for i in with_prompt]), abs=1e-6)

        # score() applies it; on unseen images calibrated ranks equal raw ranks, for both scores.
        cal_u = scorer.score(unseen, unseen_prompts)
        np.testing.assert_allclose([v for v, _ in cal_u], calibration.s_vis(raw_u[0]), rtol=0, atol=1e-12)
        assert np.array_equal(np.argsort(raw_u[0]), np.argsort([v for v, _ in cal_u]))
        assert np.array_equal(np.argsort(raw_u[1]), np.argsort([a for _, a in cal_u]))

        # The calibration travels with the bundle.
        saved = scorer.save_pretrained(tmp_path / "calibrated")
        assert (saved / CALIBRATION_FILE).is_file()
        assert ELIQScorer.from_pretrained(saved).score(unseen, unseen_prompts) == cal_u

        # A labelled split that disagrees with the critic cannot flip the ranking.
        flipped = scorer.calibrate(labelled, prompts, -raw_vis)
        assert flipped.s_vis.slope_at_floor and flipped.s_vis.slope > 0 and flipped.s_ali is None
        assert np.array_equal(np.argsort(raw_u[0]), np.argsort(flipped.s_vis(raw_u[0])))
    finally:
        scorer.calibration = Calibration()  # the module's scorer stays raw for other tests


# ------------------------------------------------------------------------------ refusals


def test_head_for_another_hidden_size_is_refused(parts: TinyParts, bundle_dir: Path, tmp_path: Path) -> None:
    head32 = make_head(tmp_path / "head32", hidden_size=32)
    message = r"bundle head expects hidden size 32 but backbone .* has 64"
    with pytest.raises(ValueError, match=message):
        ELIQScorer.from_parts(parts.adapter, head32)
    with pytest.raises(ValueError, match=message):
        export_bundle(parts.adapter, head32, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    swapped = _copy(bundle_dir, tmp_path / "swapped")
    shutil.rmtree(swapped / HEAD_DIR)
    shutil.copytree(head32, swapped / HEAD_DIR)
    with pytest.raises(ValueError, match=message):
        ELIQScorer.from_pretrained(swapped)


def test_another_base_backbone_is_refused(parts: TinyParts, bundle_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_backbone(tmp_path / "other-base", seed=1)
    with pytest.raises(ValueError, match="was trained on base dir-sha256:.* but backbone .* is dir-sha256:"):
        ELIQScorer.from_pretrained(bundle_dir, base_override=str(other))
    with pytest.raises(ValueError, match="was trained on base"):
        ELIQScorer.from_parts(parts.adapter, parts.head, base_override=str(other))


def test_mixed_up_or_missing_parts_are_refused(parts: TinyParts, bundle_dir: Path, tmp_path: Path) -> None:
    mixed = _copy(bundle_dir, tmp_path / "mixed")
    shutil.rmtree(mixed / ADAPTER_DIR)
    make_adapter(parts.base, mixed / ADAPTER_DIR, seed=7)
    with pytest.raises(ValueError, match="adapter/ has fingerprint .* parts were mixed up or modified"):
        ELIQScorer.from_pretrained(mixed)

    incomplete = _copy(bundle_dir, tmp_path / "incomplete")
    (incomplete / ADAPTER_DIR / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: adapter/adapter_config.json is missing"):
        ELIQScorer.from_pretrained(incomplete)

    no_meta = _copy(bundle_dir, tmp_path / "no-meta")
    (no_meta / BUNDLE_META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="is not an ELIQ scorer bundle"):
        ELIQScorer.from_pretrained(no_meta)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ELIQScorer.from_pretrained(tmp_path / "nowhere")

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ELIQScorer.from_pretrained(bundle_dir).save_pretrained(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_tiny_base_reference_needs_an_override(parts: TinyParts, tmp_path: Path) -> None:
    adapter = make_adapter(parts.base, tmp_path / "adapter-symbolic", base_ref="tiny:qwen3-vl")
    with pytest.raises(ValueError, match="toy backbone 'tiny:qwen3-vl'.*pass base_override"):
        export_bundle(adapter, parts.head, tmp_path / "b")
    bundle = export_bundle(adapter, parts.head, tmp_path / "b", base=str(parts.base), provenance={"era": "x"})
    meta = json.loads((bundle / BUNDLE_META_FILE).read_text())
    assert meta["base_ref"] == "tiny:qwen3-vl" and meta["provenance"] == {"era": "x"}
    with pytest.raises(ValueError, match=r"pass base_override \(CLI: --base\)"):
        ELIQScorer.from_pretrained(bundle)
    scores = ELIQScorer.from_pretrained(bundle, base_override=str(parts.base)).score(images([(64, 64)]), ["a cat"])
    assert len(scores) == 1 and scores[0][1] is not None
