from pathlib import Path

import pytest

from eliq_pipeline.core.profiles import PROFILES

from eliq_pipeline.core.eras import (
    IMPORT_OPTION_RULES, PARAM_RULES, SEED_MAX, ErasFileError, append_era, check_runnable, load_eras, parse_eras,
)
from eliq_pipeline_tests.pipeline_helpers import ERAS_ONE, pipeline_env, write_eras

VALID = """
generators:
  a: {backend: diffusers, model: "tiny:flux"}
  b: {backend: diffusers, model: {tiny: "tiny:sd3", production: org/model}, params: {guidance: 3.0}}
eras:
  - {name: e1, positive_generators: [a], low_quality_generators: [b], seed: 1}
"""


def test_shipped_eras_file_has_two_tiny_eras_sharing_a_positive_generator():
    registry = load_eras(Path(__file__).parents[2] / "eras.yaml")
    assert len(registry.eras) == 2
    first, second = registry.eras
    assert set(first.positive_generators) & set(second.positive_generators)
    for era in registry.eras:
        for gid in era.positive_generators + era.low_quality_generators:
            assert registry.generators[gid].model_for("tiny").startswith("tiny:")


def test_valid_file_parses_and_expands_single_model_to_every_profile():
    registry = parse_eras(VALID)
    assert registry.generators["a"].model == {name: "tiny:flux" for name in PROFILES}  # one model for every profile
    assert registry.generators["b"].model_for("production") == "org/model"
    assert registry.era("e1").editor_for("production") == "offline"


@pytest.mark.parametrize(
    "text, expected",
    [
        (VALID.replace("positive_generators: [a]", "positive_generators: [nope]"), "era 'e1'.positive_generators: unknown generator id 'nope'"),
        (VALID + "  - {name: e1, positive_generators: [a], seed: 2}\n", "eras[1].name: duplicate era name 'e1'"),
        (VALID.replace(", seed: 1", ""), "era 'e1': missing key 'seed'"),
        (VALID.replace("seed: 1", "seed: one"), "era 'e1'.seed: seed must be an integer"),
        (VALID.replace("seed: 1", "seed: true"), "era 'e1'.seed: seed must be an integer"),
        (VALID.replace("positive_generators: [a]", "positive_generators: a"), "era 'e1'.positive_generators: positive_generators (a list"),
        (VALID.replace("{backend: diffusers, model: \"tiny:flux\"}", "{backend: magic, model: x}"), "generators.a.backend: unknown backend 'magic'"),
        (VALID.replace("{backend: diffusers, model: \"tiny:flux\"}", "{backend: diffusers}"), "generators.a: missing key 'model'"),
        ("eras: []", "top level: missing key 'generators'"),
        (VALID.replace("seed: 1}", "seed: 1, editor: ghost}"), "era 'e1'.editor: unknown editor 'ghost'"),
        (VALID.replace("seed: 1}", "seed: 1, editor: {tiny: offline, prod: b}}"), "era 'e1'.editor: unknown profile(s) ['prod']"),
        (VALID.replace("{name: e1,", "{"), "eras[0]: missing key 'name'"),
        ("generators: {\n", "not valid YAML"),
    ],
)
def test_malformed_files_name_the_era_and_key(text, expected):
    with pytest.raises(ErasFileError) as excinfo:
        parse_eras(text, Path("eras.yaml"))
    assert expected in str(excinfo.value)


def test_append_era_copies_template_and_keeps_file_valid(tmp_path):
    path = tmp_path / "eras.yaml"
    path.write_text(VALID)
    era = append_era(path, "e2", like="e1", positive_generators=["b"])
    assert era.positive_generators == ("b",) and era.low_quality_generators == ("b",) and era.seed == 2
    assert load_eras(path).names() == ["e1", "e2"]


