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
