"""rs_hashing.data."""
