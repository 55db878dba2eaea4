"""ELIQScorer bundles: round trip, batch-size invariance, calibration, sealing, long prompts and
clear refusals."""

from __future__ import annotations

import json
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eliq_pipeline.critic.backbone import load_backbone
from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
from eliq_pipeline.evaluation.benchmark_inputs import NEUTRAL_PROMPT
from eliq_pipeline.critic.bundle import (
    ADAPTER_DIR,
    BUNDLE_META_FILE,
    BUNDLE_VERSION,
    CALIBRATION_FILE,
    BundleDamagedError,
    Calibration,
    HEAD_DIR,
    ELIQScorer,
    Score,
    export_bundle,
    verify_bundle,
)
from eliq_pipeline.critic.instruction_tuning import save_tuned_backbone
from eliq_pipeline.critic.head.calibration import LinearCalibration
from eliq_pipeline.critic.head.checkpoints import save_scoring_head
from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.modules import ELIQScoringHead, score_embeddings
from eliq_pipeline.tiny.backbone import build_tiny_backbone


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
    assert meta["format_version"] == BUNDLE_VERSION == 2 and meta["hidden_size"] == 64 and meta["base_ref"] == str(parts.base)
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert set(meta["files"]) == on_disk - {BUNDLE_META_FILE}  # every file but the manifest is sealed
    assert {"head/model.safetensors", "head/config.json", "adapter/adapter_config.json"} <= set(meta["files"])
    assert all(entry["size"] == (bundle_dir / name).stat().st_size for name, entry in meta["files"].items())
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


def test_embed_encodes_each_image_once_and_equals_per_question_rows(scorer: ELIQScorer) -> None:
    batch = images(SIZES, seed=4)
    encoded: list[int] = []
    hook = scorer.model.get_base_model().model.visual.register_forward_hook(
        lambda _m, _a, kwargs, _o: encoded.append(len(kwargs["grid_thw"])), with_kwargs=True)
    try:
        z_tec, z_aes, z_ali = scorer.embed(batch, PROMPTS, batch_size=3)
    finally:
        hook.remove()
    assert sum(encoded) == len(batch)  # three questions, one vision encode per image
    ali_prompts = [p if p else NEUTRAL_PROMPT for p in PROMPTS]
    for aspect, z in (("tec", z_tec), ("aes", z_aes), ("ali", z_ali)):
        rows = extract_aspect_embeddings(scorer.model, scorer.processor, batch, [aspect] * len(batch), ali_prompts,
                                         batch_size=1, share_image_prefix=False)
        assert torch.allclose(z, rows, atol=1e-5, rtol=0), aspect


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
    with pytest.raises(BundleDamagedError, match=r"head/config\.json: .*head/model\.safetensors: ") as caught:
        ELIQScorer.from_pretrained(swapped)  # a swapped part breaks the seal before any shape check
    assert set(caught.value.files) >= {"head/config.json", "head/model.safetensors"}


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
    with pytest.raises(BundleDamagedError, match=r"is damaged: .*adapter/adapter_model\.safetensors: sha256 mismatch") as caught:
        ELIQScorer.from_pretrained(mixed)
    assert "adapter/adapter_model.safetensors" in caught.value.files

    incomplete = _copy(bundle_dir, tmp_path / "incomplete")
    (incomplete / ADAPTER_DIR / "adapter_config.json").unlink()
    with pytest.raises(BundleDamagedError, match=r"is damaged: adapter/adapter_config\.json: missing \(re-export"):
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


# ------------------------------------------------------------------------------ sealed bundles


