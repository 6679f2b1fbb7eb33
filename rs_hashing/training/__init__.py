"""rs_hashing.training."""
