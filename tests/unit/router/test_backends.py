"""The router's view of the replicas: a model whose replicas are all being replaced is
missing for a while (503, retry), not unknown (404, give up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_llm._registry import Registry
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
