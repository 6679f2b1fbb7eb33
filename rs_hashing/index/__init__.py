"""Archive search: a faiss Hamming index, a PostgreSQL archive and the code encoders."""
