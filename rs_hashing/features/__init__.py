"""rs_hashing.features."""
