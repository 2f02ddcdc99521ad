"""The router's view of the replicas: a model whose replicas are all being replaced is
missing for a while (503, retry), not unknown (404, give up); a draining replica gets no new
request; a model scaled to zero stays known while its controller runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from slurm_llm import Autoscale
from slurm_llm._registry import Registry
from slurm_llm.control._autoscale import ScalingRecord
from slurm_llm.router import BackendPool
from slurm_llm.router._errors import RouterError
from slurm_llm.router._requests import require_served
from tests.unit.test_registry import record


def test_a_model_between_replicas_is_a_503_to_retry_and_an_unknown_one_a_404(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    only = record()
    registry.publish(only)
    pool = BackendPool(registry, only.deployment)
    pool.refresh()
    assert require_served(pool, only.model) == only.model
    registry.withdraw(only.deployment, only.replica, only.job_id)
    pool.refresh()
    assert pool.models() == []
    with pytest.raises(RouterError) as missing:
        require_served(pool, only.model)
    assert missing.value.status == 503 and missing.value.retry_after
    assert "being replaced" in missing.value.message
    with pytest.raises(RouterError) as unknown:
        require_served(pool, "gpt-9")
    assert unknown.value.status == 404
    assert not pool.served_lately(only.model, within_s=0.0)


def test_a_draining_replica_gets_no_new_request_but_stays_in_the_pool(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first, second = record(), record(replica=1, job_id="43_0", url="http://127.0.0.1:20002")
    for published in (first, second):
        registry.publish(published)
    pool = BackendPool(registry, first.deployment)
    pool.refresh()
    pool.backends[second.url].in_flight = 1  # an answer it is still giving
    registry.drain(second.deployment, second.replica, second.job_id)
    pool.refresh()
    assert [b.url for b in pool.of(first.model)] == [first.url]
    assert pool.backends[second.url].draining and pool.backends[second.url].in_flight == 1
    registry.drain(second.deployment, second.replica, second.job_id, draining=False)
    pool.refresh()
    assert {b.url for b in pool.of(first.model)} == {first.url, second.url}


def test_a_model_scaled_to_zero_is_known_while_its_controller_writes(tmp_path: Path) -> None:
    pool = BackendPool(Registry(tmp_path))
    with pytest.raises(RouterError) as unknown:
        require_served(pool, "smollm2")
    assert unknown.value.status == 404
    bounds = Autoscale(max_replicas=2)
    asleep = ScalingRecord(deployment="smollm2", model="smollm2", bounds=bounds, desired=0,
                           ready=0, written=time.time())  # fmt: skip
    pool.elastic = {"smollm2": asleep}
    assert require_served(pool, "smollm2") == "smollm2" and "smollm2" in pool.known_models()
    pool.elastic = {"smollm2": asleep.model_copy(update={"written": time.time() - 60})}
    assert not pool.wakeable("smollm2")  # its controller is gone: nothing would wake it
    failed = asleep.model_copy(update={"failed": "job 7 failed before it was ready: OOM"})
    pool.elastic = {"smollm2": failed}
    assert not pool.wakeable("smollm2")  # its replica cannot start: no request should wait
