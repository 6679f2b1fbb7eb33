"""rs_hashing.export: SavedModel for TF Serving, TFLite and the edge runtime.

Importing this package (or `rs_hashing.export.edge_encoder`) must not import TensorFlow:
the ground-station command runs with only ai-edge-litert, numpy and Pillow.
"""
