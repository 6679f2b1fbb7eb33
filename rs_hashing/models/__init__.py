"""rs_hashing.models."""
