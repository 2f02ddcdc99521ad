"""Per-key rate limits and quotas, enforced before a request waits for a replica.

Each key may have requests per minute, tokens per minute, concurrent requests, and token quotas
per day and per month (UTC). Minute limits are sliding windows over the last 60 s: a log of
the key's recent requests with their tokens, so a burst cannot double the rate at a window's
edge. Tokens are counted before the answer exists, from the request (its prompt's bytes / 4,
plus ``max_tokens``, or ``DEFAULT_ANSWER_TOKENS`` when it sets none), and settled on the
answer's real ``usage`` once it is known; a request that fails is settled at what it used.

Daily and monthly quotas must hold across restarts and across router processes (the workers
of one router, routers before a restart), so a key's use of a day or month is what this process
let it use, counted in memory for every key, plus what the other processes' usage files said
when they were read: before the router listens, and each day (after midnight UTC, or when a
keys file gives a key the first quota of its kind) before the first request that needs them
(``read_ahead``), today's and this month's use in one read, and then read on every few seconds
in the background (``keep_reading``, what was written since): what another process lets a key
use reaches this one's quotas within seconds (its records are written once a second).
Everything on the hot path is a dict lookup and a deque, under the event loop (one owner, no
lock); the usage files, which grow for as long as a router runs, are read in a thread, never on
the loop.

A refusal is a 429 whose ``Retry-After`` is when the limit that was hit frees enough room:
the oldest request leaving the window, or the next day or month. Every answer to a key with
limits carries OpenAI's ``x-ratelimit-*`` headers for requests and tokens per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from slurm_llm._api_keys import Identity
from slurm_llm.router._errors import RouterError

log = logging.getLogger("slurm_llm.router")

WINDOW_S = 60.0
REREAD_S = 2.0  # how often the other processes' usage files are read on
DEFAULT_ANSWER_TOKENS = 256  # counted up front for a request without max_tokens
BYTES_PER_TOKEN = 4  # a prompt's tokens, guessed before the engine counts them
ANSWER_LIMITS = ("max_tokens", "max_completion_tokens")
ANSWER_COUNTS = ("n", "best_of")


class LimitHit(RouterError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, message, "rate_limit_exceeded", max(1, math.ceil(retry_after)))


@dataclass(eq=False)
class Spent:
    """One admitted request's entry in its key's minute window."""

    at: float
    tokens: int


@dataclass
class KeyState:
    window: deque[Spent] = field(default_factory=deque)
    window_tokens: int = 0
    aged_to: float = 0.0  # entries at or before this have left the window
    in_flight: int = 0
    day: str = ""
    day_tokens: int = 0
    month: str = ""
    month_tokens: int = 0


@dataclass
class Grant:
    """What ``admit`` let through; ``settle`` it once with the tokens really used."""

    identity: Identity
    spent: Spent
    day: str  # the day and month it was counted in
    month: str
    settled: bool = False


def estimated_tokens(body_bytes: int, body: Mapping[str, object]) -> int:
    """The prompt's bytes / 4, plus the longest answer asked for, times the answers asked
    for (``n``, ``best_of``)."""
    answer = largest_count(body, ANSWER_LIMITS) or DEFAULT_ANSWER_TOKENS
    return body_bytes // BYTES_PER_TOKEN + answer * max(largest_count(body, ANSWER_COUNTS), 1)


def largest_count(body: Mapping[str, object], names: tuple[str, ...]) -> int:
    """The largest positive integer among the fields ``names``, 0 if none is one. A plain
    loop: every keyed request passes here, and generators with ``max(default=...)`` cost it
    ~4 µs (timed)."""
    largest = 0
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and value > largest:
            largest = value
    return largest


class Limiter:
    def __init__(
        self,
        used_since: Callable[[Collection[datetime]], Mapping[datetime, Mapping[str, int]]] = (
            lambda starts: {}
        ),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``used_since(starts)``: tokens used per key name since each of ``starts`` by the
        other router processes, from their usage files (this one counts its own in memory);
        ``clock``: seconds since the epoch."""
        self.used_since = used_since
        self.clock = clock
        self.keys: dict[str, KeyState] = {}
        self._calendar_day = -1
        self._calendar_names = ("", "")
        epoch = datetime.fromtimestamp(0, UTC)
        self._starts = (epoch, epoch)  # where today and this month began
        # What the other processes used since today's and this month's starts, per key, as
        # read on the day ``_read_on`` (the month's total anew with each day's, then read on
        # every ``REREAD_S``); the read under way, by the day it is for. Only the event loop
        # changes them (``_read``), but for the read before the router listens.
        self._others: dict[datetime, Mapping[str, int]] = {}
        self._read_on = epoch
        self._failing = False  # the last read failed (said once)
        self._reading: dict[datetime, asyncio.Future[Mapping[datetime, Mapping[str, int]]]] = {}

    def read_ahead(self, identity: Identity | None) -> Awaitable[None] | None:
        """What to await before ``identity``'s request is admitted: what the other processes
        used today and this month, read in a thread, where today's has not been read (after
        midnight UTC, or when the keys file has just given a key the first quota of its kind).
        On the event loop, that read (seconds, for routers that have run for weeks) would hold
        every request of every key. None, after a dict lookup, for the rest: every keyed
        request asks. One read a day serves every key, however many requests wait for it; a
        request that leaves does not stop it. After it, ``keep_reading`` reads the files on."""
        if identity is None or not (identity.tokens_per_day or identity.tokens_per_month):
            return None
        self._calendar(self.clock())
        day = self._starts[0]
        return None if self._read_on == day else self._wait(self._reading_of(day))

    async def keep_reading(self, every: float = REREAD_S) -> None:
        """Reads the other processes' usage files on, every ``every`` seconds, once today's
        have been read (a router with quotas): what the other workers let a key use counts
        here within seconds, whether or not this worker's keys send requests meanwhile. No
        request waits for these reads."""
        while True:
            await asyncio.sleep(every)
            self._calendar(self.clock())
            day = self._starts[0]
            if self._read_on == day and day not in self._reading:
                with contextlib.suppress(Exception):  # said in ``_read``; tried again
                    await self._reading_of(day)  # no request waits for it (``read_ahead``)

    async def _wait(self, reading: asyncio.Future[Mapping[datetime, Mapping[str, int]]]) -> None:
        try:
            await asyncio.shield(reading)
        except OSError as exc:  # the usage folder itself (a file that fails is skipped)
            raise RouterError(
                503, f"cannot read the usage records for this key's quota now ({exc})",
                "service_unavailable", retry_after=5,
            ) from None  # fmt: skip

    def _reading_of(self, day: datetime) -> asyncio.Future[Mapping[datetime, Mapping[str, int]]]:
        reading = self._reading.get(day)
        if reading is None:
            starts = set(self._starts)  # one, on the 1st
            reading = asyncio.ensure_future(asyncio.to_thread(self.used_since, starts))
            self._reading[day] = reading
            reading.add_done_callback(functools.partial(self._read, day))
        return reading

    def _read(
        self, day: datetime, reading: asyncio.Future[Mapping[datetime, Mapping[str, int]]]
    ) -> None:
        """A read is over: kept if it is today's (one that ends after midnight is not; the next
        request reads the new day); after a failed one, the next request reads anew."""
        del self._reading[day]
        failure = None if reading.cancelled() else reading.exception()
        if failure is not None:
            if not self._failing:  # once until a read succeeds again
                log.warning("cannot read the other router processes' usage records (%s); the "
                            "quotas count what was read of them before", failure)  # fmt: skip
            self._failing = True
        elif not reading.cancelled():
            self._failing = False
            if day == self._starts[0]:
                self._others, self._read_on = dict(reading.result()), day

    def admit(self, identity: Identity, tokens: int) -> Grant:
        """Counts one request of ``identity`` that may use ``tokens``, or raises ``LimitHit``."""
        now = self.clock()
        state = self._state(identity, now)
        self._check(identity, state, tokens, now)
        spent = Spent(now, tokens)
        state.window.append(spent)
        state.window_tokens += tokens
        state.in_flight += 1
        state.day_tokens += tokens
        state.month_tokens += tokens
        return Grant(identity, spent, state.day, state.month)

    def settle(self, grant: Grant, tokens: int) -> None:
        """The request is over and used ``tokens``: the estimate is replaced by them."""
        if grant.settled:
            return
        grant.settled = True
        state = self._state(grant.identity, self.clock())  # its day may have ended since
        change = tokens - grant.spent.tokens
        grant.spent.tokens = tokens
        if grant.spent.at > state.aged_to:  # still in the window
            state.window_tokens += change
        # A request admitted before midnight and settled after: the new day's count gets all
        # of it, as its usage record (written as it ends) does.
        state.day_tokens += change if grant.day == state.day else tokens
        state.month_tokens += change if grant.month == state.month else tokens
        state.in_flight -= 1

    def headers(self, identity: Identity) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the key's minute limits."""
        now = self.clock()
        state = self._state(identity, now)
        out: dict[str, str] = {}
        reset = f"{max(0.0, state.window[0].at + WINDOW_S - now):.1f}s" if state.window else "0s"
        if (rpm := identity.requests_per_minute) is not None:
            out["x-ratelimit-limit-requests"] = str(rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, rpm - len(state.window)))
            out["x-ratelimit-reset-requests"] = reset
        if (tpm := identity.tokens_per_minute) is not None:
            out["x-ratelimit-limit-tokens"] = str(tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, tpm - state.window_tokens))
            out["x-ratelimit-reset-tokens"] = reset
        return out

    def _check(self, identity: Identity, state: KeyState, tokens: int, now: float) -> None:
        name = identity.name
        if (limit := identity.concurrent_requests) is not None and state.in_flight >= limit:
            raise LimitHit(f"key {name!r} already has {limit} requests in flight, its limit", 1)
        if (rpm := identity.requests_per_minute) is not None and len(state.window) >= rpm:
            wait = state.window[len(state.window) - rpm].at + WINDOW_S - now
            raise LimitHit(f"key {name!r} is over its {rpm} requests per minute", wait)
        if (tpm := identity.tokens_per_minute) is not None:
            if tokens > tpm:
                raise RouterError(
                    400,
                    f"this request may use {tokens} tokens, more than key {name!r} may use in "
                    f"a minute ({tpm}): lower max_tokens or shorten the prompt",
                )
            if (over := state.window_tokens + tokens - tpm) > 0:
                wait = self._frees(state, over, now)
                raise LimitHit(f"key {name!r} is over its {tpm} tokens per minute", wait)
        day, month = self._starts
        for quota, own, start, period, ends in (
            (identity.tokens_per_day, state.day_tokens, day, "day", next_day),
            (identity.tokens_per_month, state.month_tokens, month, "month", next_month),
        ):
            if quota is None:
                continue
            # (Others' use of a period not read yet counts as none: a request whose read came
            # just before midnight is admitted on the seconds-old day's use alone.)
            used = own + self._others.get(start, {}).get(name, 0)
            if used + tokens > quota:
                when = datetime.fromtimestamp(now, UTC)  # only for a refusal: it costs
                raise LimitHit(
                    f"key {name!r} has used {used} of its {quota} tokens this {period} (UTC)",
                    (ends(when) - when).total_seconds(),
                )

    def _frees(self, state: KeyState, needed: int, now: float) -> float:
        """Seconds until the window's oldest entries free ``needed`` tokens."""
        freed = 0
        for spent in state.window:
            freed += spent.tokens
            if freed >= needed:
                return spent.at + WINDOW_S - now
        return WINDOW_S

    def _state(self, identity: Identity, now: float) -> KeyState:
        """The key's state, its window aged to ``now`` and its day and month current. What this
        process let the key use in them is counted here for every key, with a quota or not, so
        a quota a keys file gives a key later counts what it used before."""
        state = self.keys.get(identity.name)
        if state is None:
            state = self.keys[identity.name] = KeyState()
        state.aged_to = now - WINDOW_S
        while state.window and state.window[0].at <= state.aged_to:
            state.window_tokens -= state.window.popleft().tokens
        day, month = self._calendar(now)
        if state.day != day:
            state.day, state.day_tokens = day, 0
        if state.month != month:
            state.month, state.month_tokens = month, 0
        return state

    def read_period_starts(self) -> None:
        """What the other processes used today and this month, read now: a router with quotas
        does this in a thread before it listens (a month of files delays its start, not a
        request)."""
        self._calendar(self.clock())
        self._others, self._read_on = dict(self.used_since(set(self._starts))), self._starts[0]

    def _calendar(self, now: float) -> tuple[str, str]:
        """Today's and this month's names (UTC), worked out once a day: ``strftime``, twice in
        each of a request's two limiter calls, cost more than the limits' arithmetic (profiled)."""
        index = int(now // 86400)  # the epoch began at a UTC midnight
        if index != self._calendar_day:
            today = datetime.fromtimestamp(index * 86400, UTC)
            iso = today.date().isoformat()
            self._calendar_day, self._calendar_names = index, (iso, iso[:7])
            self._starts = (today, today.replace(day=1))
        return self._calendar_names


def day_start(when: datetime) -> datetime:
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def next_day(when: datetime) -> datetime:
    return day_start(when) + timedelta(days=1)


def next_month(when: datetime) -> datetime:
    first = day_start(when).replace(day=1)
    return (first + timedelta(days=32)).replace(day=1)
