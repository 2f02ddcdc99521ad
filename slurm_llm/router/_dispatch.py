"""Sending one request to a replica: admission, retries on another replica, timeouts, and
whose fault a failure was.

A request that meets a refused connection or a 5xx is retried on a different replica (the same
one only when every replica has failed it once), with back-off, until the attempts or the
deadline run out, so a dying replica costs latency, not errors. A streamed request is retried
only before its first byte; after that, the relay passes bytes through as they come and reports
whether the stream ended cleanly.

A replica that does not answer (refused, reset, timed out) is at fault at once and ejected for a
while. A replica that answers 5xx is only a suspect: the request may be what makes every engine
fail (a malformed body llama.cpp answers 500). The request goes to another replica; if that one
answers it, the suspect failed where another did not and is ejected; if it is refused again (a
4xx, or a 500; by the only replica, where there is one), the request is at fault: no replica is
ejected, the client gets the engine's answer with ``X-Should-Retry: false``, and the request is
counted in ``slurm_llm_router_request_faults_total``. A replica that fails everything is found
by the deep probes (``_probes``), which no client's request can influence.

The body a client sent is forwarded as the same bytes (no re-encoding), which keeps the
router's own cost per request small.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web

from slurm_llm._api_keys import Priority
from slurm_llm.router import _json
from slurm_llm.router._admission import Admission, NoOtherReplica
from slurm_llm.router._backends import Backend
from slurm_llm.router._config import RouterConfig
from slurm_llm.router._errors import RouterError
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._upstream import Answer, UpstreamError, Upstreams


@dataclass(slots=True)
class Call:
    """One request for one model; ``tgi`` is what a TGI replica gets instead, if different.
    Never changed once made (``replace`` makes a new one); not frozen, because a frozen
    dataclass costs several times as much to make, on every request."""

    model: str
    path: str
    body: bytes
    key: str | None = None  # affinity key
    tgi: tuple[str, bytes] | None = None
    avoid: frozenset[str] = frozenset()  # replicas to try last (those that broke its stream)
    priority: Priority = "interactive"  # its place in the admission queue
    left: Callable[[], bool] | None = None  # whether its client has gone (None: none to leave)

    def for_backend(self, backend: Backend) -> tuple[str, bytes]:
        if self.tgi is not None and backend.engine == "tgi":
            return self.tgi
        if backend.request_priority:
            return self.path, with_engine_priority(self.body, self.priority)
        return self.path, self.body


# vLLM's priority scheduling serves lower values first; a client's own ``priority`` is replaced,
# so no client can rank itself above its key's class.
ENGINE_PRIORITY: dict[Priority, int] = {"interactive": 0, "batch": 1}


def with_engine_priority(body: bytes, priority: Priority) -> bytes:
    """The body with the caller's class as the engine's ``priority``: re-encoded, for engines
    that take it only (the others get the client's bytes as sent)."""
    fields = json.loads(body)
    if not isinstance(fields, dict):  # the engine refuses it, whatever we add
        return body
    return _json.dumps({**fields, "priority": ENGINE_PRIORITY[priority]})


@dataclass(slots=True)
class Reply:
    """A replica's answer. ``request_fault``: the request was refused again after a 5xx (by
    another replica, or by the only one), so it is the request that fails; the client should
    not send it again. Never changed once made (not frozen for the reason ``Call`` is not)."""

    status: int
    body: bytes
    content_type: str
    backend: Backend
    request_fault: bool = False


# (upstream, replica, ended): the relay calls ``ended(clean, why)`` once the replica's stream is
# over, at its last event or at a break, before the client sees that (see _streams.ClientStream).
# Gives a replica back with the verdict on its answer: True counts a success, False a failure
# (passive ejection, with why), None neither. Only the first call counts.
GiveBack = Callable[[bool | None, str], None]
Relay = Callable[[Answer, Backend, GiveBack], Awaitable[web.StreamResponse]]


def refuses(status: int) -> bool:
    """An answer that says the request is wrong, not that the replica is busy or down: a 4xx
    other than 408 and 429, or a plain 500 (what llama.cpp answers to some bodies)."""
    return (400 <= status < 500 and status not in (408, 429)) or status == 500


class Dispatcher:
    def __init__(
        self,
        admission: Admission,
        upstreams: Upstreams,
        config: RouterConfig,
        metrics: RouterMetrics,
    ) -> None:
        self.admission = admission
        self.upstreams = upstreams
        self.config = config
        self.metrics = metrics

    async def send(self, call: Call, bounded: bool = True) -> Reply:
        """The first answer that is not a 5xx, from up to ``attempts`` different replicas, or the
        second refusal of a request refused after a 5xx (``request_fault``)."""
        outcome = await self._attempts(call, None, bounded)
        assert isinstance(outcome, Reply)
        return outcome

    async def stream(self, call: Call, relay: Relay) -> web.StreamResponse | Reply:
        """The relayed stream, or the replica's non-200 answer (which was not streamed)."""
        return await self._attempts(call, relay, bounded=True)

    async def _attempts(
        self, call: Call, relay: Relay | None, bounded: bool
    ) -> web.StreamResponse | Reply:
        deadline = time.monotonic() + self.config.deadline_s
        tried = set(call.avoid)
        suspects: list[Reply] = []  # 5xx answers to this request, each from a replica
        problem = "no replica was routable"
        for attempt in range(self.config.attempts):
            if attempt:
                self.metrics.retries.labels(call.model).inc()
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            if time.monotonic() >= deadline:
                raise RouterError(
                    504,
                    f"{call.model!r} did not answer within {self.config.deadline_s:g} s",
                    "timeout",
                )
            backend = self._free_replica(call, tried)  # most requests: no wait, no coroutine
            if backend is None:
                backend, woke_s = await self._queued_replica(call, tried, bounded)
                deadline += woke_s  # a wait for the model to wake is bounded by wake_timeout_s
            tried.add(backend.url)
            give_back = self._give_back_once(backend, call.priority)
            try:
                outcome = await self._forward(call, backend, relay, deadline, give_back)
            finally:
                give_back(None, "")
            if isinstance(outcome, str):  # no answer: that replica was given back as failed
                problem = outcome
                continue
            if isinstance(outcome, Reply) and suspects and refuses(outcome.status):
                return self._request_fault(call, outcome)  # refused a second time
            if isinstance(outcome, Reply) and outcome.status >= 500:  # a 503 too: try another
                suspects.append(outcome)
                problem = f"{backend.url} answered {outcome.status}"
                continue
            for suspect in suspects:  # another replica answered what the suspect failed
                suspect.backend.failed(f"answered {suspect.status} to what another answered")
            return outcome
        raise RouterError(
            503,
            f"no replica of {call.model!r} could answer ({problem}); retry shortly",
            "service_unavailable",
            retry_after=1,
        )

    def _request_fault(self, call: Call, reply: Reply) -> Reply:
        self.metrics.request_faults.labels(call.model, str(reply.status)).inc()
        return replace(reply, request_fault=True)

    def _give_back_once(self, backend: Backend, priority: Priority) -> GiveBack:
        """The verdict is recorded before the replica is released, and both before a streamed
        client sees the stream's end: a client that checks the replica's state, or sends its
        next request, the moment its stream ends finds the replica already settled."""
        held = True

        def give_back(clean: bool | None, why: str = "") -> None:
            nonlocal held
            if held:
                held = False
                if clean is True:
                    backend.succeeded()
                elif clean is False:
                    backend.failed(why)
                self.admission.release(backend, priority)

        return give_back

    def _free_replica(self, call: Call, tried: set[str]) -> Backend | None:
        """A replica free now, or None: the request queues (``_queued_replica``)."""
        try:
            backend = self.admission.try_acquire(call.model, call.key, tried, call.priority)
        except NoOtherReplica:  # each replica failed once: after the back-off, any may retry
            tried.clear()
            backend = self.admission.try_acquire(call.model, call.key, tried, call.priority)
        if backend is not None:
            self.metrics.waited(call.model, 0.0)
        return backend

    async def _queued_replica(
        self, call: Call, tried: set[str], bounded: bool
    ) -> tuple[Backend, float]:
        """A replica handed over in the queue, and the seconds the request waited for its
        model to wake (0 if it had a replica): that wait is not taken from its deadline."""
        started = time.monotonic()
        waking = self.admission.pool.waking(call.model)
        backend = await self.admission.wait(
            call.model, call.key, tried, bounded, call.priority, call.left
        )
        waited = time.monotonic() - started
        self.metrics.waited(call.model, waited)
        return backend, waited if waking else 0.0

    async def _forward(
        self,
        call: Call,
        backend: Backend,
        relay: Relay | None,
        deadline: float,
        give_back: GiveBack,
    ) -> web.StreamResponse | Reply | str:
        """The answer, or why this replica failed (then the caller tries another)."""
        path, body = call.for_backend(backend)
        try:
            # A stream has no deadline (an answer may take as long as it needs), only a limit
            # on silence; an answer read whole has the request's deadline.
            upstream = await self.upstreams.post(
                backend.url,
                path,
                body,
                deadline=None if relay else max(deadline, time.monotonic() + 0.1),
                idle_s=self.config.idle_stream_timeout_s if relay else None,
            )
            backend.upstreams.add(upstream)
            try:
                if relay is None or upstream.status != 200:
                    payload = await upstream.read()
                    give_back(None if upstream.status >= 500 else True, "")  # 5xx: suspect
                    return Reply(upstream.status, payload, upstream.content_type, backend)
                return await relay(upstream, backend, give_back)
            finally:
                backend.upstreams.discard(upstream)
                upstream.release()
        except (TimeoutError, UpstreamError) as exc:
            in_time = time.monotonic() < deadline  # past it, slow is not broken
            give_back(False if in_time else None, f"did not answer ({type(exc).__name__})")
            return f"{backend.url} did not answer ({type(exc).__name__})"
