"""The instance config, workspace and shipped profiles say what the README says."""

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from eliq_pipeline.definitions import ELIQ_ASSETS
from eliq_pipeline.core.eras import load_eras
from eliq_pipeline.core.profiles import get_profile
from eliq_pipeline.defs.resources import ModelProfileResource

ROOT = Path(__file__).resolve().parents[1]


def test_dagster_yaml_is_a_valid_instance_with_one_gpu_slot_and_no_telemetry(tmp_path, monkeypatch):
    text = (ROOT / "dagster.yaml").read_text().replace(".eliq/dagster/storage", str(tmp_path / "storage"))
    (tmp_path / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_settings("telemetry")["enabled"] is False
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        # daemon-launched runs: ended runs give their pool slots back, stuck starts are failed
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_monitoring_start_timeout_seconds > 0
        assert (tmp_path / "storage").is_dir()
    assert {a.key.to_user_string() for a in ELIQ_ASSETS if a.op.pool == "gpu"} == {
        "positive_images", "negative_images", "tuned_mllm", "aspect_embeddings"}


def test_workspace_points_at_the_code_location():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "eliq_pipeline.definitions"


def test_production_profile_names_the_papers_models():
    production = get_profile("production")
    assert production.backbone == "Qwen/Qwen3-VL-8B-Instruct" and production.n_prompts == 400
    catalog = load_eras(ROOT / "eras.yaml").generators
    models = {entry.model_for("production") for entry in catalog.values()}
    assert {"black-forest-labs/FLUX.1-dev", "stabilityai/stable-diffusion-3.5-large", "Qwen/Qwen-Image",
            "CompVis/stable-diffusion-v1-1", "CompVis/stable-diffusion-v1-4", "stable-diffusion-v1-5/stable-diffusion-v1-5"} <= models


def test_profile_resource_applies_overrides_and_a_local_backbone(tmp_path):
    resource = ModelProfileResource(profile="production", backbone=str(tmp_path),
                                    overrides_json='{"n_prompts": 3, "scorer": {"epochs": 2}}')
    settings = resource.settings()
    assert (settings.backbone, settings.n_prompts, settings.scorer["epochs"]) == (str(tmp_path), 3, 2)


def test_dg_check_defs_loads_the_project():
    """`dg check defs` (Dagster's project CLI, `[tool.dg]` in pyproject.toml) loads the code location."""
    dg_cli = Path(sys.executable).with_name("dg")
    if not dg_cli.exists():
        dg_cli = shutil.which("dg")
        if dg_cli is None:
            pytest.skip("dagster-dg-cli is not installed")
    result = subprocess.run([str(dg_cli), "check", "defs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully." in result.stdout + result.stderr


def _make_recipe(target: str) -> str:
    """The command lines of a Makefile target (tab-indented lines after `target:`)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return "\n".join(recipe)


def test_cpu_demo_gives_dagster_absolute_paths_for_a_relative_home():
    """A relative CPU_HOME (README: `CPU_HOME=...` moves the run) once reached Dagster as a relative
    DAGSTER_HOME, which it refuses; the recipe now makes every path it writes or exports absolute."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-n", "cpu-demo", "CPU_HOME=rel-home", "ELIQ_SUPAGRUEN=some/folder"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    home = str(ROOT / "rel-home")
    commands = result.stdout[result.stdout.index("exit 2; }"):]  # after the ELIQ_SUPAGRUEN check's message
    for key in ("ELIQ_HOME", "DAGSTER_HOME", "ELIQ_SUPAGRUEN"):
        value = re.search(rf"\b{key}=(\S+)", commands).group(1)
        assert Path(value).is_absolute(), (key, value)
    assert f"DAGSTER_HOME={home}/dagster " in result.stdout
    assert f"base_dir: {home}/dagster/storage#" in result.stdout
    assert not (ROOT / "rel-home").exists()  # a dry run creates nothing


def test_ci_runs_the_fast_default_and_every_slow_test():
    """`make test` leaves the slow tests out; CI must still run them (they prove the real-data issues)."""
    assert '-m "not slow"' in _make_recipe("test")
    assert "-m slow" in _make_recipe("test-slow")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.strip().startswith("#")]
    assert ci.index("make test") < ci.index("make test-slow")
    for name in ("test_cpu_profile_learns", "test_agiqa_full", "test_tiny_profile_learns", "test_readme_commands"):
        assert _has_slow_tests(importlib.import_module(f"eliq_pipeline_tests.{name}")), name


def _has_slow_tests(module) -> bool:
    """Whether pytest would select a test of `module` with `-m slow`: the mark on the module
    (`pytestmark`, one mark or a list) or on one of its test functions."""
    def marks(obj) -> list:
        found = getattr(obj, "pytestmark", [])
        return found if isinstance(found, list) else [found]

    tests = [value for key, value in vars(module).items() if key.startswith("test_") and callable(value)]
    return any(mark.name == "slow" for owner in [module, *tests] for mark in marks(owner))
