"""Settings reach assets through resources only: the LLM label refiner is configured on the profile
resource (from the environment in `resources_from_env`), decides the staleness of `prompts`, and
its API key is never recorded."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from eliq_pipeline.defs.supervision.assets import prompts
from eliq_pipeline.definitions import resources_from_env
from eliq_pipeline.core.eras import load_eras
from eliq_pipeline.runner import find_stale
from eliq_pipeline_tests.supervision.test_prompt_refine import FakeLLM
from eliq_pipeline_tests.pipeline_helpers import metadata_of, pipeline_env, write_eras

SECRET = "sk-test-never-recorded-0123456789"


def _stale(instance, env: dict[str, str]):
    """`eliq materialize`'s verdict on era-a under the settings of `env`."""
    resources = resources_from_env(env)
    registry = load_eras(env["ELIQ_ERAS"])
    return find_stale(instance, "era-a", registry.era("era-a").fingerprint(registry.generators),
                      resources["profile"].fingerprint(), [], resources["artifacts"].store())


def _materialize_prompts(instance, env: dict[str, str]) -> None:
    instance.add_dynamic_partitions("eras", ["era-a"])
    result = dg.materialize([prompts], instance=instance, partition_key="era-a", resources=resources_from_env(env))
    assert result.success


def test_refiner_settings_come_from_the_environment_once() -> None:
    profile = resources_from_env({})["profile"]
    assert profile.chat_client() is None and profile.refiner_settings() == {}
    assert profile.fingerprint() == profile.settings().fingerprint(), "refiner off: fingerprints stay as they were"

    on = resources_from_env({"ELIQ_LLM_BASE_URL": "http://h/v1/", "ELIQ_LLM_MODEL": "m",
                             "ELIQ_LLM_API_KEY": SECRET, "ELIQ_LLM_TIMEOUT": "5"})["profile"]
    client = on.chat_client()
    assert (client.base_url, client.model, client.api_key, client.timeout) == ("http://h/v1", "m", SECRET, 5.0)
    assert on.refiner_settings() == {"base_url": "http://h/v1", "model": "m"}
    assert on.fingerprint() != profile.fingerprint()

    def fingerprint(**env: str) -> str:
        return resources_from_env({"ELIQ_LLM_BASE_URL": "http://h/v1", "ELIQ_LLM_MODEL": "m", **env})["profile"].fingerprint()

    assert fingerprint() == on.fingerprint()  # a trailing '/' is the same endpoint
    assert fingerprint(ELIQ_LLM_API_KEY="another", ELIQ_LLM_TIMEOUT="60") == on.fingerprint()  # key, timeout: not fingerprinted
    assert fingerprint(ELIQ_LLM_MODEL="m2") != on.fingerprint()
    assert fingerprint(ELIQ_LLM_BASE_URL="http://other/v1") != on.fingerprint()

    openai = resources_from_env({"OPENAI_BASE_URL": "http://h/v1", "ELIQ_LLM_MODEL": "m", "OPENAI_API_KEY": "k"})["profile"]
    assert openai.chat_client().api_key == "k" and openai.chat_client().base_url == "http://h/v1"
    other = resources_from_env({"ELIQ_LLM_BASE_URL": "http://h/v1", "ELIQ_LLM_MODEL": "m", "OPENAI_API_KEY": "k"})["profile"]
    assert other.chat_client().api_key is None, "an OpenAI key is not sent to another endpoint"
    with pytest.raises(ValueError, match="ELIQ_LLM_MODEL"):
        resources_from_env({"ELIQ_LLM_BASE_URL": "http://127.0.0.1:1/v1"})["profile"].chat_client()
    with pytest.raises(ValueError, match="ELIQ_LLM_TIMEOUT"):
        resources_from_env({"ELIQ_LLM_TIMEOUT": "soon"})


