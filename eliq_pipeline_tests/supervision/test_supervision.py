import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.supervision.prompts import build_prompt_bank
from eliq_pipeline.supervision.generation import (
    AI_SPECIFIC_METHODS, GenerationRequest, ai_specific_requests, generate_ai_specific, generate_images, generation_params,
)
from eliq_pipeline.supervision.negatives import build_negatives, low_quality_skips, sampler_skips
from eliq_pipeline.supervision.tuples import build_tuples, heldout_prompt_ids
from eliq_pipeline.core.storage import LocalArtifactStore


class FakeGenerator:
    """Deterministic images from (prompt, seed); can crash after a number of images."""

    def __init__(self, crash_after: int | None = None, salt: int = 0):
        self.calls = 0
        self.salt = salt
        self.crash_after = crash_after

    def generate(self, prompts, seeds):
        images = []
        for prompt, seed in zip(prompts, seeds):
            if self.crash_after is not None and self.calls >= self.crash_after:
                raise RuntimeError("killed")
            self.calls += 1
            rng = np.random.default_rng(seed + len(prompt) + self.salt)
            images.append(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)))
        return images

    def model_revision(self):
        return "fake-1"


def _requests(prompts, gid="g"):
    return [GenerationRequest(gid, p, generation_params({}, {"steps": 2, "height": 16, "width": 16}, p)) for p in prompts]


