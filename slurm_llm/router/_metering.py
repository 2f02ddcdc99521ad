"""What a caller may do and what they used.

The checks every request passes (``_app.checked``) identify the caller (``_auth.Callers``).
Around each model request, ``metered`` then checks that the key may use the model (403 naming
it), counts the request against the key's limits (``_limits``), and once the answer is over
settles the limits on the tokens really used and appends a usage record
(``slurm_llm._usage``). The answer's ``usage`` is read from a plain answer's body, or from a
stream's last event: streams are asked for it (``stream_options.include_usage``) and the event
is dropped again if the client did not ask for it itself. A request the router runs itself (a
tribunal, a map-reduce) is charged every call it made (``Meter.charge``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
from aiohttp import web

from slurm_llm._api_keys import Identity, Priority
from slurm_llm._usage import ANONYMOUS, UsageRecord
from slurm_llm.router._backends import Backend
from slurm_llm.router._dispatch import Reply
from slurm_llm.router._errors import RouterError
from slurm_llm.router._limits import Grant, LimitHit, estimated_tokens
from slurm_llm.router._metrics import RouterMetrics
from slurm_llm.router._state import STATE, RouterState
from slurm_llm.router._streams import ClientStream

# Set on every request but the open paths' (None: a router without keys), so that reading it
# raises no KeyError inside ``request.get``, a cost the profile showed.
CALLER: web.RequestKey[Identity | None] = web.RequestKey("caller")
PRIORITY_HEADER = "X-Priority"


def priority_of(request: web.Request) -> Priority:
    """The caller's class, or ``batch`` when the request asks for it: a request may lower its
    own class, never raise it."""
    caller = request.get(CALLER)
    own: Priority = caller.priority if caller is not None else "interactive"
    return "batch" if request.headers.get(PRIORITY_HEADER, "").lower() == "batch" else own


@dataclass
class Meter:
    """One model request's accounting, filled in as its answer arrives."""

    model: str
    endpoint: str
    priority: Priority
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replica: Backend | None = None  # the one that answered (the last, after a failover)
    counted: bool = False  # an engine's count of the tokens was read

    def answered(self, reply: Reply) -> None:
        """A replica's whole answer (not streamed): its status and who gave it."""
        self.status, self.replica = reply.status, reply.backend

    def streamed(self, stream: ClientStream) -> None:
        """A stream relayed to its end: the replica that sent its last part."""
        self.status = 200
        self.replica = stream.replicas[-1] if stream.replicas else None

    def read_usage(self, usage: object) -> None:
        """An answer's ``usage``; one that counts no tokens (none, or a replica's odd one) leaves
        the request to be settled on its estimate, not on nothing."""
        if (counts := token_counts(usage)) is not None:
            self.counted = True
            self.prompt_tokens, self.completion_tokens = counts

    def charge(self, reply: Reply, usage: object) -> None:
        """One of the calls the router makes itself for this request (a tribunal's drafts,
        critiques and revisions; a map-reduce's chunks): its tokens added to the calls' before
        it, its replica the one that answered last. The caller's key pays for every call its
        request caused, as it would had it made them one by one."""
        self.replica = reply.backend
        if (counts := token_counts(usage)) is not None:
            self.counted = True
            self.prompt_tokens += counts[0]
            self.completion_tokens += counts[1]


def token_counts(usage: object) -> tuple[int, int] | None:
    """(prompt, completion) tokens an answer's ``usage`` counts, a field that is not a count
    (negative, a text: a replica's odd usage) taken as 0; None if it counts neither."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (is_token_count(prompt) or is_token_count(completion)):
        return None
    return prompt if is_token_count(prompt) else 0, completion if is_token_count(completion) else 0


def is_token_count(value: object) -> TypeGuard[int]:
    """Whether a replica's usage field is a count of tokens (``bool`` is an ``int`` too)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def count_usage(metrics: RouterMetrics, model: str, payload: bytes) -> object:
    """The answer's ``usage`` (None if it has none), its counts added to the token metrics."""
    usage = answer_usage(payload)
    if (counts := token_counts(usage)) is not None:
        metrics.used(model, *counts)
    return usage