def test_changing_the_llm_refiner_makes_prompts_stale(tmp_path: Path) -> None:
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"))  # refiner off
    with dg.instance_for_test() as instance:
        _materialize_prompts(instance, env)
        assert _stale(instance, env).asset == "positive_images"  # prompts is up to date; the next is missing
        for llm in ({"ELIQ_LLM_BASE_URL": "http://127.0.0.1:1/v1", "ELIQ_LLM_MODEL": "m"},
                    {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "ELIQ_LLM_MODEL": "m"}):
            stale = _stale(instance, {**env, **llm})
            assert (stale.asset, stale.reason) == ("prompts", "prompts was built with other profile settings")


def test_the_api_key_reaches_the_endpoint_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts_file = tmp_path / "prompts.csv"  # the second prompt matches no keyword: the LLM is asked
    prompts_file.write_text("prompt,category\nA bowl of ramen on a wooden table,food\nAn abstract swirl of light,\n")
    llm = FakeLLM()
    try:
        env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"), ELIQ_PROMPTS_FILE=str(prompts_file),
                           ELIQ_LLM_BASE_URL=llm.url, ELIQ_LLM_MODEL="tiny-llm", ELIQ_LLM_API_KEY=SECRET)
        for name, value in env.items():  # the process environment, as `make demo` / `make ui` read it
            monkeypatch.setenv(name, value)
        resources = resources_from_env()
        # the code location's resource snapshot (UI resource page, launchpad) names the variable only
        assert SECRET not in resources["profile"].get_resource_definition().config_schema.default_value_as_json_str
        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            instance.add_dynamic_partitions("eras", ["era-a"])
            assert dg.materialize([prompts], instance=instance, partition_key="era-a", resources=resources).success
            meta = metadata_of(instance, "prompts", "era-a")
            refinement = meta["label_refinement"]
            assert (refinement["llm_refine_enabled"], refinement["llm_refine_asked"], refinement["llm_refine_refined"]) == (
                True, 1, 1)
            assert SECRET not in repr(meta)
            assert _stale(instance, env).asset == "positive_images"  # recorded with the refiner's fingerprint
            assert _stale(instance, {**env, "ELIQ_LLM_API_KEY": "rotated"}).asset == "positive_images"
            assert _stale(instance, {**env, "ELIQ_LLM_MODEL": "bigger-llm"}).asset == "prompts"
            assert _stale(instance, {k: v for k, v in env.items() if not k.startswith("ELIQ_LLM_")}).asset == "prompts"
        assert llm.requests and all(r["auth"] == f"Bearer {SECRET}" for r in llm.requests)
    finally:
        llm.close()
    # nowhere in the Dagster instance (event log, run storage, compute logs), which does hold the metadata
    files = [p for p in (tmp_path / "dagster").rglob("*") if p.is_file()]
    assert any(b"tiny-llm" in p.read_bytes() for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_changed_prompt_file_makes_prompts_stale(tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompts.csv"
    prompt_file.write_text("prompt\na red bicycle leaning on a wall\na bowl of ramen on a table\n", encoding="utf-8")
    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"), ELIQ_PROMPTS_FILE=str(prompt_file))
    with dg.instance_for_test() as instance:
        _materialize_prompts(instance, env)
        assert _stale(instance, env).asset == "positive_images"  # prompts is up to date
        prompt_file.write_text(prompt_file.read_text() + "two cats on a sofa\n", encoding="utf-8")
        stale = _stale(instance, env)
        assert stale.asset == "prompts" and "other profile settings" in stale.reason
    niqe = tmp_path / "niqe.json"
    niqe.write_text("{}")
    fingerprints = {resources_from_env({"ELIQ_NIQE_PARAMS": str(niqe)})["profile"].fingerprint()}
    niqe.write_text('{"mu": [1]}')
    fingerprints.add(resources_from_env({"ELIQ_NIQE_PARAMS": str(niqe)})["profile"].fingerprint())
    assert len(fingerprints) == 2 and resources_from_env({})["profile"].fingerprint() not in fingerprints
