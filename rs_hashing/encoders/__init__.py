"""Frozen pretrained encoders: image and text feature extractors (apart from the hashing networks)."""
