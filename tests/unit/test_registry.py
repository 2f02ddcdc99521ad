from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from slurm_llm import EndpointRecord, Registry
from slurm_llm._registry import HEARTBEAT_TIMEOUT_S, stale_reason


def record(**changes: object) -> EndpointRecord:
    now = time.time()
    base: dict[str, object] = {
        "deployment": "smollm2",
        "replica": 0,
        "model": "smollm2",
        "engine": "llamacpp",
        "url": "http://127.0.0.1:20001",
        "node": "elsewhere",
        "job_id": "42_0",
        "launcher_pid": 1,
        "engine_pid": 2,
        "gpus": [],
        "started": now,
        "ready": now,
        "heartbeat": now,
    }
    return EndpointRecord.model_validate({**base, **changes})


def test_a_published_record_is_read_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    published = record()
    registry.publish(published)
    assert registry.records("smollm2") == [published]
    assert registry.path_for("smollm2", 0, "42_0").is_file()


def test_readers_never_see_half_a_record(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish(record())
    stop = threading.Event()

    def rewrite() -> None:
        beat = 0
        while not stop.is_set():
            beat += 1
            registry.publish(
                record(heartbeat=time.time(), engine_pid=beat, url="http://h:" + "9" * 500)
            )

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = [len(registry.all_records("smollm2")) for _ in range(2000)]
    finally:
        stop.set()
        writer.join()
    assert set(seen) == {1}
    assert not list((tmp_path / "smollm2").glob(".*.tmp")), "temporary files left behind"


def test_predecessor_and_successor_of_a_replica_coexist(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish(record(job_id="42_0"))
    registry.publish(record(job_id="43_0", url="http://127.0.0.1:20002"))  # handover successor
    assert [r.job_id for r in registry.records()] == ["42_0", "43_0"]
    assert registry.withdraw("smollm2", 0, job_id="42_0")
    assert [r.job_id for r in registry.records()] == ["43_0"]
    assert not registry.withdraw("smollm2", 0, job_id="42_0")


def test_a_record_without_heartbeat_is_stale(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish(record(heartbeat=time.time() - HEARTBEAT_TIMEOUT_S - 1))
    assert registry.records() == []
    [old] = registry.all_records()
    assert "no heartbeat" in (stale_reason(old) or "")


def test_a_record_past_its_deadline_is_stale() -> None:
    assert (
        stale_reason(record(deadline=time.time() - 1)) == "the job's wall-time deadline has passed"
    )


def test_a_record_whose_launcher_died_on_this_host_is_stale() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    reason = stale_reason(record(node=socket.gethostname(), launcher_pid=child.pid))
    assert reason == f"launcher process {child.pid} is gone"


def test_garbage_files_are_ignored(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "0-41.json").write_text('{"url": "http://half')
    registry.publish(record(replica=1))
    assert [r.replica for r in registry.records()] == [1]


def test_a_drain_marker_survives_the_launchers_rewrites_and_goes_with_the_record(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    published = record()
    registry.publish(published)
    registry.drain("smollm2", 0, "42_0")
    registry.publish(published.model_copy(update={"heartbeat": time.time()}))  # a heartbeat
    assert [r.draining for r in registry.records("smollm2")] == [True]
    registry.drain("smollm2", 0, "42_0", draining=False)
    assert [r.draining for r in registry.records("smollm2")] == [False]
    registry.drain("smollm2", 0, "42_0")
    registry.withdraw("smollm2", 0, "42_0")
    assert list(tmp_path.rglob("*")) == [tmp_path / "smollm2"]  # no marker left behind
