"""The era-partitioned IO manager: asset values live on the artifact store, one place per era.

| value an asset returns            | where it lives                  | what a downstream asset gets |
|-----------------------------------|---------------------------------|------------------------------|
| `pyarrow.Table`                   | `eras/<era>/<asset>.parquet`     | the table (schema metadata kept) |
| `pathlib.Path` of a model folder  | `eras/<era>/<asset>/` (marker last) | a local folder with its files |

Every output records the key it wrote (`artifacts`), which `eliq materialize` checks so that an
asset whose value has gone from the store is rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from eliq_pipeline.defs.resources.storage import ArtifactStoreResource


def era_key(era: str, name: str) -> str:
    """Where an era-partitioned artifact lives in the store."""
    return f"eras/{era}/{name}"


class EraArtifactIOManager(dg.ConfigurableIOManager):
    """Tables as parquet and model folders as directories on the artifact store, by era."""

    artifacts: ArtifactStoreResource

    @staticmethod
    def _base(context: dg.OutputContext | dg.InputContext, era: str) -> str:
        return era_key(era, context.asset_key.to_user_string())

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        store = self.artifacts.store()
        base = self._base(context, context.partition_key)
        if isinstance(obj, pa.Table):
            key = f"{base}.parquet"
            store.put_table(key, obj)
        elif isinstance(obj, Path):
            key = f"{base}/"
            store.put_dir(obj, base)
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: the era IO manager stores pyarrow tables and "
                            f"model folders (Path), got {type(obj).__name__}")
        context.add_output_metadata({"artifacts": dg.MetadataValue.json([key]),
                                     "location": store.describe(key.rstrip("/"))})

    def load_input(self, context: dg.InputContext) -> pa.Table | Path:
        store = self.artifacts.store()
        era = context.asset_partition_key
        base = self._base(context, era)
        if store.exists(f"{base}.parquet"):
            return store.get_table(f"{base}.parquet")
        if store.dir_exists(base):
            return store.get_dir(base)
        name = context.asset_key.to_user_string()
        raise FileNotFoundError(f"{name} of era {era!r} is not in the artifact store ({store.describe(base)}); "
                                f"materialize it first: eliq materialize --era {era}")
