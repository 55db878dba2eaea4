"""What the assets put in their materialization metadata, so the Dagster UI shows what an ML-ops
user looks for: numbers as numbers (`dg.MetadataValue.float`, which the asset's Plots tab charts
across runs and eras), plots and image grids as inline PNGs, the benchmark results as a table."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import dagster as dg

from eliq_pipeline.core.eras import Era
from eliq_pipeline.defs import common
from eliq_pipeline.defs.resources import EraRegistryResource, ModelProfileResource
from eliq_pipeline.evaluation.evaluation import HELDOUT_BENCHMARK
from eliq_pipeline.evaluation.plots import image_markdown
from eliq_pipeline.evaluation.report import method_rows

# One asset group: the global lineage then shows all eight assets at once (Dagster collapses
# groups when there are several); the paper section of an asset is in its description and tags.
LINEAGE_GROUP = "eliq"

# Held-out tuple accuracy (critic.head.ranking): metadata key suffix and plot label per comparison.
ACCURACY_KEYS = {"vis_vs_tec": "tec", "vis_vs_aes": "aes", "ali": "ali"}
ACCURACY_LABELS = {"vis_vs_tec": "s_vis: I+ over I-tec", "vis_vs_aes": "s_vis: I+ over I-aes",
                   "ali": "s_ali: p over p-ali"}


BOOKKEEPING = ("era_fingerprint", "profile", "profile_fingerprint")  # what `eliq materialize` compares


def era_metadata(era: Era, eras: EraRegistryResource, profile: ModelProfileResource, **extra: Any) -> dict[str, Any]:
    """`common.era_metadata` with the asset's own entries first: the UI lists metadata in this
    order, and the fingerprints the runner compares matter least to a person."""
    metadata = common.era_metadata(era, eras, profile, **extra)
    return {**{k: v for k, v in metadata.items() if k not in BOOKKEEPING},
            **{k: metadata[k] for k in BOOKKEEPING if k in metadata}}


def number(value: float | None) -> dg.FloatMetadataValue | None:
    """A float entry (4 decimals, as people read it), or None for a missing or non-finite value
    (left out of the metadata)."""
    return dg.MetadataValue.float(round(float(value), 4)) if value is not None and math.isfinite(value) else None


def numbers(**values: float | None) -> dict[str, dg.FloatMetadataValue]:
    """Float entries of the given values, leaving out those that are missing or not finite."""
    return {key: entry for key, entry in ((k, number(v)) for k, v in values.items()) if entry is not None}


def accuracy_metadata(accuracies: Mapping[str, float], prefix: str = "heldout_accuracy") -> dict[str, Any]:
    """`<prefix>_tec|aes|ali` as floats, from held-out ranking accuracies keyed vis_vs_tec, vis_vs_aes,
    ali (the mean over both aspects is left out: it mixes visual and alignment)."""
    out = {f"{prefix}_{ACCURACY_KEYS.get(k, k)}": number(v) for k, v in accuracies.items() if k != "mean"}
    return {k: v for k, v in out.items() if v is not None}


def image_metadata(png: bytes, alt: str, caption: str = "") -> dg.MarkdownMetadataValue:
    """A PNG (a plot or a preview grid, at most 640 px wide) as an inline Markdown image."""
    return dg.MetadataValue.md(image_markdown(png, alt, caption))


ASPECT_SHORT = {"visual": "vis", "alignment": "ali"}
METRICS = ("srcc", "plcc", "krcc")
SCORES_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("benchmark", "string"),
    dg.TableColumn("method", "string", description="ELIQ label-free / weak-supervised, or a baseline"),
    dg.TableColumn("aspect", "string", description="visual (quality MOS) or alignment (alignment MOS)"),
    *(dg.TableColumn(m.upper(), "string", description="value [95% bootstrap interval], or mean ± sd over splits")
      for m in METRICS),
    dg.TableColumn("n", "int", description="images the value was computed on"),
])


def scores_table(rows: Sequence[dict[str, Any]], profile: str | None = None) -> dg.TableMetadataValue:
    """The benchmark rows as a Dagster table: one row per benchmark x method x aspect with SRCC /
    PLCC / KRCC (interval or spread in the cell, "–" where a metric is missing) and n, as
    `eliq report` lays them out (evaluation.report.method_rows)."""
    records = []
    for benchmark in sorted({r["benchmark"] for r in rows} - {HELDOUT_BENCHMARK}):
        for method in method_rows(rows, benchmark, profile):
            records.append(dg.TableRecord({"benchmark": benchmark, "method": method["method"], "aspect": method["aspect"],
                                           **{m.upper(): method[m.upper()] for m in METRICS}, "n": method["n"]}))
    return dg.MetadataValue.table(records, schema=SCORES_SCHEMA)


def score_numbers(rows: Sequence[dict[str, Any]]) -> dict[str, dg.FloatMetadataValue]:
    """Float entries Dagster can chart across runs and eras, per benchmark b: the critic's label-free
    `srcc|plcc|krcc_<vis|ali>_<b>`, its weak-supervised `srcc_<vis|ali>_<b>_weak`, and each
    baseline's `srcc_<baseline>_<b>`. Non-finite values are left out."""
    out: dict[str, dg.FloatMetadataValue] = {}
    for row in rows:
        benchmark, metric, value = row["benchmark"], row["metric"], row["value"]
        if benchmark == HELDOUT_BENCHMARK or number(value) is None:
            continue
        kind, _, baseline = row["protocol"].partition("/")
        aspect = ASPECT_SHORT.get(row["aspect"], row["aspect"])
        if baseline and metric == "srcc":
            key = f"srcc_{baseline}_{benchmark}"
        elif not baseline and kind == "label-free" and metric in METRICS:
            key = f"{metric}_{aspect}_{benchmark}"
        elif not baseline and kind == "weak-supervised" and metric == "srcc":
            key = f"srcc_{aspect}_{benchmark}_weak"
        else:
            continue
        out[key] = number(value)
    return out
