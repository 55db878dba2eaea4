"""Where the GPU batch work of an asset runs: in the run's process (default) or on a Ray cluster."""

from __future__ import annotations

import dagster as dg

from eliq_pipeline.core.compute import Compute, RayCompute


class ComputeResource(dg.ConfigurableResource):
    """Positives, model-made negatives and aspect embeddings run here. ``ray_address`` empty: in
    the run's process, exactly as on one machine. Else a Ray cluster (`auto`, `ray://head:10001`,
    `host:port`, or `local` for a runtime started by the run): one actor per GPU, each holding one
    model (see core/compute.py). Results are the same either way, so this is not fingerprinted."""

    ray_address: str = ""  # $ELIQ_RAY_ADDRESS
    ray_workers: int = 0  # $ELIQ_RAY_WORKERS: actors per model; 0 = one per GPU of the cluster (1 without GPUs)
    ray_gpu_resource: str = "GPU"  # the Ray resource each actor requests one of

    def compute(self) -> Compute | None:
        """The Ray backend, or None: the assets' own in-process path."""
        if not self.ray_address:
            return None
        return RayCompute(address=self.ray_address, workers=self.ray_workers or None,
                          gpu_resource=self.ray_gpu_resource)
