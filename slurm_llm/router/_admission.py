"""Admission control: each replica gets at most ``limit`` requests; the rest wait here, in order.

Queueing in the router rather than in each engine matters for tail latency: a request waiting
here goes to whichever replica frees up first, while one already sent waits behind whatever its
replica happened to get, long generations included. The queue is bounded per model, and a
request waits a bounded time, so overload turns into a fast 429/503 with ``Retry-After``
instead of a pile of requests that all time out. ``load()`` tells workflows how busy a model is
so they can shed expensive work before the queue fills.

Waiters are served in order of rank, not of arrival: a request's rank is the time it arrived,
plus ``batch_aging_s`` for batch-class requests. Interactive requests therefore go ahead of
batch requests that arrived less than ``batch_aging_s`` before them, and never ahead of one
that has waited longer: a batch request that arrived at ``t`` is behind only requests that
arrived before ``t + batch_aging_s``, so it cannot starve however many interactive requests
follow (``tests/unit/router/test_admission.py`` checks it over random arrivals).

Ranking decides who gets the next free slot, but an interactive request that reaches the head
of the queue still waits for one of the flood's answers to end. ``interactive_reserve`` keeps
that many slots of each replica out of batch-class hands while interactive requests are coming
(one arrived within ``RESERVE_WINDOW_S``), so a chat finds a slot at once; with no interactive
traffic, batch work uses every slot. Batch work always keeps one slot of each replica, however
many chats come, so aging still bounds its wait; and when the window lapses, the queue is
served at once rather than at the next release.

A model of an elastic deployment at zero replicas has no replica to wait for yet: a request
for it still joins the queue (bounded as ever) and waits up to ``wake_timeout_s`` instead of
``queue_timeout_s``, while ``on_wake`` tells the demand reporter at once, so the controller
starts a replica without waiting for the next report. ``last_request`` (wall-clock) is what
that report says of each model's demand, so a deployment that idles can be scaled down.

A client that leaves while its request waits (for a slot, or for a wake-up that takes a
minute) takes the request out of the queue: otherwise it would hold its place, count as demand
that keeps a deployment awake, and at last have a replica compute an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from slurm_llm._api_keys import Priority
from slurm_llm.router._backends import Backend, BackendPool
from slurm_llm.router._errors import RouterError
from slurm_llm.router._policies import Policy, by_affinity


class Rejected(RouterError):
    """The router cannot take the request now; ``status`` is 429 or 503."""

    def __init__(self, status: int, message: str, reason: str, retry_after: int = 1) -> None:
        kind = "rate_limit_exceeded" if status == 429 else "service_unavailable"
        super().__init__(status, message, kind, retry_after)
        self.reason = reason  # the label rejections are counted under


class ClientLeft(RouterError):
    """The client closed its connection while its request waited for a replica: the request
    gives up its place (nobody would read the answer, and a replica would compute it), and it
    is counted under nginx's 499, "client closed request"."""

    def __init__(self, model: str) -> None:
        super().__init__(
            499, f"the client left while its request for {model!r} waited", "client_closed_request"
        )


class NoOtherReplica(Exception):
    """Every replica of the model was already tried by this request."""


@dataclass
class ModelLoad:
    """How busy one model is, as workflows see it."""

    model: str
    replicas: int
    routable: int
    in_flight: int
    capacity: int  # requests the routable replicas take at once
    queued: int

    @property
    def utilisation(self) -> float:
        """Demand over capacity: above 1 means requests are waiting."""
        if self.capacity == 0:
            return float("inf") if self.in_flight + self.queued else 0.0
        return (self.in_flight + self.queued) / self.capacity


BATCH_AGING_S = 30.0
RESERVE_WINDOW_S = 30.0  # interactive traffic this recent keeps the reserve in force
LEFT_POLL_S = 0.25  # how often a waiting request looks whether its client is still there
_arrivals = itertools.count()  # breaks ties between waiters of one rank: first come first