@pytest.fixture(scope="module")
def calibrated_bundle(scorer: ELIQScorer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with every kind of file, calibration.json included."""
    scorer.calibration = Calibration(s_vis=LinearCalibration(2.0, 1.0), s_ali=LinearCalibration(0.5, 3.0))
    try:
        return scorer.save_pretrained(tmp_path_factory.mktemp("sealed") / "critic")
    finally:
        scorer.calibration = Calibration()


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _damage(path: Path, how: str) -> None:
    if how == "modify one byte":
        _flip_byte(path)
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["modify one byte", "truncate", "delete"])
def test_damage_to_any_file_of_the_bundle_names_that_file(calibrated_bundle: Path, how: str, tmp_path: Path) -> None:
    bundle = _copy(calibrated_bundle, tmp_path / "critic")
    listed = sorted(json.loads((bundle / BUNDLE_META_FILE).read_text())["files"])
    assert CALIBRATION_FILE in listed and len(listed) >= 6
    expected = {"modify one byte": "sha256 mismatch", "truncate": "truncated", "delete": "missing"}[how]
    for name in listed:  # every file the manifest lists, one at a time
        path = bundle / name
        original = path.read_bytes()
        assert original, f"{name} is empty; nothing to damage"
        _damage(path, how)
        try:
            with pytest.raises(BundleDamagedError) as caught:
                ELIQScorer.from_pretrained(bundle)
            assert caught.value.files == [name], (name, str(caught.value))
            assert isinstance(caught.value, ValueError)
            message = str(caught.value)
            assert message.startswith(f"bundle {bundle} is damaged: {name}: {expected}"), message
            assert message.endswith("(re-export it with `eliq export`)")
        finally:
            path.write_bytes(original)
    assert verify_bundle(bundle)["format_version"] == 2  # restored: sealed again


def test_every_byte_of_the_manifest_is_sealed(calibrated_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(calibrated_bundle, tmp_path / "critic")
    manifest = bundle / BUNDLE_META_FILE
    original = manifest.read_bytes()
    for at in range(len(original)):  # every single-byte change: unparsable or off its own checksum
        _flip_byte(manifest, at)
        with pytest.raises(BundleDamagedError, match=f"is damaged: {BUNDLE_META_FILE}: ") as caught:
            verify_bundle(bundle)
        assert caught.value.files == [BUNDLE_META_FILE], at
        manifest.write_bytes(original)

    manifest.write_bytes(original[: len(original) // 2])
    with pytest.raises(BundleDamagedError, match=r"is damaged: eliq_bundle\.json: not valid JSON \(Unterminated"):
        ELIQScorer.from_pretrained(bundle)
    manifest.write_bytes(b"")
    with pytest.raises(BundleDamagedError, match=r"eliq_bundle\.json: not valid JSON"):
        ELIQScorer.from_pretrained(bundle)
    meta = json.loads(original)
    del meta["files"], meta["manifest_sha256"]
    manifest.write_text(json.dumps(meta))
    with pytest.raises(BundleDamagedError, match=r"eliq_bundle\.json: missing keys files, manifest_sha256"):
        ELIQScorer.from_pretrained(bundle)


def test_calibration_is_sealed_and_extra_files_are_refused_only_where_loaded(calibrated_bundle: Path, bundle_dir: Path,
                                                                          tmp_path: Path) -> None:
    # The reported bug: an edited calibration.json moved every score without an error.
    edited = _copy(calibrated_bundle, tmp_path / "edited")
    calibration = json.loads((edited / CALIBRATION_FILE).read_text())
    calibration["s_vis"]["slope"] = 20.0
    (edited / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2, sort_keys=True) + "\n")
    with pytest.raises(BundleDamagedError, match=r"calibration\.json: "):
        ELIQScorer.from_pretrained(edited)
    # A calibration.json dropped into an uncalibrated bundle would be loaded: refused.
    added = _copy(bundle_dir, tmp_path / "added")
    shutil.copy(calibrated_bundle / CALIBRATION_FILE, added / CALIBRATION_FILE)
    with pytest.raises(BundleDamagedError, match=r"calibration\.json: not in the manifest"):
        ELIQScorer.from_pretrained(added)
    (added / CALIBRATION_FILE).unlink()
    (added / HEAD_DIR / "extra.json").write_text("{}")
    (added / ADAPTER_DIR / "chat_template.jinja.bak").write_text("x")
    with pytest.raises(BundleDamagedError) as caught:
        verify_bundle(added)
    assert caught.value.files == ["adapter/chat_template.jinja.bak", "head/extra.json"]
    # Files that are never loaded are fine: notes at the top level, hidden files (.DS_Store).
    (added / HEAD_DIR / "extra.json").unlink()
    (added / ADAPTER_DIR / "chat_template.jinja.bak").unlink()
    (added / "NOTES.txt").write_text("exported for the March review")
    (added / ADAPTER_DIR / ".DS_Store").write_bytes(b"\0")
    assert verify_bundle(added)["format_version"] == 2


def test_format_1_bundles_still_load_with_a_warning(bundle_dir: Path, tmp_path: Path) -> None:
    old = _copy(bundle_dir, tmp_path / "v1")
    meta = json.loads((old / BUNDLE_META_FILE).read_text())
    del meta["files"], meta["manifest_sha256"]
    meta["format_version"] = 1
    (old / BUNDLE_META_FILE).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="format version 1: its calibration.json is not covered"):
        loaded = ELIQScorer.from_pretrained(old)
    resealed = loaded.save_pretrained(tmp_path / "v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_bundle(resealed)["format_version"] == 2


# ------------------------------------------------------------------------------ long prompts


LONG_PROMPT = ("The quick brown fox jumps over the lazy dog; zebras quaff vexing jynx! " * 150)[:10_000]


def test_an_over_long_prompt_is_cut_to_the_backbone_limit(scorer: ELIQScorer, capfd) -> None:
    batch = images([(96, 96), (128, 64), (64, 64)], seed=11)
    capfd.readouterr()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning either
        results = scorer.score(batch, ["a red car", LONG_PROMPT, None], batch_size=3)
    elapsed = time.perf_counter() - started
    assert capfd.readouterr().err == ""  # no "Token indices sequence length is longer than ..."
    normal, long, none = results
    assert isinstance(long, Score) and long == (long.s_vis, long.s_ali) and long.s_ali is not None
    assert long.prompt_truncated and not normal.prompt_truncated and not none.prompt_truncated
    fit = long.prompt_fit
    assert fit.tokens > scorer.prompt_limit > fit.kept > 3000  # most of the limit goes to the prompt
    assert LONG_PROMPT.startswith(fit.text)
    # The truncated prompt is what was scored: the same as passing its kept part.
    (vis, ali), = scorer.score(batch[1:2], [fit.text])
    assert (vis, ali) == pytest.approx((long.s_vis, long.s_ali), abs=1e-5)
    # A normal prompt's row is unaffected by the long one in its batch.
    assert tuple(normal) == pytest.approx(scorer.score(batch[:1], ["a red car"])[0], abs=1e-5)
    assert pickle.loads(pickle.dumps(long)).prompt_truncated
    assert elapsed < 60


def test_score_takes_paths_and_pil_images_alike(scorer: ELIQScorer, tmp_path: Path) -> None:
    """The README snippet: PIL images and file paths (str or Path) score the same; a missing file
    and a single (unlisted) image are refused, naming what is wrong."""
    pictures = images([(96, 64), (64, 128)], seed=11)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for picture, path in zip(pictures, paths):
        picture.save(path)
    prompts = ["a cat", None]
    from_images = scorer.score(pictures, prompts)
    assert scorer.score([str(paths[0]), paths[1]], prompts) == from_images
    assert scorer.score([pictures[0], str(paths[1])], prompts) == from_images
    with pytest.raises(FileNotFoundError, match=r"image 1: file not found: .*missing\.png"):
        scorer.score([pictures[0], tmp_path / "missing.png"], prompts)
    with pytest.raises(TypeError, match="pass a list of images or paths"):
        scorer.score(str(paths[0]), ["a cat"])


def test_visual_score_does_not_depend_on_the_prompt(scorer: ELIQScorer) -> None:
    """README "What the scores mean": s_vis of an image is the same with any prompt or none (it is
    computed from the neutral caption's alignment token); s_ali is the prompt's. With
    `visual_from_prompt=True`, s_vis is the head's visual output on the image's own prompt."""
    batch = images([(96, 64), (64, 96), (80, 80)], seed=13)
    prompts = ["a red bicycle leaning on a wall", "a bowl of ramen", "an astronaut riding a horse"]
    without = scorer.score(batch, [None] * 3)
    with_prompts = scorer.score(batch, prompts)
    other_prompts = scorer.score(batch, list(reversed(prompts)))
    for row in (with_prompts, other_prompts):
        assert [s.s_vis for s in row] == pytest.approx([s.s_vis for s in without], abs=1e-5)
    # s_ali is the prompt's own, unchanged by this: the joint pass gives the same alignment scores.
    joint_vis, joint_ali = score_embeddings(scorer.head, *scorer.embed(batch, prompts))
    assert [s.s_ali for s in with_prompts] == pytest.approx(joint_ali.tolist(), abs=1e-5)
    assert [s.s_ali for s in other_prompts] != pytest.approx([s.s_ali for s in with_prompts], abs=1e-3)
    # The prompt-conditioned visual score, on request: it differs from the prompt-free one.
    conditioned = scorer.score(batch, prompts, visual_from_prompt=True)
    assert [s.s_vis for s in conditioned] == pytest.approx(joint_vis.tolist(), abs=1e-5)
    assert [s.s_vis for s in conditioned] != pytest.approx([s.s_vis for s in without], abs=1e-4)


def test_a_head_with_a_fixed_alignment_token_travels_in_a_bundle(parts: TinyParts, tmp_path: Path) -> None:
    """ScorerConfig.fixed_visual_alignment: the token is part of the head's weights, so a bundle
    scores as the parts did, and s_vis is then the same whichever alignment token the row has."""
    cfg = ScorerConfig(hidden_size=64, d_model=32, depth=1, heads=2, ff_dim=64, fixed_visual_alignment=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        head = ELIQScoringHead(cfg)
        head.visual_alignment_token.copy_(torch.randn(64))
    scorer = ELIQScorer.from_parts(parts.adapter, save_scoring_head(head, cfg, tmp_path / "head"))
    batch = images([(96, 64), (64, 96), (80, 80)], seed=5)
    prompts = ["a red bicycle", "a bowl of ramen", None]
    expected = scorer.score(batch, prompts)
    loaded = ELIQScorer.from_pretrained(scorer.save_pretrained(tmp_path / "critic"))
    assert loaded.score(batch, prompts) == expected
    conditioned = loaded.score(batch, prompts, visual_from_prompt=True)
    assert [s.s_vis for s in conditioned] == pytest.approx([s.s_vis for s in expected], abs=1e-5)
