"""Waiting for what another process does: look at once, then every so often, until a timeout.
A fake clock stands in for time, so the waits take none and the looks can be counted."""

from __future__ import annotations

import time

import pytest

from slurm_llm import _polling


class Clock:
    """``time.monotonic`` and ``time.sleep`` for the polling module: sleeping moves it on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_polling, "time", fake)
    return fake


def test_polling_looks_at_once_then_every_interval_until_the_timeout(clock: Clock) -> None:
    left = list(_polling.polling(1.0, every=0.25))
    assert left == [1.0, 0.75, 0.5, 0.25]
    assert clock.sleeps == [0.25] * 4  # the last sleep runs into the timeout


def test_a_wait_that_ends_early_does_not_sleep_again(clock: Clock) -> None:
    for looks, _ in enumerate(_polling.polling(10.0, every=1.0), start=1):
        if looks == 3:
            break
    assert clock.sleeps == [1.0, 1.0]


def test_nothing_is_polled_once_the_time_is_up(clock: Clock) -> None:
    assert list(_polling.polling(0.0, every=1.0)) == []
    assert clock.sleeps == []


def test_wait_until_is_true_as_soon_as_the_condition_holds(clock: Clock) -> None:
    answers = iter([None, "", "yes"])
    assert _polling.wait_until(lambda: next(answers), 10.0, every=0.5)
    assert clock.sleeps == [0.5, 0.5]


def test_wait_until_looks_once_more_at_the_timeout_then_is_false(clock: Clock) -> None:
    looks: list[float] = []
    assert not _polling.wait_until(lambda: looks.append(clock.now), 1.0, every=0.5)
    assert looks == [100.0, 100.5, 101.0]  # the last one after the deadline


def test_wait_until_with_no_time_left_still_looks_once(clock: Clock) -> None:
    assert _polling.wait_until(lambda: True, 0.0, every=1.0)
    assert not _polling.wait_until(lambda: False, 0.0, every=1.0)
    assert clock.sleeps == []


def test_polling_waits_in_real_time() -> None:
    started = time.monotonic()
    left = list(_polling.polling(0.05, every=0.01))
    assert time.monotonic() - started >= 0.05
    assert left and all(0 < seconds <= 0.05 for seconds in left)
