"""Profiles: the settings each one names, and fingerprints that do not move under later fields."""

from __future__ import annotations

from dataclasses import replace

from eliq_pipeline.core.profiles import CPU, TINY, get_profile


def test_fields_added_later_do_not_change_existing_fingerprints() -> None:
    # TINY's fingerprint before prompt_source / technical_methods / aesthetic_methods /
    # severity_levels / negatives_per_aspect existed (main at 4ecd265): existing eras stay up to date
    assert TINY.fingerprint() == "9007e7805211d26a"
    # ... while setting one of them does change it
    assert replace(TINY, severity_levels=(1, 2)).fingerprint() != TINY.fingerprint()
    assert replace(TINY, negatives_per_aspect=1).fingerprint() != TINY.fingerprint()


def test_the_cpu_profile_learns_from_imports_with_graded_conventional_negatives() -> None:
    cpu = get_profile("cpu")
    assert cpu is CPU and cpu.prompt_source == "import" and cpu.backbone == "tiny:qwen3-vl-256"
    assert cpu.negative_families == ("conventional",) and cpu.severity_levels == (1, 2)
    sft = cpu.sft_config()
    assert "visual.merger" in sft.modules_to_save and "lm_head" in sft.modules_to_save
    assert get_profile("cpu", n_prompts=40).n_prompts == 40


def test_sft_config_keywords_override_the_profile_settings() -> None:
    # they were silently dropped under the profile's own values: a curve asked for 20 steps ran 2500
    assert CPU.sft["max_steps"] == 2500
    assert CPU.sft_config(max_steps=20, seed=3).max_steps == 20
    assert CPU.sft_config(seed=3).max_steps == 2500 and CPU.sft_config(seed=3).seed == 3
    assert replace(CPU, scorer={"seed": 1}).scorer_config(seed=5).seed == 5  # the same order for the scorer
