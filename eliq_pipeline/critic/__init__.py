"""The critic (paper 3.3), free of Dagster: the MLLM backbone, its instruction tuning, aspect
embeddings, the scoring head and the exported bundle."""
