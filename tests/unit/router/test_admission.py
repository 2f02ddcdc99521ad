"""Admission control: replicas get at most their limit; the rest wait in order, or are told
when to come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_llm import Autoscale
from slurm_llm._api_keys import Priority
from slurm_llm._registry import Registry
from slurm_llm.control._autoscale import ScalingRecord
from slurm_llm.router import _admission as admission_module
from slurm_llm.router._admission import (
    RESERVE_WINDOW_S,
    Admission,
    ClientLeft,
    NoOtherReplica,
    Rejected,
)
from slurm_llm.router._backends import BackendPool
from slurm_llm.router._policies import RoundRobin
from tests.unit.test_registry import record


def admission(replicas: int = 1, limit: int = 1, **options: Any) -> Admission:
    static = [("m", f"http://10.0.0.{i}:8000") for i in range(replicas)]
    return Admission(BackendPool(None, static=static, replica_limit=limit), RoundRobin(), **options)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_a_free_replica_is_taken_at_once_and_counted() -> None:
    async def scenario() -> None:
        gate = admission(replicas=2)
        first, second = await gate.acquire("m"), await gate.acquire("m")
        assert {first.url, second.url} == set(gate.pool.backends)
        assert first.in_flight == second.in_flight == 1
        assert gate.load("m").in_flight == 2 and gate.load("m").capacity == 2

    run(scenario)


def test_waiters_are_served_first_come_first_served() -> None:
    async def scenario() -> None:
        gate = admission()
        held = await gate.acquire("m")
        order: list[int] = []

        async def wait(index: int) -> None:
            backend = await gate.acquire("m")
            order.append(index)
            gate.release(backend)

        waiters = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert gate.load("m").queued == 5
        gate.release(held)
        await asyncio.gather(*waiters)
        assert order == [0, 1, 2, 3, 4]

    run(scenario)


def test_a_full_queue_answers_429_with_retry_after() -> None:
    async def scenario() -> None:
        gate = admission(max_queue=2)
        await gate.acquire("m")
        waiters = [asyncio.create_task(gate.acquire("m")) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Rejected, match="already has 2 requests waiting") as caught:
            await gate.acquire("m")
        assert caught.value.status == 429 and caught.value.headers() == {
            "Retry-After": "2"
        }  # 2 ahead, 1 slot
        assert caught.value.reason == "queue_full"
        for waiter in waiters:
            waiter.cancel()

    run(scenario)


def test_batch_items_may_wait_past_the_queue_bound() -> None:
    async def scenario() -> None:
        gate = admission(max_queue=0)
        await gate.acquire("m")
        waiter = asyncio.create_task(gate.acquire("m", bounded=False))
        await asyncio.sleep(0.01)
        assert gate.load("m").queued == 1
        waiter.cancel()

    run(scenario)


def test_waiting_too_long_answers_503() -> None:
    async def scenario() -> None:
        gate = admission(queue_timeout_s=0.05)
        await gate.acquire("m")
        with pytest.raises(Rejected, match=r"no replica of 'm' was free within 0\.05 s") as caught:
            await gate.acquire("m")
        assert caught.value.status == 503 and gate.load("m").queued == 0

    run(scenario)


def test_a_waiter_that_gives_up_leaves_no_replica_reserved() -> None:
    async def scenario() -> None:
        gate = admission()
        held = await gate.acquire("m")
        waiter = asyncio.create_task(gate.acquire("m"))
        await asyncio.sleep(0.01)
        gate.release(held)  # hands the replica to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert held.in_flight == 0 and gate.load("m").queued == 0

    run(scenario)


def test_a_request_whose_client_leaves_while_it_waits_gives_up_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission_module, "LEFT_POLL_S", 0.01)

    async def scenario() -> None:
        gate = admission()
        held = await gate.acquire("m")
        gone = asyncio.Event()
        leaving = asyncio.create_task(gate.acquire("m", left=gone.is_set))
        staying = asyncio.create_task(gate.acquire("m", left=lambda: False))
        await asyncio.sleep(0.05)
        assert gate.load("m").queued == 2
        gone.set()
        with pytest.raises(ClientLeft) as left:
            await leaving
        assert left.value.status == 499 and gate.load("m").queued == 1
        gate.release(held)  # the slot goes to the request that stayed, none is lost
        assert (await staying).url == held.url and held.in_flight == 1

    run(scenario)


def test_a_retry_waits_for_a_replica_it_has_not_tried_and_lets_others_pass() -> None:
    async def scenario() -> None:
        gate = admission(replicas=2)
        first = await gate.acquire("m")
        second = await gate.acquire("m")
        retry = asyncio.create_task(gate.acquire("m", exclude={first.url}))
        fresh = asyncio.create_task(gate.acquire("m"))
        await asyncio.sleep(0.01)
        gate.release(first)  # the retry must not take it back; the fresh request may
        assert (await fresh) is first
        gate.release(second)
        assert (await retry) is second

    run(scenario)


def test_every_replica_tried_means_no_other_replica() -> None:
    async def scenario() -> None:
        gate = admission(replicas=1)
        with pytest.raises(NoOtherReplica):
            await gate.acquire("m", exclude=set(gate.pool.backends))

    run(scenario)


def test_when_probes_took_every_replica_out_the_answer_is_503_not_a_wait() -> None:
    async def scenario() -> None:
        gate = admission(replicas=2)
        for backend in gate.pool.backends.values():
            backend.probed_down = True
        with pytest.raises(Rejected, match="all 2 replica") as caught:
            await gate.acquire("m")
        assert caught.value.status == 503 and caught.value.reason == "unhealthy"

    run(scenario)


def test_when_every_replica_is_only_passively_ejected_they_still_serve() -> None:
    async def scenario() -> None:
        gate = admission(replicas=1)
        (backend,) = gate.pool.backends.values()
        backend.failed("a test")  # one transient error on the last replica
        assert (await gate.acquire("m")) is backend

    run(scenario)


def test_waiters_are_served_by_an_ejected_last_replica_when_it_frees_up() -> None:
    async def scenario() -> None:
        gate = admission(replicas=1)
        held = await gate.acquire("m")
        waiter = asyncio.create_task(gate.acquire("m"))
        await asyncio.sleep(0.01)
        held.failed("a test")  # its request failed; nothing else will come to wake the queue
        gate.release(held)
        assert (await asyncio.wait_for(waiter, 1)) is held

    run(scenario)


def test_a_replica_back_from_ejection_serves_the_queue() -> None:
    async def scenario() -> None:
        gate = admission(replicas=2)
        held = await gate.acquire("m")
        (ejected,) = [b for b in gate.pool.backends.values() if b is not held]
        ejected.failed("a test")
        waiter = asyncio.create_task(gate.acquire("m"))
        await asyncio.sleep(0.01)
        assert gate.load("m").queued == 1
        ejected.ejected_until = time.monotonic() - 1
        gate.pool.on_change()  # what the probe loop and the registry watch call
        assert (await waiter) is ejected

    run(scenario)


def test_utilisation_counts_queued_requests_against_capacity() -> None:
    async def scenario() -> None:
        gate = admission(replicas=2, limit=2)
        for _ in range(4):
            await gate.acquire("m")
        waiters = [asyncio.create_task(gate.acquire("m")) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert gate.load("m").utilisation == 1.5
        for waiter in waiters:
            waiter.cancel()

    run(scenario)


def test_a_model_with_no_replica_left_is_a_503_to_retry_not_a_crash() -> None:
    """Its last replica can go between the check that the model is served and the admission
    (or while a stream waits to be continued): the client is told to come back."""

    async def scenario() -> None:
        gate = admission(replicas=0)
        with pytest.raises(Rejected) as gone:
            await gate.acquire("m")
        assert (gone.value.status, gone.value.reason, gone.value.retry_after) == (
            503, "no_replica", 2
        )  # fmt: skip
        with pytest.raises(NoOtherReplica):
            await admission(replicas=1).acquire("m", exclude=["http://10.0.0.0:8000"])

    run(scenario)


def test_the_load_counts_what_a_request_would_be_sent_to() -> None:
    """Every replica passively ejected: requests still go to them (so one error on the last
    replica is not a minute of 503s), and the load says so."""
    gate = admission(replicas=2)
    for backend in gate.pool.backends.values():
        backend.failed("a test")
    assert gate.load("m").routable == 2
    next(iter(gate.pool.backends.values())).probed_down = True
    assert gate.load("m").routable == 1


def test_interactive_requests_go_ahead_of_batch_requests_that_came_shortly_before() -> None:
    async def scenario() -> None:
        gate = admission(batch_aging_s=30)
        held = await gate.acquire("m")
        order: list[str] = []

        async def wait(name: str, priority: Priority) -> None:
            backend = await gate.acquire("m", priority=priority)
            order.append(name)
            gate.release(backend)

        waiters = [asyncio.create_task(wait("batch", "batch"))]
        await asyncio.sleep(0.01)
        waiters.append(asyncio.create_task(wait("chat", "interactive")))
        await asyncio.sleep(0.01)
        gate.release(held)
        await asyncio.gather(*waiters)
        assert order == ["chat", "batch"]

    run(scenario)


def test_batch_work_leaves_the_reserve_to_interactive_requests_while_they_come() -> None:
    async def scenario() -> None:
        clock = [0.0]
        gate = admission(limit=3, interactive_reserve=1, clock=lambda: clock[0])
        gate.release(await gate.acquire("m"))  # a chat came: the reserve is in force
        batch = [await gate.acquire("m", priority="batch") for _ in range(2)]
        waiting = asyncio.create_task(gate.acquire("m", priority="batch"))
        await asyncio.sleep(0.01)
        assert not waiting.done() and gate.load("m").in_flight == 2
        chat = await asyncio.wait_for(gate.acquire("m"), 1)  # at once, past the batch waiter
        assert gate.load("m").in_flight == 3
        clock[0] = RESERVE_WINDOW_S + 1  # no chat since: batch work may have every slot
        gate.release(chat)
        gate.release(await asyncio.wait_for(waiting, 1))
        for backend in batch:
            gate.release(backend)

    run(scenario)


def test_without_interactive_traffic_batch_work_uses_every_slot() -> None:
    async def scenario() -> None:
        gate = admission(limit=3, interactive_reserve=1)
        for _ in range(3):
            await asyncio.wait_for(gate.acquire("m", priority="batch"), 1)

    run(scenario)


def test_the_reserve_never_takes_the_last_slot_from_batch_work() -> None:
    async def scenario() -> None:
        gate = admission(limit=2, interactive_reserve=5)
        gate.release(await gate.acquire("m"))
        await asyncio.wait_for(gate.acquire("m", priority="batch"), 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gate.acquire("m", priority="batch"), 0.05)

    run(scenario)
    with pytest.raises(ValueError, match="0 or more"):
        admission(interactive_reserve=-1)


def test_batch_work_at_the_head_of_the_queue_keeps_a_slot_under_a_stream_of_chats() -> None:
    async def scenario() -> None:
        gate = admission(limit=2, interactive_reserve=1, batch_aging_s=0)
        chats = [await gate.acquire("m"), await gate.acquire("m")]  # both slots taken by chats
        batch = asyncio.create_task(gate.acquire("m", priority="batch"))
        await asyncio.sleep(0.01)
        chat = asyncio.create_task(gate.acquire("m"))  # came after it
        await asyncio.sleep(0.01)
        gate.release(chats.pop())
        backend = await asyncio.wait_for(batch, 1)  # its one slot, not the chat behind it
        assert backend.batch_in_flight == 1 and not chat.done()
        gate.release(backend, "batch")
        gate.release(await asyncio.wait_for(chat, 1))

    run(scenario)


def test_when_the_reserve_lapses_waiting_batch_work_is_served_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission_module, "RESERVE_WINDOW_S", 0.2)

    async def scenario() -> None:
        gate = admission(limit=3, interactive_reserve=1)
        gate.release(await gate.acquire("m"))  # a chat: the reserve holds for 0.2 s
        held = [await gate.acquire("m", priority="batch") for _ in range(2)]
        third = asyncio.create_task(gate.acquire("m", priority="batch"))
        await asyncio.sleep(0.05)
        assert not third.done()
        await asyncio.wait_for(third, 2)  # no release came: the lapse served it
        assert held[0].in_flight == 3

    run(scenario)


arrivals = st.lists(
    st.tuples(st.floats(0, 120, allow_nan=False), st.sampled_from(["interactive", "batch"])),
    min_size=1,
    max_size=40,
)


@given(arrivals, st.floats(0, 60, allow_nan=False))
def test_no_batch_request_waits_behind_an_interactive_one_that_came_after_its_aging(
    times: list[tuple[float, Priority]], aging: float
) -> None:
    """Whatever the arrivals, a batch request that came at t is served before every
    interactive request that came after t + aging, batch requests keep their order, and every
    request is served: the requests wait for one busy replica through ``acquire``, and each
    served one frees it for ``dispatch`` to give to the next."""
    clock = [0.0]
    served: list[tuple[float, Priority]] = []

    async def served_order() -> None:
        gate = admission(batch_aging_s=aging, clock=lambda: clock[0])
        held = await gate.acquire("m")

        async def wait(arrived: float, priority: Priority) -> None:
            backend = await gate.acquire("m", priority=priority)
            served.append((arrived, priority))
            gate.release(backend)

        waiting = []
        for arrived, priority in sorted(times, key=lambda arrival: arrival[0]):
            clock[0] = arrived
            waiting.append(asyncio.create_task(wait(arrived, priority)))
            await asyncio.sleep(0)  # it queues before the next one arrives
        gate.release(held)
        await asyncio.gather(*waiting)

    asyncio.run(served_order())
    assert sorted(served) == sorted(times)
    for position, (arrived, priority) in enumerate(served):
        if priority == "batch":
            ahead = served[:position]
            assert all(other <= arrived + aging for other, _ in ahead)
            assert all(other <= arrived for other, kind in ahead if kind == "batch")


def sleeping_model(registry: Registry | None = None) -> Admission:
    """A model of an elastic deployment at zero replicas (its controller writes)."""
    pool = BackendPool(registry, replica_limit=1)
    gate = Admission(pool, RoundRobin(), wake_timeout_s=5.0)
    pool.elastic = {"smollm2": ScalingRecord(
        deployment="smollm2", model="smollm2", bounds=Autoscale(max_replicas=1), desired=0,
        ready=0, written=time.time(),
    )}  # fmt: skip
    return gate


def test_a_request_for_a_model_at_zero_waits_for_its_first_replica_and_wakes_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        registry = Registry(tmp_path)
        gate = sleeping_model(registry)
        woken: list[str] = []
        gate.on_wake = woken.append
        waiting = asyncio.create_task(gate.acquire("smollm2"))
        await asyncio.sleep(0.01)
        assert woken == ["smollm2"] and gate.load("smollm2").queued == 1 and not waiting.done()
        assert gate.last_request["smollm2"] == pytest.approx(time.time(), abs=1)
        registry.publish(record())  # its first replica is ready
        gate.pool.refresh()
        backend = await waiting
        assert backend.url == record().url and backend.in_flight == 1

    run(scenario)


def test_a_wake_up_that_takes_too_long_is_a_503_that_says_so() -> None:
    async def scenario() -> None:
        gate = sleeping_model()
        gate.wake_timeout_s = 0.05
        with pytest.raises(Rejected) as late:
            await gate.acquire("smollm2")
        assert late.value.reason == "wake_timeout" and "started within 0.05 s" in late.value.message
        assert gate.load("smollm2").queued == 0

    run(scenario)


def test_a_client_that_leaves_a_wake_up_no_longer_counts_as_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wake-up may take minutes: a client that gives up on it must not keep the deployment
    awake, nor have a replica compute its answer once one starts."""
    monkeypatch.setattr(admission_module, "LEFT_POLL_S", 0.01)

    async def scenario() -> None:
        gate = sleeping_model()
        gone = asyncio.Event()
        waiting = asyncio.create_task(gate.acquire("smollm2", left=gone.is_set))
        await asyncio.sleep(0.05)
        assert gate.load("smollm2").queued == 1
        gone.set()
        with pytest.raises(ClientLeft):
            await waiting
        assert gate.load("smollm2").queued == 0

    run(scenario)


def test_requests_waiting_for_a_wake_that_will_not_come_are_failed_at_once() -> None:
    async def scenario() -> None:
        gate = sleeping_model()
        waiting = asyncio.create_task(gate.acquire("smollm2"))
        await asyncio.sleep(0.01)
        gate.abandon_hopeless_wakes(lambda model: "")  # its controller still writes
        await asyncio.sleep(0.01)
        assert not waiting.done()
        gate.abandon_hopeless_wakes(lambda model: "its deployment is no longer running")
        with pytest.raises(Rejected) as given_up:
            await waiting
        assert given_up.value.reason == "wake_failed"
        assert "no longer running" in given_up.value.message
        assert gate.load("smollm2").queued == 0

    run(scenario)
