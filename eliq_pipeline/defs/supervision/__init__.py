"""Supervision assets and checks (paper 3.2): prompts, positive_images, negative_images, comparison_tuples."""
