"""Co-located CPU replicas lease distinct cores; with too few free, they share all of them."""

from __future__ import annotations

from pathlib import Path

from slurm_llm.node._cpu_leases import lease_cores


def test_replicas_on_one_machine_get_distinct_cores(tmp_path: Path) -> None:
    first = lease_cores([0, 1, 2, 3], 2, tmp_path)
    second = lease_cores([0, 1, 2, 3], 2, tmp_path)
    assert first is not None and second is not None
    assert first.cores == [0, 1] and second.cores == [2, 3]


def test_no_lease_when_too_few_cores_are_free(tmp_path: Path) -> None:
    held = lease_cores([0, 1, 2], 2, tmp_path)
    assert held is not None
    assert lease_cores([0, 1, 2], 2, tmp_path) is None
    held.release()
    assert lease_cores([0, 1, 2], 2, tmp_path) is not None


def test_no_lease_when_the_job_already_has_only_its_own_cores(tmp_path: Path) -> None:
    assert lease_cores([5, 6], 2, tmp_path) is None
