"""Fixtures shared by the index tests."""

import faiss
import pytest


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    # These indexes are tiny; OpenMP threads that spin-wait at every barrier make them
    # 100x slower when the test machine's cores are busy with other work.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
