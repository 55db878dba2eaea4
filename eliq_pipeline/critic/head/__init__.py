"""The scoring head (paper 3.3.2-3.3.6): gated visual fusion + Quality Query Transformer on frozen
aspect embeddings, its ranking losses, training, checkpoints and calibration."""