@dataclass(eq=False)
class Waiter:
    key: str | None
    exclude: Collection[str]
    rank: float  # arrival, plus the aging handicap for batch requests
    priority: Priority = "interactive"
    waking: bool = False  # it came for a model with no replica, and waits for one to start
    order: int = field(default_factory=lambda: next(_arrivals))
    future: asyncio.Future[Backend] = field(default_factory=asyncio.Future)


async def wait_unless(left: Callable[[], bool], waiter: Waiter, model: str) -> Backend:
    """The replica handed to ``waiter``, unless its client leaves first. The connection is
    looked at every ``LEFT_POLL_S`` while it waits; a request that finds a slot free never
    waits, so this costs nothing on the hot path."""
    while True:
        done, _ = await asyncio.wait([waiter.future], timeout=LEFT_POLL_S)
        if done:
            return waiter.future.result()
        if left():
            waiter.future.cancel()  # nothing is handed to it in between: no await since
            raise ClientLeft(model)


def rank_of(arrived: float, priority: Priority, batch_aging_s: float) -> float:
    return arrived + (batch_aging_s if priority == "batch" else 0.0)


def enqueue(queue: list[Waiter], waiter: Waiter) -> None:
    """Into its place by rank; among equal ranks, after those that came before it."""
    bisect.insort(queue, waiter, key=lambda w: (w.rank, w.order))


def usable(backends: list[Backend], now: float) -> list[Backend]:
    """The routable replicas; when every one is passively ejected, all of them that deep probes
    have not taken out: ejection steers traffic away from a replica while others can take it,
    and must not turn one transient error on the last replica into a minute of 503s."""
    routable = [b for b in backends if b.routable(now)]
    return routable or [b for b in backends if not b.probed_down]


