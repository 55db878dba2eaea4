"""The eight ELIQ assets, all partitioned by era."""

from eliq_pipeline.assets.critic import aspect_embeddings, qqt_model, tuned_mllm
from eliq_pipeline.assets.evaluation import benchmark_scores
from eliq_pipeline.assets.supervision import comparison_tuples, negative_images, positive_images, prompts

ELIQ_ASSETS = [
    prompts, positive_images, negative_images, comparison_tuples,
    tuned_mllm, aspect_embeddings, qqt_model, benchmark_scores,
]