def test_append_era_refuses_invalid_additions_without_touching_the_file(tmp_path):
    path = tmp_path / "eras.yaml"
    path.write_text(VALID)
    with pytest.raises(ErasFileError, match="duplicate era name 'e1'"):
        append_era(path, "e1", like="e1")
    with pytest.raises(ErasFileError, match="unknown generator id 'zzz'"):
        append_era(path, "e3", like="e1", positive_generators=["zzz"])
    assert path.read_text() == VALID


def test_editor_can_differ_per_profile():
    registry = parse_eras(VALID.replace("seed: 1}", "seed: 1, editor: {tiny: offline, production: b}}"))
    era = registry.era("e1")
    assert (era.editor_for("tiny"), era.editor_for("production")) == ("offline", "b")


# --------------------------------------------------------------------------------------------
# Validation before work: everything eras.yaml can get wrong fails before any asset runs
# --------------------------------------------------------------------------------------------

def _with_generator(entry: str, era_extra: str = "", gid: str = "c") -> str:
    """VALID plus a catalog entry `c` (YAML flow mapping) used as e1's second positive generator."""
    text = VALID.replace("eras:\n", f"  {gid}: {entry}\neras:\n")
    return text.replace("positive_generators: [a]", f"positive_generators: [a, {gid}]").replace(
        "seed: 1}", f"seed: 1{era_extra}}}")


@pytest.mark.parametrize(
    "text, expected",
    [
        # era seed range: 0 .. 2**32 - 1
        (VALID.replace("seed: 1", f"seed: {2**63 + 1}"), "era 'e1'.seed: seed must be in 0..4294967295"),
        (VALID.replace("seed: 1", f"seed: {2**32}"), "era 'e1'.seed: seed must be in 0..4294967295"),
        (VALID.replace("seed: 1", "seed: -1"), "era 'e1'.seed: seed must be in 0..4294967295"),
        # generator params: unknown keys and wrong types, naming generator and key
        (VALID.replace("{guidance: 3.0}", "{guidnce: 3.0}"), "generators.b.params: generator 'b': unknown param(s) ['guidnce']"),
        (VALID.replace("{guidance: 3.0}", "{steps: ten}"), "generators.b.params.steps: generator 'b': steps must be a positive integer"),
        (VALID.replace("{guidance: 3.0}", "{steps: 0}"), "generators.b.params.steps: generator 'b': steps must be a positive integer"),
        (VALID.replace("{guidance: 3.0}", "{guidance: high}"), "generators.b.params.guidance: generator 'b': guidance must be a number"),
        (VALID.replace("{guidance: 3.0}", f"{{seed: {2**64}}}"), "generators.b.params.seed: generator 'b': seed must be an integer in 0..4294967295"),
        (VALID.replace("{guidance: 3.0}", "{init_seed: -3}"), "generators.b.params.init_seed: generator 'b': init_seed must be an integer in 0..4294967295"),
        (VALID.replace("{guidance: 3.0}", "{dtype: float64}"), "generators.b.params.dtype: generator 'b': dtype must be float32, bfloat16 or float16"),
        (VALID.replace("{guidance: 3.0}", "{offload: 'yes'}"), "generators.b.params.offload: generator 'b': offload must be true or false"),
        (VALID.replace("{guidance: 3.0}", "{call_kwargs: [1]}"), "generators.b.params.call_kwargs: generator 'b': call_kwargs must be a mapping"),
        (_with_generator("{backend: import, model: /data/x, params: {call_kwargs: {manifst: m.csv}}}"),
         "generators.c.params.call_kwargs: generator 'c': unknown import option(s) ['manifst']"),
        (_with_generator("{backend: import, model: /data/x, params: {call_kwargs: {min_side: big}}}"),
         "generators.c.params.call_kwargs.min_side: generator 'c': min_side must be a positive integer"),
        # tiny architectures, per role
        (VALID.replace('"tiny:flux"', '"tiny:xyz"'), "generators.a.model.tiny: generator 'a', profile 'tiny': unknown tiny architecture 'tiny:xyz'"),
        (VALID.replace('"tiny:sd3"', '"tiny:SD3"'), "generators.b.model.tiny: generator 'b', profile 'tiny': unknown tiny architecture 'tiny:SD3'"),
        (VALID.replace('"tiny:flux"', '"tiny:sd-img2img"'), "era 'e1'.positive_generators: generator 'a', profile 'tiny': 'tiny:sd-img2img' is an editor"),
        (VALID.replace("seed: 1}", "seed: 1, editor: a}"), "era 'e1'.editor: editor 'a', profile 'tiny': 'tiny:flux' is a text-to-image model"),
        (_with_generator("{backend: import, model: \"tiny:flux\"}"), "generators.c.model.tiny: generator 'c': backend 'import' takes a folder"),
        (_with_generator("{backend: import, model: /data/x}").replace("seed: 1}", "seed: 1, editor: c}"),
         "era 'e1'.editor: profile 'tiny': editor 'c' has backend 'import'"),
    ],
)
def test_values_that_would_fail_late_are_rejected_at_parse_time(text, expected):
    with pytest.raises(ErasFileError) as excinfo:
        parse_eras(text, Path("eras.yaml"))
    assert expected in str(excinfo.value)
    assert str(excinfo.value).startswith("eras.yaml: ")


