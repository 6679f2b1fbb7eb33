"""rs_hashing.export: a trained run as a SavedModel for TF Serving and as TFLite files."""