class Admission:
    def __init__(
        self,
        pool: BackendPool,
        policy: Policy,
        max_queue: int = 1024,
        queue_timeout_s: float = 60.0,
        batch_aging_s: float = BATCH_AGING_S,
        clock: Callable[[], float] = time.monotonic,
        interactive_reserve: int = 0,
        wake_timeout_s: float = 600.0,
    ) -> None:
        """``clock`` gives a waiter's arrival time, which ranks it (a seam for tests);
        ``interactive_reserve``: slots per replica batch work leaves to interactive traffic."""
        if interactive_reserve < 0:
            raise ValueError(f"interactive_reserve must be 0 or more, not {interactive_reserve}")
        self.pool = pool
        self.clock = clock
        self.interactive_reserve = interactive_reserve
        self._last_interactive: dict[str, float] = {}  # model -> when one last arrived
        self._reserve_lapses: dict[str, asyncio.TimerHandle] = {}  # model -> its wake-up
        self.policy = policy
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.batch_aging_s = batch_aging_s
        self.queues: dict[str, list[Waiter]] = {}  # by rank
        self.wake_timeout_s = wake_timeout_s
        self.last_request: dict[str, float] = {}  # model -> wall-clock time of its last request
        self.on_wake: Callable[[str], None] = lambda model: None
        pool.on_change = self.dispatch_all
        pool.hurry = self.waiting_for_wake

    async def acquire(
        self,
        model: str,
        key: str | None = None,
        exclude: Collection[str] = (),
        bounded: bool = True,
        priority: Priority = "interactive",
        left: Callable[[], bool] | None = None,
    ) -> Backend:
        """A replica reserved for one request (``in_flight`` already counts it); give it back
        with ``release``. ``bounded=False`` lets batch items wait even when the queue is full:
        their number is bounded by the batch itself. ``priority`` places it in the queue.
        ``left()`` says whether the request's client has gone: one that leaves while its request
        waits takes it out of the queue (``ClientLeft``)."""
        backend = self.try_acquire(model, key, exclude, priority)
        if backend is not None:
            return backend
        return await self.wait(model, key, exclude, bounded, priority, left)

    def try_acquire(
        self,
        model: str,
        key: str | None = None,
        exclude: Collection[str] = (),
        priority: Priority = "interactive",
    ) -> Backend | None:
        """``acquire``'s first step, without a coroutine: a replica free now, if no request
        waits before this one; None if it must queue (then ``wait``, with nothing awaited in
        between). Most requests stop here, and the router's hot path awaits nothing for them.
        Raises what ``acquire`` raises when there is nothing to wait for."""
        self.last_request[model] = time.time()
        backends = self.pool.of(model)
        if not backends and not self.pool.waking(model):
            # its last replica went between the model check and here
            raise Rejected(
                503, f"no replica of {model!r} is up right now; retry shortly", "no_replica",
                retry_after=2,
            )  # fmt: skip
        routable = self._routable(model, backends, exclude, time.monotonic()) if backends else []
        if priority == "interactive":
            self._last_interactive[model] = self.clock()
        if routable and not self.queues.get(model):
            free = [b for b in routable if self._may_take(b, priority)]
            if free:
                return self._take(model, free, key, priority)
        return None

    async def wait(
        self,
        model: str,
        key: str | None = None,
        exclude: Collection[str] = (),
        bounded: bool = True,
        priority: Priority = "interactive",
        left: Callable[[], bool] | None = None,
    ) -> Backend:
        """``acquire``'s second step, for a request ``try_acquire`` found no free replica for:
        its place in the queue, and the replica handed to it there."""
        waking = self.pool.waking(model)
        queue = self.queues.setdefault(model, [])
        if bounded and len(queue) >= self.max_queue:
            raise Rejected(
                429,
                f"{model!r} already has {len(queue)} requests waiting, the most this router "
                "queues; retry later or add replicas",
                "queue_full",
                retry_after=self._retry_after(model),
            )
        arrived = self.clock()
        rank = rank_of(arrived, priority, self.batch_aging_s)
        waiter = Waiter(key, exclude, rank, priority, waking)
        enqueue(queue, waiter)
        if waking:
            self.on_wake(model)
        # Waiters ahead of it may be unable to take what is free (batch work facing the
        # reserve, retries excluding a replica): it need not wait for the next release.
        self.dispatch(model)
        timeout = self.wake_timeout_s if waking else self.queue_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await (waiter.future if left is None else wait_unless(left, waiter, model))
        except (TimeoutError, asyncio.CancelledError) as exc:
            # A replica handed over in the same instant would otherwise stay reserved forever.
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result(), waiter.priority)
            if isinstance(exc, asyncio.CancelledError):
                raise
            waited = "started" if waking else "was free"
            raise Rejected(
                503,
                f"no replica of {model!r} {waited} within {timeout:g} s; "
                "retry later or add replicas",
                "wake_timeout" if waking else "queue_timeout",
                retry_after=self._retry_after(model),
            ) from None
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def _routable(
        self, model: str, backends: list[Backend], exclude: Collection[str], now: float
    ) -> list[Backend]:
        candidates = [b for b in backends if b.url not in exclude]
        if not candidates:
            raise NoOtherReplica(model)
        routable = usable(candidates, now)
        if not routable:
            raise Rejected(
                503,
                f"all {len(candidates)} replica(s) of {model!r} are failing health checks",
                "unhealthy",
                retry_after=5,
            )
        return routable

    def release(self, backend: Backend, priority: Priority = "interactive") -> None:
        backend.in_flight -= 1
        backend.batch_in_flight -= priority == "batch"
        self.dispatch(backend.model)

    def dispatch(self, model: str) -> None:
        """Gives free replicas to waiters in order of rank; a waiter that excludes every free
        replica (it already failed on them), or a batch one facing the reserve, lets the next
        one go ahead."""
        queue = self.queues.get(model)
        if not queue:
            return
        free_now = [b for b in usable(self.pool.of(model), time.monotonic()) if b.free()]
        # A class none of the free slots takes: its later waiters, who may use no more
        # replicas than the first (only fewer, by excluding some), are passed over at once.
        blocked: set[Priority] = set()
        for waiter in list(queue) if free_now else ():
            if waiter.future.done():
                queue.remove(waiter)
                continue
            if waiter.priority in blocked:
                continue
            free = [
                b for b in free_now
                if b.url not in waiter.exclude and self._may_take(b, waiter.priority)
            ]  # fmt: skip
            if not free:
                if not waiter.exclude:
                    blocked.add(waiter.priority)
                continue
            queue.remove(waiter)
            backend = self._take(model, free, waiter.key, waiter.priority)
            waiter.future.set_result(backend)
            if not backend.free():
                free_now.remove(backend)
            if not free_now:
                return

    def abandon_hopeless_wakes(self, hopeless: Callable[[str], str]) -> None:
        """Fails the requests waiting for a model to wake that nothing will wake
        (``hopeless(model)`` says why, or "" while something will), rather than let them wait
        out ``wake_timeout_s``."""
        for model, queue in self.queues.items():
            waking = [w for w in queue if w.waking and not w.future.done()]
            if not waking or self.pool.of(model) or not (why := hopeless(model)):
                continue
            for waiter in waking:
                waiter.future.set_exception(Rejected(
                    503, f"{model!r} has no replica and will not start one: {why}",
                    "wake_failed", retry_after=60,
                ))  # fmt: skip

    def waiting_for_wake(self) -> bool:
        """Whether a request waits for a model that has no replica yet."""
        return any(queue and not self.pool.of(model) for model, queue in self.queues.items())

    def dispatch_all(self) -> None:
        for model in list(self.queues):
            self.dispatch(model)

    def _may_take(self, backend: Backend, priority: Priority) -> bool:
        """Whether a request of ``priority`` may have a slot of ``backend`` now: any free slot,
        except that batch work leaves ``interactive_reserve`` of them while interactive
        requests are coming, and always may have one."""
        if not backend.free():
            return False
        if priority == "interactive" or not self.interactive_reserve:
            return True
        if backend.batch_in_flight == 0 or not self._reserving(backend.model):
            return True
        return backend.in_flight < backend.limit - self.interactive_reserve

    def _reserving(self, model: str) -> bool:
        """Whether the reserve is in force for ``model``; if so, the queue is served again the
        moment it lapses, when slots it held may go to batch work that waits."""
        last = self._last_interactive.get(model)
        lapses = (last or 0.0) + RESERVE_WINDOW_S - self.clock()
        if last is None or lapses <= 0:
            return False
        if model not in self._reserve_lapses:
            loop = asyncio.get_running_loop()
            self._reserve_lapses[model] = loop.call_later(lapses, self._reserve_lapsed, model)
        return True

    def _reserve_lapsed(self, model: str) -> None:
        del self._reserve_lapses[model]
        self.dispatch(model)

    def _take(
        self, model: str, free: list[Backend], key: str | None, priority: Priority
    ) -> Backend:
        backend = by_affinity(key, free) if key else self.policy.choose(model, free)
        backend.in_flight += 1
        backend.batch_in_flight += priority == "batch"
        return backend

    def _retry_after(self, model: str) -> int:
        """Seconds until the queue ahead has likely drained, at 1 s per round of replicas."""
        load = self.load(model)
        return max(1, min(60, round(load.queued / max(load.capacity, 1))))

    def load(self, model: str) -> ModelLoad:
        now = time.monotonic()
        backends = self.pool.of(model)
        routable = usable(backends, now)  # what a request would be sent to now
        return ModelLoad(
            model=model,
            replicas=len(backends),
            routable=len(routable),
            in_flight=sum(b.in_flight for b in backends),
            capacity=sum(b.limit for b in routable),
            queued=len(self.queues.get(model, ())),
        )
