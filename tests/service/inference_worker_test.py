"""The encoder thread: sentences waiting together are encoded in one call with the same
codes as alone, a bad sentence fails only its own request, and a full queue is a 503."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rs_hashing.codes import Codes
from rs_hashing.service.inference_worker import InferenceWorker
from rs_hashing.service.request_error import RequestError

TIMEOUT = 30


class FakeModel:
    """Codes from sentence lengths; records each batch; refuses sentences with "bad"."""

    image_size = 4

    def __init__(self):
        self.batches = []

    def encode_texts(self, texts):
        self.batches.append(list(texts))
        if any("bad" in text for text in texts):
            raise ValueError("a bad sentence")
        return Codes.from_hash(np.array([[len(t) - 4.5, 4.5 - len(t), 1.0, -1.0, 1, 1, -1, -1] for t in texts]))


def _blocked(worker):
    """Holds the worker's thread until the returned event is set."""
    release, running = threading.Event(), threading.Event()

    def hold():
        running.set()
        release.wait(TIMEOUT)

    worker.submit(hold)
    assert running.wait(TIMEOUT)
    return release


def test_waiting_sentences_are_encoded_in_one_batch_with_their_own_codes():
    model = FakeModel()
    worker = InferenceWorker(model, max_batch=4)
    try:
        release = _blocked(worker)
        texts = ["a", "abcdefgh", "abc", "abcdefghij", "ab", "abcdefg"]
        futures = [worker.encode_text(text) for text in texts]
        release.set()
        codes = [future.result(TIMEOUT) for future in futures]
        assert model.batches == [texts[:4], texts[4:]]
        for text, code in zip(texts, codes):
            np.testing.assert_array_equal(code, FakeModel().encode_texts([text]).packed)
    finally:
        worker.close()


def test_a_bad_sentence_fails_only_its_own_request():
    worker = InferenceWorker(FakeModel())
    try:
        release = _blocked(worker)
        good, bad, other = (worker.encode_text(t) for t in ("fine words", "bad words", "more words"))
        release.set()
        assert good.result(TIMEOUT).shape == (1, 1) and other.result(TIMEOUT).shape == (1, 1)
        with pytest.raises(ValueError, match="bad sentence"):
            bad.result(TIMEOUT)
    finally:
        worker.close()


def test_a_full_queue_is_busy_and_a_closed_worker_refuses():
    worker = InferenceWorker(FakeModel(), max_pending=3)
    release = _blocked(worker)
    waiting = [worker.encode_text("words") for _ in range(3)]
    with pytest.raises(RequestError) as refused:
        worker.encode_text("one too many")
    assert refused.value.status == 503 and "busy" in refused.value.message
    release.set()
    assert all(future.result(TIMEOUT).shape == (1, 1) for future in waiting)
    worker.close()
    with pytest.raises(RequestError) as closed:
        worker.encode_text("after the end")
    assert closed.value.status == 503
