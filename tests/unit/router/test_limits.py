"""Per-key limits: sliding minute windows, concurrency, daily and monthly quotas that start from
the usage log; each refusal says when to come back. A fake clock makes time explicit."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path

import pytest

from slurm_llm._api_keys import Identity, KeysFile, hash_key
from slurm_llm._usage import TokensUsedSince, UsageLog, UsageRecord
from slurm_llm.router import ProbeConfig, RouterConfig, RouterThread
from slurm_llm.router._errors import RouterError
from slurm_llm.router._limits import Limiter, LimitHit, estimated_tokens
from slurm_llm.router._state import STATE
from tests.integration.helpers import HttpReply, post, wait_until
from tests.unit.router.test_upstream import until

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> Identity:
    return Identity(name="alice", hash=hash_key("k"), **limits)


def test_a_key_over_its_requests_per_minute_waits_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    limiter, alice = Limiter(clock=clock), key(requests_per_minute=3)
    for second in (0, 10, 20):
        clock.now = NOON + second
        limiter.settle(limiter.admit(alice, 1), 1)
    clock.now = NOON + 30
    with pytest.raises(LimitHit) as hit:
        limiter.admit(alice, 1)
    assert hit.value.status == 429 and hit.value.retry_after == 30  # the first leaves at 60
    clock.now = NOON + 60.5
    limiter.admit(alice, 1)


def test_tokens_are_counted_up_front_and_settled_on_what_was_used() -> None:
    clock = Clock()
    limiter, alice = Limiter(clock=clock), key(tokens_per_minute=1000)
    grant = limiter.admit(alice, 900)  # the estimate: most of the minute's tokens
    with pytest.raises(LimitHit):
        limiter.admit(alice, 200)
    limiter.settle(grant, 100)  # it used far less
    limiter.admit(alice, 800)
    assert limiter.headers(alice)["x-ratelimit-remaining-tokens"] == "100"


def test_a_request_larger_than_the_minute_s_tokens_can_never_pass_and_says_so() -> None:
    with pytest.raises(RouterError, match="lower max_tokens") as caught:
        Limiter(clock=Clock()).admit(key(tokens_per_minute=100), 500)
    assert caught.value.status == 400


def test_concurrent_requests_are_bounded_until_one_ends() -> None:
    limiter, alice = Limiter(clock=Clock()), key(concurrent_requests=2)
    first, _ = limiter.admit(alice, 1), limiter.admit(alice, 1)
    with pytest.raises(LimitHit, match="2 requests in flight"):
        limiter.admit(alice, 1)
    limiter.settle(first, 1)
    limiter.admit(alice, 1)


def read_ahead(limiter: Limiter, identity: Identity) -> None:
    """What a router does before it admits a keyed request: read what it must, in a thread."""

    async def read() -> None:
        if (reading := limiter.read_ahead(identity)) is not None:
            await reading

    asyncio.run(read())


def test_a_daily_quota_starts_from_the_usage_log_and_resets_at_midnight_utc() -> None:
    clock = Clock()
    asked: list[list[datetime]] = []

    def used_since(starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        asked.append(sorted(starts))
        return {start: {"alice": 950 if start.day == 1 else 0} for start in starts}

    limiter = Limiter(used_since, clock)
    alice = key(tokens_per_day=1000, tokens_per_month=100_000)
    limiter.read_period_starts()  # as a router does before it listens
    with pytest.raises(LimitHit, match="used 950 of its 1000 tokens this day") as hit:
        limiter.admit(alice, 100)
    assert asked == [[datetime(2026, 12, 1, tzinfo=UTC)]]  # the 1st: the day and month as one
    assert hit.value.retry_after == 12 * 3600  # until midnight UTC
    clock.now = NOON + 12 * 3600 + 1  # the next day: the log says what was used since
    limiter.headers(alice)  # an answer going out after midnight reads nothing
    assert len(asked) == 1
    read_ahead(limiter, alice)  # the new day's use and the month's, in one read
    assert asked[-1] == [datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)]
    limiter.admit(alice, 100)
    read_ahead(limiter, alice)  # read once a day
    assert len(asked) == 2


def test_a_quota_a_keys_file_gives_later_counts_what_the_key_used_before() -> None:
    limiter = Limiter(lambda since: {}, Clock())  # the other processes' files: nothing
    limiter.settle(limiter.admit(key(), 600), 600)  # no quota yet
    with_quota = key(tokens_per_day=1000)
    read_ahead(limiter, with_quota)
    with pytest.raises(LimitHit, match="used 600 of its 1000 tokens this day"):
        limiter.admit(with_quota, 500)


def test_the_rate_limit_headers_say_what_is_left() -> None:
    clock = Clock()
    limiter, alice = Limiter(clock=clock), key(requests_per_minute=10, tokens_per_minute=500)
    limiter.settle(limiter.admit(alice, 100), 40)
    clock.now += 15
    assert limiter.headers(alice) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "45.0s",
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "460",
        "x-ratelimit-reset-tokens": "45.0s",
    }


def test_a_request_is_estimated_from_its_bytes_and_the_answers_it_asks_for() -> None:
    assert estimated_tokens(400, {"max_tokens": 50}) == 150
    assert estimated_tokens(400, {}) == 100 + 256
    assert estimated_tokens(400, {"max_completion_tokens": 80, "max_tokens": 10, "n": 3}) == 340
    assert estimated_tokens(0, {"max_tokens": 10, "best_of": 4, "n": 2}) == 40
    # what is not a positive count counts as unset (the engine refuses it anyway)
    assert estimated_tokens(0, {"max_tokens": -5, "max_completion_tokens": "50"}) == 256
    assert estimated_tokens(0, {"max_tokens": 10, "n": 0, "best_of": -3}) == 10


def test_a_request_admitted_before_midnight_and_settled_after_counts_for_the_new_day() -> None:
    clock = Clock(NOON + 12 * 3600 - 1)  # a second before midnight UTC
    limiter, alice = Limiter(lambda since: {}, clock), key(tokens_per_day=10_000)
    grant = limiter.admit(alice, 2000)
    clock.now += 2  # the next day, which the usage log says is empty
    limiter.admit(alice, 1)
    limiter.settle(grant, 100)
    assert limiter.keys["alice"].day_tokens == 101  # not 1 + (100 - 2000)


def test_a_request_settled_after_midnight_with_none_between_counts_for_the_new_day() -> None:
    clock = Clock(NOON + 12 * 3600 - 10)  # ten seconds before midnight UTC
    limiter, alice = Limiter(clock=clock), key(tokens_per_day=1000)
    grant = limiter.admit(alice, 900)
    clock.now += 20  # a stream that ends after midnight, and no other request of the key
    limiter.settle(grant, 900)
    with pytest.raises(LimitHit, match="used 900 of its 1000 tokens this day"):
        limiter.admit(alice, 200)


def test_a_monthly_quota_alone_has_the_month_read_again_each_day() -> None:
    clock, reads = Clock(NOON + 24 * 3600), []  # the 2nd

    def used_since(starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        reads.append(sorted(starts))
        return {}

    limiter, monthly = Limiter(used_since, clock), key(tokens_per_month=10_000)
    limiter.read_period_starts()
    assert limiter.read_ahead(monthly) is None and len(reads) == 1
    clock.now += 24 * 3600  # the 3rd: the other processes' month is read again
    read_ahead(limiter, monthly)
    assert reads[-1] == [datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)]


def refused(limiter: Limiter, identity: Identity, tokens: int) -> bool:
    """Whether ``limiter`` would refuse ``identity`` a request of ``tokens`` now (one it lets
    through is settled at nothing)."""
    try:
        limiter.settle(limiter.admit(identity, tokens), 0)
    except LimitHit:
        return True
    return False


def test_what_other_workers_let_a_key_use_counts_within_seconds_and_no_request_waits() -> None:
    clock, others, threads = Clock(), {"alice": 0}, []  # the other workers' files, as they grow

    def used_since(starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        threads.append(threading.current_thread().name)
        return {start: dict(others) for start in starts}

    limiter, alice = Limiter(used_since, clock), key(tokens_per_day=1000)
    limiter.read_period_starts()

    async def requests() -> None:
        reading_on = asyncio.create_task(limiter.keep_reading(every=0.02))
        others["alice"] = 1000  # another worker let alice use all of today's quota
        assert limiter.read_ahead(alice) is None  # no request waits for the reads on
        assert await until(lambda: refused(limiter, alice, 1))
        reading_on.cancel()

    asyncio.run(requests())
    assert threading.main_thread().name not in threads[1:]  # read on in threads


def test_a_router_without_quotas_reads_no_usage_files() -> None:
    reads: list[Collection[datetime]] = []

    def used_since(starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        reads.append(starts)
        return {}

    limiter = Limiter(used_since, Clock())
    with pytest.raises(TimeoutError):  # many turns of reading on, bounded
        asyncio.run(asyncio.wait_for(limiter.keep_reading(every=0.005), timeout=0.2))
    assert limiter.read_ahead(key(requests_per_minute=5)) is None and reads == []


def own_file(log: UsageLog) -> Callable[[], Path]:
    return lambda: log.path


def test_two_workers_count_what_the_other_let_a_key_use(tmp_path: Path) -> None:
    """Two router processes' limiters and usage files, as ``--workers 2`` has them: each
    counts its own use in memory and reads the other's file on, never its own."""
    clock, alice = Clock(), key(tokens_per_day=1000)
    logs = [UsageLog(tmp_path, flush_every_s=60) for _ in range(2)]
    workers = [Limiter(TokensUsedSince(tmp_path, own_file(log)), clock) for log in logs]
    for worker in workers:
        worker.read_period_starts()

    def use(tokens: int) -> None:  # each worker lets alice use them, as a router does
        for worker, log in zip(workers, logs, strict=True):
            worker.settle(worker.admit(alice, tokens), tokens)
            log.record(UsageRecord(clock.now, "alice", None, "m", "/v1/completions",
                                   "interactive", 200, tokens, 0, 0.1, None))  # fmt: skip
            log.flush()

    def both_refuse(tokens: int) -> bool:
        return all(refused(worker, alice, tokens) for worker in workers)

    async def requests() -> None:
        reading_on = [asyncio.create_task(worker.keep_reading(every=0.02)) for worker in workers]
        use(300)  # each counts 600: its own 300 once (not again from its file), the other's
        assert await until(lambda: both_refuse(401))
        assert not any(refused(worker, alice, 400) for worker in workers)
        use(100)  # and again
        assert await until(lambda: both_refuse(201))
        assert not any(refused(worker, alice, 200) for worker in workers)
        for task in reading_on:
            task.cancel()

    asyncio.run(requests())
    for log in logs:
        log.close()


