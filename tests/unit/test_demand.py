"""Routers' demand reports: summed over the routers alive, stale ones ignored, and whether a
draining replica is still routed to."""

from __future__ import annotations

import time
from pathlib import Path

from slurm_llm._demand import (
    STALE_AFTER_S,
    DemandReport,
    ModelDemand,
    fresh_reports,
    model_demand,
    remove_report,
    still_routed,
    write_report,
)


def test_demand_is_summed_over_the_routers_that_are_alive(tmp_path: Path) -> None:
    now = time.time()
    reports = [
        DemandReport(router="a", written=now, models={"m": ModelDemand(in_flight=2, queued=1,
                                                                        last_request=now - 5)}),
        DemandReport(router="b", written=now, models={"m": ModelDemand(in_flight=1,
                                                                        last_request=now - 1)}),
        DemandReport(router="dead", written=now - STALE_AFTER_S - 1,
                     models={"m": ModelDemand(in_flight=50)}),
    ]  # fmt: skip
    for report in reports:
        write_report(tmp_path, report)
    (tmp_path / "demand" / "torn.json").write_text('{"router": "torn", "wri')
    alive = fresh_reports(tmp_path, now)
    assert sorted(r.router for r in alive) == ["a", "b"]
    assert model_demand(alive, "m") == ModelDemand(in_flight=3, queued=1, last_request=now - 1)
    assert model_demand(alive, "other") == ModelDemand()
    remove_report(tmp_path, "a")
    assert [r.router for r in fresh_reports(tmp_path, now)] == ["b"]


def test_a_replica_is_routed_until_every_router_has_seen_its_drain_and_finished() -> None:
    now = time.time()
    unaware = DemandReport(router="a", written=now, routed_jobs=["7"])
    finishing = DemandReport(router="b", written=now, busy_jobs={"7": 1})
    done = DemandReport(router="c", written=now, routed_jobs=["8"])
    assert still_routed([unaware, done], "7")
    assert still_routed([finishing, done], "7")
    assert not still_routed([done], "7") and not still_routed([], "7")


def test_a_report_from_before_a_router_could_see_a_drain_counts_as_routing() -> None:
    now = time.time()
    before = DemandReport(router="a", written=now - 5, routed_jobs=["8"])
    assert still_routed([before], "7", since=now - 2)
    assert not still_routed([before], "7", since=now - 10)
