"""What the router answers instead of a replica's reply, as one exception type."""

from __future__ import annotations


class RouterError(Exception):
    """A request the router answers itself: ``status``, a message that says what is wrong and
    what to do, an error ``kind`` for clients that branch on it, the request field at fault
    (``param``), and optionally ``Retry-After`` seconds. A 5xx with ``retry=False`` tells the
    client not to send the request again (``X-Should-Retry: false``, which the OpenAI clients
    obey): it is the request that fails, not the service."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error",
        retry_after: int | None = None, param: str | None = None, retry: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.param = param
        self.retry = retry

    def headers(self) -> dict[str, str]:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return headers if self.retry else {**headers, "X-Should-Retry": "false"}