def test_seed_bounds_are_inclusive_and_known_params_parse():
    registry = parse_eras(VALID.replace("seed: 1", f"seed: {SEED_MAX}").replace(
        "{guidance: 3.0}", "{guidance: 3, steps: 4, height: 64, width: 64, seed: 0, init_seed: 7, dtype: bfloat16, "
                           "negative_prompt: blurry, revision: main, offload: true, batch_size: 2, "
                           "max_sequence_length: 77, call_kwargs: {strength: 0.5}}"))
    assert registry.era("e1").seed == 2**32 - 1
    check_runnable(registry, "tiny")


def test_value_rules_only_name_keys_the_backends_know():
    from eliq_pipeline.supervision.generators import KNOWN_PARAMS
    from eliq_pipeline.supervision.import_backend import IMPORT_OPTIONS

    assert set(PARAM_RULES) <= KNOWN_PARAMS and set(IMPORT_OPTION_RULES) <= IMPORT_OPTIONS


def test_shipped_eras_file_is_runnable_on_every_profile():
    registry = load_eras(Path(__file__).parents[2] / "eras.yaml")
    for profile in ("tiny", "production"):
        check_runnable(registry, profile)


def _import_folder(root: Path, manifest: str = "manifest.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / manifest).write_text("file,prompt\nx.png,a cat\n")
    return root


# (eras text for a tmp folder, profile, expected message); each fails in check_runnable, not in parse_eras
RUNNABLE_CASES = {
    "no model for the profile (low-quality)": (
        lambda tmp: VALID.replace('{tiny: "tiny:sd3", production: org/model}', "{production: org/model}"),
        "tiny", "era 'e1'.low_quality_generators: generator 'b' has no model for profile 'tiny'"),
    "no model for the profile (positive)": (
        lambda tmp: VALID.replace('{tiny: "tiny:sd3", production: org/model}', '{tiny: "tiny:sd3"}')
        .replace("positive_generators: [a]", "positive_generators: [b]"),
        "production", "era 'e1'.positive_generators: generator 'b' has no model for profile 'production'"),
    "no model for the profile (editor)": (
        lambda tmp: VALID.replace("eras:\n", "  c: {backend: diffusers, model: {production: org/edit}}\neras:\n")
        .replace("seed: 1}", "seed: 1, editor: c}"),
        "tiny", "era 'e1'.editor: generator 'c' has no model for profile 'tiny'"),
    "import folder missing": (
        lambda tmp: _with_generator(f"{{backend: import, model: {tmp / 'nowhere'}}}"),
        "tiny", "era 'e1'.positive_generators: generator 'c': import folder {tmp}/nowhere does not exist "
                "(generators.c.model.tiny)"),
    "import manifest missing": (
        lambda tmp: _with_generator(f"{{backend: import, model: {_import_folder(tmp / 'imp')}, "
                                    "params: {call_kwargs: {manifest: other.csv}}}"),
        "tiny", "era 'e1'.positive_generators: generator 'c': import manifest {tmp}/imp/other.csv not found "
                "(generators.c.model.tiny)"),
    "import manifest outside the folder": (
        lambda tmp: _with_generator(f"{{backend: import, model: {_import_folder(tmp / 'imp')}, "
                                    "params: {call_kwargs: {manifest: ../../etc/passwd}}}"),
        "tiny", "generators.c.params.call_kwargs.manifest: manifest '../../etc/passwd' escapes the import folder"),
}


@pytest.mark.parametrize("case", sorted(RUNNABLE_CASES))
def test_check_runnable_names_era_generator_and_key(case, tmp_path):
    make_text, profile, expected = RUNNABLE_CASES[case]
    registry = parse_eras(make_text(tmp_path), Path("eras.yaml"))  # valid syntax...
    with pytest.raises(ErasFileError) as excinfo:  # ...but not runnable on the profile
        check_runnable(registry, profile)
    assert expected.format(tmp=tmp_path) in str(excinfo.value)
    assert str(excinfo.value).startswith("eras.yaml: ")


def test_check_runnable_only_checks_the_named_eras_and_the_active_profile(tmp_path):
    text = _with_generator(f"{{backend: import, model: {tmp_path / 'nowhere'}}}") + (
        "  - {name: e0, positive_generators: [a], seed: 3}\n")
    registry = parse_eras(text.replace('{tiny: "tiny:sd3", production: org/model}', '{tiny: "tiny:sd3"}'))
    check_runnable(registry, "tiny", ["e0"])  # e1's import folder and b's missing production model do not matter
    with pytest.raises(ErasFileError, match="import folder"):
        check_runnable(registry, "tiny", ["e0", "e1"])
    with pytest.raises(KeyError, match="ghost"):
        check_runnable(registry, "tiny", ["ghost"])
    folder = _import_folder(tmp_path / "ok")
    check_runnable(parse_eras(_with_generator(f"{{backend: import, model: {folder}}}")), "tiny")
    check_runnable(parse_eras(_with_generator(f"{{backend: import, model: {folder / 'manifest.csv'}}}")), "tiny")


def test_check_runnable_finds_a_missing_s3_manifest(s3_endpoint, s3_bucket, monkeypatch):
    import boto3

    text = _with_generator(f"{{backend: import, model: 's3://{s3_bucket}/api/flux', "
                           f"params: {{call_kwargs: {{endpoint_url: '{s3_endpoint}'}}}}}}")
    with pytest.raises(ErasFileError) as excinfo:
        check_runnable(parse_eras(text), "tiny")
    assert (f"era 'e1'.positive_generators: generator 'c': import manifest s3://{s3_bucket}/api/flux/manifest.csv "
            "not found (generators.c.model.tiny)") in str(excinfo.value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="api/flux/manifest.csv", Body=b"file,prompt\nx.png,a cat\n")
    check_runnable(parse_eras(text), "tiny")
    # without its own endpoint_url, a source is checked on the endpoint the store's client uses
    check_runnable(parse_eras(_with_generator(f"{{backend: import, model: 's3://{s3_bucket}/api/flux/'}}")), "tiny",
                   s3_endpoint=s3_endpoint)


RUNNER_CASES = {
    "seed too large": lambda tmp: (ERAS_ONE.replace("seed: 1", f"seed: {2**63 + 1}"), "era 'era-a'.seed"),
    "unknown params key": lambda tmp: (ERAS_ONE.replace('"tiny:sd"}', '"tiny:sd", params: {stepz: 3}}'),
                                       "generators.sd15.params: generator 'sd15': unknown param(s) ['stepz']"),
    "unknown tiny arch": lambda tmp: (ERAS_ONE.replace('"tiny:flux"', '"tiny:fluxx"'),
                                      "generator 'flux', profile 'tiny': unknown tiny architecture 'tiny:fluxx'"),
    "no model for profile": lambda tmp: (ERAS_ONE.replace('model: "tiny:sd"', "model: {production: org/sd}"),
                                         "era 'era-a'.low_quality_generators: generator 'sd15' has no model for profile 'tiny'"),
    "import folder missing": lambda tmp: (
        ERAS_ONE.replace('sd3: {backend: diffusers, model: "tiny:sd3"}', f"api: {{backend: import, model: {tmp / 'gone'}}}")
        .replace("positive_generators: [flux]", "positive_generators: [flux, api]"),
        "era 'era-a'.positive_generators: generator 'api': import folder"),
}


@pytest.mark.parametrize("case", sorted(RUNNER_CASES))
def test_materialize_eras_rejects_before_any_run(case, tmp_path):
    import dagster as dg

    from eliq_pipeline.runner import materialize_eras

    text, expected = RUNNER_CASES[case](tmp_path)
    eras_path = write_eras(tmp_path / "eras.yaml", text)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(ErasFileError) as excinfo:
        materialize_eras(env=pipeline_env(tmp_path / "home", eras_path), instance=instance, log=lambda _: None)
    assert expected in str(excinfo.value) and str(eras_path) in str(excinfo.value)
    assert instance.get_runs() == []
    assert instance.get_dynamic_partitions("eras") == []
    assert not (tmp_path / "home" / "artifacts").exists()


def test_resource_and_sensor_refuse_an_era_that_cannot_run_on_the_profile(tmp_path):
    import dagster as dg

    from eliq_pipeline.defs.resources import EraRegistryResource
    from eliq_pipeline.defs.automation import era_registry_sensor

    eras_path = write_eras(tmp_path / "eras.yaml", ERAS_ONE.replace('model: "tiny:sd"', "model: {production: org/sd}"))
    assert EraRegistryResource(path=str(eras_path)).era("era-a").name == "era-a"  # no profile: syntax only
    resource = EraRegistryResource(path=str(eras_path), profile="tiny")
    with pytest.raises(ErasFileError, match="generator 'sd15' has no model for profile 'tiny'"):
        resource.era("era-a")
    with dg.instance_for_test() as instance:
        result = era_registry_sensor(dg.build_sensor_context(instance=instance, resources={"eras": resource}))
        assert isinstance(result, dg.SkipReason) and "no model for profile 'tiny'" in result.skip_message
        assert instance.get_dynamic_partitions("eras") == []


def test_append_era_checks_the_new_era_runs_on_the_profile(tmp_path):
    path = tmp_path / "eras.yaml"
    text = VALID.replace('{tiny: "tiny:sd3", production: org/model}', "{production: org/model}").replace(
        "low_quality_generators: [b], ", "")
    path.write_text(text)
    with pytest.raises(ErasFileError, match="era 'e2'.positive_generators: generator 'b' has no model for profile 'tiny'"):
        append_era(path, "e2", like="e1", positive_generators=["b"], profile="tiny")
    assert path.read_text() == text
    assert append_era(path, "e2", like="e1", positive_generators=["b"], profile="production").name == "e2"


# ------------------------------------------------------------------ ${NAME} variables in generator models

def test_variables_fill_model_references_plain_and_per_profile(tmp_path):
    folder = _import_folder(tmp_path / "export")
    text = _with_generator("{backend: import, model: '${ELIQ_SUPAGRUEN}/export'}").replace(
        'production: org/model}', 'production: "${ELIQ_HUB}/model"}')
    registry = parse_eras(text, Path("eras.yaml"), {"ELIQ_SUPAGRUEN": str(tmp_path), "ELIQ_HUB": "org"})
    assert registry.generators["c"].model == {name: str(folder) for name in PROFILES}
    assert registry.generators["b"].model_for("production") == "org/model"
    check_runnable(registry, "tiny")  # the substituted folder is the one checked
    path = tmp_path / "eras.yaml"
    path.write_text(text)
    assert load_eras(path, {"ELIQ_SUPAGRUEN": str(tmp_path), "ELIQ_HUB": "org"}).generators["c"].model_for("tiny") == str(folder)
    # appending an era keeps the file's references (and validates with the variables)
    append_era(path, "e2", like="e1", variables={"ELIQ_SUPAGRUEN": str(tmp_path), "ELIQ_HUB": "org"})
    assert "${ELIQ_SUPAGRUEN}/export" in path.read_text()


def test_an_unset_variable_names_file_generator_and_variable_and_says_to_set_it(tmp_path):
    path = tmp_path / "eras.yaml"
    path.write_text(_with_generator("{backend: import, model: {tiny: '${ELIQ_SUPAGRUEN}/export'}}"))
    for variables in (None, {"ELIQ_OTHER": "x"}):
        with pytest.raises(ErasFileError) as excinfo:
            load_eras(path, variables)
        message = str(excinfo.value)
        assert message.startswith(f"{path}: generators.c.model.tiny: generator 'c': ")
        assert "${ELIQ_SUPAGRUEN}" in message and "export ELIQ_SUPAGRUEN=<folder>" in message


def test_eras_variables_are_the_eliq_environment_without_secrets():
    from eliq_pipeline.core.eras import eras_variables

    env = {"ELIQ_SUPAGRUEN": "/data/s", "ELIQ_HOME": "/h", "ELIQ_LLM_API_KEY": "sk-1", "ELIQ_S3_SECRET": "s",
           "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "a"}
    assert eras_variables(env) == {"ELIQ_SUPAGRUEN": "/data/s", "ELIQ_HOME": "/h"}


def test_the_eras_resource_passes_the_environment_variables(tmp_path):
    import json

    from eliq_pipeline.defs.resources import EraRegistryResource
    from eliq_pipeline.definitions import resources_from_env

    folder = _import_folder(tmp_path / "export")
    path = tmp_path / "eras.yaml"
    path.write_text(_with_generator("{backend: import, model: '${ELIQ_SUPAGRUEN}/export'}"))
    resource = resources_from_env({"ELIQ_ERAS": str(path), "ELIQ_SUPAGRUEN": str(tmp_path),
                                   "ELIQ_HOME": str(tmp_path / "home"), "ELIQ_LLM_API_KEY": "sk-secret"})["eras"]
    assert "sk-secret" not in resource.variables_json  # the resource's config is shown in the UI
    assert resource.load_runnable().generators["c"].model_for("tiny") == str(folder)
    bare = EraRegistryResource(path=str(path))
    with pytest.raises(ErasFileError, match="ELIQ_SUPAGRUEN"):
        bare.load()
    assert EraRegistryResource(path=str(path), variables_json=json.dumps({"ELIQ_SUPAGRUEN": str(tmp_path)})).load()


@pytest.mark.parametrize("value, ok", [("all", True), ("first", True), ("error", True), ("every", False), (1, False)])
def test_on_duplicate_accepts_all_first_and_error(value, ok):
    text = _with_generator(f"{{backend: import, model: /data/x, params: {{call_kwargs: {{on_duplicate: {value}}}}}}}")
    if ok:
        assert parse_eras(text).generators["c"].params["call_kwargs"]["on_duplicate"] == value
    else:
        with pytest.raises(ErasFileError, match="on_duplicate must be 'error', 'first' or 'all'"):
            parse_eras(text)
