"""The ``data:`` lines of a server-sent event stream, as the OpenAI-compatible engines send
them: a JSON object per event, and ``[DONE]`` at the end. The router reads them to fail over
and translate, the load generator and the demo to time and show the answer; one reading here,
so that all of them agree on what an event is.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"[DONE]"
"""The payload of the last event of an OpenAI stream."""


def data_of(line: bytes) -> bytes | None:
    """The payload of a ``data:`` line, stripped of the whitespace around it (``[DONE]``
    included); None for any other line (a comment, ``event:``, a blank line)."""
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()


def json_event(line: bytes) -> dict[str, Any] | None:
    """The JSON object a ``data:`` line carries; None for ``[DONE]``, for other lines and for
    payloads that are not JSON objects, which a reader of events has nothing to look up in."""
    data = data_of(line)
    if data is None or data == DONE:
        return None
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
