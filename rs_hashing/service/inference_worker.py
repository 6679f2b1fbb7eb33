"""The one thread that runs the service's TensorFlow calls, batching typed queries.

Requests are served on an asyncio event loop; encoding a sentence or an image takes
milliseconds of TensorFlow work that must not run on that loop. Every encoder call goes
to this worker's thread instead, and the request awaits its future. Sentences waiting
together are encoded in one batch: a batch of 32 costs about as much as 5 single ones
on a CPU, so under load the service answers several times more typed queries per second
with no added delay when idle (a query is never held back to wait for others). One
thread also means the Keras models are never called from two threads at once.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from rs_hashing.hashing_model import HashingModel
from rs_hashing.service.request_error import RequestError

_STOP = object()
# How long the thread waits for work before it looks at the stop flag again (s).
_IDLE_WAIT = 0.5


class InferenceWorker:
    """Runs encoder work on one daemon thread.

    Args:
        model: the trained run.
        max_batch: most sentences encoded in one call.
        max_pending: jobs that may wait; one more is refused with RequestError 503.
    """

    def __init__(self, model: HashingModel, max_batch: int = 32, max_pending: int = 256):
        if max_batch < 1 or max_pending < 1:
            raise ValueError(f"max_batch={max_batch} and max_pending={max_pending} must be >= 1")
        self._model = model
        self._max_batch = max_batch
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rs-hashing-inference", daemon=True)
        self._thread.start()

    def encode_text(self, text: str) -> concurrent.futures.Future:
        """A future of the sentence's packed code, uint8 [1, K/8]."""
        return self._put(("text", text))

    def submit(self, function: Callable[[], Any]) -> concurrent.futures.Future:
        """A future of `function()`, run on the worker's thread (image encoding)."""
        return self._put(("call", function))

    def _put(self, job: tuple[str, Any]) -> concurrent.futures.Future:
        if self._closed.is_set():
            raise RequestError(503, "the service is shutting down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._jobs.put_nowait((*job, future))
        except queue.Full:
            raise RequestError(503, f"the service is busy ({self._jobs.maxsize} queries waiting); "
                                    "try again shortly") from None
        return future

    def warm_up(self) -> list[concurrent.futures.Future]:
        """Queues one sentence and one blank image, so that TensorFlow traces its graphs
        before the first real query rather than during it; returns their futures."""
        size = self._model.image_size
        blank = np.zeros((1, size, size, 3), np.float32)
        return [self.encode_text("warm up"), self.submit(lambda: self._model.image_hash_from_pixels(blank))]

    def close(self, timeout: float = 10.0) -> None:
        """Stops the thread after the jobs already queued (waits at most `timeout` s)."""
        self._closed.set()
        try:
            self._jobs.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            try:
                first = self._jobs.get(timeout=_IDLE_WAIT)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if first is _STOP:
                return
            texts, calls, stop = [], [], False
            (texts if first[0] == "text" else calls).append(first)
            # Whatever else is already waiting joins this round; nothing waits for more.
            while len(texts) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                (texts if job[0] == "text" else calls).append(job)
            if texts:
                self._encode_texts(texts)
            for _, function, future in calls:
                self._settle(future, function)
            if stop:
                return

    @staticmethod
    def _settle(future: concurrent.futures.Future, function: Callable[[], Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function())
        except BaseException as error:  # pylint: disable=broad-except
            future.set_exception(error)

    def _encode_texts(self, jobs: list[tuple[str, str, concurrent.futures.Future]]) -> None:
        try:
            packed = self._model.encode_texts([text for _, text, _ in jobs]).packed
        except Exception:  # pylint: disable=broad-except
            # One bad sentence must not fail the others: each is tried alone.
            for _, text, future in jobs:
                self._settle(future, lambda text=text: self._model.encode_texts([text]).packed)
            return
        for row, (_, _, future) in enumerate(jobs):
            if future.set_running_or_notify_cancel():
                future.set_result(np.ascontiguousarray(packed[row:row + 1]))
