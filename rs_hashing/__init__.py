"""rs_hashing: unsupervised cross-modal hashing for remote-sensing image-text retrieval.

Re-implements DUCH (Mikriukov et al., ICASSP 2022) and CHNR (ICIP 2022) with Keras 3 on
TensorFlow. Importing the package does no I/O, defines no flags and seeds nothing.
"""

__version__ = "0.1.0"