def test_a_usage_folder_that_cannot_be_read_is_a_503_that_says_so() -> None:
    def unreadable(starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        raise PermissionError("permission denied: /shared/usage")

    limiter = Limiter(unreadable, Clock())
    with pytest.raises(RouterError, match="cannot read the usage records") as refused:
        read_ahead(limiter, key(tokens_per_day=1000))
    assert refused.value.status == 503 and refused.value.retry_after == 5


def test_the_usage_files_are_read_once_per_period_not_once_per_key(tmp_path: Path) -> None:
    log = UsageLog(tmp_path, flush_every_s=60)
    # not the 1st, so the day and the month start apart; in the past, as the files' times are
    nov_15 = datetime(2026, 11, 15, 12, tzinfo=UTC).timestamp()
    log.record(UsageRecord(nov_15 - 60, "bob", None, "m", "/v1/completions", "interactive", 200,
                           600, 300, 0.1, None))  # fmt: skip
    log.close()
    used = TokensUsedSince(tmp_path)
    limiter = Limiter(used, Clock(nov_15))
    quotas = {"tokens_per_day": 1000, "tokens_per_month": 10_000}
    for name in ("alice", "bob", "carol"):
        alice_bob_or_carol = Identity(name=name, hash=hash_key(name), **quotas)
        read_ahead(limiter, alice_bob_or_carol)
        limiter.admit(alice_bob_or_carol, 50)
    assert used.scans == 1  # today's and this month's use in one read, for all three keys
    with pytest.raises(LimitHit, match="'bob' has used 950 of its 1000"):
        limiter.admit(Identity(name="bob", hash=hash_key("bob"), **quotas), 100)


@pytest.mark.single_process
def test_a_router_with_quotas_reads_where_they_start_before_it_listens(tmp_path: Path) -> None:
    """Not on the event loop at a key's first request, with every other request waiting."""
    log = UsageLog(tmp_path / "usage", flush_every_s=60)
    log.record(UsageRecord(time.time() - 1, "bob", None, "m", "/v1/completions", "interactive",
                           200, 600, 300, 0.1, None))  # fmt: skip
    log.close()
    keys = KeysFile(tmp_path / "keys.toml")
    bob = keys.add("bob", tokens_per_day=1000)
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path)
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config, home=tmp_path) as router:
        used = router.app[STATE].limiter.used_since
        assert isinstance(used, TokensUsedSince) and used.scans >= 1  # then read on in the back
        ask = {"model": "m", "prompt": "Hi", "max_tokens": 200}
        refused = post(f"{router.url}/v1/completions", ask, {"X-API-Key": bob})
    assert refused.status == 429
    assert "'bob' has used 900 of its 1000" in refused.body["error"]["message"]


