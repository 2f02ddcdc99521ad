"""What the router answers instead of a replica's reply, as one exception type."""

from __future__ import annotations


class RouterError(Exception):
    """A request the router answers itself: ``status``, a message that says what is wrong and
    what to do, an error ``kind`` for clients that branch on it, and optionally ``Retry-After``
    seconds."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error",
        retry_after: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
