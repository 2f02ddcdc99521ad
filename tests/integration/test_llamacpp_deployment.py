"""Deployments of SmolLM2 with real llama.cpp servers through submitit's local executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from slurm_llm import Deployment, DeploymentError, ModelSpec, Registry, attach, deploy
from slurm_llm._demo import run_demo
from slurm_llm._registry import pid_alive
from tests.integration.helpers import (
    deploy_smollm2,
    openai_client,
    streamed_pieces,
    wait_for_record,
)

pytestmark = pytest.mark.llamacpp


def test_every_replica_is_ready_and_generates(smollm2_llamacpp: Deployment) -> None:
    assert len(smollm2_llamacpp.endpoints) == 2
    assert [s.state for s in smollm2_llamacpp.status()] == ["ready", "ready"]
    for url in smollm2_llamacpp.endpoints:
        reply = openai_client(url).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_replicas_stream_token_by_token(smollm2_llamacpp: Deployment) -> None:
    assert len(streamed_pieces(smollm2_llamacpp.endpoints[0], "smollm2")) > 3


def test_replicas_listen_on_distinct_ports_and_publish_records(
    smollm2_llamacpp: Deployment, slurm_llm_home: Path
) -> None:
    records = Registry(slurm_llm_home / "registry").records("shared-smollm2")
    assert {r.replica for r in records} == {0, 1}
    assert len({r.url for r in records}) == 2
    assert all(r.engine == "llamacpp" and r.model == "smollm2" for r in records)


def test_another_process_sees_the_deployment(smollm2_llamacpp: Deployment) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slurm_llm", "status", "shared-smollm2"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert out.count("ready") == 2


def test_deploy_attaches_instead_of_doubling(smollm2_llamacpp: Deployment) -> None:
    again = deploy_smollm2("shared-smollm2", replicas=2)
    assert {j.job_id for j in again.jobs.values()} == {
        j.job_id for j in smollm2_llamacpp.jobs.values()
    }


def test_stop_leaves_no_process_behind(slurm_llm_home: Path) -> None:
    deployment = deploy_smollm2("short-lived", replicas=2)
    engine_pids = [r.engine_pid for r in deployment.records()]
    launcher_pids = [r.launcher_pid for r in deployment.records()]
    deployment.stop()
    assert deployment.records() == []
    assert Registry(slurm_llm_home / "registry").all_records("short-lived") == []
    time.sleep(0.2)
    assert [p for p in engine_pids + launcher_pids if pid_alive(p)] == []
    with pytest.raises(DeploymentError, match="no deployment named 'short-lived'"):
        attach("short-lived")


def test_a_killed_engine_is_restarted_and_republished(slurm_llm_home: Path) -> None:
    with deploy_smollm2("crashy", replicas=1) as deployment:
        [before] = deployment.records()
        os.kill(before.engine_pid, signal.SIGKILL)
        after = wait_for_record(deployment, lambda r: r.engine_pid != before.engine_pid)
        assert after is not None, "engine was not restarted"
        assert after.job_id == before.job_id
        reply = openai_client(after.url).completions.create(
            model="smollm2", prompt="One, two,", max_tokens=4
        )
        assert reply.choices[0].text


def test_a_missing_model_file_fails_with_a_clear_reason(tmp_path: Path) -> None:
    spec = ModelSpec.preset("smollm2-135m", model=str(tmp_path / "missing.gguf"))
    with pytest.raises(DeploymentError) as error:
        deploy(spec, replicas=1, executor="local", name="no-weights", progress=False, timeout=120)
    message = str(error.value)
    assert "replica 0" in message and "failed: SpecError: model path" in message
    assert "missing.gguf does not exist" in message
    assert "log: " in message and "Traceback" not in message


def test_an_engine_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    spec = ModelSpec.preset("smollm2-135m", engine_args=["--no-such-flag"], max_restarts=0)
    with pytest.raises(DeploymentError) as error:
        deploy(spec, replicas=1, executor="local", name="bad-flag", progress=False, timeout=120)
    message = str(error.value)
    assert "engine exited with code 2 before it was ready" in message
    assert "unrecognized arguments: --no-such-flag" in message


def test_scale_adds_and_removes_replicas(slurm_llm_home: Path) -> None:
    with deploy_smollm2("elastic", replicas=1) as deployment:
        deployment.scale(2).wait_ready(timeout=120, progress=False)
        assert sorted(r.replica for r in deployment.records()) == [0, 1]
        deployment.scale(1)
        assert [r.replica for r in deployment.records()] == [0]
        assert [s.replica for s in deployment.status()] == [0]


def test_different_models_are_deployed_side_by_side(smollm2_llamacpp: Deployment) -> None:
    other = ModelSpec.preset("smollm2-135m", name="smollm2-terse", max_concurrent_requests=2)
    with deploy(other, replicas=1, executor="local", progress=False) as terse:
        [url] = terse.endpoints
        assert url not in smollm2_llamacpp.endpoints
        reply = openai_client(url).chat.completions.create(
            model="smollm2-terse", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.model == "smollm2-terse"
        assert len(smollm2_llamacpp.endpoints) == 2


def test_preemption_requeues_and_the_replica_comes_back(slurm_llm_home: Path) -> None:
    with deploy_smollm2("preempted", replicas=1) as deployment:
        [before] = deployment.records()
        os.kill(before.launcher_pid, signal.SIGUSR2)  # as SLURM signals before preemption
        after = wait_for_record(deployment, lambda r: r.launcher_pid != before.launcher_pid)
        assert after is not None, "replica did not come back"
        assert not pid_alive(before.engine_pid)
        assert "checkpointing for requeue" in deployment.jobs[0].log_path.read_text()
        reply = openai_client(after.url).completions.create(
            model="smollm2", prompt="Hi", max_tokens=2
        )
        assert reply.choices[0].text is not None


def test_the_cli_brings_a_deployment_up_and_down(slurm_llm_home: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "slurm_llm", *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=120,
        ).stdout

    up = cli("up", "smollm2-135m", "--replicas", "1", "--executor", "local", "--name", "cli")
    assert "ready" in up and "slurm-llm down cli" in up
    [record] = Registry(slurm_llm_home / "registry").records("cli")
    assert "cli" in cli("status")
    assert "Stopped cli" in cli("down", "cli")
    time.sleep(0.2)
    assert not pid_alive(record.engine_pid)
    assert Registry(slurm_llm_home / "registry").records("cli") == []


def test_the_demo_runs_and_cleans_up(slurm_llm_home: Path) -> None:
    console = Console(record=True, width=200)
    run_demo(replicas=2, executor="local", console=console)
    text = console.export_text()
    assert text.count("A:") == 4
    assert "streamed" in text and "Stopped cleanly" in text


def test_a_cancelled_replica_is_replaced_and_never_advertised(slurm_llm_home: Path) -> None:
    with deploy_smollm2("self-healing", replicas=2) as deployment:
        old = deployment.jobs[0]
        [old_record] = [r for r in deployment.records() if r.replica == 0]
        old.cancel()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = deployment.status()
            if statuses[0].job_id != old.job_id and statuses[0].state == "ready":
                break
            time.sleep(0.1)
        assert statuses[0].job_id != old.job_id and statuses[0].state == "ready"
        assert old_record.job_id not in {
            r.job_id for r in Registry(slurm_llm_home / "registry").records()
        }
        assert any(f"job {old.job_id} ended" in event for event in deployment.events)
        assert len(deployment.endpoints) == 2


def test_an_engine_past_its_restart_limit_gets_a_replacement_job(slurm_llm_home: Path) -> None:
    with deploy_smollm2("fragile", replicas=1, max_restarts=0) as deployment:
        [before] = deployment.records()
        os.kill(before.engine_pid, signal.SIGKILL)  # the launcher gives up: its job fails
        after = wait_for_record(deployment, lambda r: r.job_id != before.job_id)
        assert after is not None, "no replacement job"
        [event] = [e for e in deployment.events if f"job {before.job_id} ended" in e]
        assert "engine exited with code -9 after it was ready" in event


def test_a_replica_not_ready_in_time_is_reported_with_its_log(slurm_llm_home: Path) -> None:
    with pytest.raises(DeploymentError) as error:
        deploy_smollm2("slow", replicas=1, ready_timeout_s=0.01)
    message = str(error.value)
    assert "engine not ready after 0 s" in message
    assert "last log lines" in message and "log: " in message
