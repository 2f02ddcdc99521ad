"""Waiting for something another process does: a job to end, a file to appear, a server to
answer. Those give no event to wait on, so they are looked at again every so often until a
timeout; one loop here, so that each wait reads as what it waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator


def polling(timeout: float, every: float) -> Iterator[float]:
    """Yields the seconds left until ``timeout`` has passed, sleeping ``every`` between yields
    (never before the first): the body of a ``for`` loop over it is one look, and a ``return``
    or ``break`` in it ends the wait at once. Nothing is yielded once the time is up, so code
    after the loop is what happens at the timeout. Monotonic time: a clock set back or forward
    does not shorten or lengthen a wait."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield left
        time.sleep(every)


def wait_until(condition: Callable[[], object], timeout: float, every: float) -> bool:
    """Whether ``condition()`` became true within ``timeout``, looking every ``every`` seconds.
    It is looked at once more when the time is up, so a wait that slept past its deadline
    still sees what happened meanwhile, and a zero timeout still looks once."""
    for _ in polling(timeout, every):
        if condition():
            return True
    return bool(condition())
