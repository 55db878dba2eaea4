"""Critic assets and checks (paper 3.3): tuned_mllm, aspect_embeddings, qqt_model."""