def answer_usage(payload: bytes) -> object:
    """The ``usage`` member of an answer's JSON object, or None. The engines write it last, so
    it is parsed alone when the bytes after ``"usage":`` are exactly one object followed by the
    answer's closing brace: the member is then the answer's own, since a member of anything
    nested would leave that thing's closing brackets after it. Any other answer is parsed
    whole; the fast path spares a long answer's text being made a string only to be dropped."""
    body = payload.strip()
    key = body.rfind(b'"usage":')
    if body[:1] == b"{" and body[-1:] == b"}" and key > 0 and body[key - 1] != ord("\\"):
        try:
            usage = orjson.loads(body[key + 8 : -1])
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(usage, dict):
                return usage
    try:
        whole = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return whole.get("usage") if isinstance(whole, dict) else None


def check_access(caller: Identity | None, model: str) -> None:
    """403 naming the models the caller's key may use, if ``model`` is not one of them."""
    if caller is not None and not caller.may_use(model):
        allowed = ", ".join(caller.models)
        raise RouterError(
            403, f"key {caller.name!r} may not use model {model!r} (it may use: {allowed})",
            "permission_denied",
        )  # fmt: skip


def metered(
    request: web.Request, model: str, endpoint: str, body: dict[str, Any], body_bytes: int
) -> MeteredCall:
    """A client's model request, metered as its key's (see ``MeteredCall``)."""
    caller = request.get(CALLER)
    check_access(caller, model)
    return MeteredCall(
        request.app[STATE], caller, priority_of(request), model, endpoint, body, body_bytes
    )


class MeteredCall:
    """Counts a request of ``caller`` against its limits (``LimitHit`` when over one), and once
    it is over settles them and appends its usage record; ``caller`` None: a router without
    keys. Requests without a client in front (a durable batch's lines) come here directly.

    A plain class and a plain ``with`` rather than an ``asynccontextmanager``: every request
    passes here, nothing in it waits, and a generator wrapped twice, or even two coroutines,
    cost more than the accounting itself."""

    def __init__(
        self,
        state: RouterState,
        caller: Identity | None,
        priority: Priority,
        model: str,
        endpoint: str,
        body: dict[str, Any],
        body_bytes: int,
    ) -> None:
        self.state = state
        self.caller = caller
        self.meter = Meter(model, endpoint, priority)
        self.grant: Grant | None = None
        # Only limits need the estimate: a router without keys does not make it.
        self.estimate = estimated_tokens(body_bytes, body) if caller is not None else 0
        self.started = 0.0

    def __enter__(self) -> Meter:
        if self.caller is not None:
            try:
                self.grant = self.state.limiter.admit(self.caller, self.estimate)
            except LimitHit:
                self.state.metrics.rejections.labels(self.meter.model, "key_limit").inc()
                raise
        self.started = time.monotonic()
        return self.meter

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        state, caller, meter = self.state, self.caller, self.meter
        if isinstance(exc, RouterError):  # no replica, a timeout: the status the client got
            meter.status = exc.status
        estimated = 0  # charged to the key for want of the engine's count, and so recorded
        if self.grant is not None:
            # No usage read (a stream left early, a TGI stream): the estimate; none for a
            # request that reached no replica (refused, or its client left while it waited).
            if not meter.counted and meter.replica is not None:
                estimated = self.estimate
            state.limiter.settle(
                self.grant, meter.prompt_tokens + meter.completion_tokens + estimated
            )
        name = caller.name if caller is not None else ANONYMOUS
        state.metrics.key_used(name, meter.status, meter.prompt_tokens, meter.completion_tokens)
        if state.usage is not None:
            replica = meter.replica
            state.usage.record(
                UsageRecord(
                    at=time.time(),
                    key=name,
                    account=caller.account if caller is not None else None,
                    model=meter.model,
                    endpoint=meter.endpoint,
                    priority=meter.priority,
                    status=meter.status,
                    prompt_tokens=meter.prompt_tokens,
                    completion_tokens=meter.completion_tokens,
                    latency_s=time.monotonic() - self.started,
                    replica=replica.url if replica else None,
                    deployment=replica.deployment if replica else None,
                    job=replica.job if replica else None,
                    estimated_tokens=estimated,
                )
            )


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the caller's ``x-ratelimit-*`` headers on every answer,
    streamed ones included (their headers go out before the first event)."""
    caller = request.get(CALLER)
    if caller is not None:
        response.headers.update(request.app[STATE].limiter.headers(caller))
