"""Label-free supervision (paper 3.2), free of Dagster: prompts, generator backends (a sampler or
imported images), degradations and edits, negatives and comparison tuples."""
