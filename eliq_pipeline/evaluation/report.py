"""Score rows as people read them: per era, the held-out tuple accuracy against chance, then one
compact table per benchmark with a row per method (ours label-free, ours weak-supervised, each
baseline) and SRCC / PLCC / KRCC with their interval and n.

The warehouse keeps the long format (one row per benchmark x protocol x aspect x metric), which is
what machines want (`eliq report --format csv`); this module only lays it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eliq_pipeline.evaluation.evaluation import HELDOUT_BENCHMARK, baseline_label

COLUMNS = (("srcc", "SRCC"), ("plcc", "PLCC"), ("krcc", "KRCC"))
CHANCE = 0.5  # each held-out comparison picks one of two images (or prompts)
HELDOUT_COMPARISONS = {  # ranking_accuracy_<name> -> what was compared
    "vis_vs_tec": "s_vis: positive over its technical negative",
    "vis_vs_aes": "s_vis: positive over its aesthetic negative",
    "ali": "s_ali: its prompt over a mismatched prompt",
}
TOY_PROFILES = {"tiny"}  # toy generators and backbone: their benchmark numbers describe no real image
TOY_CAVEAT = ("profile `tiny`: toy generators and a toy backbone test the machinery; these numbers say "
              "nothing about real images (the `cpu` profile learns from real ones)")
WEAK_NOTE = ("weak-supervised: a linear head on the critic's two scores, fitted on 20% (AI-generated sets) / "
             "30% (camera sets) of the MOS; mean ± sd over 10 splits, n = the images it was tested on")


def method_label(protocol: str, profile: str | None = None) -> str:
    """The row name of a protocol ('label-free', 'weak-supervised', 'label-free/<baseline>')."""
    kind, _, baseline = protocol.partition("/")
    if not baseline:
        return f"ELIQ, {kind}"
    return baseline_label(baseline, toy=profile in TOY_PROFILES)


def _cell(value: float, low: float | None = None, high: float | None = None, sd: float | None = None) -> str:
    if sd is not None:
        return f"{value:.3f} ± {sd:.3f}"
    if low is not None and high is not None:
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in body)]


def heldout_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Held-out tuple accuracy per comparison, chance marked; [] when the era has none."""
    found = {r["metric"].removeprefix("ranking_accuracy_"): r for r in rows if r["benchmark"] == HELDOUT_BENCHMARK}
    names = [name for name in HELDOUT_COMPARISONS if name in found]
    if not names:
        return []
    body = []
    for name in names:
        value = found[name]["value"]
        mark = " (below chance)" if value < CHANCE else " (chance)" if value == CHANCE else ""
        body.append([HELDOUT_COMPARISONS[name], f"{value:.3f}{mark}"])
    n = found[names[0]]["n"]
    return [f"Held-out tuples: {n:,} tuples of prompts never trained on; chance = {CHANCE}", "",
            *_table(("comparison", "accuracy"), body)]


def method_rows(rows: Sequence[Mapping[str, Any]], benchmark: str, profile: str | None = None) -> list[dict[str, Any]]:
    """One benchmark's rows (one era) grouped per method and aspect, ours first: dicts with
    protocol, method, aspect, one cell per column title (value [interval], mean ± sd, or "–") and n."""
    by_key: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        if row["benchmark"] == benchmark:
            by_key.setdefault((row["protocol"], row["aspect"]), {})[row["metric"]] = row
    order = {"label-free": 0, "weak-supervised": 1}
    out = []
    for protocol, aspect in sorted(by_key, key=lambda k: (order.get(k[0], 2), k[0], k[1] != "visual", k[1])):
        metrics = by_key[(protocol, aspect)]
        cells = {}
        for metric, title in COLUMNS:
            row, sd = metrics.get(metric), metrics.get(f"{metric}_std")
            cells[title] = "–" if row is None or row["value"] is None else _cell(
                row["value"], row.get("ci_low"), row.get("ci_high"), None if sd is None else sd["value"])
        out.append({"protocol": protocol, "method": method_label(protocol, profile), "aspect": aspect, **cells,
                    "n": int(next(iter(metrics.values()))["n"])})
    return out


def benchmark_table(rows: Sequence[Mapping[str, Any]], benchmark: str, profile: str | None = None,
                    dropped: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One benchmark's rows (one era) as a table: a row per method and aspect, SRCC / PLCC / KRCC.
    `dropped`: protocol -> images that method could not score (named under the table)."""
    mine = [r for r in rows if r["benchmark"] == benchmark]
    size = max((r["n"] for r in mine if r["protocol"] == "label-free"), default=max(r["n"] for r in mine))
    methods = method_rows(mine, benchmark, profile)
    body = [[f"**{m['method']}**" if m["protocol"] == "label-free" else m["method"], m["aspect"],
             *(m[title] for _, title in COLUMNS), f"{m['n']:,}"] for m in methods]
    lines = [f"{benchmark} ({size:,} images; [95% bootstrap interval])", "",
             *_table(("method", "aspect", *(title for _, title in COLUMNS), "n"), body)]
    if any(m["protocol"] == "weak-supervised" for m in methods):
        lines += ["", WEAK_NOTE]
    for protocol, images in sorted((dropped or {}).items()):
        if images:
            shown = ", ".join(images[:5]) + (f", … ({len(images) - 5} more)" if len(images) > 5 else "")
            lines.append(f"{method_label(protocol, profile)} is undefined on {len(images)} of {size:,} images "
                         f"(left out): {shown}")
    return lines


def report_markdown(rows: Sequence[Mapping[str, Any]], profile: str | None = None,
                    dropped: Mapping[tuple[str, str, str], Sequence[str]] | None = None) -> str:
    """Every era in `rows` (warehouse rows): held-out accuracy, then a table per benchmark.
    `dropped`: (era, benchmark, protocol) -> images left out by that method."""
    if not rows:
        return "no scores yet"
    lines: list[str] = []
    if profile in TOY_PROFILES:
        lines += [f"> {TOY_CAVEAT}", ""]
    for era in dict.fromkeys(r["era"] for r in rows):
        era_rows = [r for r in rows if r["era"] == era]
        lines += [f"## {era}", ""]
        heldout = heldout_table(era_rows)
        if heldout:
            lines += [*heldout, ""]
        for benchmark in dict.fromkeys(r["benchmark"] for r in era_rows if r["benchmark"] != HELDOUT_BENCHMARK):
            of_benchmark = {protocol: images for (e, b, protocol), images in (dropped or {}).items()
                            if e == era and b == benchmark}
            lines += [*benchmark_table(era_rows, benchmark, profile, of_benchmark), ""]
    return "\n".join(lines).rstrip() + "\n"
