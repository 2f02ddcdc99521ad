"""Where the router's APIs add their routes: ``Routes`` wraps each handler in the checks every
request passes (``_app.checked``), told the route it serves.

A wrapper per route rather than an aiohttp middleware: aiohttp builds a middleware chain around
each request (a cached lookup, two partials and a coroutine of its own), which cost the router
about 3 % of its instructions per request; the wrapper is one coroutine, and the route's name
for the metrics is known when it is added instead of looked up on each request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Wrap = Callable[[Handler, str], Handler]  # (handler, its route) -> the handler checked


class Routes:
    """The router's ``app``, and the way to add a route to it."""

    def __init__(self, app: web.Application, wrap: Wrap) -> None:
        self.app = app
        self._wrap = wrap

    def get(self, path: str, handler: Handler) -> None:
        self.app.router.add_get(path, self._wrap(handler, path))

    def post(self, path: str, handler: Handler) -> None:
        self.app.router.add_post(path, self._wrap(handler, path))

    def delete(self, path: str, handler: Handler) -> None:
        self.app.router.add_delete(path, self._wrap(handler, path))

    def any_other(self, handler: Handler) -> None:
        """``handler`` for every request no other route serves, whatever its method: aiohttp
        tries the routes of the longest matching path prefix first, and this one's prefix is
        ``/``, the shortest."""
        self.app.router.add_route("*", "/{unmatched:.*}", self._wrap(handler, UNMATCHED))


UNMATCHED = "unmatched"  # the route's name in the metrics