class WatchedUsage(TokensUsedSince):
    """The real reader of the usage log, telling which thread each scan ran on and holding
    every scan until ``release`` is set (to see the event loop serve meanwhile)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.threads: list[str] = []
        self.release = threading.Event()

    def __call__(self, starts: Collection[datetime]) -> dict[datetime, dict[str, int]]:
        self.threads.append(threading.current_thread().name)
        assert self.release.wait(10)
        return super().__call__(starts)


def test_a_quota_s_new_day_is_read_in_a_thread_while_the_loop_serves(tmp_path: Path) -> None:
    log = UsageLog(tmp_path, flush_every_s=60)
    log.record(UsageRecord(NOON - 60, "alice", None, "m", "/v1/completions", "interactive", 200,
                           600, 300, 0.1, None))  # fmt: skip
    log.close()
    clock, used = Clock(NOON), WatchedUsage(tmp_path)
    limiter, alice = Limiter(used, clock), key(tokens_per_day=1000, tokens_per_month=10_000)
    bob = Identity(name="bob", hash=hash_key("b"), tokens_per_day=1000)

    async def first_requests() -> int:
        reading, same = limiter.read_ahead(alice), limiter.read_ahead(bob)
        assert reading is not None and same is not None  # both wait for the one scan
        waited = asyncio.gather(reading, same)
        served = 0  # what the loop does while the scan is held
        while not used.threads or served < 10:
            await asyncio.sleep(0.001)
            served += 1
        used.release.set()
        await waited
        return served

    assert asyncio.run(first_requests()) >= 10
    # one scan (the 1st: alice's day and month begin together), and not on the loop's thread
    assert used.scans == 1 and used.threads != [threading.main_thread().name]
    assert limiter.read_ahead(bob) is None  # read for every key, admitted or not
    with pytest.raises(LimitHit, match="used 900 of its 1000"):
        limiter.admit(alice, 200)  # from what was read: no scan on the loop
    assert used.scans == 1
    clock.now += 12 * 3600  # past midnight UTC: the new day is read ahead again
    read_ahead(limiter, alice)
    assert used.scans == 2


@pytest.mark.single_process  # it watches the router's own reader of the usage log
def test_a_keys_file_that_gives_a_key_a_quota_counts_what_it_used_today(tmp_path: Path) -> None:
    """The router read no usage before it listened (no key had a quota): the key's first
    request after the keys file gave it one waits for the scan, and the router answers others
    meanwhile."""
    log = UsageLog(tmp_path / "usage", flush_every_s=60)
    log.record(UsageRecord(time.time() - 1, "bob", None, "m", "/v1/completions", "interactive",
                           200, 600, 300, 0.1, None))  # fmt: skip
    log.close()
    keys = KeysFile(tmp_path / "keys.toml")
    keys.add("bootstrap")  # a keys file with a key in it, and no quota
    config = RouterConfig(probes=ProbeConfig(interval_s=0), keys_file=keys.path)
    with RouterThread(static=[("m", "http://127.0.0.1:9")], config=config, home=tmp_path) as router:
        watched = router.app[STATE].limiter.used_since = WatchedUsage(tmp_path / "usage")
        bob = keys.add("bob", tokens_per_day=1000)
        ask = {"model": "m", "prompt": "Hi", "max_tokens": 200}
        answers: list[HttpReply] = []

        def first_request() -> None:  # the first one the router takes bob's key for
            def taken() -> bool:
                answers[:] = [post(f"{router.url}/v1/completions", ask, {"X-API-Key": bob})]
                return answers[0].status != 401

            wait_until(taken, what="the router to read bob's key")

        asking = threading.Thread(target=first_request)
        asking.start()
        try:
            wait_until(lambda: watched.threads, what="the scan of the usage log")
            with urllib.request.urlopen(f"{router.url}/health", timeout=5) as health:
                assert health.status == 200  # served while the scan is held
        finally:
            watched.release.set()
            asking.join(timeout=30)
    [answer] = answers
    assert answer.status == 429, answer.body
    assert "'bob' has used 900 of its 1000 tokens this day" in answer.body["error"]["message"]
