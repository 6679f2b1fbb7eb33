"""A request the service refuses, with the HTTP status that says why."""

from __future__ import annotations


class RequestError(Exception):
    """Raised for a request the service cannot answer; the app turns it into a JSON
    body `{"error": message}` with `status` (400 malformed, 404 unknown item, 413 too
    large, 415 not an image, 503 busy).

    Args:
        status: the HTTP status code (4xx or 503).
        message: one sentence naming the bad value and the rule it broke.
    """

    def __init__(self, status: int, message: str):
        if not 400 <= status < 600:
            raise ValueError(f"status={status} is not an HTTP error status")
        super().__init__(message)
        self.status = status
        self.message = message