def test_generation_resumes_after_a_crash_reusing_finished_images(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(6, seed=0)
    crashing = FakeGenerator(crash_after=4)
    with pytest.raises(RuntimeError, match="killed"):
        generate_images(store, _requests(prompts), lambda gid: crashing)
    resumed = FakeGenerator()
    rows, generated, reused = generate_images(store, _requests(prompts), lambda gid: resumed)
    assert (generated, reused, resumed.calls) == (2, 4, 2)
    assert len({r["image_sha256"] for r in rows}) == 6


def test_same_generator_and_prompt_give_the_same_cached_image_across_calls(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(3, seed=0)
    first, _, _ = generate_images(store, _requests(prompts), lambda gid: FakeGenerator())
    again, generated, reused = generate_images(store, _requests(prompts), lambda gid: FakeGenerator())
    assert (generated, reused) == (0, 3)
    assert [r["image_sha256"] for r in first] == [r["image_sha256"] for r in again]


def test_negatives_and_tuples_cover_every_aspect_with_a_prompt_disjoint_split(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(8, seed=0)
    positives, _, _ = generate_images(store, _requests(prompts), lambda gid: FakeGenerator())
    low, _, _ = generate_images(store, _requests(prompts, gid="low"), lambda gid: FakeGenerator(salt=1))
    negatives, created, reused = build_negatives(store, positives, prompts, low, seed=3)
    assert reused == 0 and created == 8 * 3
    assert {(n["aspect"], n["method"]) for n in negatives} == {
        ("tec", "jpeg_recompress"), ("tec", "gaussian_noise"), ("aes", "offline_aesthetic_edit"),
        ("aes", "low_quality_generator"), ("ali", "shuffled_prompt")}
    assert all(n["image_sha256"] != n["positive_sha256"] for n in negatives if n["image_sha256"])
    assert all(n["mismatched_prompt_id"] != n["prompt_id"] for n in negatives if n["aspect"] == "ali")
    tuples = build_tuples(positives, negatives, heldout_fraction=0.25, seed=3, tuples_per_positive=2)
    assert len(tuples) == 16
    train = {t["prompt_id"] for t in tuples if t["split"] == "train"}
    heldout = {t["prompt_id"] for t in tuples if t["split"] == "heldout"}
    assert len(heldout) == 2 and not train & heldout
    assert {t["tec_method"] for t in tuples} == {"jpeg_recompress", "gaussian_noise"}
    _, created_again, reused_again = build_negatives(store, positives, prompts, low, seed=3)
    assert (created_again, reused_again) == (0, 24)


def test_heldout_split_is_deterministic_per_seed():
    ids = [f"p{i}" for i in range(20)]
    assert heldout_prompt_ids(ids, 0.25, seed=1) == heldout_prompt_ids(reversed(ids), 0.25, seed=1)
    assert heldout_prompt_ids(ids, 0.25, seed=1) != heldout_prompt_ids(ids, 0.25, seed=2)


class PartialGenerator(FakeGenerator):
    """An `ImageSource` serving some prompts only, as an `import` source does; takes `stop_step`."""

    def __init__(self, served):
        super().__init__()
        self.served = set(served)

    def image_count(self, prompt):
        return int(prompt in self.served)

    def has_image(self, prompt):
        return prompt in self.served

    def skip_reason(self, prompt):
        return None if prompt in self.served else "not served"

    def report(self):
        return {"served": len(self.served)}

    def generate(self, prompts, seeds, stop_step=None, indices=None):
        return super().generate(prompts, [s + (stop_step or 0) for s in seeds])


def test_ai_specific_rows_stay_matched_to_their_methods_when_a_render_is_skipped(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(3, seed=0)
    planned = ai_specific_requests(_requests(prompts))
    served = {r.text for r, method, _ in planned if method != "degraded_prompt"}  # every degraded prompt is skipped
    skipped = []
    rows, generated, reused = generate_ai_specific(store, planned, lambda gid: PartialGenerator(served),
                                                   skipped=skipped)
    assert (generated, reused, len(skipped)) == (3 * 3, 0, 3)
    expected = [(r.text, m) for r, m, _ in planned if r.text in served]
    assert [(row["prompt_used"], row["method"]) for row in rows] == expected
    assert {row["method"] for row in rows} == {"premature_decode", "appearance_prompt", "variant_prompt"}


def test_skips_of_generators_without_a_sampler_are_counted_per_method_with_a_reason(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(4, seed=0)
    positives, _, _ = generate_images(store, _requests(prompts, gid="api"), lambda gid: FakeGenerator())
    positives += generate_images(store, _requests(prompts, gid="flux"), lambda gid: FakeGenerator(salt=2))[0]
    skips = sampler_skips(positives, {"api": "generator 'api' (import backend) has no sampler"})
    assert set(skips) == {f"ai_specific/{m}" for m in AI_SPECIFIC_METHODS}
    assert skips["ai_specific/premature_decode"] == {
        "count": 4, "reason": "generator 'api' (import backend) has no sampler", "per_generator": {"api": 4}}
    assert sampler_skips(positives, {}) == {}
    # a low-quality import source without an image for two prompts: one missing negative per positive
    missing = [{"generator": "lq", "prompt": p.text, "reason": "x"} for p in prompts[:2]]
    missing.append({"generator": "lq", "prompt": "a prompt without any positive", "reason": "x"})
    assert low_quality_skips(positives, missing)["ai_specific/low_quality_generator"]["count"] == 2 * 2


def test_tuples_from_conventional_negatives_only_when_no_ai_specific_render_exists(tmp_path):
    """Imported positives: no AI-specific render, no low-quality generator; tuples still cover every aspect."""
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(8, seed=0)
    positives, _, _ = generate_images(store, _requests(prompts), lambda gid: FakeGenerator())
    negatives, _, _ = build_negatives(store, positives, prompts, low_quality=[], seed=3, ai_generated=[])
    assert {n["family"] for n in negatives} == {"conventional"}
    tuples = build_tuples(positives, negatives, heldout_fraction=0.25, seed=3, tuples_per_positive=2)
    assert len(tuples) == 16 and {t["split"] for t in tuples} == {"train", "heldout"}
    with pytest.raises(ValueError, match=r"no \['tec', 'aes', 'ali'\] negatives in families \['ai_specific'\]"):
        build_tuples(positives, negatives, 0.25, 3, 2, families=["ai_specific"])


def _smooth_positive_generator():
    """Positives with structure at several scales (random pixels would make blur look like denoising)."""
    from scipy import ndimage

    class Smooth(FakeGenerator):
        def generate(self, prompts, seeds):
            out = []
            for prompt, seed in zip(prompts, seeds):
                rng = np.random.default_rng(seed + len(prompt))
                rgb = ndimage.gaussian_filter(rng.normal(size=(48, 48, 3)), sigma=(1.5, 1.5, 0))
                out.append(Image.fromarray(np.clip(128 + 60 * rgb / rgb.std(), 0, 255).astype(np.uint8)))
            return out

    return Smooth()


def test_graded_negatives_per_aspect_cycle_through_every_method_and_level(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(12, seed=0)
    positives, _, _ = generate_images(store, _requests(prompts), lambda gid: _smooth_positive_generator())
    technical, aesthetic = ("gaussian_blur", "downscale_upscale", "jpeg_recompress"), ("desaturate", "exposure_shift")
    negatives, created, _ = build_negatives(store, positives, prompts, [], seed=3, technical_methods=technical,
                                            aesthetic_methods=aesthetic, levels=(1, 2), per_aspect=2)
    # two (method, level) pairs per positive and aspect, no offline editor, one shuffled prompt
    assert created == 12 * 4
    by_positive = {}
    for n in negatives:
        by_positive.setdefault(n["positive_sha256"], []).append(n)
    for rows in by_positive.values():
        assert sorted(r["aspect"] for r in rows) == ["aes", "aes", "ali", "tec", "tec"]
        graded = [r for r in rows if r["aspect"] != "ali"]
        assert all(r["severity"] in (1, 2) and '"level": %d' % r["severity"] in r["params"] for r in graded)
    pairs = {(n["method"], n["severity"]) for n in negatives if n["aspect"] == "tec"}
    assert pairs == {(m, lv) for m in technical for lv in (1, 2)}  # offsets spread the methods over positives
    for rows in by_positive.values():  # each positive: one method's severity series per aspect
        for aspect in ("tec", "aes"):
            series = sorted((r["method"], r["severity"]) for r in rows if r["aspect"] == aspect)
            assert len({m for m, _ in series}) == 1 and [lv for _, lv in series] == [1, 2], series
    tuples = build_tuples(positives, negatives, heldout_fraction=0.25, seed=3, tuples_per_positive=2)
    assert all(t["tec_severity"] in (1, 2) and t["aes_severity"] in (1, 2) for t in tuples)
    # the same call again reuses every degradation
    _, created_again, reused_again = build_negatives(store, positives, prompts, [], seed=3, technical_methods=technical,
                                                     aesthetic_methods=aesthetic, levels=(1, 2), per_aspect=2)
    assert (created_again, reused_again) == (0, 12 * 4)


def test_unknown_or_misplaced_degradations_are_refused_before_any_work(tmp_path):
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(2, seed=0)
    positives, _, _ = generate_images(store, _requests(prompts), lambda gid: FakeGenerator())
    keys_before = sorted(p.name for p in tmp_path.rglob("*.json"))
    for kwargs, message in (({"technical_methods": ("sharpen",)}, "unknown degradation 'sharpen'"),
                            ({"technical_methods": ("desaturate",)}, "degrades aspect 'aes', not 'tec'"),
                            ({"levels": (1, 5)}, r"unknown severity level\(s\) \[5\]")):
        with pytest.raises(ValueError, match=message):
            build_negatives(store, positives, prompts, [], seed=3, **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == keys_before  # nothing degraded


def test_a_degradation_without_effect_is_replaced_by_the_next_one(tmp_path):
    """Desaturating a black-and-white image changes nothing: it is no aesthetic negative."""
    store = LocalArtifactStore(tmp_path)
    prompts = build_prompt_bank(6, seed=0)

    class Grey(FakeGenerator):
        def generate(self, prompts, seeds):
            return [image.convert("L").convert("RGB") for image in _smooth_positive_generator().generate(prompts, seeds)]

    positives, _, _ = generate_images(store, _requests(prompts), lambda gid: Grey())
    no_effect = []
    negatives, _, _ = build_negatives(store, positives, prompts, [], seed=3, technical_methods=("gaussian_blur",),
                                      aesthetic_methods=("desaturate", "contrast_crush"), levels=(1, 2),
                                      per_aspect=2, no_effect=no_effect)
    aesthetic = [n for n in negatives if n["aspect"] == "aes"]
    assert len(aesthetic) == 2 * 6 and {n["method"] for n in aesthetic} == {"contrast_crush"}
    assert all(n["image_sha256"] != n["positive_sha256"] for n in negatives if n["image_sha256"])
    assert no_effect and {e["method"] for e in no_effect} == {"desaturate"}
