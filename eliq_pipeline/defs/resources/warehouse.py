"""DuckDB warehouse holding the score history across eras."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import dagster as dg
import duckdb

# The scores table's columns as reports write them (recorded_at is bookkeeping, not a result).
SCORES_COLUMNS = ("era", "benchmark", "protocol", "aspect", "metric", "value", "ci_low", "ci_high", "n", "bundle_hash")

_SCORES_DDL = """
CREATE TABLE IF NOT EXISTS scores (
    era VARCHAR, benchmark VARCHAR, protocol VARCHAR, aspect VARCHAR, metric VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n BIGINT, bundle_hash VARCHAR,
    recorded_at TIMESTAMP DEFAULT current_timestamp
)
"""
# Benchmark images a method could not score (NIQE on a flat image), so reports can name them.
_DROPPED_DDL = """
CREATE TABLE IF NOT EXISTS dropped_images (era VARCHAR, benchmark VARCHAR, protocol VARCHAR, image VARCHAR)
"""


class WarehouseResource(dg.ConfigurableResource):
    path: str = ".eliq/warehouse.duckdb"

    def connect(self) -> duckdb.DuckDBPyConnection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = duckdb.connect(self.path)
        connection.execute(_SCORES_DDL)
        connection.execute(_DROPPED_DDL)
        return connection

    def replace_scores(self, era: str, bundle_hash: str, rows: Iterable[dict[str, Any]]) -> int:
        """Replace this era's rows in one transaction, so a re-run never leaves duplicates. A row's
        `dropped` (images its method left out) goes to the dropped_images table."""
        rows = list(rows)
        dropped = sorted({(r["benchmark"], r["protocol"], image) for r in rows for image in r.get("dropped") or ()})
        with self.connect() as connection:
            connection.execute("BEGIN")
            connection.execute("DELETE FROM scores WHERE era = ?", [era])
            connection.execute("DELETE FROM dropped_images WHERE era = ?", [era])
            if dropped:
                connection.executemany("INSERT INTO dropped_images VALUES (?, ?, ?, ?)",
                                       [[era, *entry] for entry in dropped])
            connection.executemany(
                "INSERT INTO scores (era, benchmark, protocol, aspect, metric, value, ci_low, ci_high, n, bundle_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [era, r["benchmark"], r["protocol"], r["aspect"], r["metric"], float(r["value"]),
                     r.get("ci_low"), r.get("ci_high"), int(r["n"]), bundle_hash]
                    for r in rows
                ],
            )
            connection.execute("COMMIT")
        return len(rows)

    def scores(self, era: str | None = None) -> list[dict[str, Any]]:
        with self.connect() as connection:
            query = "SELECT * FROM scores" + (" WHERE era = ?" if era else "") + " ORDER BY era, benchmark, protocol, aspect, metric"
            cursor = connection.execute(query, [era] if era else [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def dropped_images(self, era: str | None = None) -> dict[tuple[str, str, str], list[str]]:
        """(era, benchmark, protocol) -> the benchmark images that method left out."""
        with self.connect() as connection:
            query = "SELECT era, benchmark, protocol, image FROM dropped_images" + (" WHERE era = ?" if era else "")
            found: dict[tuple[str, str, str], list[str]] = {}
            for era_, benchmark, protocol, image in connection.execute(query + " ORDER BY image", [era] if era else []).fetchall():
                found.setdefault((era_, benchmark, protocol), []).append(image)
            return found


