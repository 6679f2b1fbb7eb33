"""rs_hashing.losses."""
