"""The layering of the package: the paper's sections and the core are free of Dagster, so they can
be reused (a scoring service, a notebook, a worker) without it; only `defs/` and the entry points
orchestrate."""

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eliq_pipeline"
DAGSTER_FREE = ("core", "supervision", "critic", "evaluation", "tiny")
FORBIDDEN = re.compile(r"^\s*(import dagster|from dagster|import dagster_\w+|from dagster_\w+)\b|eliq_pipeline\.defs\b"
                       r"|eliq_pipeline\.definitions\b|eliq_pipeline\.(runner|run_guard|cli|score_cli)\b", re.M)


@pytest.mark.parametrize("package", DAGSTER_FREE)
def test_dagster_free_packages_import_neither_dagster_nor_the_dagster_layer(package: str) -> None:
    sources = sorted((PACKAGE / package).rglob("*.py"))
    assert sources, f"eliq_pipeline/{package} has no modules"
    offending = [f"{path.relative_to(PACKAGE)}: {match.group(0).strip()}"
                 for path in sources for match in FORBIDDEN.finditer(path.read_text())]
    assert not offending, offending


def test_the_tree_has_the_papers_sections_and_no_flat_ml_package() -> None:
    assert not (PACKAGE / "ml").exists()
    for package in (*DAGSTER_FREE, "defs", "defs/supervision", "defs/critic", "defs/evaluation", "defs/resources"):
        assert (PACKAGE / package / "__init__.py").is_file(), package
