from pathlib import Path

import pytest

from eliq_pipeline.eras import ErasFileError, append_era, load_eras, parse_eras

VALID = """
generators:
  a: {backend: diffusers, model: "tiny:flux"}
  b: {backend: diffusers, model: {tiny: "tiny:sd3", production: org/model}, params: {guidance: 3.0}}
eras:
  - {name: e1, positive_generators: [a], low_quality_generators: [b], seed: 1}
"""


def test_shipped_eras_file_has_two_tiny_eras_sharing_a_positive_generator():
    registry = load_eras(Path(__file__).parents[1] / "eras.yaml")
    assert len(registry.eras) == 2
    first, second = registry.eras
    assert set(first.positive_generators) & set(second.positive_generators)
    for era in registry.eras:
        for gid in era.positive_generators + era.low_quality_generators:
            assert registry.generators[gid].model_for("tiny").startswith("tiny:")


def test_valid_file_parses_and_expands_single_model_to_every_profile():
    registry = parse_eras(VALID)
    assert registry.generators["a"].model == {"tiny": "tiny:flux", "production": "tiny:flux"}
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
